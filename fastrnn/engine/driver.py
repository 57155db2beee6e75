"""The one driver: layers, directions, per-row lengths and time order, for every cell.

Whole sequences (`run_sequence`): for each layer and direction, the input projection of all
timesteps is one matrix product (BLAS), then `sequence_kernel` walks the time steps.

Streams (`step_kernel`): one call advances every layer of a unidirectional model by one timestep
for chosen rows of a state table, with no allocation; StreamPool and Stream both use it.
`batched_step` does the same for BLAS_MIN_BATCH rows or more, each layer's products as two
numpy (BLAS) matrix products into buffers the caller allocates once, the cells in `cells_kernel`.

Two cores (fastrnn.engine.threads): below BLAS_MIN_BATCH rows, a sequence whose weights are large enough
runs as `pair_sequence_kernel` on the calling thread and the partner thread at once, each making
its half of the hidden units from its own blocks of the weights (PackedWeights.pair_tables), and
a Stream's steps as `pair_step`, served on the partner by `pair_step_server` (see pair_split and
stream_pair_split for when).

All of them call `cell_step`, so every cell, option and activation runs through the same code.
Kernels trust their inputs: fastrnn.model validates before calling.
"""

import numpy as np

from fastrnn.engine.cells import cell_step
from fastrnn.engine.cells.common import add_scaled_rows, add_scaled_rows_batch
from fastrnn.engine.jit import kernel
from fastrnn.engine.threads import (CLOSED, PARTNER_FAILED, SPINS_BEFORE_YIELD, SYNC_CHANNEL, SYNC_STOP,
                             atomic_load, barrier, compare_exchange, cycle_counter, fetch_rows,
                             get_num_threads, new_sync, run_pair, spin_pause, yield_core)
from fastrnn.engine.weights import (PAIR_B_HH, PAIR_B_IH, PAIR_CODES, PAIR_FIRST_UNIT, PAIR_INPUTS,
                             PAIR_PEEPHOLE, PAIR_PEEPHOLE_WIDTH, PAIR_STATE_WIDTH, PAIR_UNITS,
                             PAIR_W_HH, PAIR_W_IH, PAIR_WIDTH, STEP_B_HH, STEP_B_IH, STEP_CODES,
                             STEP_GATE_ROWS, STEP_INPUTS, STEP_PEEPHOLE, STEP_PEEPHOLE_WIDTH,
                             STEP_PROJ_COLUMNS, STEP_PROJ_ROWS, STEP_W_HH, STEP_W_IH, STEP_W_PROJ)


# From this many rows on, the products of a step are BLAS matrix products for the whole batch,
# made by numpy between kernel calls; below it they are made in Numba (add_scaled_rows_batch for
# sequences, row by row for streams), where a call into BLAS costs more than it saves (crossover
# measured at H = 128 to 512). Not np.dot inside a kernel: that calls SciPy's BLAS, whose thread
# pool then fights numpy's for the two cores and slowed steps down 20x when measured.
BLAS_MIN_BATCH = 16
# ... and from this many inputs per row (below it, the step's input product is product_kernel's).
BLAS_MIN_INPUTS = 8

# Below these a sequence runs on one core (see pair_split); measured in bench/ on two cores.
PAIR_MIN_WEIGHT_BYTES = 32 * 1024
PAIR_MIN_STEPS = 16
STREAM_PAIR_MIN_WEIGHT_BYTES = 128 * 1024
# Rows of a sequence's input projection made together on two cores (pair_sequence_kernel).
PROJECTION_ROWS = 8


@kernel
def sequence_kernel(cell, xproj, lengths, reverse, h, c, w_hh_t, b_hh, peephole, w_proj_t,
                    codes, alphas, betas, clip, flag, out, out_offset, scratch, recurrent,
                    first_step, stop_step, recurrent_ready):
    """Run one layer in one direction over steps first_step..stop_step-1 of a padded batch, in place.

    xproj (T, B, G*H): W x + b_ih for every step, consumed as gate scratch.
    lengths (B,): row b is valid for t < lengths[b]; its reverse pass starts at lengths[b] - 1, and
      its state is left as it was after its last valid step (PyTorch's packed-sequence results).
    h (B, H_out), c (B, H) or (B, 0): initial state in, final state out.
    out (T, B, D*H_out): this direction writes columns out_offset : out_offset + H_out; steps past a
      row's length are not written (the caller zeroes them).
    scratch: (PackedWeights.scratch_size,) work space for the cells.
    recurrent (B, G*H): R h of each row; made here row by row, or by the caller for the whole
      batch (one step per call) when recurrent_ready.
    """
    batch = xproj.shape[1]
    output_size = h.shape[1]
    for step in range(first_step, stop_step):
        if not recurrent_ready:  # every row's, finished ones too: they are not read
            recurrent[:] = 0.0
            add_scaled_rows_batch(recurrent, h, w_hh_t, 0, 0, recurrent.shape[1])
        for row in range(batch):
            length = lengths[row]
            if step >= length:
                continue
            t = length - 1 - step if reverse else step
            cell_step(cell, xproj[t, row], recurrent[row], h[row], c[row], w_hh_t, b_hh, peephole,
                      w_proj_t, codes, alphas, betas, clip, flag, h[row], c[row], scratch)
            destination = out[t, row, out_offset:out_offset + output_size]
            source = h[row]
            for j in range(output_size):
                destination[j] = source[j]


@kernel
def pair_sequence_kernel(part, cell, x, lengths, reverse, h, h_spare, c, input_weights,
                         recurrent_weights, input_bias, recurrent_bias, w_hh_t, peephole,
                         w_proj_t, codes, alphas, betas, clip, flag, out, out_offset, split, sync):
    """One layer in one direction over a whole sequence, as one of two parts run at once.

    Part 0 owns hidden units [0, split), part 1 [split, H) (fastrnn.engine.threads). Each makes, from its
    own blocks of the weights (the pairs input_weights, recurrent_weights, input_bias,
    recurrent_bias: PackedWeights.pair_blocks), its units' input projection for every step, then
    at each step its units' recurrent products, reading the whole previous h, and their cells;
    then both meet at the barrier. h and h_spare take turns as the previous and the new h, so
    that no part writes a unit the other may still be reading; the final h ends in h.

    x (T, B, I): the layer input. Other arguments as sequence_kernel's, for a cell whose units are
    independent given R h (no projection; the GRU with the reset after the product). The input
    projection is made here rather than by numpy: BLAS threads left spinning after a numpy product
    take the core the partner needs. Returns how many waits at the barrier were late
    (fastrnn.engine.threads.MET_LATE), or -1 if the partner failed.
    """
    steps, batch, inputs = x.shape
    hidden = h.shape[1]
    start = 0 if part == 0 else split
    stop = split if part == 0 else hidden
    units = stop - start
    width = recurrent_bias[part].shape[0]  # G * units
    dtype = h.dtype
    # W x + b_ih of this part's gates for every step, made a few rows at a time so that the rows
    # being summed into stay in L1 while the weights stream past.
    flat_input = x.reshape((steps * batch, inputs))
    projection = np.empty((steps * batch, width), dtype)
    for r in range(steps * batch):
        projection[r, :] = input_bias[part]
    for first in range(0, steps * batch, PROJECTION_ROWS):
        last = min(first + PROJECTION_ROWS, steps * batch)
        add_scaled_rows_batch(projection[first:last], flat_input[first:last], input_weights[part],
                              0, 0, width)
    recurrent = np.empty((batch, width), dtype)
    part_peephole = np.empty((3, units if peephole.shape[1] > 0 else 0), dtype)
    if peephole.shape[1] > 0:
        part_peephole[:, :] = peephole[:, start:stop]
    work = np.empty(2 * units, dtype)
    late_waits = 0
    for step in range(steps):
        previous = h if step % 2 == 0 else h_spare
        new = h_spare if step % 2 == 0 else h
        recurrent[:, :] = 0.0
        add_scaled_rows_batch(recurrent, previous, recurrent_weights[part], 0, 0, width)
        for row in range(batch):
            length = lengths[row]
            if step >= length:  # finished: its state carries over unchanged
                new[row, start:stop] = previous[row, start:stop]
                continue
            t = length - 1 - step if reverse else step
            cell_step(cell, projection[t * batch + row], recurrent[row],
                      previous[row, start:stop], c[row, start:stop], w_hh_t,
                      recurrent_bias[part], part_peephole, w_proj_t, codes, alphas, betas, clip,
                      flag, new[row, start:stop], c[row, start:stop], work)
            out[t, row, out_offset + start:out_offset + stop] = new[row, start:stop]
        met = barrier(sync, part, step + 1)
        if met == PARTNER_FAILED:
            return -1
        late_waits += met
    if steps % 2 == 1:
        h[:, start:stop] = h_spare[:, start:stop]
    met = barrier(sync, part, steps + 1)
    return -1 if met == PARTNER_FAILED else late_waits + met


# What pair_step tells its caller: done, done but the parts waited late for each other (see
# fastrnn.engine.threads.MET_LATE), nothing done (the server had closed), the partner failed.
PAIR_DONE, PAIR_LATE, PAIR_CLOSED, PAIR_FAILED = 0, 1, 2, 3


@kernel
def pair_step(part, cell, x, clip, flag, pair_weights, pair_layout, activation_parameters, h, c,
              work, y, sync, request):
    """One timestep of a unidirectional stack for every row of a Stream, as one of two parts.

    Part 0 (the caller) copies x into the work space, asks the step server on the partner thread
    (pair_step_server, which runs part 1) for step number `request`, does its half and writes y;
    it returns PAIR_DONE or PAIR_LATE; PAIR_CLOSED, having changed nothing, if the server has
    closed its channel; PAIR_FAILED if the partner failed. Each part makes, for each layer, its
    units' gates from its own weight blocks (pair_weights/pair_layout: PackedWeights.pair_tables)
    and their cells, writing its units of the new h aside; the parts meet at a barrier after every
    layer, whose input is the whole new h of the layer below, and once more after copying the new
    h into h.

    x (B, I), y (B, H), h (L, B, H), c (L, B, H) or (L, B, 0): the Stream's table.
    activation_parameters (L, 6): PackedWeights.step_tables()'s. work: pair_work_size(...) of the
    dtype, laid out as pair_work_views says. Few arguments: each costs ~70 ns a call.
    """
    layers, batch = h.shape[0], h.shape[1]
    x_shared, h_new, scratch = pair_work_views(work, pair_layout, h, x.shape[1], part)
    if part == 0:
        copy_rows(x_shared, x)
        if not compare_exchange(sync, SYNC_CHANNEL, request - 1, request):
            return PAIR_CLOSED
    generation = (request - 1) * (layers + 1)
    late_waits = 0
    nothing = pair_weights[:0].reshape((0, 0))  # for the cell's unused matrix arguments
    start = 0
    for layer in range(layers):
        table = pair_layout[layer, part]
        inputs, units, width = table[PAIR_INPUTS], table[PAIR_UNITS], table[PAIR_WIDTH]
        rows = table[PAIR_STATE_WIDTH]
        start = table[PAIR_FIRST_UNIT]
        stop = start + units
        w_ih = pair_weights[table[PAIR_W_IH]:table[PAIR_W_IH] + inputs * width].reshape(
            (inputs, width))
        w_hh = pair_weights[table[PAIR_W_HH]:table[PAIR_W_HH] + rows * width].reshape(
            (rows, width))
        b_ih = pair_weights[table[PAIR_B_IH]:table[PAIR_B_IH] + width]
        b_hh = pair_weights[table[PAIR_B_HH]:table[PAIR_B_HH] + width]
        peephole_width = table[PAIR_PEEPHOLE_WIDTH]
        peephole = pair_weights[table[PAIR_PEEPHOLE]:table[PAIR_PEEPHOLE]
                                + 3 * peephole_width].reshape((3, peephole_width))
        codes = table[PAIR_CODES:PAIR_CODES + 3]
        alphas, betas = activation_parameters[layer, :3], activation_parameters[layer, 3:]
        gates = scratch[:batch * width].reshape((batch, width))
        recurrent = scratch[batch * width:2 * batch * width].reshape((batch, width))
        cell_work = scratch[2 * batch * width:2 * batch * width + 2 * units]
        below = x_shared if layer == 0 else h_new[layer - 1]
        fetch_rows(below)  # both were written by the other core too
        fetch_rows(h[layer])
        for row in range(batch):
            row_gates, row_recurrent = gates[row], recurrent[row]
            for j in range(width):
                row_gates[j] = b_ih[j]
                row_recurrent[j] = 0.0
        add_scaled_rows_batch(gates, below, w_ih, 0, 0, width)
        add_scaled_rows_batch(recurrent, h[layer], w_hh, 0, 0, width)
        for row in range(batch):
            cell_step(cell, gates[row], recurrent[row], h[layer, row, start:stop],
                      c[layer, row, start:stop], nothing, b_hh, peephole, nothing, codes, alphas,
                      betas, clip, flag, h_new[layer, row, start:stop], c[layer, row, start:stop],
                      cell_work)
        met = barrier(sync, part, generation + layer + 1)
        if met == PARTNER_FAILED:
            return PAIR_FAILED
        late_waits += met
    stop = start + pair_layout[0, part, PAIR_UNITS]  # the same units in every layer
    for layer in range(layers):
        for row in range(batch):
            copy_rows(h[layer, row:row + 1, start:stop], h_new[layer, row:row + 1, start:stop])
    met = barrier(sync, part, generation + layers + 1)
    if met == PARTNER_FAILED:
        return PAIR_FAILED
    if part == 0:
        copy_rows(y, h[layers - 1])
    return PAIR_DONE if late_waits + met == 0 else PAIR_LATE


def pair_work_size(pair_layout, h_shape, input_size):
    """Elements of pair_step's work space for a state table of h_shape (L, B, H)."""
    layers, batch, hidden = h_shape
    size = batch * input_size + layers * batch * hidden
    for part in range(2):
        size += 2 * batch * int(pair_layout[0, part, PAIR_WIDTH]) \
            + 2 * int(pair_layout[0, part, PAIR_UNITS])
    return size


@kernel
def pair_work_views(work, pair_layout, h, input_size, part):
    """pair_step's work space as (x_shared (B, I), h_new (L, B, H), this part's scratch): x, the
    new h made aside, then part 0's and part 1's gates (B, G*U), R h (B, G*U) and cell work (2U)."""
    layers, batch, hidden = h.shape
    x_size, h_size = batch * input_size, layers * batch * hidden
    x_shared = work[:x_size].reshape((batch, input_size))
    h_new = work[x_size:x_size + h_size].reshape((layers, batch, hidden))
    start = x_size + h_size
    for before in range(part):
        start += 2 * batch * pair_layout[0, before, PAIR_WIDTH] \
            + 2 * pair_layout[0, before, PAIR_UNITS]
    size = 2 * batch * pair_layout[0, part, PAIR_WIDTH] + 2 * pair_layout[0, part, PAIR_UNITS]
    return x_shared, h_new, work[start:start + size]


@kernel
def pair_step_server(part, cell, x, clip, flag, pair_weights, pair_layout, activation_parameters,
                     h, c, work, idle_cycles, sync):
    """The partner's side of pair_step: serve steps as the caller asks for them, until none has
    been asked for in `idle_cycles` CPU cycles, another thread asks for the partner (SYNC_STOP),
    or the caller closes the channel. The wait is a
    spin, so that a step asked for is started within a fraction of a microsecond. x is only
    looked at for its shape (the step's input is in the work space)."""
    served = 0
    idle_since = cycle_counter()
    spins = 0
    while True:
        requested = atomic_load(sync, SYNC_CHANNEL)
        if requested == CLOSED:
            return True
        if requested > served:
            served += 1
            if pair_step(part, cell, x, clip, flag, pair_weights, pair_layout,
                         activation_parameters, h, c, work, x, sync, served) == PAIR_FAILED:
                return False
            idle_since = cycle_counter()
            spins = 0
        elif (cycle_counter() - idle_since > idle_cycles
              or atomic_load(sync, SYNC_STOP) != 0):
            if compare_exchange(sync, SYNC_CHANNEL, served, CLOSED):
                return True
        elif spins < SPINS_BEFORE_YIELD:
            spin_pause()
            spins += 1
        else:  # a pause in the steps: let any other thread that wants this core have it
            yield_core()


@kernel
def copy_rows(destination, source):
    """destination[:, :] = source, as plain loops (Numba's slice assignment costs more per call)."""
    for row in range(source.shape[0]):
        target, values = destination[row], source[row]
        for j in range(values.shape[0]):
            target[j] = values[j]


def run_direction(cell, xproj, lengths, reverse, h, c, w_hh_t, b_hh, peephole, w_proj_t, codes,
                  alphas, betas, clip, flag, out, out_offset, scratch):
    """sequence_kernel over the whole sequence: one call for small batches; for BLAS_MIN_BATCH
    rows or more, a numpy product R h for the whole batch, then the kernel, once per step."""
    steps, batch, gate_rows = xproj.shape
    recurrent = np.empty((batch, gate_rows), xproj.dtype)
    arguments = (cell, xproj, lengths, reverse, h, c, w_hh_t, b_hh, peephole, w_proj_t, codes,
                 alphas, betas, clip, flag, out, out_offset, scratch, recurrent)
    if batch < BLAS_MIN_BATCH:
        sequence_kernel(*arguments, 0, steps, False)
        return
    for step in range(steps):
        np.matmul(h, w_hh_t, out=recurrent)
        sequence_kernel(*arguments, step, step + 1, True)


def run_sequence(config, packed, x, h, c, lengths):
    """Run the whole model over x (T, B, I), time-major, in the model's dtype.

    h (L*D, B, H_out) and c (L*D, B, H) or (L*D, B, 0) hold the initial state and are overwritten
    with the final one. Returns y (T, B, D*H_out).
    """
    steps, batch = x.shape[0], x.shape[1]
    directions = config.num_directions
    output_size = config.output_size
    scratch = np.empty(packed.scratch_size, x.dtype)
    layer_input = x
    for layer in range(config.num_layers):
        out = np.zeros((steps, batch, directions * output_size), x.dtype)
        for direction in range(directions):
            ld = layer * directions + direction
            run_layer_direction(config, packed, ld, layer_input, lengths, direction == 1, h[ld],
                                c[ld], out, direction * output_size, scratch)
        layer_input = out
    return layer_input


def run_layer_direction(config, packed, ld, layer_input, lengths, reverse, h, c, out, out_offset,
                        scratch):
    """Layer-direction ld of `packed` over a whole sequence: layer_input (T, B, I) -> columns
    out_offset : out_offset + H_out of out (T, B, D*H_out); h (B, H_out) and c (B, H) or (B, 0)
    in place, lengths (B,) int64. On two cores when pair_split says it pays and the partner is
    free; else the input projection of every step as one numpy product, then run_direction.
    """
    steps, batch, inputs = layer_input.shape
    split = pair_split(config, packed, steps, batch)
    flag = _cell_flag(config)
    if split and run_pair(pair_sequence_kernel, (
            config.cell, np.ascontiguousarray(layer_input), lengths, reverse, h,
            np.empty_like(h), c, *packed.pair_blocks(ld, split), packed.w_hh_t[ld],
            packed.peephole[ld], packed.w_proj_t[ld], packed.codes[ld], packed.alphas[ld],
            packed.betas[ld], config.clip, flag, out, out_offset, split, new_sync())):
        return
    # Sizes spelt out rather than -1, which numpy cannot infer for an empty batch.
    xproj = layer_input.reshape(steps * batch, inputs) @ packed.w_ih_t[ld]
    if config.kind == "gru":  # b_in stays apart from b_hn, which the reset gate scales
        xproj += packed.b_ih[ld]
        b_hh = packed.b_hh[ld]
    else:  # both biases are added to the same sums: once, in the cell, not over all of xproj
        b_hh = packed.b_sum[ld]
    run_direction(config.cell, xproj.reshape(steps, batch, xproj.shape[1]), lengths, reverse, h,
                  c, packed.w_hh_t[ld], b_hh, packed.peephole[ld], packed.w_proj_t[ld],
                  packed.codes[ld], packed.alphas[ld], packed.betas[ld], config.clip, flag, out,
                  out_offset, scratch)


def pair_split(config, packed, steps, batch):
    """Where a sequence's hidden units split between two cores, or 0 to run it on one.

    Two cores pay when each step reads enough weights and the sequence is long enough to repay
    waking the partner (tens of microseconds). Cells whose units depend on each other within a
    step cannot split: an LSTM projection mixes every unit, and so does the GRU's reset applied
    before its product.
    """
    hidden = config.hidden_size
    if (config.proj_size or (config.kind == "gru" and not config.linear_before_reset)
            or steps < PAIR_MIN_STEPS or batch >= BLAS_MIN_BATCH or get_num_threads() < 2
            or packed.w_hh_t[0].nbytes < PAIR_MIN_WEIGHT_BYTES or hidden < 2):
        return 0
    # Each half starts on a 64-byte boundary of a gate row where the size allows.
    line = 64 // packed.w_hh_t.itemsize
    return max(1, min(hidden - 1, (hidden // 2 + line // 2) // line * line))


def stream_pair_split(config, packed, batch):
    """pair_split for a Stream's steps (pair_step): 0 unless each step reads at least
    STREAM_PAIR_MIN_WEIGHT_BYTES of weights, enough to repay handing half of it to the partner."""
    step_bytes = sum(w.nbytes for w in packed.w_ih_t) + packed.w_hh_t.nbytes
    if step_bytes < STREAM_PAIR_MIN_WEIGHT_BYTES:
        return 0
    return pair_split(config, packed, PAIR_MIN_STEPS, batch)


def _cell_flag(config):
    return config.input_forget if config.kind == "lstm" else config.linear_before_reset


@kernel
def layer_weights(weights, layout, activation_parameters, layer):
    """Views of one layer's blocks in PackedWeights.step_tables(): (w_ih_t, w_hh_t, b_ih, b_hh,
    peephole, w_proj_t, codes, alphas, betas), shaped as PackedWeights' own arrays."""
    table = layout[layer]
    inputs, gate_rows = table[STEP_INPUTS], table[STEP_GATE_ROWS]
    width = table[STEP_PEEPHOLE_WIDTH]
    proj_rows, proj_columns = table[STEP_PROJ_ROWS], table[STEP_PROJ_COLUMNS]
    start = table[STEP_W_IH]
    w_ih_t = weights[start:start + inputs * gate_rows].reshape((inputs, gate_rows))
    start = table[STEP_W_HH]
    size = table[STEP_B_IH] - start
    w_hh_t = weights[start:start + size].reshape((size // gate_rows, gate_rows))
    b_ih = weights[table[STEP_B_IH]:table[STEP_B_IH] + gate_rows]
    b_hh = weights[table[STEP_B_HH]:table[STEP_B_HH] + gate_rows]
    start = table[STEP_PEEPHOLE]
    peephole = weights[start:start + 3 * width].reshape((3, width))
    start = table[STEP_W_PROJ]
    w_proj_t = weights[start:start + proj_rows * proj_columns].reshape((proj_rows, proj_columns))
    codes = table[STEP_CODES:STEP_CODES + 3]
    return (w_ih_t, w_hh_t, b_ih, b_hh, peephole, w_proj_t, codes,
            activation_parameters[layer, :3], activation_parameters[layer, 3:])


@kernel
def step_kernel(cell, x, rows, weights, layout, activation_parameters, clip, flag, h, c, y,
                scratch):
    """Advance a unidirectional stack by one timestep for the state rows `rows`, in place.

    x (N, I): one input per row; rows (N,): indices into the state table.
    weights, layout, activation_parameters: PackedWeights.step_tables().
    h (L, capacity, H_out), c (L, capacity, H) or (L, capacity, 0): the state table.
    y (N, H_out): the top layer's new h for each row.
    scratch (PackedWeights.step_scratch_size,): W x (G*H), R h (G*H), then the cells' work space.
    """
    layers = h.shape[0]
    gate_rows = layout[0, STEP_GATE_ROWS]
    gates = scratch[:gate_rows]
    recurrent = scratch[gate_rows:2 * gate_rows]
    work = scratch[2 * gate_rows:]
    for n in range(rows.shape[0]):
        row = rows[n]
        for layer in range(layers):
            w_ih_t, w_hh_t, b_ih, b_hh, peephole, w_proj_t, codes, alphas, betas = \
                layer_weights(weights, layout, activation_parameters, layer)
            below = x[n] if layer == 0 else h[layer - 1, row]
            for j in range(gate_rows):
                gates[j] = b_ih[j]
                recurrent[j] = 0.0
            add_scaled_rows(gates, below, w_ih_t, 0)
            add_scaled_rows(recurrent, h[layer, row], w_hh_t, 0)
            cell_step(cell, gates, recurrent, h[layer, row], c[layer, row], w_hh_t, b_hh, peephole,
                      w_proj_t, codes, alphas, betas, clip, flag, h[layer, row], c[layer, row],
                      work)
        top = h[layers - 1, row]
        for j in range(top.shape[0]):
            y[n, j] = top[j]


@kernel
def cells_kernel(cell, rows, gates, recurrent, b_ih, h, c, w_hh_t, b_hh, peephole, w_proj_t,
                 codes, alphas, betas, clip, flag, work):
    """One layer's cells for the state rows `rows`, given gates (N, G*H) = W x and recurrent
    (N, G*H) = R h made by batched_step; h (capacity, H_out) and c are that layer's table."""
    gate_rows = gates.shape[1]
    for n in range(rows.shape[0]):
        row = rows[n]
        row_gates = gates[n]
        for j in range(gate_rows):
            row_gates[j] += b_ih[j]
        cell_step(cell, row_gates, recurrent[n], h[row], c[row], w_hh_t, b_hh, peephole,
                  w_proj_t, codes, alphas, betas, clip, flag, h[row], c[row], work)


@kernel
def product_kernel(out, vectors, rows):
    """out = vectors @ rows, for the products BLAS is slow at (a few input features: 5 us here
    where numpy's matmul took 50 us for (256, 1) @ (1, 128))."""
    for b in range(out.shape[0]):
        target = out[b]
        for j in range(target.shape[0]):
            target[j] = 0.0
    add_scaled_rows_batch(out, vectors, rows, 0, 0, out.shape[1])


def batched_step(cell, x, rows, weights, layout, activation_parameters, clip, flag, h, c, y,
                 layer_input, previous_h, gates, recurrent, scratch):
    """step_kernel for many rows at once: each layer's products are two numpy (BLAS) products.

    Arguments as step_kernel's, with work buffers for up to M >= N rows: layer_input (M, H_out)
    and previous_h (M, H_out) gather the rows' layer input (above layer 0) and state; gates
    (M, G*H) and recurrent (M, G*H) receive W x and R h; scratch as step_kernel's.
    Worth it from BLAS_MIN_BATCH rows on; below that step_kernel's row-by-row products are faster.
    Nothing is allocated but array views.
    """
    count = rows.shape[0]
    gate_rows = gates.shape[1]
    row_gates, row_recurrent = gates[:count], recurrent[:count]
    below, state = x, previous_h[:count]
    work = scratch[2 * gate_rows:]
    for layer in range(h.shape[0]):
        w_ih_t, w_hh_t, b_ih, b_hh, peephole, w_proj_t, codes, alphas, betas = layer_weights(
            weights, layout, activation_parameters, layer)
        if below.shape[1] < BLAS_MIN_INPUTS:
            product_kernel(row_gates, below, w_ih_t)
        else:
            np.matmul(below, w_ih_t, out=row_gates)
        # mode="clip" lets numpy write straight into `out`; the slots were checked by the caller.
        np.take(h[layer], rows, axis=0, out=state, mode="clip")
        np.matmul(state, w_hh_t, out=row_recurrent)
        cells_kernel(cell, rows, row_gates, row_recurrent, b_ih, h[layer], c[layer], w_hh_t, b_hh,
                     peephole, w_proj_t, codes, alphas, betas, clip, flag, work)
        below = layer_input[:count]
        np.take(h[layer], rows, axis=0, out=below, mode="clip")
    y[:] = below
