"""GRU cell, both conventions of the reset gate.

fastrnn's gate order is PyTorch's: the 3H gate rows are blocks r, z, n. For one row of the batch,
with x the layer input, h the previous state, f/g the activations (default sigmoid, tanh):

    r  = f(clip(W_r x + b_ir + R_r h + b_hr))
    z  = f(clip(W_z x + b_iz + R_z h + b_hz))
    n  = g(clip(W_n x + b_in + r * (R_n h + b_hn)))      linear_before_reset (PyTorch, cuDNN, ONNX=1)
    n  = g(clip(W_n x + b_in + R_n (r * h) + b_hn))      reset before the product (ONNX default, Cho)
    h' = (1 - z) * n + z * h

z weights the previous state, as in PyTorch and ONNX. The cs224n notes' update gate u weights the
new content (h' = (1 - u) * h + u * n), so u = 1 - z; sigmoid(-a) = 1 - sigmoid(a), and the converters
turn u-convention weights into z-convention ones by negating the u rows and biases.
"""

from fastrnn.activations import activate
from fastrnn.cells.common import add_recurrent_product, clip_range, flush_tiny
from fastrnn.jit import kernel

NUM_GATES = 3


@kernel
def gru_cell(gates, h_prev, w_hh_t, b_hh, codes, alphas, betas, clip, linear_before_reset,
             h_new, scratch):
    """One GRU step for one batch row, in place.

    gates: (3H,) holding W x + b_ih on entry. scratch: at least (4H,). h_new may alias h_prev.
    """
    hidden = h_prev.shape[0]
    recurrent_stop = 3 * hidden if linear_before_reset else 2 * hidden
    for j in range(recurrent_stop):
        scratch[j] = b_hh[j]
    add_recurrent_product(scratch, 0, recurrent_stop, h_prev, w_hh_t)
    for j in range(2 * hidden):
        gates[j] += scratch[j]
    clip_range(gates, 0, 2 * hidden, clip)
    activate(gates, 0, 2 * hidden, codes[0], alphas[0], betas[0])
    if linear_before_reset:
        for j in range(hidden):
            gates[2 * hidden + j] += gates[j] * scratch[2 * hidden + j]
    else:
        # R_n (r * h): the reset state goes in scratch[3H:4H] and is multiplied as a (1, H) row.
        for j in range(hidden):
            scratch[3 * hidden + j] = gates[j] * h_prev[j]
            scratch[2 * hidden + j] = b_hh[2 * hidden + j]
        for k in range(hidden):
            scale = scratch[3 * hidden + k]
            for j in range(2 * hidden, 3 * hidden):
                scratch[j] += scale * w_hh_t[k, j]
        for j in range(hidden):
            gates[2 * hidden + j] += scratch[2 * hidden + j]
    clip_range(gates, 2 * hidden, 3 * hidden, clip)
    activate(gates, 2 * hidden, 3 * hidden, codes[1], alphas[1], betas[1])
    for j in range(hidden):
        z = gates[hidden + j]
        h_new[j] = (1.0 - z) * gates[2 * hidden + j] + z * h_prev[j]
    flush_tiny(h_new)
