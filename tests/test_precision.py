"""float32 accuracy where it shows (issue 14): fastrnn's float32 against a float64 run of the same
equations, held to onnxruntime's float32 error on the same inputs, on the networks of
tests/precision.py: LSTMs whose cell states integrate to |c| in the hundreds over 1000 steps, and
bidirectional peephole LSTMs near saturation. Ten seeded networks of each kind.

What was measured (these networks, seeds 0-9), fastrnn's max error over onnxruntime's:

    network      error                 before (rational tanh, f' * c rounded)   now
    large cell   c after 1000 steps    2.0 - 5.4                                0.31 - 0.65
    peephole     output y              1.7 - 27                                 0.11 - 1.58

The former activations were biased near saturation (by -0.9 ulp on average past |x| = 6, where
gates sit), and every step's bias stayed in c. The large-cell networks' c errors now sit near the
floor that float32 storage of c itself sets (half a unit in the last place of |c| ~ 600 each
step): fastrnn's is below onnxruntime's on every network, with no slack.

The peephole networks' largest output error is set by that same floor: their c errors are alike
in every engine (fastrnn over onnxruntime 0.29 - 1.06, torch 0.56 - 1.94), and reach the output
through the peephole of an output gate that crosses zero; which engine's rounding lands worse at
the one crossing that sets the maximum is chance (torch, with correctly rounded tanh, is 0.6 - 4.3
times onnxruntime's). So on these the test holds the geometric mean over the ten networks to no
more than onnxruntime's, and each network to twice onnxruntime's: the old activations fail both
(on nine networks of ten the second).
"""

import dataclasses
import functools

import numpy as np
import pytest

import reference
from precision import Case, max_errors, run_fastrnn, run_onnxruntime

pytest.importorskip("onnxruntime")

SEEDS = range(10)
LARGE_CELL = [Case("large_cell", seed, steps=1000, batch=8) for seed in SEEDS]
PEEPHOLE = [Case("peephole", seed, steps=1000, batch=4) for seed in SEEDS]
# Each peephole network's output error may be up to this many times onnxruntime's (see above).
PEEPHOLE_SLACK = 2.0


@functools.lru_cache(maxsize=None)
def float64_run(case):
    return run_fastrnn(case, np.float64)


@functools.lru_cache(maxsize=None)
def errors(case):
    """{"fastrnn": (y error, c error), "onnxruntime": (...)}, float32 against float64."""
    exact = float64_run(case)
    return {"fastrnn": max_errors(run_fastrnn(case, np.float32), exact),
            "onnxruntime": max_errors(run_onnxruntime(case), exact)}


@pytest.mark.parametrize("case", [LARGE_CELL[0], PEEPHOLE[0]], ids=["large_cell", "peephole"])
def test_float64_run_is_the_reference_equations(case):
    """The float64 answer the errors are taken against is the cell's equations: fastrnn's float64
    path agrees with tests/reference.py's numpy float64 over the whole sequence."""
    y, c = float64_run(case)
    ref_y, _, ref_c = reference.run_model("lstm", case.layers(), case.input(),
                                          bidirectional=case.bidirectional)
    np.testing.assert_allclose(y, ref_y, rtol=0, atol=1e-10)
    np.testing.assert_allclose(c, ref_c, rtol=0, atol=1e-12 * np.abs(ref_c).max())


@pytest.mark.parametrize("case", [LARGE_CELL[0], PEEPHOLE[0]], ids=["large_cell", "peephole"])
def test_onnx_graph_is_the_same_network(case):
    """The ONNX graph (gate and peephole orders permuted) runs the same network: over 20 steps,
    before errors have built up, onnxruntime is within float32's rounding of float64."""
    short = dataclasses.replace(case, steps=20)
    y_error, c_error = max_errors(run_onnxruntime(short), float64_run(short))
    assert y_error < 1e-6 and c_error < 1e-5, (y_error, c_error)


def test_large_cell_states_are_reached():
    """The regime the large-cell test is about: |c| in the hundreds after 1000 steps."""
    for case in LARGE_CELL:
        assert np.abs(float64_run(case)[1]).max() > 400, case


@pytest.mark.parametrize("case", LARGE_CELL, ids=lambda case: f"seed{case.seed}")
def test_large_cell_state_error_within_onnxruntime(case):
    found = errors(case)
    fastrnn_c, onnxruntime_c = found["fastrnn"][1], found["onnxruntime"][1]
    assert fastrnn_c <= onnxruntime_c, found


def test_large_cell_output_error_within_onnxruntime_over_the_networks():
    """The outputs of the large-cell networks, geometric mean of the ratio over the ten (per
    network it ranged 0.41 - 1.46: as on the peephole networks, the max is set at a single unit
    and step, where c passes near zero and tanh hands its error on whole)."""
    ratios = [errors(case)["fastrnn"][0] / errors(case)["onnxruntime"][0] for case in LARGE_CELL]
    assert np.exp(np.mean(np.log(ratios))) <= 1.0, ratios


def test_peephole_output_error_within_onnxruntime():
    ratios = [errors(case)["fastrnn"][0] / errors(case)["onnxruntime"][0] for case in PEEPHOLE]
    assert np.exp(np.mean(np.log(ratios))) <= 1.0, ratios
    assert max(ratios) <= PEEPHOLE_SLACK, ratios
