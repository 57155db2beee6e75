"""Normalisations over the channels of each step.

LayerNorm (torch.nn.LayerNorm over the last, channel axis), with biased variance:

    mu = mean_c x_c,  s2 = mean_c (x_c - mu)^2,  y_c = (x_c - mu) / sqrt(s2 + eps) * g_c + b_c

Affine, a per-channel scale and shift, is what a BatchNorm1d in eval mode computes:

    y_c = x_c * s_c + t_c,   s_c = gamma_c / sqrt(var_c + eps),   t_c = beta_c - mean_c * s_c

At load a BatchNorm1d is folded into the Linear or Conv1d before it (W' = s W, b' = s b + t:
fold_into_previous), or else into a Linear or an unpadded Conv1d after it (W' = W s over the
input channels, b' = b + W t: fold_into_next; a padded conv cannot take it, since its zero
padding would be the shifted zeros t there); when neither fits it stays an Affine layer.
"""

from __future__ import annotations

import numpy as np
from numba import uint64

from fastrnn.engine.jit import call, kernel
from fastrnn.layers import Layer, as_weight, check_dtype, entry_point, rows
from fastrnn.layers.conv import Conv1d
from fastrnn.layers.linear import Linear


@kernel
def layer_norm_step(x, gain, shift, eps, out):
    """out (B, C): x (B, C) normalised over its channels, then scaled by gain and shifted."""
    rows, channels = x.shape
    for row in range(rows):
        mean = x.dtype.type(0)
        for c in range(channels):
            mean += x[row, c]
        mean /= channels
        spread = x.dtype.type(0)
        for c in range(channels):
            d = x[row, c] - mean
            spread += d * d
        scale = 1 / np.sqrt(spread / channels + eps)
        for c in range(channels):
            out[row, c] = (x[row, c] - mean) * scale * gain[c] + shift[c]


@kernel
def layer_norm_flat(buffer, source, target, rows, weights, gain, shift, eps, channels):
    """layer_norm_step on flat arrays (see fastrnn.layers.linear.linear_flat)."""
    for row in range(rows):
        x, y = source + row * channels, target + row * channels
        mean = buffer.dtype.type(0)
        for c in range(channels):
            mean += buffer[uint64(x + c)]
        mean /= channels
        spread = buffer.dtype.type(0)
        for c in range(channels):
            d = buffer[uint64(x + c)] - mean
            spread += d * d
        scale = 1 / np.sqrt(spread / channels + eps)
        for c in range(channels):
            buffer[uint64(y + c)] = ((buffer[uint64(x + c)] - mean) * scale
                                     * weights[uint64(gain + c)] + weights[uint64(shift + c)])


@kernel
def affine_flat(buffer, source, target, rows, weights, scale, shift, channels):
    """affine_step on flat arrays (see fastrnn.layers.linear.linear_flat)."""
    for row in range(rows):
        x, y = source + row * channels, target + row * channels
        for c in range(channels):
            buffer[uint64(y + c)] = (buffer[uint64(x + c)] * weights[uint64(scale + c)]
                                     + weights[uint64(shift + c)])


@kernel
def layer_norm_sequence(x, gain, shift, eps, out):
    for t in range(x.shape[0]):
        layer_norm_step(x[t], gain, shift, eps, out[t])


@kernel
def affine_step(x, scale, shift, out):
    """out (B, C) = x (B, C) * scale + shift, channel by channel."""
    rows, channels = x.shape
    for row in range(rows):
        for c in range(channels):
            out[row, c] = x[row, c] * scale[c] + shift[c]


@kernel
def affine_sequence(x, scale, shift, out):
    for t in range(x.shape[0]):
        affine_step(x[t], scale, shift, out[t])


class LayerNorm(Layer):
    def __init__(self, features, weight=None, bias=None, *, eps=1e-5, dtype=np.float32):
        self.dtype = check_dtype(dtype)
        self.in_features = self.out_features = int(features)
        shape = (self.in_features,)
        self.weight = as_weight(np.ones(shape) if weight is None else weight, self.dtype, shape,
                                "LayerNorm weight")
        self.bias = as_weight(np.zeros(shape) if bias is None else bias, self.dtype, shape,
                              "LayerNorm bias")
        self.eps = float(eps)

    def sequence(self, x):
        out = np.empty_like(x)
        call(layer_norm_sequence, x, self.weight, self.bias, self.eps, out)
        return out

    def step_into(self, x, out):
        layer_norm_step(x, self.weight, self.bias, self.eps, out)

    def stepper(self):
        weight, bias, eps = self.weight, self.bias, self.eps
        step = entry_point(layer_norm_step, rows(self.in_features, self.dtype), weight, bias, eps,
                           rows(self.out_features, self.dtype))
        return lambda x, out: step(x, weight, bias, eps, out)

    def config(self):
        return {"type": "layer_norm", "features": self.in_features, "eps": self.eps}

    def weights(self):
        return {"weight": self.weight, "bias": self.bias}


class Affine(Layer):
    def __init__(self, scale, shift, *, dtype=np.float32):
        self.dtype = check_dtype(dtype)
        scale = np.asarray(scale).reshape(-1)
        self.in_features = self.out_features = scale.shape[0]
        self.scale = as_weight(scale, self.dtype, scale.shape, "Affine scale")
        self.shift = as_weight(shift, self.dtype, scale.shape, "Affine shift")

    @classmethod
    def from_batch_norm(cls, mean, var, gamma, beta, eps, dtype=np.float32):
        """The Affine a BatchNorm1d in eval mode computes, worked out in float64."""
        mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
        gamma = np.ones_like(mean) if gamma is None else np.asarray(gamma, np.float64)
        beta = np.zeros_like(mean) if beta is None else np.asarray(beta, np.float64)
        scale = gamma / np.sqrt(var + eps)
        return cls(scale, beta - mean * scale, dtype=dtype)

    def sequence(self, x):
        out = np.empty_like(x)
        call(affine_sequence, x, self.scale, self.shift, out)
        return out

    def step_into(self, x, out):
        affine_step(x, self.scale, self.shift, out)

    def stepper(self):
        scale, shift = self.scale, self.shift
        step = entry_point(affine_step, rows(self.in_features, self.dtype), scale, shift,
                           rows(self.out_features, self.dtype))
        return lambda x, out: step(x, scale, shift, out)

    def config(self):
        return {"type": "affine", "features": self.in_features}

    def weights(self):
        return {"scale": self.scale, "shift": self.shift}


def _rebuilt(layer, weight, bias):
    if isinstance(layer, Linear):
        return Linear(weight, bias, dtype=layer.dtype)
    return Conv1d(weight, bias, dilation=layer.dilation, groups=layer.groups,
                  padding=layer.padding, dtype=layer.dtype)


def fold_into_previous(layer, affine):
    """The Linear/Conv1d `layer` followed by `affine`, as one layer of the same kind."""
    scale, shift = affine.scale.astype(np.float64), affine.shift.astype(np.float64)
    weight = layer.weight.astype(np.float64)
    weight = weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    return _rebuilt(layer, weight, layer.bias * scale + shift)


def can_fold_into_next(layer):
    """Whether `affine` then `layer` can be one layer (see the module docstring)."""
    return isinstance(layer, Linear) or (isinstance(layer, Conv1d) and layer.padding == (0, 0)
                                         and layer.groups == 1)


def fold_into_next(affine, layer):
    """`affine` followed by the Linear/Conv1d `layer` (can_fold_into_next), as one layer."""
    scale, shift = affine.scale.astype(np.float64), affine.shift.astype(np.float64)
    weight = layer.weight.astype(np.float64)
    if weight.ndim == 2:
        return _rebuilt(layer, weight * scale, layer.bias + weight @ shift)
    return _rebuilt(layer, weight * scale[None, :, None],
                    layer.bias + np.einsum("oik,i->o", weight, shift))


def fold_affines(layers):
    """`layers` with every Affine (a BatchNorm1d) folded into the Linear or Conv1d before it,
    else into the one after it where that fits (can_fold_into_next), else kept as it is."""
    layers = list(layers)
    folded = []
    for index, layer in enumerate(layers):
        if isinstance(layer, Affine):
            if folded and isinstance(folded[-1], (Linear, Conv1d)):
                folded[-1] = fold_into_previous(folded[-1], layer)
                continue
            following = layers[index + 1] if index + 1 < len(layers) else None
            if following is not None and can_fold_into_next(following):
                layers[index + 1] = fold_into_next(layer, following)
                continue
        folded.append(layer)
    return folded
