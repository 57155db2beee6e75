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

from fastrnn.engine.activations import activate
from fastrnn.engine.cells.common import add_scaled_rows, clip_range, flush_tiny
from fastrnn.engine.jit import kernel

NUM_GATES = 3


@kernel
def gru_cell(gates, recurrent, h_prev, w_hh_t, b_hh, codes, alphas, betas, clip,
             linear_before_reset, h_new, work):
    """One GRU step for one batch row, in place.

    gates: (3H,) holding W x + b_ih on entry. recurrent: (3H,) R h, made by the driver; with the
    reset before the product its n block is not used, and R_n (r * h) is made here in work, (2H,).
    h_new may alias h_prev.
    """
    hidden = h_prev.shape[0]
    gates_rz = gates[:2 * hidden]
    reset_gate = gates[:hidden]
    update_gate = gates[hidden:2 * hidden]
    new_gate = gates[2 * hidden:3 * hidden]
    for j in range(2 * hidden):
        gates_rz[j] += recurrent[j] + b_hh[j]
    clip_range(gates_rz, 0, 2 * hidden, clip)
    activate(gates_rz, 0, 2 * hidden, codes[0], alphas[0], betas[0])
    recurrent_n = recurrent[2 * hidden:3 * hidden]
    bias_n = b_hh[2 * hidden:3 * hidden]
    if linear_before_reset:
        for j in range(hidden):
            new_gate[j] += reset_gate[j] * (recurrent_n[j] + bias_n[j])
    else:
        reset_state = work[:hidden]
        product = work[hidden:2 * hidden]
        for j in range(hidden):
            reset_state[j] = reset_gate[j] * h_prev[j]
            product[j] = bias_n[j]
        add_scaled_rows(product, reset_state, w_hh_t, 2 * hidden)
        for j in range(hidden):
            new_gate[j] += product[j]
    clip_range(new_gate, 0, hidden, clip)
    activate(new_gate, 0, hidden, codes[1], alphas[1], betas[1])
    for j in range(hidden):
        z = update_gate[j]
        h_new[j] = (1.0 - z) * new_gate[j] + z * h_prev[j]
    flush_tiny(h_new)
