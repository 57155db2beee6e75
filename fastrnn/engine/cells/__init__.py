"""The recurrent cells, and `cell_step`, the one switch the driver calls.

Each cell module holds its equations (docstring) and its jitted one-row step. Cells are identified
by a small integer so that one compiled driver serves all of them.
"""

from fastrnn.engine.cells.gru import gru_cell, NUM_GATES as GRU_GATES
from fastrnn.engine.cells.lstm import lstm_cell, NUM_GATES as LSTM_GATES
from fastrnn.engine.cells.rnn import rnn_cell, NUM_GATES as RNN_GATES
from fastrnn.engine.jit import kernel

LSTM, GRU, RNN = 0, 1, 2
CELL_CODES = {"lstm": LSTM, "gru": GRU, "rnn_tanh": RNN, "rnn_relu": RNN}
NUM_GATES = {LSTM: LSTM_GATES, GRU: GRU_GATES, RNN: RNN_GATES}
# How many activations each cell takes (f, g, h for LSTM; f, g for GRU; f for RNN) and its defaults.
NUM_ACTIVATIONS = {LSTM: 3, GRU: 2, RNN: 1}
DEFAULT_ACTIVATIONS = {
    "lstm": ("Sigmoid", "Tanh", "Tanh"), "gru": ("Sigmoid", "Tanh"),
    "rnn_tanh": ("Tanh",), "rnn_relu": ("Relu",),
}


@kernel
def cell_step(cell, flag, clip, gates, recurrent_n, h_prev, c_prev, w_hh_t, b_hn, peephole,
              w_proj_t, codes, alphas, betas, h_new, c_new, work):
    """One step of `cell` for one batch row, given its gates' products (see each cell).

    `flag` is input_forget (LSTM) or linear_before_reset (GRU). recurrent_n, w_hh_t, b_hn and work
    (2H,) are the GRU's; peephole and w_proj_t the LSTM's; h_new/c_new may alias h_prev/c_prev.
    """
    if cell == LSTM:
        lstm_cell(gates, c_prev, peephole, w_proj_t, codes, alphas, betas, clip, flag, h_new,
                  c_new)
    elif cell == GRU:
        gru_cell(gates, recurrent_n, h_prev, w_hh_t, b_hn, codes, alphas, betas, clip, flag,
                 h_new, work)
    else:
        rnn_cell(gates, codes, alphas, betas, clip, h_new)
