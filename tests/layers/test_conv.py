"""fastrnn.layers.conv against torch.nn.Conv1d: whole sequences with any padding, causal streams."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastrnn.layers import Conv1d

CASES = [  # (C_in, C_out, K, dilation, groups)
    (3, 4, 3, 1, 1),
    (4, 6, 2, 3, 2),
    (4, 4, 5, 2, 4),   # depthwise
    (2, 3, 1, 1, 1),   # one tap: no history
]


def torch_dtype(dtype):
    return torch.float64 if dtype == np.float64 else torch.float32


def make(case, dtype, padding):
    inputs, outputs, taps, dilation, groups = case
    torch.manual_seed(sum(case))
    module = torch.nn.Conv1d(inputs, outputs, taps, dilation=dilation, groups=groups).to(
        torch_dtype(dtype))
    layer = Conv1d(module.weight.detach().numpy(), module.bias.detach().numpy(),
                   dilation=dilation, groups=groups, padding=padding, dtype=dtype)
    return module, layer


def torch_run(module, x, padding):
    """module over time-major x (T, B, C) with zeros (left, right) added: (T', B, C_out)."""
    with torch.no_grad():
        bct = torch.from_numpy(x).permute(1, 2, 0)
        return module(F.pad(bct, padding)).permute(2, 0, 1).numpy()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_causal_conv_matches_torch_and_streams(case, dtype, tolerance, rng):
    inputs, _, taps, dilation, _ = case
    history = (taps - 1) * dilation
    module, layer = make(case, dtype, None)
    assert layer.padding == (history, 0) and layer.stream_refusal() is None
    x = rng.standard_normal((13, 2, inputs)).astype(dtype)
    y = layer.sequence(x)
    np.testing.assert_allclose(y, torch_run(module, x, (history, 0)), rtol=0, atol=tolerance)
    table = layer.table(2)
    out = np.empty((2, layer.out_features), dtype)
    for t in range(6):
        table.step(x[t], out)
        np.testing.assert_allclose(out, y[t], rtol=0, atol=1e-6)
    np.testing.assert_allclose(table.chunk(x[6:]), y[6:], rtol=0, atol=1e-6)
    table.reset()
    np.testing.assert_allclose(table.chunk(x), y, rtol=0, atol=1e-6)


@pytest.mark.parametrize("padding", [(1, 1), (0, 0), (3, 2), (0, 4)], ids=str)
def test_any_padding_matches_torch_on_whole_sequences(padding, rng):
    case = (4, 6, 2, 3, 2)
    module, layer = make(case, np.float64, padding)
    x = rng.standard_normal((9, 3, 4))
    y = layer.sequence(x)
    assert y.shape[0] == layer.output_steps(9) == 9 + sum(padding) - 3
    np.testing.assert_allclose(y, torch_run(module, x, padding), rtol=0, atol=1e-9)


def test_state_is_the_last_inputs_oldest_first(rng):
    _, layer = make((3, 4, 3, 2, 1), np.float64, None)   # history (3 - 1) * 2 = 4
    x = rng.standard_normal((7, 1, 3))
    table = layer.table(1)
    table.chunk(x)
    (state,) = table.state()
    np.testing.assert_array_equal(state[0], x[3:, 0])
    other = layer.table(1)
    other.load([state])
    np.testing.assert_allclose(other.chunk(x[:2]), table.chunk(x[:2]), rtol=0, atol=0)


def test_look_ahead_and_short_convs_are_refused_for_streaming():
    _, same = make((3, 4, 3, 1, 1), np.float64, (1, 1))
    assert "looks ahead" in same.stream_refusal() and "right" in same.stream_refusal()
    _, valid = make((3, 4, 3, 1, 1), np.float64, (0, 0))
    assert "fewer outputs than inputs" in valid.stream_refusal()
    with pytest.raises(ValueError, match="needs at least 3 steps"):
        valid.sequence(np.zeros((2, 1, 3)))
    with pytest.raises(ValueError, match="not divisible by groups"):
        Conv1d(np.zeros((3, 1, 2)), groups=2)
