"""LSTM cell.

fastrnn's gate order is PyTorch's: the 4H gate rows are blocks i, f, g, o. For one row of the batch,
with x the layer input, h and c the previous state, f/g/h the activations (default sigmoid, tanh,
tanh), P the optional peepholes (ONNX) and * the elementwise product:

    i  = f(clip(W_i x + b_ii + R_i h + b_hi + P_i * c))
    f' = f(clip(W_f x + b_if + R_f h + b_hf + P_f * c))        or 1 - i with input_forget
    g  = g(clip(W_g x + b_ig + R_g h + b_hg))
    c' = f' * c + i * g
    o  = f(clip(W_o x + b_io + R_o h + b_ho + P_o * c'))
    h' = o * h(c')                                           then h' = W_hr h' with a projection

clip bounds pre-activations to [-clip, clip] (ONNX `clip`; off when <= 0). The projection (torch
`proj_size`) makes h' of size H_out < H; c' stays of size H.
"""

from fastrnn.activations import activate
from fastrnn.cells.common import add_recurrent_product, clip_range, flush_tiny
from fastrnn.jit import kernel

NUM_GATES = 4


@kernel
def lstm_cell(gates, h_prev, c_prev, w_hh_t, b_hh, peephole, w_proj_t, codes, alphas, betas,
              clip, input_forget, h_new, c_new):
    """One LSTM step for one batch row, in place.

    gates: (4H,) holding W x + b_ih on entry; used as scratch. h_new/c_new may alias h_prev/c_prev.
    peephole: (3, H) rows i, f, o, or (3, 0) for none. w_proj_t: (H, H_out), or (0, 0) for none.
    """
    hidden = c_prev.shape[0]
    for j in range(4 * hidden):
        gates[j] += b_hh[j]
    add_recurrent_product(gates, 0, 4 * hidden, h_prev, w_hh_t)
    has_peephole = peephole.shape[1] > 0
    if has_peephole:
        for j in range(hidden):
            gates[j] += peephole[0, j] * c_prev[j]
            gates[hidden + j] += peephole[1, j] * c_prev[j]
    clip_range(gates, 0, 3 * hidden, clip)
    activate(gates, 0, hidden, codes[0], alphas[0], betas[0])
    if input_forget:
        for j in range(hidden):
            gates[hidden + j] = 1.0 - gates[j]
    else:
        activate(gates, hidden, 2 * hidden, codes[0], alphas[0], betas[0])
    activate(gates, 2 * hidden, 3 * hidden, codes[1], alphas[1], betas[1])
    for j in range(hidden):
        c_new[j] = gates[hidden + j] * c_prev[j] + gates[j] * gates[2 * hidden + j]
    flush_tiny(c_new)
    if has_peephole:
        for j in range(hidden):
            gates[3 * hidden + j] += peephole[2, j] * c_new[j]
    clip_range(gates, 3 * hidden, 4 * hidden, clip)
    activate(gates, 3 * hidden, 4 * hidden, codes[0], alphas[0], betas[0])
    # h(c') goes where g was, then is gated by o (and projected).
    for j in range(hidden):
        gates[2 * hidden + j] = c_new[j]
    activate(gates, 2 * hidden, 3 * hidden, codes[2], alphas[2], betas[2])
    if w_proj_t.shape[0] > 0:
        for j in range(hidden):
            gates[2 * hidden + j] *= gates[3 * hidden + j]
        for k in range(h_new.shape[0]):
            h_new[k] = 0.0
        for j in range(hidden):
            scale = gates[2 * hidden + j]
            for k in range(h_new.shape[0]):
                h_new[k] += scale * w_proj_t[j, k]
    else:
        for j in range(hidden):
            h_new[j] = gates[3 * hidden + j] * gates[2 * hidden + j]
    flush_tiny(h_new)
