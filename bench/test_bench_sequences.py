"""Whole sequences, LSTM and GRU: fastrnn beside torch and onnxruntime on the same weights.

Each case checks its engine's answer against the float64 reference before it is timed and
records the result in extra_info (bench/registry.py), so a fast wrong answer shows in the table.
"""

import functools

import pytest

from registry import ENGINES, ModelSpec, checked

WORKLOADS = [
    spec
    for kind in ("lstm", "gru")
    for spec in (
        ModelSpec(kind, input_size=64, hidden_size=128, steps=1000, batch=1),
        ModelSpec(kind, input_size=128, hidden_size=128, steps=200, batch=8, num_layers=2),
        ModelSpec(kind, input_size=256, hidden_size=256, steps=100, batch=64),
        ModelSpec(kind, input_size=128, hidden_size=128, steps=100, batch=16, bidirectional=True),
    )
]


@functools.lru_cache(maxsize=None)
def input_and_reference(spec):
    """One input and its float64 answer per workload, shared by the engines' cases."""
    x = spec.input()
    return x, spec.reference(x)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("spec", WORKLOADS, ids=lambda spec: spec.workload_id().replace(" ", "-"))
def test_sequence(benchmark, benchmark_disabled, spec, engine):
    x, reference = input_and_reference(spec)
    implementation, info = checked(engine, spec, x, reference)   # built, warmed and checked
    benchmark.group = spec.workload_id()
    benchmark.extra_info.update(info)
    y = benchmark(implementation.run_sequence, x)
    assert y.shape == reference.shape
    # Under make test a wrong answer fails; under make bench it is kept, marked, in the table.
    assert info["correct"] or not benchmark_disabled, (f"{engine} differs from the float64 reference by "
                             f"{info['max_abs_error']:.3g} on {spec.workload_id()}")
