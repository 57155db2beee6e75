"""The activation functions as CUDA device functions: the same equations as fastrnn.engine.activations.

`build(dtype)` returns `activate(value, code, alpha, beta)` for one value. Constants are made of
the model's dtype so that a float32 model computes in float32: an untyped literal such as `1.0`
would be typed float64 by Numba and pull every float32 expression into double precision.

Sigmoid and Tanh use the device's own `exp`/`tanh` (no rational approximation: on the GPU the
libdevice functions are already cheap); every other activation is written exactly as on the CPU,
including how -0.0 and NaN flow through.
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
    softplus_linear = dtype.type(30)  # past this log1p(e^v) equals v to working precision

    @cuda.jit(device=True)
    def activate(value, code, alpha, beta):
        """Activation `code` of one value; alpha, beta as ONNX defines them (float64 in, cast)."""
        a = real(alpha)
        b = real(beta)
        if code == SIGMOID:
            return one / (one + math.exp(-value))
        if code == TANH:
            return math.tanh(value)
        if code == RELU:
            return value if not value < zero else zero * value
        if code == AFFINE:
            return a * value + b
        if code == LEAKY_RELU:
            return a * value if value < zero else value
        if code == THRESHOLDED_RELU:
            return zero * value if value <= a else value
        if code == SCALED_TANH:
            return a * math.tanh(b * value)
        if code == HARD_SIGMOID:
            v = a * value + b
            if v < zero:
                v = zero * v
            elif v > one:
                v = one + zero * v
            return v
        if code == ELU:
            return a * (math.exp(value) - one) if value < zero else value
        if code == SOFTSIGN:
            return value / (one + abs(value))
        # SOFTPLUS, the last code
        return value if value > softplus_linear else math.log1p(math.exp(value))

    assert SOFTPLUS == 10, "activate() treats the last code as Softplus"
    return activate
