"""The flat cell pass: torch's cells (and ONNX's with the same defaults) on flat arrays.

`cell_flat` takes one layer-direction of a plan through a pass of steps for a block of rows,
indexing flat arrays by offset: no array views and one call a pass, because in a kernel each
view, and each call that passes arrays, costs an atomic reference count per array (tens of ns;
at small sizes most of a step). Its arithmetic is the engine's cells' and products' (the same
equations, rounding and product order: fastrnn.engine.cells, fastrnn.engine.products), so its
results are those of the driver's general kernels. Three callers:

- the chain kernel (fastrnn.layers.program), for every streaming recurrent layer it can run;
- `sequence_flat`, the engine's whole-sequence path (fastrnn.engine.driver.run_sequence) for
  float plans of such cells where every row has the whole length: each pass's inputs are
  gathered in the order the direction reads them, so that a reverse direction runs forwards
  over its gathered steps, and its outputs are put back at their times. Measured against the
  driver's sequence_block (the general path, kept for lengths, low-bit weights, peepholes,
  projections, clips and other activations) on the development machine: LSTM 16->32 batch 1,
  2.0 -> 1.0 us a step; LSTM and GRU 64->128, 8.4 -> 7.7 and 8.2 -> 6.2 us. Each layer-direction
  is one `direction_flat` call, so that `sequence_flat_directions` can run a layer's two
  directions on two threads;
- `step_flat`, which the driver's step_block hands a stack to when every row of its layout has
  FLAT_CELL (forward torch cells, float weights): Stream.step and StreamPool ticks.
"""

import numpy as np
from numba import prange, types, uint64
from numba.extending import overload

from fastrnn.engine.activations import RELU, fast_sigmoid, fast_tanh
from fastrnn.engine.cells import GRU, LSTM
from fastrnn.engine.cells.common import DENORMAL_FLUSH
from fastrnn.engine.jit import kernel, parallel_kernel
from fastrnn.engine.plan import (B_HN, BIAS, CELL, CODES, GATES, HIDDEN, INPUTS, LAYOUT_COLUMNS,
                                 REVERSE, W_HH, W_IH)

# A pass of sequence_flat: at most PASS_STEPS steps and PASS_ROWS (step, row) pairs, as the
# chain kernel's (fastrnn.layers.program).
PASS_STEPS, PASS_ROWS = 32, 64


@kernel
def add_products(weights, rows_at, width, columns, vectors, vector_at, vector_stride, count, out,
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
def cell_flat(buffer, source, target, rows, steps, slots, h_state, h_at, c_state, c_at, weights,
              layout, at, scratch, stride):
    """A pass of layer-direction `at` of a plan (has_flat_cell) through `steps` steps, for state
    rows slots[0..rows-1], on flat arrays: x (steps * rows, I) at buffer[source:] -> h'
    (steps * rows, H) at buffer[target:], time-major; slot s's h at h_state[h_at + s H:], its c
    (LSTM) at c_state[c_at + s H:] (the same array or two); the layer's plan layout row at
    layout[at:] (its offsets into `weights`: a plan's own, or made absolute in the chain
    program's weights).

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
    add_products(weights, layout[at + W_IH], gate_rows, gate_rows, buffer, source, inputs, inputs,
                 scratch, 0, gate_rows, steps * rows)
    n_at = stride * gate_rows        # the GRU's R_n h, (rows, H)
    h_rows = n_at + rows * hidden    # the previous h of every row, gathered, (rows, H)
    for step in range(steps):
        gates_at = step * rows * gate_rows
        for r in range(rows):
            h = h_at + slots[r] * hidden
            for j in range(hidden):
                scratch[uint64(h_rows + r * hidden + j)] = h_state[uint64(h + j)]
        if cell == GRU:
            add_products(weights, w_hh, gate_rows, 2 * hidden, scratch, h_rows, hidden, hidden,
                         scratch, gates_at, gate_rows, rows)
            for j in range(rows * hidden):
                scratch[uint64(n_at + j)] = 0.0
            add_products(weights, w_hh + 2 * hidden, gate_rows, hidden, scratch, h_rows, hidden,
                         hidden, scratch, n_at, hidden, rows)
        else:
            add_products(weights, w_hh, gate_rows, gate_rows, scratch, h_rows, hidden, hidden,
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
                    h_state[uint64(h + j)] = value
                    value = h_state[uint64(h + j)]
                    h_state[uint64(h + j)] = value * (abs(value) >= DENORMAL_FLUSH)
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
                    previous = c_state[uint64(c + j)]
                    forgotten = complement * previous if complement != 0.0 else 0.0
                    value = c_state.dtype.type(previous - forgotten
                                             + np.float64(scratch[uint64(g + j)])
                                             * scratch[uint64(g + 2 * hidden + j)])
                    value = value * (abs(value) >= DENORMAL_FLUSH)
                    c_state[uint64(c + j)] = value
                    out = scratch[uint64(g + 3 * hidden + j)] * fast_tanh(value)
                    h_state[uint64(h + j)] = out * (abs(out) >= DENORMAL_FLUSH)
            else:
                for j in range(hidden):
                    v = scratch[uint64(g + j)]
                    value = (v if not v < 0 else 0.0) if relu else fast_tanh(v)
                    h_state[uint64(h + j)] = value
                    value = h_state[uint64(h + j)]
                    h_state[uint64(h + j)] = value * (abs(value) >= DENORMAL_FLUSH)
            y = target + (step * rows + r) * hidden
            for j in range(hidden):
                buffer[uint64(y + j)] = h_state[uint64(h + j)]


@kernel
def sequence_flat(weights, layout, x, h, c, buffers, first_row, stop_row):
    """Every layer and direction over the whole sequence for batch rows first_row..stop_row-1,
    with cell_flat (every layer-direction a cell has_flat_cell accepts, every row valid for all
    T steps, float weights). Arrays as sequence_block's (fastrnn.engine.driver): x (T, B, I),
    h (L*D, B, H) and c (L*D, B, H or 0) the start state in and the final state out, buffers
    (K, T, B, D*H) layer l's output in buffers[l % 2]; all C-contiguous."""
    if stop_row <= first_row:
        return
    for ld in range(layout.shape[0]):   # layer by layer, each layer's directions in turn
        direction_flat(weights, layout, ld, x, h, c, buffers, first_row, stop_row)


@kernel
def direction_flat(weights, layout, ld, x, h, c, buffers, first_row, stop_row):
    """Layer-direction `ld` over the whole sequence for batch rows first_row..stop_row-1, with
    sequence_flat's arrays: it reads its layer's input (x, or the layer below's output in
    buffers), writes its h' into its own half of its layer's output and its final state into
    h[ld] and c[ld]. Each pass's inputs are gathered in the order the direction reads them."""
    rows = stop_row - first_row
    steps, batch = x.shape[0], x.shape[1]
    hidden, gate_rows = layout[0, HIDDEN], layout[0, GATES]
    width = buffers.shape[3]
    directions = width // hidden
    layer, offset = ld // directions, (ld % directions) * hidden
    inputs, reverse = layout[ld, INPUTS], layout[ld, REVERSE] != 0
    block = max(1, min(PASS_STEPS, PASS_ROWS // rows))
    pairs = block * rows
    target = pairs * inputs  # the pass's inputs at buffer[0:], its outputs at buffer[target:]
    buffer = np.empty(pairs * (inputs + hidden), x.dtype)
    scratch = np.empty((pairs * gate_rows + 2 * rows) * hidden, x.dtype)
    slots = np.arange(first_row, stop_row)
    # Flat arrays and offsets, not views: each view costs an atomic reference count.
    buffers_flat = buffers.reshape(-1)
    layer_size = steps * batch * width  # of one of the buffers
    below = x.reshape(-1) if layer == 0 else buffers_flat
    below_at = 0 if layer == 0 else ((layer - 1) % 2) * layer_size
    out_at = (layer % 2) * layer_size
    h_flat, c_flat, flat_layout = h.reshape(-1), c.reshape(-1), layout.reshape(-1)
    for start in range(0, steps, block):
        count = min(block, steps - start)
        for s in range(count):
            t = steps - 1 - start - s if reverse else start + s
            for r in range(rows):
                source = below_at + (t * batch + first_row + r) * inputs
                at = (s * rows + r) * inputs
                for j in range(inputs):
                    buffer[uint64(at + j)] = below[uint64(source + j)]
        cell_flat(buffer, 0, target, rows, count, slots, h_flat, ld * batch * hidden, c_flat,
                  ld * batch * c.shape[2], weights, flat_layout, ld * LAYOUT_COLUMNS, scratch,
                  pairs)
        for s in range(count):
            t = steps - 1 - start - s if reverse else start + s
            for r in range(rows):
                destination = out_at + (t * batch + first_row + r) * width + offset
                at = target + (s * rows + r) * hidden
                for j in range(hidden):
                    buffers_flat[uint64(destination + j)] = buffer[uint64(at + j)]


@parallel_kernel
def sequence_flat_blocks(weights, layout, x, h, c, buffers, blocks):
    """sequence_flat for `blocks` near-equal blocks of the batch at once, one per thread."""
    batch = x.shape[1]
    for block in prange(blocks):
        sequence_flat(weights, layout, x, h, c, buffers, block * batch // blocks,
                      (block + 1) * batch // blocks)


@parallel_kernel
def sequence_flat_directions(weights, layout, x, h, c, buffers):
    """sequence_flat for the whole batch, each layer's directions at once, one per thread: they
    read the same input and write their own halves of the layer's output and their own state.
    For a batch too small to cut into blocks (a bidirectional layer at batch 1)."""
    directions = buffers.shape[3] // layout[0, HIDDEN]
    for layer in range(layout.shape[0] // directions):
        for direction in prange(directions):
            direction_flat(weights, layout, layer * directions + direction, x, h, c, buffers, 0,
                           x.shape[1])


@kernel
def step_flat(weights, layout, slots, h, c, scratch, first, stop, x, y):
    """One timestep of every layer of a stack whose rows all have FLAT_CELL, for the streams
    slots[first:stop] (fastrnn.engine.driver.step_block's arguments and contract; it calls this).

    scratch holds cell_flat's work space (rows G H + 2 rows H) and then two regions of rows x
    (widest layer input or H) that the layers read and write in turn: layer l reads region l % 2
    and writes the other. cell_flat reads and writes each row's h and c in the table itself."""
    rows = stop - first
    if rows <= 0:
        return
    layers = layout.shape[0]
    capacity, hidden, hidden_c = h.shape[1], layout[0, HIDDEN], c.shape[2]
    widest = hidden
    for layer in range(layers):
        widest = max(widest, layout[layer, INPUTS])
    regions = rows * (layout[0, GATES] + 2 * hidden)  # the first region, after cell_flat's
    inputs = layout[0, INPUTS]
    for r in range(rows):
        for j in range(inputs):
            scratch[uint64(regions + r * inputs + j)] = x[first + r, j]
    chosen = slots[first:stop]
    flat_layout = layout.reshape(-1)
    h_flat, c_flat = h.reshape(-1), c.reshape(-1)
    for layer in range(layers):
        source = regions + (layer % 2) * rows * widest
        target = regions + ((layer + 1) % 2) * rows * widest
        cell_flat(scratch, source, target, rows, 1, chosen, h_flat, layer * capacity * hidden,
                  c_flat, layer * capacity * hidden_c, weights, flat_layout,
                  layer * LAYOUT_COLUMNS, scratch, rows)
    last = regions + (layers % 2) * rows * widest
    for r in range(rows):
        for j in range(hidden):
            y[first + r, j] = scratch[uint64(last + r * hidden + j)]


def step_flat_float(weights, layout, slots, h, c, scratch, first, stop, x, y):
    """step_flat, for step_block to call from jitted code: compiled only where the weights are
    floats. A low-bit plan's rows never have FLAT_CELL, so step_block never takes this path for
    one, but Numba types every branch: without this, each low-bit specialisation of step_block
    compiled step_flat for integer weights it can never run."""
    raise NotImplementedError("step_flat_float is called from jitted code only")


@overload(step_flat_float)
def _step_flat_float(weights, layout, slots, h, c, scratch, first, stop, x, y):
    if isinstance(weights.dtype, types.Float):
        def run(weights, layout, slots, h, c, scratch, first, stop, x, y):
            step_flat(weights, layout, slots, h, c, scratch, first, stop, x, y)
    else:
        def run(weights, layout, slots, h, c, scratch, first, stop, x, y):
            pass
    return run
