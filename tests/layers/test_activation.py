"""fastrnn.layers.activation against torch's activation modules."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from fastrnn.layers import ACTIVATIONS, Activation

FEATURES = 6
SLOPES = np.linspace(-0.5, 0.5, FEATURES)

CASES = {  # name -> (torch module, fastrnn keyword arguments)
    "relu": (nn.ReLU(), {}),
    "leaky_relu": (nn.LeakyReLU(0.2), {"negative_slope": 0.2}),
    "prelu": (nn.PReLU(FEATURES), {"slopes": SLOPES}),
    "elu": (nn.ELU(0.7), {"alpha": 0.7}),
    "gelu": (nn.GELU(), {}),
    "gelu_tanh": (nn.GELU(approximate="tanh"), {}),
    "silu": (nn.SiLU(), {}),
    "tanh": (nn.Tanh(), {}),
    "sigmoid": (nn.Sigmoid(), {}),
    "softmax": (nn.Softmax(dim=-1), {}),
    "hardtanh": (nn.Hardtanh(-0.5, 1.5), {"min_val": -0.5, "max_val": 1.5}),
}


def test_every_activation_has_a_case():
    assert set(CASES) == set(ACTIVATIONS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_activation_matches_torch(name, dtype, tolerance, rng):
    module, keywords = CASES[name]
    module = module.to(torch.float64 if dtype == np.float64 else torch.float32)
    if name == "prelu":
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(SLOPES))
    layer = Activation(name, FEATURES, dtype=dtype, **keywords)
    # Wide values (exp overflows past 88 in float32), zeros and both signs.
    x = (rng.standard_normal((5, 3, FEATURES)) * 4).astype(dtype)
    x[0, 0, :3] = (0.0, 95.0, -95.0)
    t = torch.from_numpy(x).permute(1, 2, 0) if name == "prelu" else torch.from_numpy(x)
    with torch.no_grad():
        expected = module(t)
    expected = (expected.permute(2, 0, 1) if name == "prelu" else expected).numpy()
    y = layer.sequence(x)
    np.testing.assert_allclose(y, expected, rtol=0, atol=tolerance)
    out = np.empty((3, FEATURES), dtype)
    layer.step_into(x[2], out)
    np.testing.assert_allclose(out, y[2], rtol=0, atol=1e-6)


def test_bad_activation_arguments():
    with pytest.raises(ValueError, match="activation must be one of"):
        Activation("swish", 3)
    with pytest.raises(ValueError, match=r"elu takes \['alpha'\]"):
        Activation("elu", 3, beta=1.0)
    with pytest.raises(ValueError, match="prelu takes 1 or 3 slopes"):
        Activation("prelu", 3, slopes=[0.1, 0.2])
    with pytest.raises(ValueError, match="only prelu takes slopes"):
        Activation("relu", 3, slopes=[0.1])
