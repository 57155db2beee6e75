"""float32 accuracy beside the peers: fastrnn, onnxruntime and torch in float32 against a float64
run, on the networks of tests/precision.py (integrating cell states, |c| in the hundreds; a
bidirectional peephole LSTM near saturation). tests/test_precision.py holds fastrnn to
onnxruntime's error there; this writes the figures side by side into the benchmark results.

Workload "precision": one group per network and figure, one case per engine. The figure
(extra_info "metric", lower is better, so the table's "fastrnn vs peer" above 1 means fastrnn's
error is the smaller) is the geometric mean over seeds 0-9 of the max abs error of the cell state
after 1000 steps (large cell) or of the output (peephole); each case's extra_info also has both
errors of every seed's network, in seed order (max_abs_error_y, max_abs_error_c). The timing is one
run of the ten networks and means nothing; nothing here asserts on time.
"""

import functools
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from precision import ENGINES, Case, max_errors, run_fastrnn  # noqa: E402

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

SEEDS = range(10)
NETWORKS = {
    "large_cell": ("lstm large cell T=1000 B=8 I=16 H=64", "c", 8),
    "peephole": ("lstm peephole bidir L=2 T=1000 B=4 I=32 H=25", "y", 4),
}
FIGURE = {"y": 0, "c": 1}


@functools.lru_cache(maxsize=None)
def float64_run(case):
    return run_fastrnn(case, np.float64)


def run_networks(engine, cases):
    """[(y error, c error)] of `engine` on each case."""
    found = []
    for case in cases:
        y, c = ENGINES[engine](case)
        assert np.isfinite(y).all() and np.isfinite(c).all(), (engine, case)
        found.append(max_errors((y, c), float64_run(case)))
    return found


@pytest.mark.parametrize("engine", tuple(ENGINES))
@pytest.mark.parametrize("network", tuple(NETWORKS))
def test_precision(benchmark, network, engine):
    name, figure, batch = NETWORKS[network]
    cases = [Case(network, seed, steps=1000, batch=batch) for seed in SEEDS]
    for case in cases:
        float64_run(case)   # outside the timed call
    benchmark.group = f"precision {name}: max abs error of {figure}, geomean over seeds 0-9"
    found = benchmark.pedantic(run_networks, args=(engine, cases), rounds=1, iterations=1)
    values = [errors[FIGURE[figure]] for errors in found]
    benchmark.extra_info.update({
        "engine": engine, "correct": None, "workload": "precision", "precision": "fp32",
        **cases[0].info(), "seeds": list(SEEDS),
        "reference": "fastrnn float64 (tests/test_precision.py checks it against "
                     "tests/reference.py)",
        "max_abs_error_y": [errors[0] for errors in found],
        "max_abs_error_c": [errors[1] for errors in found],
        "metric": {"name": f"max abs error of {figure} against float64, geometric mean over "
                           "seeds 0-9",
                   "value": float(np.exp(np.mean(np.log(values)))), "unit": ""},
    })
