"""Activations, applied to every channel of every step (Softmax: across the channels of a step).

    relu        max(x, 0)
    leaky_relu  x if x >= 0 else a x                (a: negative_slope)
    prelu       x if x >= 0 else a_c x              (a_c: one learned slope, or one per channel c)
    elu         x if x > 0 else a (exp(x) - 1)      (a: alpha)
    gelu        x Phi(x) = x (1 + erf(x / sqrt 2)) / 2
    gelu_tanh   x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))) / 2   (torch's approximate="tanh")
    silu        x sigmoid(x)
    tanh        tanh(x)
    sigmoid     1 / (1 + exp(-x))
    softmax     exp(x_c - max x) / sum_j exp(x_j - max x)   over the channels c of one step
    hardtanh    min(max(x, lo), hi)

One kernel serves them all, the function picked by a code, so that a chain of several kinds
compiles one specialisation per dtype. These are the exact functions in both dtypes (the recurrent
cells' fast float32 tanh/sigmoid are not used here).
"""

from __future__ import annotations

import math

import numpy as np
from numba import uint64

from fastrnn.engine.jit import call, kernel
from fastrnn.layers import Layer, check_dtype, entry_point, rows

ACTIVATIONS = {"relu": 0, "leaky_relu": 1, "prelu": 2, "elu": 3, "gelu": 4, "gelu_tanh": 5,
               "silu": 6, "tanh": 7, "sigmoid": 8, "softmax": 9, "hardtanh": 10}
# The scalar parameters each takes, in the order of the kernel's `params`, with torch's defaults.
_PARAMETERS = {"leaky_relu": {"negative_slope": 0.01}, "elu": {"alpha": 1.0},
               "hardtanh": {"min_val": -1.0, "max_val": 1.0}}
_SQRT_HALF = 1.0 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


@kernel
def pointwise(v, code, p0, p1, slope):
    """The activation `code` (any but softmax) of one value v; p0, p1: its scalars (hardtanh's
    bounds, or p0 alone), slope: PReLU's slope for v's channel."""
    if code == 0:
        return v if v > 0 else v * 0
    if code == 1:
        return v if v >= 0 else p0 * v
    if code == 2:
        return v if v >= 0 else slope * v
    if code == 3:
        return v if v > 0 else p0 * math.expm1(v)
    if code == 4:
        return v * (1 + math.erf(v * _SQRT_HALF)) * 0.5
    if code == 5:
        return v * (1 + math.tanh(_SQRT_2_OVER_PI * (v + 0.044715 * v * v * v))) * 0.5
    if code == 6:
        return v / (1 + math.exp(-v))
    if code == 7:
        return math.tanh(v)
    if code == 8:
        return 1 / (1 + math.exp(-v))
    return min(max(v, p0), p1)


@kernel
def activation_step(x, code, params, slopes, out):
    """out (B, C) = the activation `code` of x (B, C); params: its scalars, slopes: PReLU's."""
    rows, channels = x.shape
    p0, p1 = params[0], params[params.shape[0] - 1]   # hardtanh's (min, max); else p0 alone
    for row in range(rows):
        if code == 9:
            largest = x[row, 0]
            for c in range(1, channels):
                largest = max(largest, x[row, c])
            total = x.dtype.type(0)
            for c in range(channels):
                e = math.exp(x[row, c] - largest)
                out[row, c] = e
                total += e
            for c in range(channels):
                out[row, c] = out[row, c] / total
            continue
        for c in range(channels):
            v = x[row, c]
            slope = slopes[c % slopes.shape[0]] if code == 2 else v
            out[row, c] = pointwise(v, code, p0, p1, slope)


@kernel
def activation_flat(buffer, source, target, rows, channels, code, weights, params, slopes,
                    slope_count):
    """activation_step on flat arrays (see fastrnn.layers.linear.linear_flat): params and slopes
    are offsets into weights."""
    for row in range(rows):
        x, y = source + row * channels, target + row * channels
        if code == 9:
            largest = buffer[uint64(x)]
            for c in range(1, channels):
                largest = max(largest, buffer[uint64(x + c)])
            total = buffer.dtype.type(0)
            for c in range(channels):
                e = math.exp(buffer[uint64(x + c)] - largest)
                buffer[uint64(y + c)] = e
                total += e
            for c in range(channels):
                buffer[uint64(y + c)] = buffer[uint64(y + c)] / total
            continue
        if code == 0:  # the hot case on its own, so that its loop vectorises
            for c in range(channels):
                v = buffer[uint64(x + c)]
                buffer[uint64(y + c)] = v if v > 0 else v * 0
            continue
        p0, p1 = weights[uint64(params)], weights[uint64(params + 1 if code == 10 else params)]
        for c in range(channels):
            v = buffer[uint64(x + c)]
            slope = weights[uint64(slopes + c % slope_count)] if code == 2 else v
            buffer[uint64(y + c)] = pointwise(v, code, p0, p1, slope)


@kernel
def activation_sequence(x, code, params, slopes, out):
    """activation_step at every step of x (T, B, C) -> out (T, B, C)."""
    for t in range(x.shape[0]):
        activation_step(x[t], code, params, slopes, out[t])


class Activation(Layer):
    """One of ACTIVATIONS over `features` channels; `slopes` for prelu (1 or `features` values)."""

    def __init__(self, name, features, *, slopes=None, dtype=np.float32, **parameters):
        if name not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
        self.dtype = check_dtype(dtype)
        self.name, self.code = name, ACTIVATIONS[name]
        self.in_features = self.out_features = int(features)
        defaults = _PARAMETERS.get(name, {})
        unknown = sorted(set(parameters) - set(defaults))
        if unknown:
            raise ValueError(f"{name} takes {sorted(defaults) or 'no parameters'}, got {unknown}")
        self.parameters = {key: float(parameters.get(key, value)) for key, value in defaults.items()}
        self.params = np.array(list(self.parameters.values()) or [0.0], self.dtype)
        if name == "prelu":
            slopes = np.array(0.25 if slopes is None else slopes, self.dtype).reshape(-1)
            if slopes.shape[0] not in (1, self.in_features):
                raise ValueError(f"prelu takes 1 or {self.in_features} slopes, got {slopes.shape[0]}")
        elif slopes is not None:
            raise ValueError(f"only prelu takes slopes, not {name}")
        self.slopes = np.ascontiguousarray(np.zeros(1, self.dtype) if slopes is None else slopes)
        self.params.setflags(write=False)
        self.slopes.setflags(write=False)

    def sequence(self, x):
        out = np.empty_like(x)
        call(activation_sequence, x, self.code, self.params, self.slopes, out)
        return out

    def step_into(self, x, out):
        activation_step(x, self.code, self.params, self.slopes, out)

    def stepper(self):
        code, params, slopes = self.code, self.params, self.slopes
        step = entry_point(activation_step, rows(self.in_features, self.dtype), code, params,
                           slopes, rows(self.out_features, self.dtype))
        return lambda x, out: step(x, code, params, slopes, out)

    def config(self):
        return {"type": "activation", "name": self.name, "features": self.in_features,
                **self.parameters}

    def weights(self):
        return {"slopes": self.slopes} if self.name == "prelu" else {}
