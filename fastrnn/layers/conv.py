"""Conv1d: a 1-D convolution over time, any kernel size, dilation and groups, stride 1.

With K taps, dilation d, G groups, zero padding P_l on the left and P_r on the right of x:

    y_t[o] = b[o] + sum_{k < K} sum_{i < C_in/G} W[o, i, k] * x_{t + k d - P_l}[g(o) C_in/G + i]

where g(o) = o // (C_out / G) is the group of output channel o and x is zero outside 0..T-1;
T' = T + P_l + P_r - (K - 1) d. W (C_out, C_in/G, K) is torch.nn.Conv1d's layout.

Causal means P_l = (K - 1) d and P_r = 0: y_t depends on x_t and the (K - 1) d inputs before it,
so T' = T and the layer streams. Its state per stream is a ring buffer of those last (K - 1) d
inputs, (rows, (K - 1) d, C_in), and one write position shared by the rows of a table (they
advance together): the input `lag` steps back lies at (position - lag) mod (K - 1) d. A conv
with P_r > 0 looks ahead (y_t needs inputs after t) and one with P_l < (K - 1) d gives fewer
outputs than inputs: both run on whole sequences and are refused for streaming.
"""

from __future__ import annotations

import numpy as np
from numba import uint64

from fastrnn.engine.jit import call, kernel
from fastrnn.layers import Layer, as_weight, check_dtype, entry_point, rows as zero_rows


@kernel
def conv_step(x, history, position, weight, bias, dilation, out):
    """One causal step for every row: x (B, C_in) -> out (B, C_out); history (B, H, C_in) and
    position (1,) int64 are the ring buffer of the last H = (K - 1) d inputs, updated in place."""
    rows, inputs = x.shape
    outputs, group_inputs, taps = weight.shape
    group_outputs = outputs // (inputs // group_inputs)
    held = history.shape[1]
    here = position[0]
    for row in range(rows):
        for o in range(outputs):
            first = (o // group_outputs) * group_inputs
            total = bias[o]
            for k in range(taps):
                lag = (taps - 1 - k) * dilation
                if lag == 0:
                    for i in range(group_inputs):
                        total += weight[o, i, k] * x[row, first + i]
                else:
                    slot = (here - lag) % held
                    for i in range(group_inputs):
                        total += weight[o, i, k] * history[row, slot, first + i]
            out[row, o] = total
        if held:
            for i in range(inputs):
                history[row, here, i] = x[row, i]
    if held and rows:  # a call on no rows (entry_point's compile) moves nothing
        position[0] = (here + 1) % held


@kernel
def conv_flat(buffer, source, target, rows, steps, slots, state, history, istate, positions,
              weights, weight, transposed, bias, inputs, outputs, group_inputs, taps, dilation,
              held):
    """conv_step on flat arrays (see fastrnn.layers.linear.linear_flat) for `steps` steps at once,
    with a ring position per row: x (steps * rows, inputs) at buffer[source:], time-major ->
    (steps * rows, outputs) at buffer[target:], for state rows slots[0..rows-1]; row s's ring
    buffer is state[history + s * held * inputs:] (held, inputs), its position
    istate[positions + s]. W (outputs, group_inputs, taps) and b are at weights[weight:] and
    weights[bias:]; with one group, W as (taps, inputs, outputs) at weights[transposed:], so that
    the sum runs along contiguous outputs and vectorises. An input `lag` steps back is in the
    buffer when the pass holds it, else in the ring, where step-by-step calls would have put it:
    the ring takes the pass's last `held` inputs at the end."""
    group_outputs = outputs // (inputs // group_inputs)
    for row in range(rows):
        slot = slots[row]
        here = istate[uint64(positions + slot)]
        ring = history + slot * held * inputs
        for step in range(steps):
            x = source + (step * rows + row) * inputs
            y = target + (step * rows + row) * outputs
            if group_inputs == inputs:
                for o in range(outputs):
                    buffer[uint64(y + o)] = weights[uint64(bias + o)]
                for k in range(taps):
                    lag = (taps - 1 - k) * dilation
                    if lag <= step:
                        values, at = buffer, x - lag * rows * inputs
                    else:
                        values, at = state, ring + ((here + step - lag) % held) * inputs
                    for i in range(inputs):
                        scale = values[uint64(at + i)]
                        w = transposed + (k * inputs + i) * outputs
                        for o in range(outputs):
                            buffer[uint64(y + o)] += scale * weights[uint64(w + o)]
            else:
                for o in range(outputs):
                    first = (o // group_outputs) * group_inputs
                    w = weight + o * group_inputs * taps
                    total = weights[uint64(bias + o)]
                    for k in range(taps):
                        lag = (taps - 1 - k) * dilation
                        if lag <= step:
                            past = x - lag * rows * inputs + first
                            for i in range(group_inputs):
                                total += (weights[uint64(w + i * taps + k)]
                                          * buffer[uint64(past + i)])
                        else:
                            past = ring + ((here + step - lag) % held) * inputs + first
                            for i in range(group_inputs):
                                total += weights[uint64(w + i * taps + k)] * state[uint64(past + i)]
                    buffer[uint64(y + o)] = total
        if held:
            for step in range(max(0, steps - held), steps):
                newest = ring + ((here + step) % held) * inputs
                x = source + (step * rows + row) * inputs
                for i in range(inputs):
                    state[uint64(newest + i)] = buffer[uint64(x + i)]
            istate[uint64(positions + slot)] = (here + steps) % held


@kernel
def conv_chunk(xs, history, position, weight, bias, dilation, out):
    """conv_step at every step of xs (T, B, C_in) -> out (T, B, C_out), the buffer carried on.

    A whole sequence with any padding is this over the padded input from a zero buffer, its
    first (K - 1) d outputs dropped (Conv1d.sequence)."""
    for t in range(xs.shape[0]):
        conv_step(xs[t], history, position, weight, bias, dilation, out[t])


class Conv1d(Layer):
    def __init__(self, weight, bias=None, *, dilation=1, groups=1, padding=None, dtype=np.float32):
        """weight (C_out, C_in/groups, K); padding (left, right) zeros, causal ((K-1) d, 0) by default."""
        self.dtype = check_dtype(dtype)
        weight = np.asarray(weight)
        if weight.ndim != 3:
            raise ValueError(f"Conv1d weight must be (C_out, C_in/groups, K), got {weight.shape}")
        self.groups, self.dilation = int(groups), int(dilation)
        if self.groups < 1 or self.dilation < 1:
            raise ValueError(f"groups and dilation must be >= 1, got {groups} and {dilation}")
        self.out_features, group_inputs, self.kernel_size = weight.shape
        if self.out_features % self.groups:
            raise ValueError(f"C_out={self.out_features} is not divisible by groups={groups}")
        self.in_features = group_inputs * self.groups
        self.history = (self.kernel_size - 1) * self.dilation
        left, right = (self.history, 0) if padding is None else (int(p) for p in padding)
        if left < 0 or right < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding = (left, right)
        self.weight = as_weight(weight, self.dtype, weight.shape, "Conv1d weight")
        self.bias = as_weight(np.zeros(self.out_features) if bias is None else bias, self.dtype,
                              (self.out_features,), "Conv1d bias")

    def output_steps(self, steps):
        return steps + sum(self.padding) - self.history

    def sequence(self, x):
        steps = self.output_steps(x.shape[0])
        if steps < 1:
            raise ValueError(f"{self!r} needs at least {self.history - sum(self.padding) + 1} "
                             f"steps, got {x.shape[0]}")
        # The causal kernel over the padded input, from a zero buffer, outputs
        # sum_k W_k x'[p - (K-1-k) d] at p; at p = t + H that is the padded conv's y_t.
        left, right = self.padding
        padded = np.zeros((x.shape[0] + left + right, x.shape[1], self.in_features), self.dtype)
        padded[left:left + x.shape[0]] = x
        table = ConvTable(self, x.shape[1])
        return table.chunk(padded)[self.history:]

    def stream_refusal(self):
        left, right = self.padding
        if right:
            return (f"{self!r} pads {right} step(s) on the right, so each output needs inputs "
                    f"that come after it (it looks ahead); only a causal conv (padding "
                    f"({self.history}, 0): left only) can stream. Run it on whole sequences")
        if left != self.history:
            return (f"{self!r} pads {left} step(s) on the left, not (kernel_size - 1) * dilation "
                    f"= {self.history}: it gives {self.history - left} fewer outputs than "
                    f"inputs, so it is not causal and cannot stream. Run it on whole sequences")
        return None

    def table(self, rows):
        return ConvTable(self, rows)

    def config(self):
        return {"type": "conv1d", "in_features": self.in_features,
                "out_features": self.out_features, "kernel_size": self.kernel_size,
                "dilation": self.dilation, "groups": self.groups, "padding": list(self.padding)}

    def weights(self):
        return {"weight": self.weight, "bias": self.bias}


class ConvTable:
    """A causal conv's ring buffers for `rows` streams (see the module docstring)."""

    def __init__(self, layer, rows):
        self.layer = layer
        self.history = np.zeros((rows, layer.history, layer.in_features), layer.dtype)
        self.position = np.zeros(1, np.int64)
        bound = (self.history, self.position, layer.weight, layer.bias, layer.dilation)
        step = entry_point(conv_step, zero_rows(layer.in_features, layer.dtype), *bound,
                           zero_rows(layer.out_features, layer.dtype))
        self.step = lambda x, out: step(x, *bound, out)

    def chunk(self, xs):
        layer = self.layer
        out = np.empty((xs.shape[0], xs.shape[1], layer.out_features), layer.dtype)
        call(conv_chunk, xs, self.history, self.position, layer.weight, layer.bias,
             layer.dilation, out)
        return out

    def state(self):
        # Oldest input first, so that a state does not depend on where the ring's position is.
        order = (np.arange(self.history.shape[1]) + self.position[0]) % max(1, self.history.shape[1])
        return [self.history[:, order].copy()]

    def state_shapes(self):
        return [self.history.shape]

    def load(self, arrays):
        (history,) = arrays
        self.history[...] = history
        self.position[0] = 0

    def reset(self):
        self.history[...] = 0
        self.position[0] = 0
