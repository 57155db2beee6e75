"""The CPU state table: the backend a Stream or StreamPool runs on (fastrnn.cuda has the device one).

A backend holds the state of `rows` streams and answers five calls; Stream and StreamPool
validate their arguments and call nothing else:

    advance(x, slots, out)   one timestep for the rows `slots` (int64 (N,)): x (N, I) -> out (N, H_out)
    stepper(slots)           the same as a callable step(x, out) for slots fixed once
    run_chunk(xs)            every row over xs (T, rows, I), time-major -> ys (T, rows, H_out)
    read(rows)               host copies (h (L, n, H_out), c (L, n, H) or (L, n, 0)) of a slice
    write(rows, h, c)        set a slice of rows (c may be None for cells without one)
    reset(rows)              zero a slice of rows

h (L, rows, H_out) and c (L, rows, H) (or (L, rows, 0)) are allocated once; a step allocates
nothing. A table is driven by one thread at a time (Stream and StreamPool hold a lock).
"""

import functools

import numba
import numpy as np

from fastrnn.engine import parallel
from fastrnn.engine.jit import call
from fastrnn.engine import plan as plan_module
from fastrnn.engine.driver import run_sequence, step_block, step_blocks, step_scratch_size


class CpuStateTable:
    def __init__(self, plan, rows):
        config = plan.config
        self.plan = plan
        self.h = np.zeros((config.num_layers, rows, config.output_size), plan.dtype)
        self.c = np.zeros((config.num_layers, rows, config.hidden_size if config.kind == "lstm"
                           else 0), plan.dtype)
        self._front = (plan.weights, plan.layout, plan.parameters)
        self._scratch_blocks = self._scratch_rows = 0
        threads = parallel.get_num_threads()
        # Enough for a call on every row at today's thread count; advance() grows it if needed.
        self._ensure_scratch(threads, max(-(-rows // threads),
                                          min(rows, 2 * plan_module.MIN_ROWS_PER_THREAD)))
        # The serial kernel's compiled entry point for these argument types: Numba's dispatcher
        # spends a few hundred ns a call matching 11 arguments' types to a compiled version.
        # A call on no rows compiles it (or loads it from the cache) now, touching no state.
        x0 = np.zeros((0, config.input_size), plan.dtype)
        y0 = np.zeros((0, config.output_size), plan.dtype)
        arguments = (*self._front, np.zeros(0, np.int64), self.h, self.c, self._scratch[0], 0,
                     0, x0, y0)
        self._serial = _entry_point(step_block, arguments)
        # Calls on fewer rows than this run as one block straight away (a Stream's every step).
        self._serial_below = min(2 * plan_module.MIN_ROWS_PER_THREAD, self._scratch_rows + 1)

    def _ensure_scratch(self, blocks, rows_per_block):
        if blocks > self._scratch_blocks or rows_per_block > self._scratch_rows:
            self._scratch_blocks = max(blocks, self._scratch_blocks)
            self._scratch_rows = max(rows_per_block, self._scratch_rows)
            self._scratch = np.empty((self._scratch_blocks,
                                      step_scratch_size(self.plan, self._scratch_rows)),
                                     self.plan.dtype)

    def advance(self, x, slots, out):
        count = slots.shape[0]
        if count < self._serial_below:
            self._serial(*self._front, slots, self.h, self.c, self._scratch[0], 0, count, x, out)
            return out
        blocks = self.plan.threads_for(count)
        rows_per_block = -(-count // blocks)
        self._ensure_scratch(blocks, rows_per_block)
        if blocks == 1:
            self._serial(*self._front, slots, self.h, self.c, self._scratch[0], 0, count, x, out)
        else:
            with parallel.parallel_section():
                call(step_blocks, *self._front, x, slots, self.h, self.c, out, self._scratch,
                     blocks)
        return out

    def stepper(self, slots):
        """advance(x, slots, out) as a callable step(x, out) for these slots, with as little
        Python between the caller and the kernel as possible (a Stream's every step)."""
        count = slots.shape[0]
        if count >= self._serial_below:
            return lambda x, out: self.advance(x, slots, out)
        return functools.partial(self._serial, *self._front, slots, self.h, self.c,
                                 self._scratch[0], 0, count)

    def run_chunk(self, xs):
        lengths = np.full(xs.shape[1], xs.shape[0], np.int64)
        return run_sequence(self.plan, xs, self.h, self.c, lengths)

    def read(self, rows):
        return self.h[:, rows].copy(), self.c[:, rows].copy()

    def write(self, rows, h, c):
        self.h[:, rows] = h
        if c is not None and self.c.shape[2]:
            self.c[:, rows] = c

    def reset(self, rows):
        self.h[:, rows] = 0
        self.c[:, rows] = 0


def _entry_point(kernel_function, arguments):
    """kernel_function's compiled entry point for these arguments' types, compiled now by calling
    it with them, or the dispatcher where Numba lacks those internals."""
    call(kernel_function, *arguments)
    try:
        return kernel_function.overloads[tuple(numba.typeof(a) for a in arguments)].entry_point
    except (KeyError, AttributeError):
        return kernel_function
