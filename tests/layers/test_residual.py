"""fastrnn.layers.residual: y = x + f(x) around a list of layers, whole and streamed."""

import numpy as np
import pytest

from fastrnn.layers import Activation, Conv1d, Linear, Residual


def test_residual_adds_its_input_and_streams(rng):
    conv = Conv1d(rng.standard_normal((3, 3, 2)), rng.standard_normal(3), dilation=2,
                  dtype=np.float64)
    inner = [conv, Activation("tanh", 3, dtype=np.float64)]
    layer = Residual(inner)
    x = rng.standard_normal((10, 2, 3))
    y = layer.sequence(x)
    np.testing.assert_allclose(y, x + np.tanh(conv.sequence(x)), rtol=0, atol=1e-12)
    table = layer.table(2)
    out = np.empty((2, 3))
    for t in range(4):
        table.step(np.ascontiguousarray(x[t]), out)
        np.testing.assert_allclose(out, y[t], rtol=0, atol=1e-9)
    state = table.state()
    assert [a.shape for a in state] == [(2, 2, 3)]
    np.testing.assert_allclose(table.chunk(x[4:]), y[4:], rtol=0, atol=1e-9)
    table.load(state)
    np.testing.assert_allclose(table.chunk(x[4:]), y[4:], rtol=0, atol=1e-9)


def test_residual_refusals(rng):
    with pytest.raises(ValueError, match="take 3 channels and give 2"):
        Residual([Linear(np.zeros((2, 3)), dtype=np.float64)])
    shrinking = Residual([Conv1d(np.zeros((3, 3, 3)), padding=(0, 0), dtype=np.float64)])
    with pytest.raises(ValueError, match="changes the number of steps"):
        shrinking.sequence(np.zeros((5, 1, 3)))
    looking_ahead = Residual([Conv1d(np.zeros((3, 3, 3)), padding=(1, 1), dtype=np.float64)])
    assert looking_ahead.stream_refusal().startswith("inner layer 0, ")
    assert "looks ahead" in looking_ahead.stream_refusal()
