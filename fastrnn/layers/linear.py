"""Linear: a dense layer over the channel axis of every step.

    y_t = W x_t + b          W (C_out, C_in), b (C_out,)   (torch.nn.Linear's layout)

A BatchNorm1d next to it is folded into W and b at load (fastrnn.layers.norm.fold_affine).
"""

from __future__ import annotations

import numpy as np
from numba import uint64

from fastrnn.engine.jit import call, kernel
from fastrnn.layers import Layer, as_weight, check_dtype, entry_point, rows


@kernel
def linear_step(x, weight, bias, out):
    """out (B, C_out) = x (B, C_in) @ weight.T + bias."""
    rows, inputs = x.shape
    outputs = weight.shape[0]
    for row in range(rows):
        for o in range(outputs):
            total = bias[o]
            for i in range(inputs):
                total += weight[o, i] * x[row, i]
            out[row, o] = total


@kernel
def linear_flat(buffer, source, target, rows, weights, weight, bias, inputs, outputs):
    """linear_step on flat arrays (the chain kernel's form, fastrnn.layers.program): rows x
    (rows, inputs) at buffer[source:] -> (rows, outputs) at buffer[target:]; W (outputs, inputs)
    at weights[weight:], b at weights[bias:]. Indexes only: a view costs the kernel tens of ns."""
    for row in range(rows):
        x = source + row * inputs
        for o in range(outputs):
            w = weight + o * inputs
            total = weights[uint64(bias + o)]
            for i in range(inputs):
                total += weights[uint64(w + i)] * buffer[uint64(x + i)]
            buffer[uint64(target + row * outputs + o)] = total


@kernel
def linear_sequence(x, weight, bias, out):
    """out (T, B, C_out): linear_step at every step of x (T, B, C_in)."""
    for t in range(x.shape[0]):
        linear_step(x[t], weight, bias, out[t])


class Linear(Layer):
    def __init__(self, weight, bias=None, dtype=np.float32):
        self.dtype = check_dtype(dtype)
        weight = np.asarray(weight)
        if weight.ndim != 2:
            raise ValueError(f"Linear weight must be (C_out, C_in), got shape {weight.shape}")
        self.out_features, self.in_features = weight.shape
        self.weight = as_weight(weight, self.dtype, weight.shape, "Linear weight")
        self.bias = as_weight(np.zeros(self.out_features) if bias is None else bias, self.dtype,
                              (self.out_features,), "Linear bias")

    def sequence(self, x):
        out = np.empty((x.shape[0], x.shape[1], self.out_features), self.dtype)
        call(linear_sequence, x, self.weight, self.bias, out)
        return out

    def step_into(self, x, out):
        linear_step(x, self.weight, self.bias, out)

    def stepper(self):
        step, weight, bias = entry_point(linear_step, rows(self.in_features, self.dtype),
                                         self.weight, self.bias,
                                         rows(self.out_features, self.dtype)), self.weight, self.bias
        return lambda x, out: step(x, weight, bias, out)

    def config(self):
        return {"type": "linear", "in_features": self.in_features,
                "out_features": self.out_features}

    def weights(self):
        return {"weight": self.weight, "bias": self.bias}
