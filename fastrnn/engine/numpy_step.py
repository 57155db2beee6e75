"""One timestep of a unidirectional stack in plain numpy: what a stream runs while its kernel compiles.

A process that finds the disk cache empty would otherwise wait for Numba to compile step_block
(seconds to tens of seconds) before its first answer; fastrnn.engine.table serves those first
steps from here while a helper process compiles the kernel into the cache. Same arguments and
same state table as step_block (fastrnn.engine.driver), the same equations as the cells
(fastrnn.engine.cells.lstm, .gru, .rnn; the plan's folded biases), computed in float64 and stored
in the plan's dtype: within the float32 kernels' tolerance of them, and of the float64 ones to
rounding. Rows are vectorised; layers run one after another:

    gates = below @ W_ih^T + bias + h @ W_hh^T      (the GRU's n block: below @ W_in^T + b_in only)
    LSTM  i, f = act_f(clip(.. + P * c)); f = 1 - i with input_forget; g = act_g(clip(..))
          c' = f c + i g; o = act_f(clip(.. + P_o * c')); h' = o act_h(c') (@ W_proj^T)
    GRU   r, z = act_f(clip(..)); n = act_g(clip(W_n x + b_in + r * (R_n h + b_hn)))  or
          act_g(clip(W_n x + b_n + R_n (r * h))); h' = (1 - z) n + z h
    RNN   h' = act_f(clip(gates))

State values below DENORMAL_FLUSH are stored as zero, as the kernels do.
"""

import numpy as np

from fastrnn.engine import activations as codes_
from fastrnn.engine.cells import GRU, LSTM
from fastrnn.engine.cells.common import DENORMAL_FLUSH
from fastrnn.engine.plan import (ALPHAS, B_HN, BETAS, BIAS, CELL, CLIP, CODES, FLAG, GATES, HIDDEN,
                                 INPUTS, OUTPUTS, PEEPHOLE, PEEPHOLE_WIDTH, PROJ_ROWS, W_HH, W_IH,
                                 W_PROJ)


def activate(values, code, alpha, beta):
    """Activation `code` (fastrnn.engine.activations) of float64 values, as a new array."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if code == codes_.SIGMOID:
            return 1.0 / (1.0 + np.exp(-values))
        if code == codes_.TANH:
            return np.tanh(values)
        if code == codes_.RELU:
            return np.where(values < 0, 0.0, values)
        if code == codes_.AFFINE:
            return alpha * values + beta
        if code == codes_.LEAKY_RELU:
            return np.where(values < 0, alpha * values, values)
        if code == codes_.THRESHOLDED_RELU:
            return np.where(values <= alpha, 0.0, values)
        if code == codes_.SCALED_TANH:
            return alpha * np.tanh(beta * values)
        if code == codes_.HARD_SIGMOID:
            result = alpha * values + beta
            return np.where(result < 0, 0.0, np.where(result > 1, 1.0, result))
        if code == codes_.ELU:
            return np.where(values < 0, alpha * np.expm1(np.minimum(values, 0.0)), values)
        if code == codes_.SOFTSIGN:
            return np.where(np.isinf(values), np.sign(values), values / (1.0 + np.abs(values)))
        if code == codes_.SOFTPLUS:
            return np.where(values > 0, values, 0.0) + np.log1p(np.exp(-np.abs(values)))
    raise ValueError(f"unknown activation code {code}")


def _clip(values, clip):
    return np.clip(values, -clip, clip) if clip > 0 else values


def _flushed(values):
    return np.where(np.abs(values) >= DENORMAL_FLUSH, values, 0.0)


def _block(weights, row, column, shape):
    start = row[column]
    size = shape[0] * shape[1] if len(shape) == 2 else shape[0]
    return weights[start:start + size].reshape(shape).astype(np.float64)


def step(weights, layout, parameters, slots, h, c, scratch, first, stop, x, y):
    """step_block's call in numpy: one timestep of every layer for the streams slots[first:stop],
    state table h, c updated in place, y[first:stop] the top layer's new h. scratch is unused.
    The new state is written once every layer is computed, so that a Ctrl-C meanwhile leaves
    the table as it was."""
    rows = slots[first:stop]
    below = x[first:stop].astype(np.float64)
    new_h, new_c = [], []
    for layer in range(layout.shape[0]):
        row, p = layout[layer], parameters[layer]
        inputs, output, hidden, gates = row[INPUTS], row[OUTPUTS], row[HIDDEN], row[GATES]
        cell, flag, clip = row[CELL], row[FLAG], p[CLIP]
        act = [(row[CODES + k], p[ALPHAS + k], p[BETAS + k]) for k in range(3)]
        w_ih_t = _block(weights, row, W_IH, (inputs, gates))
        w_hh_t = _block(weights, row, W_HH, (output, gates))
        h_prev = h[layer, rows].astype(np.float64)
        pre = below @ w_ih_t + _block(weights, row, BIAS, (gates,))
        if cell == GRU:
            reset, update = (activate(_clip(pre[:, k * hidden:(k + 1) * hidden]
                                            + h_prev @ w_hh_t[:, k * hidden:(k + 1) * hidden],
                                            clip), *act[0]) for k in range(2))
            w_hn_t = w_hh_t[:, 2 * hidden:]
            if flag:   # linear_before_reset
                b_hn = _block(weights, row, B_HN, (hidden,))
                new = pre[:, 2 * hidden:] + reset * (h_prev @ w_hn_t + b_hn)
            else:
                new = pre[:, 2 * hidden:] + (reset * h_prev) @ w_hn_t
            new = activate(_clip(new, clip), *act[1])
            h_new = (1.0 - update) * new + update * h_prev
        else:
            pre = pre + h_prev @ w_hh_t
            if cell == LSTM:
                h_new, c_new = _lstm(weights, row, pre, c[layer, rows].astype(np.float64), act,
                                     clip, flag)
                new_c.append((layer, c_new))
            else:
                h_new = activate(_clip(pre, clip), *act[0])
        below = _flushed(h_new)
        new_h.append(below)
    for layer, c_new in new_c:
        c[layer, rows] = c_new
    for layer, h_new in enumerate(new_h):
        h[layer, rows] = h_new
    y[first:stop] = h[layout.shape[0] - 1, rows]


def _lstm(weights, row, pre, c_prev, act, clip, input_forget):
    hidden = row[HIDDEN]
    i, f, g, o = (pre[:, k * hidden:(k + 1) * hidden] for k in range(4))
    if row[PEEPHOLE_WIDTH]:
        peephole = _block(weights, row, PEEPHOLE, (3, hidden))
        i = i + peephole[0] * c_prev
        f = f + peephole[1] * c_prev
    i = activate(_clip(i, clip), *act[0])
    f = 1.0 - i if input_forget else activate(_clip(f, clip), *act[0])
    g = activate(_clip(g, clip), *act[1])
    c_new = _flushed(f * c_prev + i * g)
    if row[PEEPHOLE_WIDTH]:
        o = o + peephole[2] * c_new
    o = activate(_clip(o, clip), *act[0])
    h_new = o * activate(c_new, *act[2])
    if row[PROJ_ROWS]:
        h_new = h_new @ _block(weights, row, W_PROJ, (hidden, row[OUTPUTS]))
    return h_new, c_new
