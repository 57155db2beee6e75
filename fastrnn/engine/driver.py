"""The one driver: layers, directions, per-row lengths, time order and rows, for every cell.

Two kernels walk a Plan (fastrnn.engine.plan), and both make a layer's gates the same way, in
`add_input_products` and `add_recurrent_products`, then call `cell_step` row by row:

- `sequence_block`: every layer and direction of the model over a whole padded sequence, for a
  block of batch rows. Rows never interact, so a block runs from the first step to the last on
  its own; the input products of several steps are made together (a chunk of up to
  PROJECTION_ROWS row-steps), so that W_ih passes through the cache once per chunk, not per step.
- `step_block`: one timestep of every layer of a unidirectional model for a block of streams,
  picked by slot from a state table (Stream, StreamPool, ONNX one-step runs).

`run_sequence` sends a plan of torch's cells (Plan.flat_sequences) whose rows all have the full
length to fastrnn.engine.flat's sequence_flat instead: the same arithmetic on flat arrays, without
the views and calls whose reference counts cost sequence_block about 1 us a step at small sizes.

`run_sequence` and `advance` cut a call into Plan.threads_for(rows) blocks: one block runs on the
calling thread; more run at once through one `prange` (fastrnn.engine.parallel), each thread on
its own rows with no waiting in between. A bidirectional flat sequence with too few rows for
blocks (a batch of 1 to 7) runs each layer's two directions at once instead, one per thread
(flat.sequence_flat_directions): a bidirectional GRU 512 -> 128 over 64 steps at batch 1 went
from 0.91-1.00 to 0.46-0.48 ms on the development machine's two cores, and the smallest size
tried (an LSTM 16 -> 16 over 50 steps, about 100 000 multiply-adds a direction) still 1.17x;
PARALLEL_DIRECTIONS sits a little below it. Kernels trust their inputs: the callers validated
them.
"""

import numpy as np
from numba import prange

from fastrnn.engine import flat, memory, parallel
from fastrnn.engine.cells import GRU, cell_step
from fastrnn.engine.jit import call, kernel, parallel_kernel
from fastrnn.engine.plan import (ALPHAS, B_HN, BETAS, BIAS, CELL, CLIP, CODES, FLAG, FLAT_CELL,
                                 GATES, HIDDEN, INPUTS, OUTPUTS, PEEPHOLE, PEEPHOLE_WIDTH,
                                 PROJ_ROWS, REVERSE, W_HH, W_IH, W_PROJ)
from fastrnn.engine.products import add_scaled_rows_batch, float_block, matrix_block

# Row-steps whose input products are made in one pass over W_ih (sequence_block): enough to
# spread W_ih's trip through the cache, few enough that the gates they fill stay in L2.
PROJECTION_ROWS = 16
# Multiply-adds (T B G (I + H)) of a layer's direction from which a bidirectional sequence too
# small to cut into batch blocks runs its two directions on two threads.
PARALLEL_DIRECTIONS = 1 << 16


@kernel
def layer_views(weights, layout, parameters, ld):
    """Layer-direction ld of a Plan: (cell, flag, clip, w_ih_t (I, G*H), w_hh_t (H_out, G*H),
    bias (G*H,), b_hn (H,), peephole (3, H or 0), w_proj_t (H, H_out) or (0, 0), codes (3,),
    alphas (3,), betas (3,)), views into the plan's arrays."""
    row = layout[ld]
    inputs, output, hidden, gates = row[INPUTS], row[OUTPUTS], row[HIDDEN], row[GATES]
    # The matrices as the products read them (float, bfloat16 or int8 with its scales), the
    # float blocks as float (fastrnn.engine.products).
    w_ih_t = matrix_block(weights, row[W_IH], inputs, gates)
    w_hh_t = matrix_block(weights, row[W_HH], output, gates)
    bias = float_block(weights, row[BIAS], gates)
    b_hn = float_block(weights, row[B_HN], hidden)
    width = row[PEEPHOLE_WIDTH]
    peephole = float_block(weights, row[PEEPHOLE], 3 * width).reshape((3, width))
    proj_rows = row[PROJ_ROWS]
    proj_columns = output if proj_rows > 0 else 0
    w_proj_t = matrix_block(weights, row[W_PROJ], proj_rows, proj_columns)
    p = parameters[ld]
    return (row[CELL], row[FLAG], p[CLIP], w_ih_t, w_hh_t, bias, b_hn, peephole, w_proj_t,
            row[CODES:CODES + 3], p[ALPHAS:ALPHAS + 3], p[BETAS:BETAS + 3])


@kernel
def add_input_products(gates, inputs, w_ih_t, bias):
    """gates = bias + inputs @ w_ih_t, for every row of gates (N, G*H) and inputs (N, I)."""
    for n in range(gates.shape[0]):
        target = gates[n]
        for j in range(target.shape[0]):
            target[j] = bias[j]
    add_scaled_rows_batch(gates, inputs, w_ih_t, 0, 0, gates.shape[1])


@kernel
def add_recurrent_products(cell, flag, gates, recurrent_n, h_rows, w_hh_t):
    """gates += h_rows @ w_hh_t, but for the GRU's n block: R_n h goes to recurrent_n (N, H) when
    the reset gate scales it (flag: linear_before_reset), and is the cell's own job otherwise."""
    if cell == GRU:
        hidden = recurrent_n.shape[1]
        add_scaled_rows_batch(gates, h_rows, w_hh_t, 0, 0, 2 * hidden)
        if flag:
            for n in range(recurrent_n.shape[0]):
                target = recurrent_n[n]
                for j in range(hidden):
                    target[j] = 0.0
            add_scaled_rows_batch(recurrent_n, h_rows, w_hh_t, 0, 2 * hidden, hidden)
    else:
        add_scaled_rows_batch(gates, h_rows, w_hh_t, 0, 0, gates.shape[1])


@kernel
def sequence_block(weights, layout, parameters, x, lengths, h, c, buffers, first_row, stop_row):
    """Every layer and direction over a whole padded sequence, for batch rows first_row..stop_row-1.

    x (T, B, I): time-major input. lengths (B,): row b is valid for t < lengths[b]; a reverse
      direction (the plan's REVERSE column) starts at lengths[b] - 1 and its state stays as it was after its last valid step
      (PyTorch's packed-sequence results).
    h (L*D, B, H_out), c (L*D, B, H) or (L*D, B, 0): initial state in, final state out.
    buffers (2, T, B, D*H_out), zero on entry: layer l writes buffers[l % 2]; steps past a row's
      length are never written, so they stay zero. The top layer's buffer is the output.
    """
    rows = stop_row - first_row
    if rows <= 0:
        return
    longest = 0
    for row in range(first_row, stop_row):
        longest = max(longest, lengths[row])
    directions = buffers.shape[3] // layout[0, OUTPUTS]
    layers = layout.shape[0] // directions
    chunk = max(1, PROJECTION_ROWS // rows)
    hidden, output = layout[0, HIDDEN], layout[0, OUTPUTS]
    gate_rows = layout[0, GATES]
    dtype = x.dtype
    projected = np.empty((chunk * rows, gate_rows), dtype)
    recurrent_n = np.empty((rows, hidden), dtype)
    work = np.empty(2 * hidden, dtype)
    layer_input = x
    for layer in range(layers):
        out = buffers[layer % 2]
        inputs = layout[layer * directions, INPUTS]
        gathered = np.empty((chunk * rows, inputs), dtype)
        for direction in range(directions):
            ld = layer * directions + direction
            (cell, flag, clip, w_ih_t, w_hh_t, bias, b_hn, peephole, w_proj_t, codes, alphas,
             betas) = layer_views(weights, layout, parameters, ld)
            reverse = layout[ld, REVERSE] != 0
            h_rows = h[ld, first_row:stop_row]
            offset = direction * output
            for chunk_start in range(0, longest, chunk):
                count = min(chunk, longest - chunk_start)
                # Input products of the chunk's steps; a finished row's are made from step 0's
                # input and never read.
                for s in range(count):
                    step = chunk_start + s
                    for r in range(rows):
                        length = lengths[first_row + r]
                        t = 0 if step >= length else (length - 1 - step if reverse else step)
                        source, target = layer_input[t, first_row + r], gathered[s * rows + r]
                        for j in range(inputs):
                            target[j] = source[j]
                add_input_products(projected[:count * rows], gathered[:count * rows], w_ih_t,
                                   bias)
                for s in range(count):
                    step = chunk_start + s
                    gates = projected[s * rows:(s + 1) * rows]
                    add_recurrent_products(cell, flag, gates, recurrent_n, h_rows, w_hh_t)
                    for r in range(rows):
                        row = first_row + r
                        length = lengths[row]
                        if step >= length:
                            continue
                        t = length - 1 - step if reverse else step
                        cell_step(cell, flag, clip, gates[r], recurrent_n[r], h[ld, row],
                                  c[ld, row], w_hh_t, b_hn, peephole, w_proj_t, codes, alphas,
                                  betas, h[ld, row], c[ld, row], work)
                        source, target = h[ld, row], out[t, row, offset:offset + output]
                        for j in range(output):
                            target[j] = source[j]
        layer_input = out


@parallel_kernel
def sequence_blocks(weights, layout, parameters, x, lengths, h, c, buffers, blocks):
    """sequence_block for `blocks` near-equal blocks of the batch at once, one per thread."""
    batch = x.shape[1]
    for block in prange(blocks):
        sequence_block(weights, layout, parameters, x, lengths, h, c, buffers,
                       block * batch // blocks, (block + 1) * batch // blocks)


def run_sequence(plan, x, h, c, lengths):
    """The whole model over x (T, B, I), time-major, of the plan's dtype; h (L*D, B, H_out) and
    c (L*D, B, H) or (L*D, B, 0) hold the initial state and get the final one. Returns
    y (T, B, D*H_out)."""
    steps, batch = x.shape[0], x.shape[1]
    shape = (2 if plan.num_layers > 1 else 1, steps, batch,
             plan.num_directions * plan.config.output_size)
    if not (batch and plan.flat_sequences and lengths.min() == steps):
        buffers = memory.zeros(shape, x.dtype)  # zero past each row's length
        blocks = plan.threads_for(batch)
        arguments = (plan.weights, plan.layout, plan.parameters, x, lengths, h, c, buffers)
        if blocks == 1 and batch:
            call(sequence_block, *arguments, 0, batch)
        elif batch:
            with parallel.parallel_section():
                call(sequence_blocks, *arguments, blocks)
        return buffers[(plan.num_layers - 1) % 2]
    buffers = memory.empty(shape, x.dtype)  # the flat pass writes every element
    blocks = plan.threads_for(batch)
    arguments = (plan.weights, plan.layout, x, h, c, buffers)
    if blocks == 1 and plan.num_directions == 2 and \
            steps * batch * plan.step_work >= PARALLEL_DIRECTIONS and \
            parallel.threads_for_call() > 1:
        with parallel.parallel_section():
            call(flat.sequence_flat_directions, *arguments)
    elif blocks == 1:
        call(flat.sequence_flat, *arguments, 0, batch)
    else:
        with parallel.parallel_section():
            call(flat.sequence_flat_blocks, *arguments, blocks)
    return buffers[(plan.num_layers - 1) % 2]


def step_scratch_size(plan, rows):
    """Elements of step_block's work space for a block of `rows` streams."""
    config = plan.config
    widest = max(config.layer_input_size(layer) for layer in range(config.num_layers))
    gate_rows = config.num_gates * config.hidden_size
    # step_block's, or step_flat's: its cells' work space, then two regions of layer inputs.
    return rows * (2 * max(widest, config.output_size) + config.output_size + gate_rows
                   + 2 * config.hidden_size) + 2 * config.hidden_size


@kernel
def step_block(weights, layout, parameters, slots, h, c, scratch, first, stop, x, y):
    """One timestep of every layer of a unidirectional stack, for the streams slots[first:stop].

    x (N, I): row n is the input of slots[n]; y (N, H_out) gets the top layer's new h.
    h (L, capacity, H_out), c (L, capacity, H) or (L, capacity, 0): the state table, in place.
    scratch (>= step_scratch_size(plan, stop - first),): where the block's layer inputs and
    previous h are gathered (unless its slots are consecutive: a Stream's are, and then they are
    read in place), its gates, R_n h and the cells' work space. Allocates nothing.
    (x and y come last so that a Stream can bind the rest once: CpuStateTable.stepper.)
    A stack of torch's cells (every row FLAT_CELL) goes to fastrnn.engine.flat's step_flat.
    """
    flat_cells = True
    for layer in range(layout.shape[0]):
        flat_cells = flat_cells and layout[layer, FLAT_CELL] != 0
    if flat_cells:
        flat.step_flat_float(weights, layout, slots, h, c, scratch, first, stop, x, y)
        return
    rows = stop - first
    layers = layout.shape[0]
    hidden, output, gate_rows = layout[0, HIDDEN], layout[0, OUTPUTS], layout[0, GATES]
    start = slots[first] if rows > 0 else 0
    consecutive = True
    for r in range(rows):
        consecutive = consecutive and slots[first + r] == start + r
    end = 0
    for layer in range(layers):
        end = max(end, rows * layout[layer, INPUTS])
    h_gathered = scratch[end:end + rows * output].reshape((rows, output))
    end += rows * output
    gates = scratch[end:end + rows * gate_rows].reshape((rows, gate_rows))
    end += rows * gate_rows
    recurrent_n = scratch[end:end + rows * hidden].reshape((rows, hidden))
    end += rows * hidden
    work = scratch[end:end + 2 * hidden]
    for layer in range(layers):
        (cell, flag, clip, w_ih_t, w_hh_t, bias, b_hn, peephole, w_proj_t, codes, alphas,
         betas) = layer_views(weights, layout, parameters, layer)
        inputs = layout[layer, INPUTS]
        if consecutive:
            below = x[first:stop] if layer == 0 else h[layer - 1, start:start + rows]
            h_rows = h[layer, start:start + rows]
        else:
            below = scratch[:rows * inputs].reshape((rows, inputs))
            h_rows = h_gathered
            for r in range(rows):
                slot = slots[first + r]
                source = x[first + r] if layer == 0 else h[layer - 1, slot]
                target = below[r]
                for j in range(inputs):
                    target[j] = source[j]
                source, target = h[layer, slot], h_rows[r]
                for j in range(output):
                    target[j] = source[j]
        add_input_products(gates, below, w_ih_t, bias)
        add_recurrent_products(cell, flag, gates, recurrent_n, h_rows, w_hh_t)
        for r in range(rows):
            slot = slots[first + r]
            cell_step(cell, flag, clip, gates[r], recurrent_n[r], h_rows[r], c[layer, slot],
                      w_hh_t, b_hn, peephole, w_proj_t, codes, alphas, betas, h[layer, slot],
                      c[layer, slot], work)
    for r in range(rows):
        source, target = h[layers - 1, slots[first + r]], y[first + r]
        for j in range(output):
            target[j] = source[j]


@parallel_kernel
def step_blocks(weights, layout, parameters, x, slots, h, c, y, scratch, blocks):
    """step_block for `blocks` near-equal blocks of the slots at once; scratch (blocks, size)."""
    count = slots.shape[0]
    for block in prange(blocks):
        step_block(weights, layout, parameters, slots, h, c, scratch[block],
                   block * count // blocks, (block + 1) * count // blocks, x, y)
