"""The recurrent cells as CUDA device code: one block advances one batch row by one step.

The equations are those of fastrnn/cells/{lstm,gru,rnn}.py (see their docstrings), in the same
order of operations: gates = (W x + b_ih) + b_hh + sum_k h_k R[k, :], clip, activate, update,
flush tiny state values to zero.

Work is split by hidden unit: thread `tid` of `threads` owns units j = tid, tid + threads, ...
and computes *all* gates of its units (fused gates: one pass over R's rows serves the four LSTM
gates of unit j). A unit's update needs only its own gates and c[j], so most cells finish in one
phase with no synchronisation. Two need the whole row of an intermediate first and take a second
phase after a block barrier:

- an LSTM with a projection: h' = W_hr (o * h(c')) needs every unit's o * h(c');
- a GRU with the reset gate before the product: n = g(... + R_n (r * h)) needs every unit's r * h.

Results go to `h_next`, never to `h_prev`, because other threads of the block are still reading
h_prev; the caller synchronises the block before h_next is read as the next h_prev.
"""

import functools

import numba
import numpy as np
from numba import cuda, float64

from fastrnn.engine.activations import SIGMOID
from fastrnn.engine.cells import GRU, LSTM
from fastrnn.engine.cells.common import DENORMAL_FLUSH
from fastrnn.cuda import activations


@functools.lru_cache(maxsize=None)
def build(dtype):
    """The device function `recurrent_step` for `dtype` (see its docstring)."""
    dtype = np.dtype(dtype)
    real = numba.from_dtype(dtype)
    zero, one = dtype.type(0), dtype.type(1)
    flush_below = dtype.type(DENORMAL_FLUSH)
    activate = activations.build(dtype)

    @cuda.jit(device=True)
    def flush_tiny(value):
        """Tiny state values become exact zero (fastrnn.engine.cells.common.DENORMAL_FLUSH says why)."""
        return zero * value if abs(value) < flush_below else value

    @cuda.jit(device=True)
    def clip_value(value, clip):
        """Bound to [-clip, clip]; NaN passes; clip <= 0 means no clip."""
        if clip > zero:
            if value > clip:
                return clip
            if value < -clip:
                return -clip
        return value

    @cuda.jit(device=True)
    def lstm_step(tid, threads, hidden, flag, clip, gates_in, h_prev, h_next, c, w_hh_t, b_hh,
                  peephole, w_proj_t, codes, alphas, betas, work):
        has_peephole = peephole.shape[1] > 0
        has_projection = w_proj_t.shape[0] > 0
        for j in range(tid, hidden, threads):
            gate_i = gates_in[j] + b_hh[j]
            gate_f = gates_in[hidden + j] + b_hh[hidden + j]
            gate_g = gates_in[2 * hidden + j] + b_hh[2 * hidden + j]
            gate_o = gates_in[3 * hidden + j] + b_hh[3 * hidden + j]
            for k in range(h_prev.shape[0]):
                h_k = h_prev[k]
                gate_i += h_k * w_hh_t[k, j]
                gate_f += h_k * w_hh_t[k, hidden + j]
                gate_g += h_k * w_hh_t[k, 2 * hidden + j]
                gate_o += h_k * w_hh_t[k, 3 * hidden + j]
            c_prev = c[j]
            if has_peephole:
                gate_i += peephole[0, j] * c_prev
                gate_f += peephole[1, j] * c_prev
            input_gate = activate(clip_value(gate_i, clip), codes[0], alphas[0], betas[0])
            # As on the CPU (fastrnn/engine/cells/lstm.py says why): hold 1 - f, not f, and
            # update c' = c - (1 - f) c + i g in float64, rounded once.
            if flag:  # input_forget: f = 1 - i, so 1 - f = i
                complement = input_gate
            elif codes[0] == SIGMOID:  # 1 - sigmoid(a) = sigmoid(-a), exact at both ends
                complement = activate(-clip_value(gate_f, clip), codes[0], alphas[0], betas[0])
            else:
                complement = one - activate(clip_value(gate_f, clip), codes[0], alphas[0],
                                            betas[0])
            candidate = activate(clip_value(gate_g, clip), codes[1], alphas[1], betas[1])
            c_wide = float64(c_prev)
            forgotten = float64(complement) * c_wide if complement != zero else float64(0)
            c_new = flush_tiny(real(c_wide - forgotten + float64(input_gate) * float64(candidate)))
            c[j] = c_new
            if has_peephole:
                gate_o += peephole[2, j] * c_new
            output_gate = activate(clip_value(gate_o, clip), codes[0], alphas[0], betas[0])
            gated = activate(c_new, codes[2], alphas[2], betas[2]) * output_gate
            if has_projection:
                work[j] = gated
            else:
                h_next[j] = flush_tiny(gated)
        if has_projection:
            cuda.syncthreads()
            for k in range(tid, h_next.shape[0], threads):
                projected = zero
                for j in range(hidden):
                    projected += work[j] * w_proj_t[j, k]
                h_next[k] = flush_tiny(projected)

    @cuda.jit(device=True)
    def gru_step(tid, threads, hidden, flag, clip, gates_in, h_prev, h_next, w_hh_t, b_hh,
                 codes, alphas, betas, work):
        for j in range(tid, hidden, threads):
            recurrent_r = b_hh[j]
            recurrent_z = b_hh[hidden + j]
            recurrent_n = b_hh[2 * hidden + j]
            for k in range(hidden):
                h_k = h_prev[k]
                recurrent_r += h_k * w_hh_t[k, j]
                recurrent_z += h_k * w_hh_t[k, hidden + j]
                if flag:
                    recurrent_n += h_k * w_hh_t[k, 2 * hidden + j]
            reset = activate(clip_value(gates_in[j] + recurrent_r, clip),
                             codes[0], alphas[0], betas[0])
            update = activate(clip_value(gates_in[hidden + j] + recurrent_z, clip),
                              codes[0], alphas[0], betas[0])
            if flag:  # linear_before_reset: n = g(W_n x + b_in + r * (R_n h + b_hn))
                new = activate(clip_value(gates_in[2 * hidden + j] + reset * recurrent_n, clip),
                               codes[1], alphas[1], betas[1])
                h_next[j] = flush_tiny((one - update) * new + update * h_prev[j])
            else:
                work[j] = reset * h_prev[j]
                work[hidden + j] = update
        if not flag:  # reset before the product: n = g(W_n x + b_in + R_n (r * h) + b_hn)
            cuda.syncthreads()
            for j in range(tid, hidden, threads):
                recurrent_n = b_hh[2 * hidden + j]
                for k in range(hidden):
                    recurrent_n += work[k] * w_hh_t[k, 2 * hidden + j]
                new = activate(clip_value(gates_in[2 * hidden + j] + recurrent_n, clip),
                               codes[1], alphas[1], betas[1])
                update = work[hidden + j]
                h_next[j] = flush_tiny((one - update) * new + update * h_prev[j])

    @cuda.jit(device=True)
    def rnn_step(tid, threads, hidden, clip, gates_in, h_prev, h_next, w_hh_t, b_hh,
                 codes, alphas, betas):
        for j in range(tid, hidden, threads):
            gate = gates_in[j] + b_hh[j]
            for k in range(hidden):
                gate += h_prev[k] * w_hh_t[k, j]
            h_next[j] = flush_tiny(activate(clip_value(gate, clip), codes[0], alphas[0], betas[0]))

    @cuda.jit(device=True)
    def recurrent_step(cell, flag, clip, tid, threads, gates_in, h_prev, h_next, c, w_hh_t, b_hh,
                       peephole, w_proj_t, codes, alphas, betas, work):
        """One step of `cell` for one batch row, by the threads of one block.

        gates_in (G*H,): W x + b_ih, read only. h_prev, h_next (H_out,); c (H,) updated in place
        (LSTM; (0,) otherwise). work (2H,): scratch for the second phase. flag is input_forget
        (LSTM) or linear_before_reset (GRU); clip is of the model's dtype.
        Every thread of the block must call it (it may hold a block barrier). On return, h_next[k]
        is final for the k this thread owns (k = tid, tid + threads, ...), the others' only after
        a barrier.
        """
        hidden = w_hh_t.shape[1] // (4 if cell == LSTM else 3 if cell == GRU else 1)
        if cell == LSTM:
            lstm_step(tid, threads, hidden, flag, clip, gates_in, h_prev, h_next, c, w_hh_t,
                      b_hh, peephole, w_proj_t, codes, alphas, betas, work)
        elif cell == GRU:
            gru_step(tid, threads, hidden, flag, clip, gates_in, h_prev, h_next, w_hh_t, b_hh,
                     codes, alphas, betas, work)
        else:
            rnn_step(tid, threads, hidden, clip, gates_in, h_prev, h_next, w_hh_t, b_hh,
                     codes, alphas, betas)

    return recurrent_step
