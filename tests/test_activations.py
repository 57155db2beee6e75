"""The activation kernel against exact float64 functions: the float32 fast tanh/sigmoid error bound
stated in fastrnn/activations.py, float64 exactness, the ONNX set with alpha/beta, and the edges
(+-0, +-inf, NaN, float32's extremes and subnormals)."""

import numpy as np
import pytest

import reference
from fastrnn.engine.activations import ACTIVATION_CODES, activate

# The bounds fastrnn/activations.py states for its float32 approximations (absolute error).
TANH_BOUND_FLOAT32 = 3e-7
SIGMOID_BOUND_FLOAT32 = 1.7e-7
# float64 is computed with the exact functions (libm): a few units in the last place at most.
FLOAT64_BOUND = 1e-15

SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 4e-4, -4e-4, 7.90531110763549805,
                    -7.90531110763549805, 30.0, 88.8, -88.8, 1e-45, -1e-45, 1.1754944e-38,
                    3.4028235e38, -3.4028235e38])


def float32_grid():
    """Every 997th positive float32 up to +inf (all magnitudes, subnormals included); every third
    float32 in [2, 10), where the approximation's error peaks (an exhaustive search over |x| < 18
    found the worst near 5.13 for tanh, 8.0 for sigmoid); their negatives; the special values."""
    sparse = np.arange(0, 0x7F800000, 997, dtype=np.uint32).view(np.float32)
    start, stop = np.array([2.0, 10.0], np.float32).view(np.uint32)
    dense = np.arange(start, stop, 3, dtype=np.uint32).view(np.float32)
    positive = np.concatenate([sparse, dense])
    return np.concatenate([positive, -positive, SPECIAL.astype(np.float32)])


@pytest.fixture(scope="module")
def grid32():
    return float32_grid()


def run_activation(name, values, alpha=0.0, beta=0.0):
    out = np.array(values, copy=True)
    activate(out, 0, out.size, ACTIVATION_CODES[name], alpha, beta)
    return out


@pytest.mark.parametrize("name, bound", [("Tanh", TANH_BOUND_FLOAT32),
                                         ("Sigmoid", SIGMOID_BOUND_FLOAT32)])
def test_float32_fast_activation_within_stated_bound(grid32, name, bound):
    result = run_activation(name, grid32)
    assert result.dtype == np.float32
    exact = reference.activation(name, grid32.astype(np.float64))
    finite = ~np.isnan(grid32)
    error = np.abs(result[finite].astype(np.float64) - exact[finite])
    assert error.max() <= bound, (name, error.max(), grid32[finite][np.argmax(error)])
    # The bound is not loose by orders of magnitude either: it is what the grid actually reaches.
    assert error.max() > bound / 4
    assert np.isnan(result[~finite]).all()


@pytest.mark.parametrize("name", ["Tanh", "Sigmoid"])
def test_float32_fast_activation_shape_of_the_function(name):
    """Symmetry and range, which a sign or clamp slip could break while staying near the function:
    tanh odd, sigmoid point-symmetric about (0, 1/2), both inside their ranges, increasing except
    for steps back within the error bound."""
    bound = TANH_BOUND_FLOAT32 if name == "Tanh" else SIGMOID_BOUND_FLOAT32
    x = np.linspace(-12.0, 12.0, 200_001, dtype=np.float32)
    y = run_activation(name, x).astype(np.float64)
    assert np.diff(y).min() >= -2 * bound
    assert y[-1] - y[0] > (1.99 if name == "Tanh" else 0.99)
    if name == "Tanh":
        np.testing.assert_array_equal(y, -y[::-1])
        assert np.abs(y).max() <= 1.0
        # identity for tiny inputs keeps the sign of zero and subnormals exact
        tiny = np.array([1e-45, -1e-45, 1e-30, -3e-5, 0.0, -0.0], np.float32)
        np.testing.assert_array_equal(run_activation(name, tiny), tiny)
        assert np.signbit(run_activation(name, np.array([-0.0], np.float32))[0])
    else:
        np.testing.assert_allclose(y + y[::-1], 1.0, atol=2 * SIGMOID_BOUND_FLOAT32)
        assert y.min() >= 0.0 and y.max() <= 1.0


@pytest.mark.parametrize("name", ["Tanh", "Sigmoid"])
def test_float64_tanh_sigmoid_exact(name):
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.standard_normal(200_000) * 5, np.logspace(-300, 3, 20_000),
                        -np.logspace(-300, 3, 20_000), SPECIAL])
    result = run_activation(name, x)
    exact = reference.activation(name, x)
    finite = ~np.isnan(x)
    np.testing.assert_allclose(result[finite], exact[finite], rtol=FLOAT64_BOUND, atol=1e-300)
    assert np.isnan(result[~finite]).all()


# alpha, beta for each activation: away from the defaults, so that a swapped or ignored parameter
# changes the answer.
ALPHA_BETA = {
    "Relu": (0.0, 0.0), "Tanh": (0.0, 0.0), "Sigmoid": (0.0, 0.0), "Affine": (0.7, -0.3),
    "LeakyRelu": (0.07, 0.0), "ThresholdedRelu": (0.35, 0.0), "ScaledTanh": (1.6, 0.45),
    "HardSigmoid": (0.3, 0.4), "Elu": (0.8, 0.0), "Softsign": (0.0, 0.0), "Softplus": (0.0, 0.0),
}


def test_every_onnx_activation_is_covered():
    assert set(ALPHA_BETA) == set(ACTIVATION_CODES) == set(reference.ACTIVATION_NAMES)


@pytest.mark.parametrize("name", sorted(ALPHA_BETA))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_onnx_activation_matches_reference(name, dtype):
    alpha, beta = ALPHA_BETA[name]
    x = np.concatenate([np.linspace(-40, 40, 40_001), SPECIAL]).astype(dtype)
    result = run_activation(name, x, alpha, beta)
    assert result.dtype == dtype
    exact = reference.activation(name, x.astype(np.float64), alpha, beta)
    nan_in = np.isnan(x)
    assert np.isnan(result[nan_in]).all(), f"{name} must pass NaN through"
    # +-inf map to the function's limits, never to NaN
    infinite = np.isinf(x)
    assert not np.isnan(result[infinite]).any(), (name, x[infinite], result[infinite])
    tolerance = 4e-7 if dtype == np.float32 else 1e-15
    np.testing.assert_allclose(result[~nan_in], exact[~nan_in],
                               rtol=tolerance, atol=tolerance * 8)


def test_activation_touches_only_its_range():
    values = np.linspace(-3, 3, 20)
    out = values.copy()
    activate(out, 5, 12, ACTIVATION_CODES["Tanh"], 0.0, 0.0)
    np.testing.assert_array_equal(out[:5], values[:5])
    np.testing.assert_array_equal(out[12:], values[12:])
    np.testing.assert_allclose(out[5:12], np.tanh(values[5:12]), rtol=1e-15)
