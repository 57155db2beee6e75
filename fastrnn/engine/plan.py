"""The plan: a model's weights packed once for the kernels, and every decision made about them.

A Plan is built once per model (and per ONNX recurrent node). For every layer and direction it
holds the cell (which of LSTM/GRU/RNN, its flag, its clip and activations) and its weights in one
flat read-only array, with a small int64 table saying where each block starts:

    W_ih^T   (I_l, G*H)     transposed, so that a product adds scaled contiguous rows
    W_hh^T   (H_out, G*H)
    bias     (G*H,)         folded once: b_ih + b_hh, except the GRU's n block (below)
    b_hn     (H,)           the GRU's b_hn where the reset gate scales it; zeros otherwise
    peephole (3, H)         LSTM only (or (3, 0)); rows i, f, o
    W_proj^T (H, H_out)     LSTM only (or (0, 0))

The GRU's n block of `bias` is b_in, plus b_hn when the reset comes before the product (b_hn then
sits outside r * (...)). With low-bit weights (fastrnn.engine.quantise) the flat array is of the
matrices' storage dtype (uint32 for bfloat16, int8), the three matrices are stored in it as the
products read them (bfloat16: two rows of the transpose a word; int8: q^T, then its column scales'
bytes; fastrnn.engine.products), the float32 blocks as their bytes. The array and every block in
it start on a 64-byte boundary (fastrnn.engine.memory). One flat array keeps the per-call cost
low (a kernel pays ~70 ns per array argument) and lets sequences, streams, pools and ONNX nodes
read the same bytes.

`threads_for(batch)` is the one place that decides how a call is cut across cores.
"""

import numpy as np

from fastrnn.engine import memory, parallel
from fastrnn.engine.activations import RELU, SIGMOID, TANH
from fastrnn.engine.cells import GRU, LSTM
from fastrnn.engine.quantise import MATRICES, storage_dtype
from fastrnn.engine.weights import LayerWeights

# Columns of Plan.layout (one row per layer-direction).
(W_IH, W_HH, BIAS, B_HN, PEEPHOLE, W_PROJ, INPUTS, OUTPUTS, HIDDEN, GATES, PEEPHOLE_WIDTH,
 PROJ_ROWS, CELL, FLAG, REVERSE, CODES) = range(16)
# FLAT_CELL: 1 where the row streams through fastrnn.engine.flat (has_flat_cell, float weights).
FLAT_CELL = CODES + 3
LAYOUT_COLUMNS = FLAT_CELL + 1
# Columns of Plan.parameters (float64): the three activations' alphas, their betas, the clip.
ALPHAS, BETAS, CLIP = 0, 3, 6
PARAMETER_COLUMNS = 7

# A thread takes at least this many batch rows (or pool streams) of a call: below it, a second
# thread's start-up and its second trip of the weights through a cache cost more than it saves.
MIN_ROWS_PER_THREAD = 4


def has_flat_cell(layout, parameters, streaming=True):
    """Whether the layer-direction rows of a plan (layout, parameters) are all cells that
    fastrnn.engine.flat's cell_flat runs: torch's LSTM (no peepholes, projection, clip or
    coupled gates), GRU (reset after the product) and tanh/ReLU RNN, default activations;
    forwards only when `streaming` (a reverse direction runs on whole sequences, its steps fed
    in reverse). Others go through the driver's step_block and sequence_block."""
    for row, p in zip(layout, parameters):
        if p[CLIP] > 0 or (streaming and row[REVERSE]):
            return False
        codes = tuple(row[CODES:CODES + 3])
        if row[CELL] == LSTM:
            ok = (codes == (SIGMOID, TANH, TANH) and row[PEEPHOLE_WIDTH] == 0
                  and row[PROJ_ROWS] == 0 and not row[FLAG])
        elif row[CELL] == GRU:
            ok = codes[:2] == (SIGMOID, TANH) and row[FLAG]
        else:
            ok = codes[0] in (TANH, RELU)
        if not ok:
            return False
    return True


class Plan:
    """A model's weights and cells as the CPU kernels read them (see the module docstring).

        weights     (N,) read-only, every layer-direction's blocks back to back
        layout      (L*D, LAYOUT_COLUMNS) int64
        parameters  (L*D, PARAMETER_COLUMNS) float64
        layers      the LayerWeights in fastrnn's layout, as read-only views into `weights`
                    (biases excepted: b_ih and b_hh are kept as given, and folded into `bias`);
                    with low-bit weights, read-only float32 arrays of the values they stand for
        weight_format  "float32", "float64", "bfloat16" or "int8"
        encoded     per layer-direction, {name: Quantised} of its matrices; None for float weights
    """

    def __init__(self, config, layers, dtype, reverse=None, encoded=None):
        """reverse: whether each direction runs backwards in time; (False, True) for a
        bidirectional model and (False,) otherwise, unless given (ONNX's direction="reverse").
        encoded: the layers' matrices in a low-bit format (see the class docstring); `layers`
        then holds the rest (and dtype is float32, the arithmetic's)."""
        dtype = np.dtype(dtype)
        if reverse is None:
            reverse = (False, True)[:config.num_directions]
        self.config = config
        self.dtype = dtype
        self.encoded = encoded
        self.weight_format = encoded[0]["w_ih"].format if encoded else dtype.name
        storage = storage_dtype(self.weight_format)
        self.num_layers = config.num_layers
        self.num_directions = config.num_directions
        codes, alphas, betas = config.activation_table()
        hidden, output = config.hidden_size, config.output_size
        gates = config.num_gates * hidden
        cell = config.cell
        flag = config.input_forget if cell == LSTM else config.linear_before_reset
        blocks, layout, parameters, start = [], [], [], 0
        for ld, w in enumerate(layers):
            direction = ld % config.num_directions
            bias = (w.b_ih + w.b_hh).astype(dtype)
            b_hn = np.zeros(hidden, dtype)
            if cell == GRU and config.linear_before_reset:
                n = slice(2 * hidden, 3 * hidden)
                bias[n] = w.b_ih[n]
                b_hn = w.b_hh[n].astype(dtype)
            peephole = w.peephole if w.peephole is not None else np.zeros((3, 0), dtype)
            w_proj_t = w.w_proj.T if w.w_proj is not None else np.zeros((0, 0), dtype)
            row = []
            for name, block in zip(("w_ih", "w_hh", "bias", "b_hn", "peephole", "w_proj"),
                                   (w.w_ih.T, w.w_hh.T, bias, b_hn, peephole, w_proj_t)):
                if encoded is None:
                    stored = np.ascontiguousarray(block, dtype).ravel()
                    stored = np.concatenate([stored, np.zeros(memory.padding(stored.size, dtype),
                                                              dtype)])
                else:
                    stored = _stored_block(encoded[ld].get(name), block, storage)
                row.append(start)
                blocks.append(stored)
                start += stored.size
            row += [w.w_ih.shape[1], output, hidden, gates, peephole.shape[1], w_proj_t.shape[0],
                    cell, int(flag), int(reverse[direction]), *codes[direction], 0]
            layout.append(row)
            parameters.append([*alphas[direction], *betas[direction], config.clip])
        self.weights = memory.copy(np.concatenate(blocks), storage)
        self.weights.setflags(write=False)
        self.layout = np.array(layout, np.int64)
        self.parameters = np.array(parameters, np.float64)
        if encoded is None:
            for row, p in zip(self.layout, self.parameters):
                row[FLAT_CELL] = has_flat_cell(row[None], p[None])
        self.layout.setflags(write=False)
        self.parameters.setflags(write=False)
        if encoded is None:
            self.layers = [self._layer_weights(ld, w) for ld, w in enumerate(layers)]
        else:
            self.layers = [_dequantised_layer(w, e) for w, e in zip(layers, encoded)]
        self._stacked = None
        # Whole sequences of full length go through fastrnn.engine.flat.sequence_flat.
        self.flat_sequences = encoded is None and has_flat_cell(self.layout, self.parameters,
                                                                streaming=False)
        # Multiply-adds of the first layer's step for one row and direction: what the driver
        # weighs against PARALLEL_DIRECTIONS.
        first = self.layout[0]
        self.step_work = int(first[GATES]) * int(first[INPUTS] + first[HIDDEN])

    def view(self, ld, column, shape):
        """The block of layer-direction ld that starts at layout column `column`, as `shape`."""
        start = self.layout[ld, column]
        size = int(np.prod(shape))
        return self.weights[start:start + size].reshape(shape)

    def _layer_weights(self, ld, given):
        row = self.layout[ld]
        inputs, output, gates = row[INPUTS], row[OUTPUTS], row[GATES]
        hidden = row[HIDDEN]
        b_ih = np.array(given.b_ih, self.dtype)
        b_hh = np.array(given.b_hh, self.dtype)
        for array in (b_ih, b_hh):
            array.setflags(write=False)
        return LayerWeights(
            w_ih=self.view(ld, W_IH, (inputs, gates)).T,
            w_hh=self.view(ld, W_HH, (output, gates)).T,
            b_ih=b_ih, b_hh=b_hh,
            peephole=(self.view(ld, PEEPHOLE, (3, hidden)) if row[PEEPHOLE_WIDTH] else None),
            w_proj=(self.view(ld, W_PROJ, (hidden, output)).T if row[PROJ_ROWS] else None))

    def threads_for(self, rows):
        """How many threads a call over `rows` independent rows uses (1: the calling thread)."""
        return max(1, min(parallel.threads_for_call(), rows // MIN_ROWS_PER_THREAD))

    def stacked(self):
        """The weights stacked per layer-direction, for the CUDA target, which copies them to the
        device once (built on first use): an object with w_ih_flat, w_ih_offset, w_ih_t,
        w_hh_t (L*D, H_out, G*H), b_ih, b_hh (L*D, G*H), peephole (L*D, 3, H or 0),
        w_proj_t (L*D, H, H_out or 0, 0), codes (L*D, 3) int64, alphas, betas (L*D, 3)."""
        if self._stacked is None:
            self._stacked = _Stacked(self)
        return self._stacked


def _stored_block(quantised, block, storage):
    """One block of a low-bit plan as `storage` elements, padded to a cache line: a
    matrix (quantised: its Quantised, transposed as `block` is) or a float32 block's bytes."""
    if quantised is not None and quantised.format == "bfloat16":
        # Rows 2p and 2p + 1 of the transposed matrix share the words of row p: low half, high
        # half (little-endian), an odd last row paired with zeros.
        data = quantised.data.T
        if data.shape[0] % 2:
            data = np.concatenate([data, np.zeros((1, data.shape[1]), np.uint16)])
        stored = np.ascontiguousarray(np.stack([data[0::2], data[1::2]], axis=-1)) \
            .astype("<u2").view("<u4").astype(storage).ravel()
    elif quantised is not None:
        data = np.ascontiguousarray(quantised.data.T)
        stored = data.view(storage).ravel()
        if data.shape[0]:
            stored = np.concatenate([stored, quantised.scale.astype(np.float32).view(np.int8)])
    else:
        stored = np.ascontiguousarray(block, np.float32).ravel().view(storage)
    return np.concatenate([stored, np.zeros(memory.padding(stored.size, storage), storage)])


def _dequantised_layer(given, encoded):
    """A low-bit layer as LayerWeights of read-only float32 arrays: its matrices' values as
    stored, its other weights as given."""
    arrays = {}
    for name, value in given.arrays().items():
        array = encoded[name].dequantised() if name in MATRICES else np.array(value, np.float32)
        array.setflags(write=False)
        arrays[name] = array
    return LayerWeights(**arrays)


class _Stacked:
    def __init__(self, plan):
        layers, count = plan.layers, len(plan.layers)
        self.w_ih_t = [np.ascontiguousarray(w.w_ih.T) for w in layers]
        self.w_ih_flat = np.concatenate([w.ravel() for w in self.w_ih_t])
        sizes = [w.size for w in self.w_ih_t]
        self.w_ih_offset = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.w_hh_t = np.ascontiguousarray(np.stack([w.w_hh.T for w in layers]))
        self.b_ih = np.stack([w.b_ih for w in layers])
        self.b_hh = np.stack([w.b_hh for w in layers])
        dtype = plan.dtype
        self.peephole = (np.stack([w.peephole for w in layers]) if layers[0].peephole is not None
                         else np.zeros((count, 3, 0), dtype))
        self.w_proj_t = (np.ascontiguousarray(np.stack([w.w_proj.T for w in layers]))
                         if layers[0].w_proj is not None else np.zeros((count, 0, 0), dtype))
        self.codes = np.ascontiguousarray(plan.layout[:, CODES:CODES + 3])
        self.alphas = np.ascontiguousarray(plan.parameters[:, ALPHAS:ALPHAS + 3])
        self.betas = np.ascontiguousarray(plan.parameters[:, BETAS:BETAS + 3])
