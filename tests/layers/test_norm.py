"""fastrnn.layers.norm: LayerNorm against torch, BatchNorm1d folded at load against torch in eval mode."""

import numpy as np
import pytest
import torch
import torch.nn as nn

import fastrnn
from fastrnn.layers import Affine, Conv1d, LayerNorm, Linear


def torch_dtype(dtype):
    return torch.float64 if dtype == np.float64 else torch.float32


def test_layer_norm_matches_torch(dtype, tolerance, rng):
    torch.manual_seed(3)
    module = nn.LayerNorm(5, eps=1e-3).to(torch_dtype(dtype))
    with torch.no_grad():
        module.weight.normal_()
        module.bias.normal_()
    layer = LayerNorm(5, module.weight.detach().numpy(), module.bias.detach().numpy(), eps=1e-3,
                      dtype=dtype)
    x = (rng.standard_normal((6, 2, 5)) * 3 + 1).astype(dtype)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    y = layer.sequence(x)
    np.testing.assert_allclose(y, expected, rtol=0, atol=tolerance)
    out = np.empty((2, 5), dtype)
    layer.step_into(x[4], out)
    np.testing.assert_allclose(out, y[4], rtol=0, atol=1e-6)


def batch_norm(channels, dtype, seed):
    torch.manual_seed(seed)
    module = nn.BatchNorm1d(channels).to(torch_dtype(dtype))
    with torch.no_grad():
        module.running_mean.normal_()
        module.running_var.uniform_(0.3, 3.0)
        module.weight.normal_()
        module.bias.normal_()
    return module


def converted(sequential, x):
    sequential = sequential.eval()
    chain = fastrnn.from_torch(sequential)
    with torch.no_grad():
        expected = sequential(torch.from_numpy(x)).numpy()
    return chain, chain(x), expected


@pytest.mark.parametrize("where", ["after conv", "before linear-like conv", "before padded conv",
                                   "alone"])
def test_batch_norm_is_folded_into_a_neighbour_and_matches_torch(where, dtype, tolerance, rng):
    td = torch_dtype(dtype)
    torch.manual_seed(4)
    conv = nn.Conv1d(3, 4, 3, padding=0).to(td)
    padded = nn.Conv1d(3, 4, 3, padding=1).to(td)
    modules, kinds = {
        "after conv": ([conv, batch_norm(4, dtype, 1), nn.ReLU()], [Conv1d]),
        "before linear-like conv": ([batch_norm(3, dtype, 2), conv], [Conv1d]),
        "before padded conv": ([batch_norm(3, dtype, 3), padded], [Affine, Conv1d]),
        "alone": ([batch_norm(3, dtype, 5)], [Affine]),
    }[where]
    x = rng.standard_normal((2, 3, 9)).astype(dtype)
    chain, y, expected = converted(nn.Sequential(*modules), x)
    assert [type(layer) for layer in chain.layers if not type(layer).__name__ == "Activation"] \
        == kinds
    assert chain.input_layout == "BCT"
    np.testing.assert_allclose(y, expected, rtol=0, atol=tolerance)


def test_affine_matches_its_equation(rng):
    layer = Affine.from_batch_norm(np.array([1.0, -2.0]), np.array([4.0, 0.25]),
                                   np.array([2.0, 1.0]), np.array([0.5, 0.0]), 0.0,
                                   dtype=np.float64)
    x = rng.standard_normal((3, 2, 2))
    expected = (x - [1.0, -2.0]) / np.sqrt([4.0, 0.25]) * [2.0, 1.0] + [0.5, 0.0]
    np.testing.assert_allclose(layer.sequence(x), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="LayerNorm weight must have shape"):
        LayerNorm(3, np.ones(4))
    assert isinstance(Linear(np.eye(2)), Linear)
