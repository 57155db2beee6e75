"""Whole sequences, LSTM and GRU: fastrnn beside torch, onnxruntime and OpenVINO on the same
weights (onnxruntime and OpenVINO run the same exported ONNX file; OpenVINO held to float32 by
its precision hint, and its default precision in a row of its own on CPUs with bf16 units).

The engines of a workload are built, checked against the float64 reference and then timed in
interleaved rounds (bench/registry.py: measured), so a fast wrong answer shows in the table and
the ratios come from rounds measured side by side.
"""

import functools

import pytest

from registry import ENGINES, Entrant, ModelSpec, checked, report_case

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


def entrants(spec, engines):
    x, reference = input_and_reference(spec)
    built = {}
    for engine in engines:
        implementation, info = checked(engine, spec, x, reference)   # built, warmed and checked
        built[engine] = Entrant(lambda run=implementation.run_sequence: run(x), info,
                                [implementation])
    return built


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("spec", WORKLOADS, ids=lambda spec: spec.workload_id().replace(" ", "-"))
def test_sequence(benchmark, spec, engine):
    report_case(benchmark, spec.workload_id(), engine,
                lambda engines: entrants(spec, engines), ENGINES, benchmark.enabled)
