"""The activation functions as CUDA device functions, with the equations of
fastrnn.engine.activations.

`build(dtype)` returns `activate(value, code, alpha, beta)` for one value. Constants are made of
the model's dtype so that a float32 model computes in float32: an untyped literal such as `1.0`
would be typed float64 by Numba and pull every float32 expression into double precision.

Sigmoid, Tanh, ScaledTanh, Elu and Softplus call libdevice's exp, tanh, expm1 and log1p (no
rational approximation: on the GPU they are already cheap). The CUDA C++ Programming Guide's
table of maximum errors puts each within 2 units in the last place, in float32 and float64, so
every activation here is within 4 units in the last place of the exact value, relative to the
result, or to |alpha x| + |beta| where those cancel (Affine, HardSigmoid).
The CPU's float32 tanh and sigmoid are within 1.24 and 2.41 units in the last place
(fastrnn.engine.activations); elsewhere the two targets compute the same formulas. NaN passes through every activation, and +-inf maps to
the same limit as on the CPU (fastrnn.engine.activations says which). ThresholdedRelu compares
with the float64 alpha, as the CPU does, so its jump sits at the same float.
tests/test_activations.py and tests/cuda/test_cuda_activations.py check all of it on one grid.
"""

import functools
import math

import numba
import numpy as np
from numba import cuda

from fastrnn.engine.activations import (AFFINE, ELU, HARD_SIGMOID, LEAKY_RELU, RELU, SCALED_TANH,
                                 SIGMOID, SOFTPLUS, SOFTSIGN, TANH, THRESHOLDED_RELU)


@functools.lru_cache(maxsize=None)
def build(dtype):
    """The device function `activate(value, code, alpha, beta)` for `dtype` (float32 or float64)."""
    dtype = np.dtype(dtype)
    real = numba.from_dtype(dtype)
    zero, one = dtype.type(0), dtype.type(1)
    inf = dtype.type(np.inf)

    @cuda.jit(device=True)
    def activate(value, code, alpha, beta):
        """Activation `code` of one value; alpha, beta as ONNX defines them (float64 in, cast)."""
        a = real(alpha)
        b = real(beta)
        if code == SIGMOID:
            # e^-|x| never overflows: 1 / (1 + e^-x) for x >= 0, e^x / (1 + e^x) below, each
            # accurate to the last place at its own end.
            e = math.exp(-abs(value))
            r = one / (one + e)
            return r if value >= zero else e * r
        if code == TANH:
            return math.tanh(value)
        # Clamps return the constant itself, not 0 * value: at an infinity that is NaN.
        if code == RELU:
            return value if not value < zero else zero
        if code == AFFINE:
            return a * value + b
        if code == LEAKY_RELU:
            return a * value if value < zero else value
        if code == THRESHOLDED_RELU:
            # Against the float64 alpha, as the CPU does: float32(alpha) can lie on the other side
            # of a value (float32(0.3) > 0.3), which would move the jump by one float.
            return zero if value <= alpha else value
        if code == SCALED_TANH:
            return a * math.tanh(b * value)
        if code == HARD_SIGMOID:
            v = a * value + b
            v = zero if v < zero else v
            return one if v > one else v
        if code == ELU:
            return a * math.expm1(value) if value < zero else value
        if code == SOFTSIGN:
            magnitude = abs(value)
            # x / (1 + |x|) is inf / inf at the infinities; the limit there is sign(x).
            return math.copysign(one, value) if magnitude == inf else value / (one + magnitude)
        # SOFTPLUS, the last code: max(x, 0) + log1p(e^-|x|), which never overflows and keeps
        # full precision at both ends (log1p(e^x) alone overflows past x ~ 88 in float32).
        return (value if value > zero else zero) + math.log1p(math.exp(-abs(value)))

    assert SOFTPLUS == 10, "activate() treats the last code as Softplus"
    return activate
