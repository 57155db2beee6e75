"""fastrnn.engine.numpy_step (a stream's first steps while its kernel compiles) and the switch to
the kernel in fastrnn.engine.table.

numpy_step.activate is held to the float64 reference of every ONNX activation; numpy_step.step to
step_block, the kernel it stands in for, on the same state table (every cell, both GRU
conventions, peepholes, projection, clip, input_forget, ONNX activations, stacked layers, slots
out of order); and a table that starts on numpy while a helper process runs ends on the kernel.
"""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn.engine import numpy_step, table as table_module
from fastrnn.engine.activations import ACTIVATION_CODES
from fastrnn.engine.driver import step_block, step_scratch_size
from fastrnn.engine.jit import call

import reference

GRID = np.concatenate([np.linspace(-30, 30, 241), [-1e-20, 0.0, 1e-20, np.inf, -np.inf, np.nan]])
ALPHA_BETA = {"Affine": (0.7, -0.2), "LeakyRelu": (0.05, 0.0), "ThresholdedRelu": (0.4, 0.0),
              "ScaledTanh": (1.3, 0.6), "HardSigmoid": (0.25, 0.4), "Elu": (0.9, 0.0)}


@pytest.mark.parametrize("name", sorted(ACTIVATION_CODES))
def test_activate_matches_the_reference(name):
    alpha, beta = ALPHA_BETA.get(name, (0.0, 0.0))
    got = numpy_step.activate(GRID, ACTIVATION_CODES[name], alpha, beta)
    expected = reference.activation(name, GRID, alpha, beta)
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-300)


def layers(rng, kind, count, inputs, hidden, *, peephole=False, proj=0):
    gates = {"lstm": 4, "gru": 3}.get(kind, 1)
    output = proj or hidden
    result = []
    for layer in range(count):
        w = {"w_ih": rng.standard_normal((gates * hidden, inputs if layer == 0 else output)) * .5,
             "w_hh": rng.standard_normal((gates * hidden, output)) * .5,
             "b_ih": rng.standard_normal(gates * hidden) * .3,
             "b_hh": rng.standard_normal(gates * hidden) * .3}
        if peephole:
            w["peephole"] = rng.standard_normal((3, hidden)) * .3
        if proj:
            w["w_proj"] = rng.standard_normal((proj, hidden)) * .5
        result.append(w)
    return result


MODELS = {
    "lstm": lambda rng: ("lstm", layers(rng, "lstm", 2, 3, 5), {}),
    "lstm_peephole_proj_clip": lambda rng: (
        "lstm", layers(rng, "lstm", 1, 3, 5, peephole=True, proj=4), {"clip": 0.8}),
    "lstm_input_forget_onnx_activations": lambda rng: (
        "lstm", layers(rng, "lstm", 1, 3, 5), {"input_forget": True, "activations": (
            ("HardSigmoid", 0.25, 0.4), ("Softsign", 0, 0), ("ScaledTanh", 1.3, 0.6))}),
    "gru": lambda rng: ("gru", layers(rng, "gru", 2, 3, 5), {}),
    "gru_reset_before_product": lambda rng: (
        "gru", layers(rng, "gru", 1, 3, 5), {"linear_before_reset": False, "clip": 1.0}),
    "rnn_relu": lambda rng: ("rnn_relu", layers(rng, "rnn_relu", 2, 3, 5), {}),
    "rnn_elu": lambda rng: ("rnn_tanh", layers(rng, "rnn_tanh", 1, 3, 5),
                            {"activations": (("Elu", 0.9, 0.0),)}),
}


@pytest.mark.parametrize("case", sorted(MODELS))
def test_step_matches_step_block(case, dtype, tolerance):
    rng = np.random.default_rng(5)
    kind, weights, options = MODELS[case](rng)
    model = fastrnn.from_numpy(kind, weights, dtype=dtype, **options)
    plan, config = model.plan, model.config
    capacity, slots = 6, np.array([4, 1, 3], np.int64)
    h = rng.standard_normal((config.num_layers, capacity, config.output_size)).astype(dtype)
    c = (rng.standard_normal((config.num_layers, capacity, config.hidden_size)).astype(dtype)
         if kind == "lstm" else np.zeros((config.num_layers, capacity, 0), dtype))
    scratch = np.empty(step_scratch_size(plan, len(slots)), dtype)
    states = {"numpy": (h.copy(), c.copy()), "kernel": (h.copy(), c.copy())}
    ys = {name: [] for name in states}
    for _ in range(4):
        x = rng.standard_normal((len(slots), config.input_size)).astype(dtype)
        for name, function in (("numpy", numpy_step.step), ("kernel", step_block)):
            y = np.full((len(slots), config.output_size), np.nan, dtype)
            state_h, state_c = states[name]
            arguments = (plan.weights, plan.layout, plan.parameters, slots, state_h, state_c,
                         scratch, 0, len(slots), x, y)
            function(*arguments) if name == "numpy" else call(function, *arguments)
            ys[name].append(y)
    np.testing.assert_allclose(np.array(ys["numpy"]), np.array(ys["kernel"]), rtol=0,
                               atol=tolerance)
    for got, expected in zip(states["numpy"], states["kernel"]):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance)
    untouched = [0, 2, 5]   # slots the steps did not name keep their state
    np.testing.assert_array_equal(states["numpy"][0][:, untouched], h[:, untouched])


class ControlledHelper(table_module._Helper):
    """The helper, with a process that ends when the test says instead of the compile."""

    def __init__(self):
        self.process = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                        stdin=subprocess.PIPE)
        self.started = 0.0
        self.pid = os.getpid()

    def finish(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


def test_a_stream_steps_on_numpy_until_its_helper_is_done_then_on_the_kernel(monkeypatch,
                                                                            caplog):
    rng = np.random.default_rng(7)
    model = fastrnn.from_numpy("lstm", layers(rng, "lstm", 2, 3, 5), dtype=np.float32)
    xs = rng.standard_normal((6, 1, 3)).astype(np.float32)
    waiting = model.stream()
    expected = np.array([waiting.step(x) for x in xs])
    helper = ControlledHelper()
    monkeypatch.setenv("FASTRNN_COMPILE", "background")
    monkeypatch.setattr(table_module, "load_cached", lambda kernel, arguments: None)
    monkeypatch.setattr(table_module, "_helper", lambda dtype: helper)
    try:
        stream = model.stream()
        steps = [stream.step(x) for x in xs[:3]]
        assert stream._table._serial == stream._table._first_steps   # on numpy so far
        helper.finish()
        monkeypatch.undo()   # the kernel is compiled in this process: loaded, not compiled
        with caplog.at_level(logging.INFO, logger="fastrnn"):
            steps += [stream.step(x) for x in xs[3:]]
    finally:
        if helper.process.poll() is None:
            helper.finish()
    assert stream._table._helper is None and stream._table._serial != stream._table._first_steps
    assert any("step_block ready" in record.message for record in caplog.records)
    np.testing.assert_allclose(np.array(steps), expected, rtol=0, atol=3e-5)


def test_compile_mode_is_checked(monkeypatch):
    monkeypatch.setenv("FASTRNN_COMPILE", "later")
    model = fastrnn.from_numpy("rnn_tanh", layers(np.random.default_rng(0), "rnn_tanh", 1, 2, 3))
    with pytest.raises(ValueError, match="FASTRNN_COMPILE must be one of background, wait"):
        model.stream()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_child_forked_while_the_helper_runs_steps_on_the_kernel(monkeypatch):
    """The child cannot wait for its parent's helper: it takes the kernel at its next step (here
    compiled in the process already), while the parent stays on numpy until the helper ends."""
    rng = np.random.default_rng(8)
    model = fastrnn.from_numpy("gru", layers(rng, "gru", 1, 3, 5), dtype=np.float32)
    x = rng.standard_normal((1, 3)).astype(np.float32)
    waiting = model.stream()
    expected = [waiting.step(x).copy() for _ in range(2)]
    helper = ControlledHelper()
    monkeypatch.setattr(table_module, "load_cached", lambda kernel, arguments: None)
    monkeypatch.setattr(table_module, "_helper", lambda dtype: helper)
    monkeypatch.setenv("FASTRNN_COMPILE", "background")
    try:
        stream = model.stream()
        first = stream.step(x)
        monkeypatch.undo()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:   # the child: report whether it moved to the kernel, and its answer
            try:
                y = stream.step(x)
                moved = stream._table._serial != stream._table._first_steps
                os.write(write, np.array([moved, *y.ravel()], np.float64).tobytes())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            report = np.frombuffer(pipe.read(), np.float64)
        os.waitpid(pid, 0)
        assert stream._table._serial == stream._table._first_steps   # the parent still waits
    finally:
        helper.finish()
    assert report[0] == 1.0
    np.testing.assert_allclose(first, expected[0], rtol=0, atol=3e-5)
    np.testing.assert_allclose(report[1:], expected[1].ravel(), rtol=0, atol=3e-5)
