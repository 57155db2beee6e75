"""Vanilla (Elman) RNN cell.

For one row of the batch, with x the layer input, h the previous state and f the activation
(tanh or relu in PyTorch; any of the ONNX set):

    h' = f(clip(W x + b_ih + R h + b_hh))
"""

from fastrnn.engine.activations import activate
from fastrnn.engine.cells.common import clip_range, flush_tiny
from fastrnn.engine.jit import kernel

NUM_GATES = 1


@kernel
def rnn_cell(gates, codes, alphas, betas, clip, h_new):
    """One RNN step for one batch row. gates: (H,) holding W x + R h + b (b = b_ih + b_hh, folded
    by the plan) on entry; used as scratch. h_new may be the previous state."""
    hidden = h_new.shape[0]
    clip_range(gates, 0, hidden, clip)
    activate(gates, 0, hidden, codes[0], alphas[0], betas[0])
    for j in range(hidden):
        h_new[j] = gates[j]
    flush_tiny(h_new)
