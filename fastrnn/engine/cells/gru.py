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

Biases are folded once by the plan (fastrnn.engine.plan): b_r = b_ir + b_hr and b_z = b_iz + b_hz
go with the gates' products; b_in with W_n x; b_hn stays apart when the reset gate scales it
(linear_before_reset) and joins b_in otherwise.
"""

from fastrnn.engine.activations import activate
from fastrnn.engine.cells.common import clip_range, flush_tiny
from fastrnn.engine.products import add_scaled_rows
from fastrnn.engine.jit import kernel

NUM_GATES = 3


@kernel
def gru_cell(gates, recurrent_n, h_prev, w_hh_t, b_hn, codes, alphas, betas, clip,
             linear_before_reset, h_new, work):
    """One GRU step for one batch row, in place.

    gates: (3H,) holding W x + R h + b for r and z, and W_n x + b_in (+ b_hn with the reset before
    the product) for n. recurrent_n: (H,) R_n h, made by the driver with the reset after the
    product; with the reset before it, R_n (r * h) is made here from w_hh_t (H_out, 3H)'s n
    columns, in work (2H,). h_new may alias h_prev.
    """
    hidden = h_prev.shape[0]
    gates_rz = gates[:2 * hidden]
    reset_gate = gates[:hidden]
    update_gate = gates[hidden:2 * hidden]
    new_gate = gates[2 * hidden:3 * hidden]
    clip_range(gates_rz, 0, 2 * hidden, clip)
    activate(gates_rz, 0, 2 * hidden, codes[0], alphas[0], betas[0])
    if linear_before_reset:
        for j in range(hidden):
            new_gate[j] += reset_gate[j] * (recurrent_n[j] + b_hn[j])
    else:
        reset_state = work[:hidden]
        product = work[hidden:2 * hidden]
        for j in range(hidden):
            reset_state[j] = reset_gate[j] * h_prev[j]
            product[j] = 0.0
        add_scaled_rows(product, reset_state, w_hh_t, 2 * hidden)
        for j in range(hidden):
            new_gate[j] += product[j]
    clip_range(new_gate, 0, hidden, clip)
    activate(new_gate, 0, hidden, codes[1], alphas[1], betas[1])
    for j in range(hidden):
        z = update_gate[j]
        h_new[j] = (1.0 - z) * new_gate[j] + z * h_prev[j]
    flush_tiny(h_new)
