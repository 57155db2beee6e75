"""fastrnn.layers.recurrent: a fastrnn.Model inside a chain, against torch, streamed."""

import numpy as np
import pytest
import torch

import fastrnn
from fastrnn.layers import Recurrent


@pytest.mark.parametrize("cls", [torch.nn.LSTM, torch.nn.GRU])
def test_recurrent_layer_matches_torch_and_streams(cls, dtype, tolerance, rng):
    torch.manual_seed(5)
    module = cls(3, 4, num_layers=2, batch_first=True)
    module = module.double() if dtype == np.float64 else module
    layer = Recurrent(fastrnn.from_torch(module))
    assert not layer.model.config.batch_first and layer.out_features == 4
    x = rng.standard_normal((8, 2, 3)).astype(dtype)   # time-major, as inside every chain
    with torch.no_grad():
        expected = module(torch.from_numpy(x).transpose(0, 1))[0].transpose(0, 1).numpy()
    y = layer.sequence(x)
    np.testing.assert_allclose(y, expected, rtol=0, atol=tolerance)
    table = layer.table(2)
    out = np.empty((2, 4), dtype)
    for t in range(3):
        table.step(np.ascontiguousarray(x[t]), out)
        np.testing.assert_allclose(out, y[t], rtol=0, atol=1e-6)
    np.testing.assert_allclose(table.chunk(x[3:]), y[3:], rtol=0, atol=1e-6)
    state = table.state()
    table.reset()
    table.load(state)
    assert all(np.array_equal(a, b) for a, b in zip(table.state(), state))


def test_bidirectional_layer_is_refused_for_streaming():
    layer = Recurrent(fastrnn.from_torch(torch.nn.GRU(3, 4, bidirectional=True)))
    assert "bidirectional" in layer.stream_refusal()
    with pytest.raises(TypeError, match="wraps a fastrnn.Model"):
        Recurrent(torch.nn.GRU(3, 4))


def test_initial_state_is_where_sequences_streams_and_resets_start(rng):
    torch.manual_seed(6)
    module = torch.nn.GRU(3, 4, num_layers=2)
    h0 = rng.standard_normal((2, 4)).astype(np.float32)
    layer = Recurrent(fastrnn.from_torch(module), initial_state=(h0, None))
    x = rng.standard_normal((6, 2, 3)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x), torch.from_numpy(np.repeat(h0[:, None], 2, 1)))[0]
    y = layer.sequence(x)
    np.testing.assert_allclose(y, expected.numpy(), rtol=0, atol=3e-5)
    table = layer.table(2)
    out = np.empty((2, 4), np.float32)
    for t in range(2):
        table.step(np.ascontiguousarray(x[t]), out)
    table.reset()   # back to h0, not to zeros
    np.testing.assert_allclose(table.chunk(x), y, rtol=0, atol=1e-6)
    assert "initial_h" in layer.weights() and layer.config()["initial_state"]
    with pytest.raises(ValueError, match="has no c0"):
        Recurrent(layer.model, initial_state=(h0, h0))
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 4\)"):
        Recurrent(layer.model, initial_state=(h0[0], None))
