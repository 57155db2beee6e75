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
tanh and exp, within 2 units in the last place of numpy's). In float32 they are vectorisable
approximations built on one exp of a non-positive argument (Cody-Waite range reduction, Cephes'
expf polynomial, 2^n made from the bits):

    sigmoid(x) = s if x < 0 else 1 - s,         s = e / (1 + e), e = e^-|x|
    tanh(x)    = sign(x) (|x| + |x|^3 P(x^2))   for |x| < 0.9 (P fitted for relative error)
               = sign(x) (1 - 2 e / (1 + e)),   e = e^-2|x|, otherwise (|x| clamped at 9.1)

so that a gate near 1 is one rounding of 1 - s, with s accurate to its own last place: as close
as float32 can hold it. Measured against the exact float64 functions on every float32 (tanh
|x| < 10, sigmoid -87.33 < x < 90, beyond which both are constant or below 2^-126), the error in
units in the last place (ulp) of the exact result is at most 1.24 for tanh (at |x| = 0.9005),
1.19 for sigmoid at x >= 0 and 2.41 for sigmoid at x < 0 (at x = -4.157, where the result is
0.0154); absolute at most 7.4e-8 and 7.1e-8. Sigmoid results below 2^-126 (x < -87.3) lose
their relative precision, and are 0 from x = -87.68 on. The former rational tanh (sigmoid derived
from it) was off by up to 2.9e-7 and 1.7e-7 absolute, 4.9 and 2.8 ulp, and biased where gates sit
(by -0.9 ulp on average past |x| = 6): on long sequences that bias adds up in the cell state
(tests/test_precision.py). The price, in CPU time per value: sigmoid 1.6 -> 1.95 ns, tanh
1.4 -> 2.6 ns; with the float64 cell-state update (fastrnn.engine.cells.lstm) an LSTM cell at
H=128 (640 activations a step) went from 1.5 to 2.1 us, at H=32 from 0.63 to 0.81 us: about 4%
of a streaming step or a 1000-step sequence, within the 6% allowed for it.
tests/test_activations.py checks the bounds on a dense grid; both functions are monotone to within
1 ulp. ScaledTanh is not on that path: alpha and beta are float64, so beta * x and its tanh are
computed in float64 (exact) even for a float32 array.

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
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

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


# float32 e^x for x <= 0: e^x = 2^n e^r with n = round(x / ln 2), made by adding 1.5 * 2^23 (the
# sum's low mantissa bits then hold n, and _pow2 reads 2^n from them), r = x - n ln 2 in two parts
# (Cody and Waite: n * _LN2_HI is exact), e^r on |r| <= ln 2 / 2 by Cephes' expf polynomial.
_ROUNDER = np.float32(12582912.0)
_LOG2E = np.float32(1.44269504088896341)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_E5 = np.float32(1.9875691500e-4)
_E4 = np.float32(1.3981999507e-3)
_E3 = np.float32(8.3334519073e-3)
_E2 = np.float32(4.1665795894e-2)
_E1 = np.float32(1.6666665459e-1)
_E0 = np.float32(5.0000001201e-1)
# tanh(a) = a + a^3 P(a^2) below _TANH_SMALL, P of degree 5 fitted for the least relative error
# (1.6e-8 before rounding); above it 1 - 2 e^-2a / (1 + e^-2a), whose cancellation is mild there.
# |x| is clamped at _TANH_CLAMP, past which float32's tanh is 1.
_TANH_SMALL = np.float32(0.9)
_TANH_CLAMP = np.float32(9.1)
_T0 = np.float32(-0.3333321219658473)
_T1 = np.float32(0.13330360271183272)
_T2 = np.float32(-0.0537215078717258)
_T3 = np.float32(0.02090417370864112)
_T4 = np.float32(-0.00686011254154735)
_T5 = np.float32(0.00130398490445952)
# sigmoid's |x| clamp: e^-88 rounds n to -127, whose _pow2 is 0, so results below 2^-126 flush.
_SIGMOID_CLAMP = np.float32(88.0)
_ONE32 = np.float32(1.0)
_TWO32 = np.float32(2.0)


@intrinsic
def _pow2(typingctx, rounded):
    """2^n as a float32, from rounded = n + 1.5 * 2^23 (-127 <= n <= 127; n = -127 gives 0).

    The float's low mantissa bits hold n, and (bits + 127) << 23 is 2^n's pattern. Integer
    operations on the bits, not a float-to-int conversion: that is undefined in LLVM for NaN,
    which must flow through instead."""
    signature = types.float32(types.float32)

    def codegen(context, builder, signature, arguments):
        word = ir.IntType(32)
        bits = builder.bitcast(arguments[0], word)
        bits = builder.shl(builder.add(bits, ir.Constant(word, 127)), ir.Constant(word, 23))
        return builder.bitcast(bits, ir.FloatType())
    return signature, codegen


# No "reassoc": (k - _ROUNDER) in _exp_ratio must stay a rounding to an integer, not fold to x.
_JIT_OPTIONS = {"fastmath": {"contract", "arcp", "nsz", "afn"}, "error_model": "numpy"}


def fast_tanh(x):
    """tanh, exact for float64 and a vectorisable approximation for float32 (see above)."""
    return math.tanh(x)


def fast_sigmoid(x):
    """The logistic function, exact for float64 and a vectorisable approximation for float32."""
    return 1.0 / (1.0 + math.exp(-x))


def _exp_ratio(x):
    """e^x / (1 + e^x), for float32 x in [-88, 0] (NaN flows through)."""
    return math.exp(x) / (1.0 + math.exp(x))


def _float32_version(function):
    """Register the decorated function as `function`'s implementation for float32 arguments in
    jitted code; every other type gets `function` itself, the exact version."""
    def register(float32_function):
        @overload(function, jit_options=_JIT_OPTIONS)
        def implementation(x):
            if isinstance(x, types.Float) and x.bitwidth == 32:
                return float32_function
            return function
        return float32_function
    return register


@_float32_version(_exp_ratio)
def _exp_ratio_float32(x):
    k = x * _LOG2E + _ROUNDER
    n = k - _ROUNDER
    r = x - n * _LN2_HI
    r = r - n * _LN2_LO
    p = _E5 * r + _E4
    p = p * r + _E3
    p = p * r + _E2
    p = p * r + _E1
    p = p * r + _E0
    e = (p * (r * r) + r + _ONE32) * _pow2(k)
    return e / (_ONE32 + e)


@_float32_version(fast_tanh)
def _tanh_float32(x):
    # The clamp's comparison fails for NaN, which flows through both branches.
    a = abs(x)
    if a > _TANH_CLAMP:
        a = _TANH_CLAMP
    z = a * a
    p = z * _T5 + _T4
    p = p * z + _T3
    p = p * z + _T2
    p = p * z + _T1
    p = p * z + _T0
    small = a + a * z * p
    large = _ONE32 - _TWO32 * _exp_ratio(-_TWO32 * a)
    # Made from |x| and given x's sign: tanh(-0) is -0, tiny inputs come back unrounded.
    return math.copysign(small if a < _TANH_SMALL else large, x)


@_float32_version(fast_sigmoid)
def _sigmoid_float32(x):
    a = abs(x)
    if a > _SIGMOID_CLAMP:
        a = _SIGMOID_CLAMP
    # s = sigmoid(-|x|) to its last place; above 0 the result is 1 - s, rounded once (not
    # 1 / (1 + e^-x), where rounding 1 + e^-x costs a gate near 1 up to 2 ulp).
    s = _exp_ratio(-a)
    return s if x < 0 else _ONE32 - s


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
