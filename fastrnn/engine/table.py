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

The first answer of a process with an empty cache. Compiling step_block takes Numba seconds to
tens of seconds; with FASTRNN_COMPILE=background (the default), a table that finds it neither
compiled in this process nor in the disk cache starts one helper process (per dtype, shared by
every table of the process) that compiles it into the cache, and serves its few-row steps from
fastrnn.engine.numpy_step meanwhile: the same equations in float64, within the float32 kernels'
tolerance. Each step looks whether the helper is done (a waitpid); when it is, the kernel is
loaded from the cache (a fraction of a second, on that step) and answers from then on, the state
carrying over as it is. A helper that failed or was interrupted (Ctrl-C reaches it too), or a
fork that left it behind, leaves the kernel to be compiled in the process, as in "wait" mode. A
process that exits first leaves the helper to finish filling the cache for the next one. Pool
ticks of many slots take the parallel kernel and compile it as before.
"""

import functools
import logging
import os
import subprocess
import sys
import threading
import time

import numba
import numpy as np

from fastrnn.engine import memory, numpy_step, parallel
from fastrnn.engine.jit import call, compile_mode, load_cached
from fastrnn.engine import plan as plan_module
from fastrnn.engine.driver import run_sequence, step_block, step_blocks, step_scratch_size

_log = logging.getLogger("fastrnn")


class CpuStateTable:
    def __init__(self, plan, rows):
        config = plan.config
        self.plan = plan
        self.h = memory.zeros((config.num_layers, rows, config.output_size), plan.dtype)
        self.c = memory.zeros((config.num_layers, rows, config.hidden_size if config.kind == "lstm"
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
        self._kernel_arguments = arguments
        self._helper = None
        mode = compile_mode()
        self._serial = load_cached(step_block, arguments)
        if self._serial is None:
            # numpy_step reads float weights only: a low-bit plan compiles here
            background = mode == "background" and plan.encoded is None
            self._helper = _helper(plan.dtype) if background else None
            if self._helper is None:
                self._serial = _entry_point(step_block, arguments)
            else:
                self._serial = self._first_steps
        # Calls on fewer rows than this run as one block straight away (a Stream's every step).
        self._serial_below = min(2 * plan_module.MIN_ROWS_PER_THREAD, self._scratch_rows + 1)

    def _first_steps(self, *arguments):
        """step_block(*arguments) while its helper process compiles it: numpy, then the kernel."""
        if self._helper.done():
            started, self._helper = self._helper.started, None
            self._serial = (load_cached(step_block, self._kernel_arguments)
                            or _entry_point(step_block, self._kernel_arguments))
            _log.info("step_block ready %.2f s after its helper process started; streams step "
                      "on it from now on", time.perf_counter() - started)
            return self._serial(*arguments)
        numpy_step.step(*arguments)

    def _ensure_scratch(self, blocks, rows_per_block):
        if blocks > self._scratch_blocks or rows_per_block > self._scratch_rows:
            self._scratch_blocks = max(blocks, self._scratch_blocks)
            self._scratch_rows = max(rows_per_block, self._scratch_rows)
            # Each block's row padded to a cache line, as every block starts on one.
            size = step_scratch_size(self.plan, self._scratch_rows)
            size += memory.padding(size, self.plan.dtype)
            self._scratch = memory.empty((self._scratch_blocks, size), self.plan.dtype)

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
        if self._helper is not None:   # self._serial changes when the kernel is ready
            scratch = self._scratch[0]
            return lambda x, out: self._serial(*self._front, slots, self.h, self.c, scratch, 0,
                                               count, x, out)
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


# The helper process: builds a one-row table of a tiny model of the dtype, which compiles
# step_block for exactly the argument types every table of that dtype passes (sizes are runtime
# values), and writes it to the disk cache.
_HELPER_CODE = """
import os, sys
os.environ["FASTRNN_COMPILE"] = "wait"
from fastrnn.builders import from_numpy
from fastrnn.compiles import _tiny_model
from fastrnn.engine.table import CpuStateTable
model = _tiny_model(from_numpy, sys.argv[1])
CpuStateTable(model.plan, 1)
"""

_helpers = {}
_helpers_lock = threading.Lock()


class _Helper:
    """A process compiling step_block of one dtype into the disk cache."""

    def __init__(self, dtype):
        from fastrnn.compiles import cache_directory
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([package_parent] + [
            path for path in env.get("PYTHONPATH", "").split(os.pathsep) if path])
        if numba.config.CACHE_DIR:
            env["NUMBA_CACHE_DIR"] = numba.config.CACHE_DIR
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-c", _HELPER_CODE, dtype.name], env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = os.getpid()
        _log.info("step_block is not compiled for %s; a helper process (pid %d) compiles it into "
                  "%s while the first steps run on numpy (FASTRNN_COMPILE=wait waits instead)",
                  dtype.name, self.process.pid, cache_directory())

    def done(self):
        # A forked process cannot wait for its parent's child: it compiles for itself.
        return os.getpid() != self.pid or self.process.poll() is not None


def _helper(dtype):
    """The helper compiling step_block for dtype (started now if none is running), or None where
    none can help: no writable disk cache for it to fill."""
    from fastrnn.compiles import cache_directory
    with _helpers_lock:
        helper = _helpers.get(dtype.name)
        if helper is not None:   # running; or done, and the kernel is still not in the cache
            return None if helper.done() else helper
        if cache_directory() is None:
            return None
        try:
            helper = _helpers[dtype.name] = _Helper(dtype)
        except OSError:   # no process could be started: compile here
            return None
        return helper
