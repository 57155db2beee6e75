"""Recurrent: an LSTM, GRU or RNN stack inside a chain, run by the engine (a fastrnn.Model).

The equations are the cells' (fastrnn/engine/cells/, one module per cell). On whole sequences the
layer calls model(x) from the zero state, x (T, B, C_in) time-major -> y (T, B, D*H_out); streams
use the model's state table (fastrnn.engine.table): advance() for a step, run_chunk() for a chunk,
read/write/reset for the state, (h (L*D, rows, H_out), c (L*D, rows, H), or (L, rows, 0) for
cells without c). A bidirectional stack needs the whole sequence and is refused for streaming.

The start state is zero unless `initial_state` gives one, (h0 (L*D, H_out), c0 (L*D, H)) with c0
None for cells without c, the same for every row (a model trained with a learned start state, as
Neural Amp Modeler's LSTMs are): whole sequences start from it, a stream starts from it and
reset() returns to it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from numba import uint64

from fastrnn.engine.activations import RELU, SIGMOID, TANH, fast_sigmoid, fast_tanh
from fastrnn.engine.cells import GRU, LSTM
from fastrnn.engine.cells.common import DENORMAL_FLUSH
from fastrnn.engine.jit import kernel
from fastrnn.engine.plan import (B_HN, BIAS, CELL, CLIP, CODES, FLAG, GATES, HIDDEN, INPUTS,
                                 PEEPHOLE_WIDTH, PROJ_ROWS, REVERSE, W_HH, W_IH)
from fastrnn.layers import Layer


def has_flat_cell(layout, parameters):
    """Whether the layer-direction rows of a plan (layout, parameters) are all cells cell_flat
    runs: torch's LSTM (no peepholes, projection, clip or coupled gates), GRU (reset after the
    product) and tanh/ReLU RNN, default activations, forwards. Others stream through the engine's
    step_block."""
    for row, p in zip(layout, parameters):
        if p[CLIP] > 0 or row[REVERSE]:
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


@kernel
def _add_products(weights, rows_at, width, columns, vectors, vector_at, vector_stride, count, out,
                  out_at, out_stride, rows):
    """out[out_at + b out_stride + j] += sum_k vectors[vector_at + b vector_stride + k]
    * weights[rows_at + k width + j] for j < columns and every row b < rows: the engine's
    add_scaled_rows_batch (fastrnn.engine.products), four weight rows applied to two batch rows
    at a time in the same order, on flat arrays. Indexes are made unsigned: an index Numba
    cannot prove non-negative keeps a wraparound check that stops the loop vectorising."""
    k = 0
    while k + 4 <= count:
        r0 = rows_at + k * width
        r1, r2, r3 = r0 + width, r0 + 2 * width, r0 + 3 * width
        b = 0
        while b + 2 <= rows:
            u = vector_at + b * vector_stride + k
            v = u + vector_stride
            u0, u1 = vectors[uint64(u)], vectors[uint64(u + 1)]
            u2, u3 = vectors[uint64(u + 2)], vectors[uint64(u + 3)]
            v0, v1 = vectors[uint64(v)], vectors[uint64(v + 1)]
            v2, v3 = vectors[uint64(v + 2)], vectors[uint64(v + 3)]
            first = out_at + b * out_stride
            second = first + out_stride
            for j in range(columns):
                w0, w1 = weights[uint64(r0 + j)], weights[uint64(r1 + j)]
                w2, w3 = weights[uint64(r2 + j)], weights[uint64(r3 + j)]
                out[uint64(first + j)] += u0 * w0 + u1 * w1 + u2 * w2 + u3 * w3
                out[uint64(second + j)] += v0 * w0 + v1 * w1 + v2 * w2 + v3 * w3
            b += 2
        if b < rows:
            u = vector_at + b * vector_stride + k
            u0, u1 = vectors[uint64(u)], vectors[uint64(u + 1)]
            u2, u3 = vectors[uint64(u + 2)], vectors[uint64(u + 3)]
            first = out_at + b * out_stride
            for j in range(columns):
                out[uint64(first + j)] += (u0 * weights[uint64(r0 + j)]
                                           + u1 * weights[uint64(r1 + j)]
                                           + u2 * weights[uint64(r2 + j)]
                                           + u3 * weights[uint64(r3 + j)])
        k += 4
    while k < count:
        r0 = rows_at + k * width
        for b in range(rows):
            scale = vectors[uint64(vector_at + b * vector_stride + k)]
            first = out_at + b * out_stride
            for j in range(columns):
                out[uint64(first + j)] += scale * weights[uint64(r0 + j)]
        k += 1


def flat_scratch_size(config, rows, block_rows):
    """Elements of cell_flat's scratch for a pass of `block_rows` (step, row) pairs of `rows`
    rows: the pass's gates, then R_n h and the gathered h of a step."""
    return (block_rows * config.num_gates + 2 * rows) * config.hidden_size


@kernel
def cell_flat(buffer, source, target, rows, steps, slots, state, h_at, c_at, weights, layout, at,
              scratch, stride):
    """A pass of layer-direction `at` of a plan (has_flat_cell) through `steps` steps, for state
    rows slots[0..rows-1], on flat arrays (the chain kernel's form, fastrnn.layers.program): x
    (steps * rows, I) at buffer[source:] -> h' (steps * rows, H) at buffer[target:], time-major;
    slot s's h at state[h_at + s H:], its c (LSTM) at state[c_at + s H:]; the layer's plan
    layout row at layout[at:] (its offsets made absolute in `weights` by the program).

    First b + W_ih x for every (step, row) pair of the pass, in one product (each weight row
    read once for every two pairs), into the gates at scratch[0:] (pair p's at p G H); then the
    recurrence step by step, in this one call: a call that passes arrays costs an atomic
    reference count per array on entry and exit, which was a third of an LSTM-16 step when
    each step was a call. The step's own scratch is at scratch[stride G H:]. The equations and
    their rounding are the engine's cells' (fastrnn.engine.cells: lstm_cell, gru_cell,
    rnn_cell) and its products' (four weight rows at a time, the batch rows two at a time).
    scratch: flat_scratch_size(config, rows, stride)."""
    cell, hidden, gate_rows = layout[at + CELL], layout[at + HIDDEN], layout[at + GATES]
    inputs, w_hh, b_hn = layout[at + INPUTS], layout[at + W_HH], layout[at + B_HN]
    relu = layout[at + CODES] == RELU
    bias = layout[at + BIAS]
    for r in range(steps * rows):
        for j in range(gate_rows):
            scratch[uint64(r * gate_rows + j)] = weights[uint64(bias + j)]
    _add_products(weights, layout[at + W_IH], gate_rows, gate_rows, buffer, source, inputs, inputs,
                  scratch, 0, gate_rows, steps * rows)
    n_at = stride * gate_rows        # the GRU's R_n h, (rows, H)
    h_rows = n_at + rows * hidden    # the previous h of every row, gathered, (rows, H)
    for step in range(steps):
        gates_at = step * rows * gate_rows
        for r in range(rows):
            h = h_at + slots[r] * hidden
            for j in range(hidden):
                scratch[uint64(h_rows + r * hidden + j)] = state[uint64(h + j)]
        if cell == GRU:
            _add_products(weights, w_hh, gate_rows, 2 * hidden, scratch, h_rows, hidden, hidden,
                          scratch, gates_at, gate_rows, rows)
            for j in range(rows * hidden):
                scratch[uint64(n_at + j)] = 0.0
            _add_products(weights, w_hh + 2 * hidden, gate_rows, hidden, scratch, h_rows, hidden,
                          hidden, scratch, n_at, hidden, rows)
        else:
            _add_products(weights, w_hh, gate_rows, gate_rows, scratch, h_rows, hidden, hidden,
                          scratch, gates_at, gate_rows, rows)
        for r in range(rows):
            slot = slots[r]
            h, c, g = h_at + slot * hidden, c_at + slot * hidden, gates_at + r * gate_rows
            previous_h = h_rows + r * hidden
            if cell == GRU:
                n = n_at + r * hidden
                for j in range(hidden):
                    reset = fast_sigmoid(scratch[uint64(g + j)])
                    update = fast_sigmoid(scratch[uint64(g + hidden + j)])
                    new = fast_tanh(scratch[uint64(g + 2 * hidden + j)]
                                    + reset * (scratch[uint64(n + j)] + weights[uint64(b_hn + j)]))
                    value = (1.0 - update) * new + update * scratch[uint64(previous_h + j)]
                    state[uint64(h + j)] = value
                    value = state[uint64(h + j)]
                    state[uint64(h + j)] = value * (abs(value) >= DENORMAL_FLUSH)
            elif cell == LSTM:
                # One plain loop per activation, each vectorising, as the engine's activate.
                for j in range(g, g + hidden):
                    scratch[uint64(j)] = fast_sigmoid(scratch[uint64(j)])
                for j in range(g + hidden, g + 2 * hidden):
                    scratch[uint64(j)] = fast_sigmoid(-scratch[uint64(j)])
                for j in range(g + 2 * hidden, g + 3 * hidden):
                    scratch[uint64(j)] = fast_tanh(scratch[uint64(j)])
                for j in range(g + 3 * hidden, g + 4 * hidden):
                    scratch[uint64(j)] = fast_sigmoid(scratch[uint64(j)])
                # c' in float64, rounded to the state's dtype, flushed, then h' from it.
                for j in range(hidden):
                    complement = np.float64(scratch[uint64(g + hidden + j)])
                    previous = state[uint64(c + j)]
                    forgotten = complement * previous if complement != 0.0 else 0.0
                    value = state.dtype.type(previous - forgotten
                                             + np.float64(scratch[uint64(g + j)])
                                             * scratch[uint64(g + 2 * hidden + j)])
                    value = value * (abs(value) >= DENORMAL_FLUSH)
                    state[uint64(c + j)] = value
                    out = scratch[uint64(g + 3 * hidden + j)] * fast_tanh(value)
                    state[uint64(h + j)] = out * (abs(out) >= DENORMAL_FLUSH)
            else:
                for j in range(hidden):
                    v = scratch[uint64(g + j)]
                    value = (v if not v < 0 else 0.0) if relu else fast_tanh(v)
                    state[uint64(h + j)] = value
                    value = state[uint64(h + j)]
                    state[uint64(h + j)] = value * (abs(value) >= DENORMAL_FLUSH)
            y = target + (step * rows + r) * hidden
            for j in range(hidden):
                buffer[uint64(y + j)] = state[uint64(h + j)]


class Recurrent(Layer):
    def __init__(self, model, *, initial_state=None):
        from fastrnn.model import Model
        if not isinstance(model, Model):
            raise TypeError(f"Recurrent wraps a fastrnn.Model, got {type(model).__name__}")
        if model.config.batch_first:  # inside a chain every array is time-major
            # as stored: low-bit weights stay low-bit
            model = model._with_config(dataclasses.replace(model.config, batch_first=False))
        self.model = model
        self.dtype = model.dtype
        self.in_features, self.out_features = model.input_size, model.output_size
        self.initial_state = None if initial_state is None else _start_state(model, initial_state)

    def start_state(self, rows):
        """(h, c) for `rows` rows at the start: initial_state repeated, or None for zeros."""
        if self.initial_state is None:
            return None
        h0, c0 = self.initial_state
        h = np.repeat(h0[:, None, :], rows, axis=1)
        return h if c0 is None else (h, np.repeat(c0[:, None, :], rows, axis=1))

    def sequence(self, x):
        y, _ = self.model(x, self.start_state(x.shape[1]))
        return y

    def stream_refusal(self):
        if self.model.config.bidirectional:
            return (f"{self!r} is bidirectional: its reverse direction needs the whole sequence "
                    f"before its first output, so it cannot stream. Run it on whole sequences")
        return None

    def table(self, rows):
        return RecurrentTable(self.model, rows, self.start_state(rows))

    def config(self):
        return {"type": "recurrent", **self.model.config.to_json(),
                **({"initial_state": True} if self.initial_state is not None else {})}

    def weights(self):
        arrays = {f"{index}.{name}": array for index, layer in enumerate(self.model.layers)
                  for name, array in sorted(layer.arrays().items())}
        if self.initial_state is not None:
            h0, c0 = self.initial_state
            arrays["initial_h"] = h0
            if c0 is not None:
                arrays["initial_c"] = c0
        return arrays

    def __repr__(self):
        return f"Recurrent({self.model!r})"


def _start_state(model, initial_state):
    """initial_state as read-only (h0 (L*D, H_out), c0 (L*D, H) or None) of the model's dtype."""
    h_shape, c_shape = model.state_shapes(1)
    if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
        raise ValueError("initial_state must be (h0, c0), with c0 None for a GRU or RNN")
    h0, c0 = initial_state
    if (c0 is None) != (c_shape is None):
        raise ValueError(f"a {model.kind} initial_state " + ("needs a c0" if c_shape else
                                                              "has no c0: pass (h0, None)"))
    checked = []
    for name, value, shape in (("h0", h0, h_shape), ("c0", c0, c_shape)):
        if value is None:
            checked.append(None)
            continue
        array = np.array(value, dtype=model.dtype, copy=True, order="C")
        if array.shape != (shape[0], shape[2]):
            raise ValueError(f"initial_state {name} must have shape {(shape[0], shape[2])} "
                             f"(layers x directions, size), got {array.shape}")
        array.setflags(write=False)
        checked.append(array)
    return tuple(checked)


class RecurrentTable:
    def __init__(self, model, rows, start=None):
        self.table = model.state_table(rows)
        self.rows = slice(0, rows)
        # (h, c) for every row at the start, or None for the zero state.
        self.start = start if start is None or isinstance(start, tuple) else (start, None)
        self._step = self.table.stepper(np.arange(rows, dtype=np.int64))
        self.reset()

    def step(self, x, out):
        self._step(x, out)

    def chunk(self, xs):
        return self.table.run_chunk(xs)

    def state(self):
        return list(self.table.read(self.rows))

    def state_shapes(self):
        return [self.table.h.shape, self.table.c.shape]

    def load(self, arrays):
        h, c = arrays
        self.table.write(self.rows, h, c)

    def reset(self):
        self.table.reset(self.rows)
        if self.start is not None:
            self.table.write(self.rows, *self.start)
