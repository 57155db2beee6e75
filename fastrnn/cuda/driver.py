"""The CUDA driver: layers, directions, per-row lengths and time order, as fastrnn/driver.py.

Whole sequences (`run_sequence`), per layer:

1. the input projection of every timestep and both directions, `xproj = x @ W_ih^T + b_ih`, as one
   tiled matrix product per direction (`matmul_bias`, shared-memory tiles);
2. `sequence_kernel`, one launch for the whole layer: a block per (batch row, direction) walks
   all the timesteps of its row, the threads of the block sharing the row's hidden units.

Why a persistent kernel per layer rather than a launch per timestep: the recurrence of one batch
row depends on that row alone, so the only synchronisation a step needs is among the threads that
share a row, and a block barrier gives exactly that. No grid-wide synchronisation is needed (nor
cooperative launches, which the simulator lacks), and a T-step sequence costs one launch per layer
instead of T; from Python a Numba launch costs tens of microseconds, more than a small step's
arithmetic. The price: a row's step runs on one multiprocessor, so a batch of one uses one SM,
reading R (4H x H_out) from L2 every step; per-step latency for a single stream is bound by that
and by the barrier chain, which is the hard case of the GPU. (run_sequence's steps_per_launch
splits the walk into several launches, 1 being a launch per step, so the two can be measured side
by side: bench/test_bench_cuda.py.)

Streams (`step_kernel`): one launch advances every layer of a unidirectional stack by one
timestep for chosen rows of a state table kept on the device; the input projection of that one
step is done in the same kernel (a matvec per row). Only x goes in and y comes out.

Kernels are built per dtype (and tile size) by `build`, so that constants take the model's dtype;
each is compiled once per dtype, configuration values (cell, flags, clip, sizes) being runtime
arguments. Kernels trust their inputs: fastrnn.cuda.model validates (through fastrnn.model).
"""

import functools
import math
from types import SimpleNamespace

import numba
import numpy as np
from numba import cuda

from fastrnn.cuda import cells


@functools.lru_cache(maxsize=None)
def build(dtype, tile):
    """The kernels for `dtype` with `tile` x `tile` matmul tiles (a compile-time size)."""
    dtype = np.dtype(dtype)
    real = numba.from_dtype(dtype)
    zero = dtype.type(0)
    recurrent_step = cells.build(dtype)

    @cuda.jit
    def matmul_bias(x, w_t, bias, out, column_offset):
        """out[i, column_offset + j] = sum_k x[i, k] w_t[k, j] + bias[j].

        x (N, K), w_t (K, M), out (N, >= column_offset + M). Block (tile, tile); grid
        (ceil(N / tile), ceil(M / tile)): rows on the grid's x axis, whose limit (2^31 - 1) a long
        T * B can need, unlike y's (65535). Each block stages tile x tile pieces of x and w_t in
        shared memory so that every element read from global memory serves `tile` products.
        """
        x_tile = cuda.shared.array((tile, tile), real)
        w_tile = cuda.shared.array((tile, tile), real)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        i = cuda.blockIdx.x * tile + ty
        j = cuda.blockIdx.y * tile + tx
        rows, inner, columns = x.shape[0], x.shape[1], w_t.shape[1]
        total = zero
        for start in range(0, inner, tile):
            x_tile[ty, tx] = x[i, start + tx] if i < rows and start + tx < inner else zero
            w_tile[ty, tx] = w_t[start + ty, j] if start + ty < inner and j < columns else zero
            cuda.syncthreads()
            for k in range(tile):
                total += x_tile[ty, k] * w_tile[k, tx]
            cuda.syncthreads()
        if i < rows and j < columns:
            out[i, column_offset + j] = total + bias[j]

    @cuda.jit
    def sequence_kernel(cell, flag, clip, layer, first_step, stop_step, xproj, lengths, h, c,
                        h_buffers, work, w_hh_t, b_hh, peephole, w_proj_t, codes, alphas, betas,
                        out):
        """Run one layer, both directions, over a padded batch, for steps first_step:stop_step of
        each row's walk (0:T is the whole sequence in one launch). Grid (B, D); a block per row
        and direction.

        xproj (T, B, D*G*H): W x + b_ih, direction d in columns d*G*H:(d+1)*G*H.
        lengths (B,): row b is valid for t < lengths[b]; its reverse pass starts at
          lengths[b] - 1; its final state is the one after its last valid step.
        h (L*D, B, H_out), c (L*D, B, H) or (L*D, B, 0): initial state in, final state out.
        h_buffers (B, D, 2, H_out): h of the previous and of the current step, alternating.
        work (B, D, 2H): scratch of recurrent_step. out (T, B, D*H_out): steps past a row's
          length are written as zero.
        Launches over consecutive windows of steps give the same result as one launch over all.
        """
        row = cuda.blockIdx.x
        direction = cuda.blockIdx.y
        ld = layer * cuda.gridDim.y + direction
        tid = cuda.threadIdx.x
        threads = cuda.blockDim.x
        steps = xproj.shape[0]
        gate_width = b_hh.shape[1]
        output_size = h.shape[2]
        gates_start = direction * gate_width
        out_start = direction * output_size
        length = lengths[row]
        buffers = h_buffers[row, direction]
        for k in range(tid, output_size, threads):
            buffers[0, k] = h[ld, row, k]
        cuda.syncthreads()
        current = 0
        for step in range(first_step, min(stop_step, length)):
            t = length - 1 - step if direction == 1 else step
            recurrent_step(cell, flag, clip, tid, threads,
                           xproj[t, row, gates_start:gates_start + gate_width],
                           buffers[current], buffers[1 - current], c[ld, row], w_hh_t[ld],
                           b_hh[ld], peephole[ld], w_proj_t[ld], codes[ld], alphas[ld],
                           betas[ld], work[row, direction])
            # This thread's units of h_next are final (recurrent_step's contract).
            for k in range(tid, output_size, threads):
                out[t, row, out_start + k] = buffers[1 - current, k]
            cuda.syncthreads()
            current = 1 - current
        for t in range(max(length, first_step), min(stop_step, steps)):
            for k in range(tid, output_size, threads):
                out[t, row, out_start + k] = zero
        for k in range(tid, output_size, threads):
            h[ld, row, k] = buffers[current, k]

    @cuda.jit(device=True)
    def project_step_input(tid, threads, source, w_ih_flat, start, b_ih, gates):
        """gates = b_ih + source @ W_ih^T for one row, W_ih^T stored (I, G*H) from `start`."""
        gate_width = gates.shape[0]
        for j in range(tid, gate_width, threads):
            total = b_ih[j]
            for k in range(source.shape[0]):
                total += source[k] * w_ih_flat[start + k * gate_width + j]
            gates[j] = total

    @cuda.jit
    def step_kernel(cell, flag, clip, x, rows, w_ih_flat, w_ih_offset, b_ih, w_hh_t, b_hh,
                    peephole, w_proj_t, codes, alphas, betas, h, c, y, gates, h_next, work):
        """Advance a unidirectional stack one timestep for the state rows `rows`. Grid (N,).

        x (N, I); rows (N,) indices into the state table h (L, capacity, H_out), c (L, capacity,
        H) or (L, capacity, 0). y (N, H_out): the top layer's new h. gates (>= N, G*H),
        h_next (>= N, H_out), work (>= N, 2H): scratch, one row per block.
        """
        n = cuda.blockIdx.x
        row = rows[n]
        tid = cuda.threadIdx.x
        threads = cuda.blockDim.x
        layers = h.shape[0]
        output_size = h.shape[2]
        row_gates = gates[n]
        row_next = h_next[n]
        for layer in range(layers):
            if layer == 0:
                project_step_input(tid, threads, x[n], w_ih_flat, w_ih_offset[0], b_ih[0],
                                   row_gates)
            else:
                project_step_input(tid, threads, h[layer - 1, row], w_ih_flat,
                                   w_ih_offset[layer], b_ih[layer], row_gates)
            cuda.syncthreads()
            recurrent_step(cell, flag, clip, tid, threads, row_gates, h[layer, row], row_next,
                           c[layer, row], w_hh_t[layer], b_hh[layer], peephole[layer],
                           w_proj_t[layer], codes[layer], alphas[layer], betas[layer], work[n])
            cuda.syncthreads()
            for k in range(tid, output_size, threads):
                h[layer, row, k] = row_next[k]
                if layer == layers - 1:
                    y[n, k] = row_next[k]
            cuda.syncthreads()

    return SimpleNamespace(matmul_bias=matmul_bias, sequence_kernel=sequence_kernel,
                           step_kernel=step_kernel, real=dtype.type)


def cell_flag(config):
    """The one flag a cell takes: input_forget (LSTM) or linear_before_reset (GRU)."""
    return config.input_forget if config.kind == "lstm" else config.linear_before_reset


def run_sequence(weights, x, h, c, lengths, threads_per_block, steps_per_launch=None):
    """Run the whole model on the device over x (T, B, I), time-major, in the model's dtype.

    steps_per_launch: None walks each layer's T steps in one launch (the design); a number
    splits the walk into launches of that many steps, 1 being a launch per timestep, kept to
    measure what the persistent launch saves (bench/test_bench_cuda.py).

    weights: a fastrnn.cuda.model.DeviceWeights. x (host, validated). h (L*D, B, H_out),
    c (L*D, B, H) or (L*D, B, 0), lengths (B,): device arrays; h and c hold the initial state and
    are overwritten with the final one. Returns y (T, B, D*H_out) as a device array.
    """
    config = weights.config
    kernels = weights.kernels
    tile = weights.tile
    steps, batch = x.shape[0], x.shape[1]
    directions = config.num_directions
    output_size = config.output_size
    gate_width = config.num_gates * config.hidden_size
    layer_input = cuda.to_device(x).reshape(steps * batch, x.shape[2])
    xproj = cuda.device_array((steps * batch, directions * gate_width), x.dtype)
    h_buffers = cuda.device_array((batch, directions, 2, output_size), x.dtype)
    work = cuda.device_array((batch, directions, 2 * config.hidden_size), x.dtype)
    projection_grid = (math.ceil(steps * batch / tile), math.ceil(gate_width / tile))
    threads = recurrence_threads(config, threads_per_block)
    clip = kernels.real(config.clip)
    for layer in range(config.num_layers):
        for direction in range(directions):
            ld = layer * directions + direction
            kernels.matmul_bias[projection_grid, (tile, tile)](
                layer_input, weights.w_ih_t(ld), weights.b_ih[ld], xproj,
                direction * gate_width)
        out = cuda.device_array((steps, batch, directions * output_size), x.dtype)
        window = steps_per_launch or steps
        for first_step in range(0, steps, window):
            kernels.sequence_kernel[(batch, directions), threads](
                config.cell, cell_flag(config), clip, layer, first_step, first_step + window,
                xproj.reshape(steps, batch, directions * gate_width), lengths, h, c, h_buffers,
                work, weights.w_hh_t, weights.b_hh, weights.peephole, weights.w_proj_t,
                weights.codes, weights.alphas, weights.betas, out)
        layer_input = out.reshape(steps * batch, directions * output_size)
    return out


def recurrence_threads(config, threads_per_block):
    """Threads of a recurrence block: one per hidden unit, at most threads_per_block."""
    return max(1, min(threads_per_block, max(config.hidden_size, config.output_size)))


def advance_streams(weights, threads_per_block, count, x, rows, h, c, y, buffers):
    """Advance `count` rows of a device state table one timestep (step_kernel, one launch).

    x (>= count, I), rows (>= count,), y (>= count, H_out): device arrays, rows 0..count-1 used.
    h (L, capacity, H_out), c (L, capacity, H) or (L, capacity, 0): the device state table.
    buffers: (gates, h_next, work), device scratch with at least `count` rows.
    """
    config = weights.config
    gates, h_next, work = buffers
    threads = max(1, min(threads_per_block, max(config.num_gates * config.hidden_size,
                                                config.output_size)))
    weights.kernels.step_kernel[count, threads](
        config.cell, cell_flag(config), weights.kernels.real(config.clip), x, rows,
        weights.w_ih_flat, weights.w_ih_offset, weights.b_ih, weights.w_hh_t, weights.b_hh,
        weights.peephole, weights.w_proj_t, weights.codes, weights.alphas, weights.betas,
        h, c, y, gates, h_next, work)


def step_buffers(config, rows, dtype):
    """Device scratch for advance_streams over up to `rows` rows: (gates, h_next, work)."""
    return (cuda.device_array((rows, config.num_gates * config.hidden_size), dtype),
            cuda.device_array((rows, config.output_size), dtype),
            cuda.device_array((rows, 2 * config.hidden_size), dtype))
