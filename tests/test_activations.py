"""The activation kernel against exact float64 functions: the float32 fast tanh/sigmoid error bound
stated in fastrnn/engine/activations.py, float64 exactness, the ONNX set with alpha/beta, the edges
(+-0, +-inf, NaN, float32's extremes and subnormals), and the grid of every code and parameter
set that tests/cuda/test_cuda_activations.py also runs on the CUDA device function."""

import numpy as np
import pytest

import reference
from fastrnn.engine.activations import (_SIGMOID_CLAMP, _TANH_CLAMP, _TANH_SMALL,
                                        ACTIVATION_CODES, DEFAULT_ALPHA_BETA, activate)

# The bounds fastrnn/engine/activations.py states for its float32 approximations: in units in the
# last place of the exact result (an exhaustive run over every float32 found 1.232 and 2.402 at
# most), and absolute (7.34e-8 and 7.09e-8).
TANH_ULP_FLOAT32 = 1.25
SIGMOID_ULP_FLOAT32 = 2.45
TANH_BOUND_FLOAT32 = 7.5e-8
SIGMOID_BOUND_FLOAT32 = 7.5e-8
# float64 is computed with the exact functions (libm): a few units in the last place at most.
FLOAT64_BOUND = 1e-15

SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 4e-4, -4e-4, 7.90531110763549805,
                    -7.90531110763549805, 30.0, 88.8, -88.8, 1e-45, -1e-45, 1.1754944e-38,
                    3.4028235e38, -3.4028235e38])


def float32_grid():
    """Every 997th positive float32 up to +inf (all magnitudes, subnormals included); every
    seventh float32 in [0.5, 10), where the approximations' errors peak (the exhaustive run found
    the worst at |x| = 0.9005 for tanh, x = 0.678 and -4.157 for sigmoid); their negatives; the
    special values."""
    sparse = np.arange(0, 0x7F800000, 997, dtype=np.uint32).view(np.float32)
    start, stop = np.array([0.5, 10.0], np.float32).view(np.uint32)
    dense = np.arange(start, stop, 7, dtype=np.uint32).view(np.float32)
    positive = np.concatenate([sparse, dense])
    return np.concatenate([positive, -positive, SPECIAL.astype(np.float32)])


def ulp(values):
    """float32's unit in the last place at each |value| (float64 array): 2^(e - 23) for a value
    in [2^e, 2^(e+1)), and the subnormals' spacing 2^-149 below 2^-126."""
    magnitude = np.abs(np.asarray(values, np.float64))
    with np.errstate(divide="ignore"):
        exponent = np.floor(np.log2(np.maximum(magnitude, 2.0 ** -126)))
    return np.where(magnitude < 2.0 ** -126, 2.0 ** -149, 2.0 ** (exponent - 23))


@pytest.fixture(scope="module")
def grid32():
    return float32_grid()


def run_activation(name, values, alpha=0.0, beta=0.0):
    out = np.array(values, copy=True)
    activate(out, 0, out.size, ACTIVATION_CODES[name], alpha, beta)
    return out


@pytest.mark.parametrize("name, ulps, bound", [
    ("Tanh", TANH_ULP_FLOAT32, TANH_BOUND_FLOAT32),
    ("Sigmoid", SIGMOID_ULP_FLOAT32, SIGMOID_BOUND_FLOAT32)])
def test_float32_fast_activation_within_stated_bound(grid32, name, ulps, bound):
    result = run_activation(name, grid32)
    assert result.dtype == np.float32
    exact = reference.activation(name, grid32.astype(np.float64))
    finite = ~np.isnan(grid32)
    x, exact = grid32[finite], exact[finite]
    error = np.abs(result[finite].astype(np.float64) - exact)
    assert error.max() <= bound, (name, error.max(), x[np.argmax(error)])
    # Relative: within `ulps` of the exact result, down to where it leaves float32's normal
    # range (sigmoid below x = -87.3): there within the smallest normal number.
    normal = np.abs(exact) >= 2.0 ** -126
    in_ulps = error[normal] / ulp(exact[normal])
    assert in_ulps.max() <= ulps, (name, in_ulps.max(), x[normal][np.argmax(in_ulps)])
    assert error[~normal].max(initial=0.0) < 2.0 ** -126
    # The bounds are not loose either: they are what the grid actually reaches.
    assert error.max() > bound / 2 and in_ulps.max() > ulps * 0.75
    assert np.isnan(result[~finite]).all()


@pytest.mark.parametrize("name", ["Tanh", "Sigmoid"])
def test_float32_fast_activation_shape_of_the_function(name):
    """Symmetry and range, which a sign or clamp slip could break while staying near the function:
    tanh odd, sigmoid point-symmetric about (0, 1/2), both inside their ranges, increasing except
    for steps back of one unit in the last place (the exhaustive run's largest)."""
    x = np.linspace(-12.0, 12.0, 200_001, dtype=np.float32)
    y = run_activation(name, x).astype(np.float64)
    assert (np.diff(y) >= -ulp(y[1:])).all()
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


# The grid: every activation code, with ONNX's defaults and other alpha/beta, on finite values,
# +-inf and NaN, against the float64 reference. tests/cuda/test_cuda_activations.py runs the same
# cases on the CUDA device function and compares it with the CPU results below.

# ONNX's defaults for every code, then: a negative alpha and one above 1 (the infinities flip, a
# product overflows), alphas float32 cannot hold (float32(0.3) is above 0.3, at ThresholdedRelu's
# jump), a beta the operator does not use, and a zero parameter, where the formula is 0 * inf at
# +-inf and so NaN.
GRID_CASES = [(name, *DEFAULT_ALPHA_BETA.get(name, (0.0, 0.0))) for name in ACTIVATION_CODES] + [
    ("Affine", -1.7, 0.3), ("Affine", 0.0, 0.25),
    ("LeakyRelu", 0.3, 0.5), ("LeakyRelu", 0.0, 0.0),
    ("ThresholdedRelu", 0.3, 0.5), ("ThresholdedRelu", -0.35, 0.0),
    ("ScaledTanh", 1.6, 0.45), ("ScaledTanh", 0.9, 0.0),
    ("HardSigmoid", 1.3, -0.2), ("HardSigmoid", 0.0, 0.6),
    ("Elu", 2.5, 0.5),
]

# Relative error allowed where no approximation is stated: 4 units in the last place.
GRID_RTOL = {np.dtype(np.float32): 2.0 ** -21, np.dtype(np.float64): 2.0 ** -50}


def grid_kinks():
    """Where the activations or their implementations change form, both signs: the kinks and
    clamps of every case, the float32 tanh's clamp and the end of its polynomial, the float32
    sigmoid's clamp, where exp overflows, leaves the normal range and underflows in each dtype,
    and the old CUDA Softplus's linear cut at 30 (float64 lost e^-x there, up to about 37)."""
    points = [0.0, 1.0, 4e-4, float(_TANH_SMALL), float(_TANH_CLAMP), float(_SIGMOID_CLAMP),
              30.0, 36.0]
    for dtype in (np.float32, np.float64):
        info = np.finfo(dtype)
        points += [float(np.log(info.max)), -float(np.log(info.tiny)),
                   -float(np.log(info.smallest_subnormal))]
    for name, alpha, beta in GRID_CASES:
        if name == "ThresholdedRelu":
            points.append(alpha)
        if name in ("Affine", "HardSigmoid") and alpha != 0:
            points += [-beta / alpha, (1 - beta) / alpha]
        if name == "ScaledTanh" and beta != 0:
            points += [float(_TANH_CLAMP) / beta, float(_TANH_SMALL) / beta]
    points = np.array(points)
    return np.concatenate([points, -points])


def grid_values(dtype):
    """Zero, subnormals, every few decades up to the dtype's largest and a step of 0.25 over
    [0, 40], both signs; each kink with its three neighbours either side and points 1e-6, 1e-3 and
    0.1 away (relative above 1); then +inf, -inf, NaN. About 1000 values: the CUDA simulator
    takes ~0.1 ms a value and case."""
    info = np.finfo(dtype)
    with np.errstate(over="ignore"):
        kinks = grid_kinks().astype(dtype)
    kinks = kinks[np.isfinite(kinks)]
    near = [kinks]
    up = down = kinks
    for _ in range(3):
        up, down = np.nextafter(up, dtype(np.inf)), np.nextafter(down, dtype(-np.inf))
        near += [up, down]
    for offset in (1e-6, 1e-3, 0.1):
        step = offset * np.maximum(1.0, np.abs(kinks.astype(np.float64)))
        near += [(kinks + step).astype(dtype), (kinks - step).astype(dtype)]
    magnitudes = np.concatenate([
        [0.0, info.smallest_subnormal, 3 * info.smallest_subnormal, info.tiny, info.max],
        np.geomspace(info.tiny, info.max / 4, 61),
        np.linspace(0.0, 40.0, 161)]).astype(dtype)
    finite = np.concatenate([magnitudes, -magnitudes, *near]).astype(dtype)
    return np.concatenate([np.unique(finite), np.array([np.inf, -np.inf, np.nan], dtype)])


def grid_bound(side, dtype, name, alpha, beta, x, exact):
    """The error allowed for each result: GRID_RTOL relative to the result, or to the terms that
    cancel in alpha * x + beta (Affine, HardSigmoid before its clamps), or the float32 CPU
    tanh/sigmoid's stated bound in units in the last place; absolute below the smallest normal
    number."""
    dtype = np.dtype(dtype)
    if side == "cpu" and dtype == np.float32 and name in ("Tanh", "Sigmoid"):
        ulps = TANH_ULP_FLOAT32 if name == "Tanh" else SIGMOID_ULP_FLOAT32
        return np.finfo(dtype).tiny + ulps * ulp(exact)
    scale = np.abs(exact)
    with np.errstate(invalid="ignore", over="ignore"):
        if name == "Affine":
            scale = np.abs(alpha * x) + abs(beta)
        elif name == "HardSigmoid":  # outputs in [0, 1]: up to 1 + 2|beta| cancels at the clamps
            scale = np.maximum(scale, 1 + 2 * abs(beta))
    bound = np.finfo(dtype).tiny + GRID_RTOL[dtype] * scale
    if side == "cpu" and dtype == np.float32 and name == "ScaledTanh":
        bound = bound + abs(alpha) * TANH_BOUND_FLOAT32
    return bound


def grid_failures(side, values, results):
    """One line per wrong result (at most 4 per case): NaN in -> NaN out; NaN out only where the
    reference is NaN (a zero parameter times an infinity); infinities and overflows exactly the
    reference's; where the reference returns the input, exactly the input (tiny and subnormal
    inputs pass through unrounded); elsewhere within grid_bound."""
    dtype = values.dtype
    x = values.astype(np.float64)
    failures = []
    for case, (name, alpha, beta) in enumerate(GRID_CASES):
        got = results[case].astype(np.float64)
        exact = reference.activation(name, x, alpha, beta)
        with np.errstate(over="ignore"):
            rounded = exact.astype(dtype).astype(np.float64)
        bound = grid_bound(side, dtype, name, alpha, beta, x, exact)
        with np.errstate(invalid="ignore"):
            error = np.abs(got - exact)
        correct = np.where(np.isnan(exact), np.isnan(got),
                           np.where(np.isinf(rounded), got == rounded, error <= bound))
        correct &= (exact != x) | (got == x)
        for j in np.flatnonzero(~correct)[:4]:
            failures.append(f"{side} {dtype}: {name}(alpha={alpha}, beta={beta}) of {values[j]!r}"
                            f" = {results[case][j]!r}, reference {exact[j]!r}"
                            f" (error {error[j]:.3g}, bound {bound[j]:.3g})")
    return failures


def run_cpu_grid(values):
    """Every case of GRID_CASES by the CPU kernel: one compilation per dtype, one call per case."""
    results = np.empty((len(GRID_CASES), values.size), values.dtype)
    for case, (name, alpha, beta) in enumerate(GRID_CASES):
        results[case] = values
        activate(results[case], 0, values.size, ACTIVATION_CODES[name], alpha, beta)
    return results


def test_grid_covers_every_code_with_defaults_and_other_parameters():
    names = [name for name, _, _ in GRID_CASES]
    assert set(names) == set(ACTIVATION_CODES)
    for name in DEFAULT_ALPHA_BETA:
        assert names.count(name) >= 2, name


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_activation_grid_on_the_cpu(dtype):
    values = grid_values(dtype)
    failures = grid_failures("cpu", values, run_cpu_grid(values))
    assert not failures, "\n".join(failures)
