"""fastrnn.layers.linear against torch.nn.Linear."""

import numpy as np
import pytest
import torch

from fastrnn.layers import Linear


def test_linear_matches_torch_on_sequences_and_steps(dtype, tolerance, rng):
    torch.manual_seed(0)
    module = torch.nn.Linear(5, 3).to(torch.float64 if dtype == np.float64 else torch.float32)
    layer = Linear(module.weight.detach().numpy(), module.bias.detach().numpy(), dtype=dtype)
    x = rng.standard_normal((7, 2, 5)).astype(dtype)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    y = layer.sequence(x)
    assert y.dtype == dtype and y.shape == (7, 2, 3)
    np.testing.assert_allclose(y, expected, rtol=0, atol=tolerance)
    out = np.empty((2, 3), dtype)
    for t in range(7):
        layer.step_into(x[t], out)
        np.testing.assert_allclose(out, y[t], rtol=0, atol=1e-6)


def test_linear_without_bias_and_bad_shapes(rng):
    weight = rng.standard_normal((3, 4))
    layer = Linear(weight, None, dtype=np.float64)
    x = rng.standard_normal((2, 1, 4))
    np.testing.assert_allclose(layer.sequence(x), x @ weight.T, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"Linear weight must be \(C_out, C_in\)"):
        Linear(np.zeros(3))
    with pytest.raises(ValueError, match=r"Linear bias must have shape \(3,\)"):
        Linear(weight, np.zeros(4))
    with pytest.raises(ValueError, match="float32 or float64"):
        Linear(weight, dtype=np.int32)
