"""Activation functions of the recurrent cells, by code, with ONNX's alpha/beta.

    Sigmoid(x)          = 1 / (1 + e^-x)
    Tanh(x)             = (1 - e^-2x) / (1 + e^-2x)
    Relu(x)             = max(0, x)
    Affine(x)           = alpha * x + beta
    LeakyRelu(x)        = x if x >= 0 else alpha * x
    ThresholdedRelu(x)  = x if x > alpha else 0
    ScaledTanh(x)       = alpha * Tanh(beta * x)
    HardSigmoid(x)      = min(max(alpha * x + beta, 0), 1)
    Elu(x)              = x if x >= 0 else alpha * (e^x - 1)
    Softsign(x)         = x / (1 + |x|)
    Softplus(x)         = log(1 + e^x)

Sigmoid and Tanh are the hot path of every cell. In float64 they are the exact functions (libm's
tanh and exp, within 2 units in the last place of numpy's). In float32 `tanh` is a rational
approximation (odd degree-13 numerator over even degree-6 denominator, clamped at |x| = 7.9053,
identity below |x| = 4e-4); sigmoid is derived from it as 0.5 + 0.5 * tanh(x / 2). Measured against
the exact function on every float32 with |x| < 18 (the output is constant beyond), the absolute
error is below 3e-7 for tanh (worst 2.92e-7, near |x| = 5.13, where the result's own float32
rounding is 3e-8) and below 1.7e-7 for sigmoid (worst 1.69e-7); tests/test_activations.py checks
both bounds on a dense grid. At that scale they are not monotone (near the clamp tanh steps back by
up to 3.6e-7). Unlike a call to libm the approximation vectorises, which is what makes small-model
steps fast. ScaledTanh is not on that path: alpha and beta are float64, so beta * x and its tanh
are computed in float64 (exact) even for a float32 array.

Every other activation is within 4 units in the last place of its exact value in both dtypes,
relative to the result, or to |alpha x| + |beta| where those cancel (Affine, HardSigmoid); Elu
goes through expm1, which keeps that near 0. NaN passes through every activation, and +-inf maps
to the function's limit, except where the formula multiplies the infinity by a zero parameter
(Affine, LeakyRelu or HardSigmoid with alpha = 0, ScaledTanh with beta = 0): there 0 * inf makes
it NaN. fastrnn.cuda.activations computes the same on the GPU; tests/test_activations.py and
tests/cuda/test_cuda_activations.py check both on one grid.
"""

import math

import numpy as np
from numba import types
from numba.extending import overload

from fastrnn.engine.jit import kernel

SIGMOID, TANH, RELU, AFFINE, LEAKY_RELU, THRESHOLDED_RELU, SCALED_TANH, HARD_SIGMOID, ELU, \
    SOFTSIGN, SOFTPLUS = range(11)

ACTIVATION_CODES = {
    "Sigmoid": SIGMOID, "Tanh": TANH, "Relu": RELU, "Affine": AFFINE, "LeakyRelu": LEAKY_RELU,
    "ThresholdedRelu": THRESHOLDED_RELU, "ScaledTanh": SCALED_TANH, "HardSigmoid": HARD_SIGMOID,
    "Elu": ELU, "Softsign": SOFTSIGN, "Softplus": SOFTPLUS,
}
ACTIVATION_NAMES = {code: name for name, code in ACTIVATION_CODES.items()}

# alpha, beta where the ONNX operator of the same name has defaults; (0, 0) where unused.
DEFAULT_ALPHA_BETA = {
    "Affine": (1.0, 0.0), "LeakyRelu": (0.01, 0.0), "ThresholdedRelu": (1.0, 0.0),
    "ScaledTanh": (1.0, 1.0), "HardSigmoid": (0.2, 0.5), "Elu": (1.0, 0.0),
}


def activation_code(name):
    """The code of an activation named as ONNX names it (case-insensitive)."""
    for known, code in ACTIVATION_CODES.items():
        if known.lower() == str(name).lower():
            return code
    raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATION_CODES)}")


# float32 rational tanh: coefficients of p(x) = x * sum(alpha_k x^2k), q(x) = sum(beta_k x^2k).
_TANH_CLAMP = np.float32(7.90531110763549805)
_TANH_LINEAR = np.float32(4e-4)
_A1 = np.float32(4.89352455891786e-03)
_A3 = np.float32(6.37261928875436e-04)
_A5 = np.float32(1.48572235717979e-05)
_A7 = np.float32(5.12229709037114e-08)
_A9 = np.float32(-8.60467152213735e-11)
_A11 = np.float32(2.00018790482477e-13)
_A13 = np.float32(-2.76076847742355e-16)
_B0 = np.float32(4.89352518554385e-03)
_B2 = np.float32(2.26843463243900e-03)
_B4 = np.float32(1.18534705686654e-04)
_B6 = np.float32(1.19825839466702e-06)
_HALF32 = np.float32(0.5)


_JIT_OPTIONS = {"fastmath": {"contract", "arcp", "nsz", "afn"}, "error_model": "numpy"}


def fast_tanh(x):
    """tanh, exact for float64 and a vectorisable rational approximation for float32."""
    return math.tanh(x)


def fast_sigmoid(x):
    """The logistic function, exact for float64; from fast_tanh for float32."""
    return 1.0 / (1.0 + math.exp(-x))


@overload(fast_tanh, jit_options=_JIT_OPTIONS)
def _fast_tanh(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        def tanh_float32(x):
            # Comparisons are written so that NaN fails both and flows through.
            if x > _TANH_CLAMP:
                x = _TANH_CLAMP
            elif x < -_TANH_CLAMP:
                x = -_TANH_CLAMP
            x2 = x * x
            p = x2 * _A13 + _A11
            p = x2 * p + _A9
            p = x2 * p + _A7
            p = x2 * p + _A5
            p = x2 * p + _A3
            p = x2 * p + _A1
            p = x * p
            q = x2 * _B6 + _B4
            q = x2 * q + _B2
            q = x2 * q + _B0
            result = p / q
            return x if abs(x) < _TANH_LINEAR else result
        return tanh_float32
    return lambda x: math.tanh(x)


@overload(fast_sigmoid, jit_options=_JIT_OPTIONS)
def _fast_sigmoid(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: _HALF32 + _HALF32 * fast_tanh(_HALF32 * x)
    return lambda x: 1.0 / (1.0 + math.exp(-x))


@kernel
def activate(array, start, stop, code, alpha, beta):
    """Apply activation `code` in place to array[start:stop] (a 1-D array).

    The branch is taken once per call, so each loop below is a plain vectorisable loop; the loops
    index a window from 0, since an index Numba cannot prove non-negative keeps a wraparound check
    in the loop that stops vectorisation.
    """
    values = array[start:stop]
    if code == SIGMOID:
        for j in range(values.shape[0]):
            values[j] = fast_sigmoid(values[j])
    elif code == TANH:
        for j in range(values.shape[0]):
            values[j] = fast_tanh(values[j])
    elif code == RELU:
        for j in range(values.shape[0]):
            v = values[j]
            # A literal zero, not 0 * v: 0 * -inf would be NaN. NaN fails v < 0 and passes.
            values[j] = v if not v < 0 else 0.0
    elif code == AFFINE:
        for j in range(values.shape[0]):
            values[j] = alpha * values[j] + beta
    elif code == LEAKY_RELU:
        for j in range(values.shape[0]):
            v = values[j]
            values[j] = alpha * v if v < 0 else v
    elif code == THRESHOLDED_RELU:
        for j in range(values.shape[0]):
            v = values[j]
            values[j] = 0.0 if v <= alpha else v
    elif code == SCALED_TANH:
        for j in range(values.shape[0]):
            values[j] = alpha * fast_tanh(beta * values[j])
    elif code == HARD_SIGMOID:
        for j in range(values.shape[0]):
            v = alpha * values[j] + beta
            if v < 0:
                v = 0.0
            elif v > 1:
                v = 1.0
            values[j] = v
    elif code == ELU:
        for j in range(values.shape[0]):
            v = values[j]
            # expm1, not exp - 1: near 0 the difference cancels to 0 (Elu(-1e-20) was 0).
            values[j] = alpha * math.expm1(v) if v < 0 else v
    elif code == SOFTSIGN:
        for j in range(values.shape[0]):
            v = values[j]
            # x / (1 + |x|) is inf / inf at the infinities; the limit there is sign(x).
            values[j] = math.copysign(1.0, v) if abs(v) == math.inf else v / (1.0 + abs(v))
    elif code == SOFTPLUS:
        for j in range(values.shape[0]):
            v = values[j]
            # log(1 + e^v) = max(v, 0) + log1p(e^-|v|): no overflow (e^v does past v ~ 88 in
            # float32) and full precision at both ends.
            values[j] = (v if v > 0 else 0.0) + math.log1p(math.exp(-abs(v)))
