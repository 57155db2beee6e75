"""LSTM cell.

fastrnn's gate order is PyTorch's: the 4H gate rows are blocks i, f, g, o. For one row of the batch,
with x the layer input, h and c the previous state, f/g/h the activations (default sigmoid, tanh,
tanh), P the optional peepholes (ONNX) and * the elementwise product:

    i  = f(clip(W_i x + b_ii + R_i h + b_hi + P_i * c))
    f' = f(clip(W_f x + b_if + R_f h + b_hf + P_f * c))        or 1 - i with input_forget
    g  = g(clip(W_g x + b_ig + R_g h + b_hg))
    c' = f' * c + i * g                                      (computed as c - (1 - f') * c + i * g)
    o  = f(clip(W_o x + b_io + R_o h + b_ho + P_o * c'))
    h' = o * h(c')                                           then h' = W_hr h' with a projection

clip bounds pre-activations to [-clip, clip] (ONNX `clip`; off when <= 0). The projection (torch
`proj_size`) makes h' of size H_out < H; c' stays of size H. The two biases are one, b = b_i + b_h,
folded once by the plan (fastrnn.engine.plan).
"""

import numpy as np

from fastrnn.engine.activations import SIGMOID, activate, fast_sigmoid
from fastrnn.engine.cells.common import clip_range, flush_tiny
from fastrnn.engine.products import add_scaled_rows
from fastrnn.engine.jit import kernel

NUM_GATES = 4


@kernel
def lstm_cell(gates, c_prev, peephole, w_proj_t, codes, alphas, betas, clip, input_forget, h_new,
              c_new):
    """One LSTM step for one batch row, in place.

    gates: (4H,) holding W x + R h + b on entry (the driver's products); used as scratch.
    h_new/c_new may alias the previous state. peephole: (3, H) rows i, f, o, or (3, 0) for none.
    w_proj_t: (H, H_out), or (0, 0) for none.
    """
    hidden = c_prev.shape[0]
    input_gate = gates[:hidden]
    forget_gate = gates[hidden:2 * hidden]
    cell_gate = gates[2 * hidden:3 * hidden]
    output_gate = gates[3 * hidden:4 * hidden]
    has_peephole = peephole.shape[1] > 0
    if has_peephole:
        peep_i, peep_f = peephole[0], peephole[1]
        for j in range(hidden):
            input_gate[j] += peep_i[j] * c_prev[j]
            forget_gate[j] += peep_f[j] * c_prev[j]
    clip_range(gates, 0, 3 * hidden, clip)
    activate(input_gate, 0, hidden, codes[0], alphas[0], betas[0])
    # forget_gate gets 1 - f', not f': near 1, f' itself keeps only the bits of float32's spacing
    # below 1 (6e-8), and that rounding, multiplied by c, adds up over a long sequence; 1 - f'
    # keeps its own relative precision. With the sigmoid it is sigmoid(-a); 1 - i is i.
    if input_forget:
        for j in range(hidden):
            forget_gate[j] = input_gate[j]
    elif codes[0] == SIGMOID:
        for j in range(hidden):
            forget_gate[j] = fast_sigmoid(-forget_gate[j])
    else:
        activate(forget_gate, 0, hidden, codes[0], alphas[0], betas[0])
        for j in range(hidden):
            forget_gate[j] = 1.0 - forget_gate[j]
    activate(cell_gate, 0, hidden, codes[1], alphas[1], betas[1])
    # c' = c - (1 - f') c + i g in float64, where both products are exact, rounded once: rounding
    # f' c to float32 before the sum made the error that builds up in c over a long sequence 1.6
    # times larger (tests/test_precision.py). (1 - f') c is 0 where 1 - f' is, even for c = inf.
    for j in range(hidden):
        complement = np.float64(forget_gate[j])
        forgotten = complement * c_prev[j] if complement != 0.0 else 0.0
        c_new[j] = c_prev[j] - forgotten + np.float64(input_gate[j]) * cell_gate[j]
    flush_tiny(c_new)
    if has_peephole:
        peep_o = peephole[2]
        for j in range(hidden):
            output_gate[j] += peep_o[j] * c_new[j]
    clip_range(output_gate, 0, hidden, clip)
    activate(output_gate, 0, hidden, codes[0], alphas[0], betas[0])
    # h(c') goes where g was, then is gated by o (and projected).
    squashed = cell_gate
    for j in range(hidden):
        squashed[j] = c_new[j]
    activate(squashed, 0, hidden, codes[2], alphas[2], betas[2])
    if w_proj_t.shape[0] > 0:
        for j in range(hidden):
            squashed[j] *= output_gate[j]
        for k in range(h_new.shape[0]):
            h_new[k] = 0.0
        add_scaled_rows(h_new, squashed, w_proj_t, 0)
    else:
        for j in range(hidden):
            h_new[j] = output_gate[j] * squashed[j]
    flush_tiny(h_new)
