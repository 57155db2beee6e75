"""Two cores on one recurrence: a partner thread, and the barrier its kernels meet at.

A recurrence is sequential in time, so a second core can only help inside each step: the step's
hidden units are split in two, each core makes the weight products and the cells of its half, and
both wait at a barrier before the next step reads the whole new state. Two cores then read half the
weights each, from their own caches, which is what a batch-1 step is bound by.

The partner is one daemon thread per process, started on first use (and pinned to a core; set
FASTRNN_PIN=0 to leave it free). `run_pair(kernel, args)` hands it `kernel(1, *args)` and runs
`kernel(0, *args)` itself; the kernels release the GIL, so the two run at once, and meet at
`barrier` after every step: a counter per side in a shared int64 array, written and read with
atomic release/acquire operations (Numba has none on the CPU, so they are LLVM intrinsics here).
A Stream instead keeps the partner in a step server (`start_server`) while its steps come, and asks
for each step through a compare-and-swap: waking a thread per step would cost more than the step.

Only one pair job runs at a time. A caller runs its single-core kernel instead when the process is
limited to one core or one thread (`set_num_threads(1)`), when the partner is busy, or for
CONTENDED_SECONDS after signs that the machine has no core to spare: waits at the barrier of over
LATE_WAIT_CYCLES, or a second thread wanting the partner.
"""

import os
import platform
import queue
import threading
import time

import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from fastrnn.engine.jit import kernel

# Slots of the sync array, 16 int64 (128 bytes, two cache lines) apart so that the two sides'
# counters never share a line (a shared line would bounce between the cores at every write).
SYNC_STRIDE = 16
SYNC_ABORT = 2 * SYNC_STRIDE
# A stream's step server (start_server): how many steps the caller has asked of it, or CLOSED.
SYNC_CHANNEL = 3 * SYNC_STRIDE
# Set by another thread that wanted the partner: the server leaves at its next pause.
SYNC_STOP = 4 * SYNC_STRIDE
SYNC_SIZE = 5 * SYNC_STRIDE
CLOSED = -1
# Spins (about 25 us) before a wait starts calling sched_yield at every look: long enough that a
# running partner is met without a system call, short enough that when the machine has more
# runnable threads than cores the waiting thread gives its core to one that can make progress
# (at 4096 spins between yields a step took 240 us there instead of 10).
SPINS_BEFORE_YIELD = 1024


@intrinsic
def atomic_load(typingctx, array, index):
    """array[index] read with acquire ordering (an int64 array), so the write it pairs with, and
    everything before that write on the other core, is seen."""
    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        view = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, view, [args[1]])
        return builder.load_atomic(pointer, ordering="acquire", align=8)
    return types.int64(array, index), codegen


@intrinsic
def atomic_store(typingctx, array, index, value):
    """array[index] = value with release ordering: every write before it is seen first."""
    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        view = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, view, [args[1]])
        stored = context.cast(builder, args[2], signature.args[2], types.int64)
        builder.store_atomic(stored, pointer, ordering="release", align=8)
        return context.get_dummy_value()
    return types.void(array, index, value), codegen


@intrinsic
def compare_exchange(typingctx, array, index, expected, value):
    """If array[index] == expected, set it to value and return True; else False. One atomic,
    sequentially consistent step, so two threads racing to change the slot cannot both win."""
    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        view = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, view, [args[1]])
        old = context.cast(builder, args[2], signature.args[2], types.int64)
        new = context.cast(builder, args[3], signature.args[3], types.int64)
        result = builder.cmpxchg(pointer, old, new, "seq_cst", "seq_cst")
        return builder.extract_value(result, 1)
    return types.boolean(array, index, expected, value), codegen


@intrinsic
def cycle_counter(typingctx):
    """The CPU's cycle counter (x86 rdtsc): a cheap clock for spin limits."""
    def codegen(context, builder, signature, args):
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(64), []), "llvm.readcyclecounter")
        return builder.call(function, [])
    return types.int64(), codegen


@intrinsic
def prefetch(typingctx, array, index):
    """Start loading the cache line of array[index] (1-D, C-contiguous) without waiting for it."""
    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        view = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, view, [args[1]])
        byte_pointer = builder.bitcast(pointer, ir.IntType(8).as_pointer())
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()] +
                                            [ir.IntType(32)] * 3), "llvm.prefetch.p0i8")
        # read, keep in all cache levels, data cache
        builder.call(function, [byte_pointer, ir.Constant(ir.IntType(32), 0),
                                ir.Constant(ir.IntType(32), 3), ir.Constant(ir.IntType(32), 1)])
        return context.get_dummy_value()
    return types.void(array, index), codegen


@kernel
def fetch_rows(rows):
    """Prefetch every cache line of a 2-D C-contiguous array: the rows another core has just
    written arrive together, instead of one stall per line as a loop reaches them."""
    flat = rows.reshape(rows.size)
    step = max(1, 64 // flat.itemsize)
    for index in range(0, flat.shape[0], step):
        prefetch(flat, index)


_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


@intrinsic
def spin_pause(typingctx):
    """The CPU's spin-wait hint (x86 `pause`), nothing elsewhere."""
    def codegen(context, builder, signature, args):
        if _X86:
            pause = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
            builder.call(pause, [])
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def yield_core(typingctx):
    """sched_yield(): let another thread have this core (a no-op where there is none)."""
    def codegen(context, builder, signature, args):
        if os.name == "posix":
            function_type = ir.FunctionType(ir.IntType(32), [])
            function = cgutils.get_or_insert_function(builder.module, function_type,
                                                      "sched_yield")
            builder.call(function, [])
        return context.get_dummy_value()
    return types.void(), codegen


# What barrier returns: met, met after a wait of over LATE_WAIT_CYCLES (about 0.3 ms: far longer
# than the halves of a step differ by, so the partner was not running: the machine is busier than
# its cores), or the partner failed.
MET, MET_LATE, PARTNER_FAILED = 0, 1, -1
LATE_WAIT_CYCLES = 1_000_000


@kernel
def barrier(sync, part, generation):
    """Wait until both sides have reached `generation` (1, 2, ...): MET, MET_LATE or PARTNER_FAILED.

    Each side publishes its generation, then waits for the other's: writes a side made before its
    call are seen by the other side after the call returns.
    """
    atomic_store(sync, part * SYNC_STRIDE, generation)
    other = (1 - part) * SYNC_STRIDE
    if atomic_load(sync, other) >= generation:
        return MET
    started = cycle_counter()
    spins = 0
    while atomic_load(sync, other) < generation:
        if atomic_load(sync, SYNC_ABORT) != 0:
            return PARTNER_FAILED
        if spins < SPINS_BEFORE_YIELD:
            spin_pause()
            spins += 1
        else:
            yield_core()
    return MET if cycle_counter() - started <= LATE_WAIT_CYCLES else MET_LATE


def _available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_num_threads = 2 if _available_cores() >= 2 else 1
if os.environ.get("FASTRNN_NUM_THREADS", "").strip():
    _num_threads = 1 if int(os.environ["FASTRNN_NUM_THREADS"]) <= 1 else 2


def set_num_threads(count):
    """How many cores one recurrence may use: 1, or 2 (the default where two are available).

    Also read at import from the environment variable FASTRNN_NUM_THREADS.
    """
    global _num_threads
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"the thread count must be a positive integer, got {count!r}")
    _num_threads = 1 if count == 1 else 2
    if _num_threads == 1 and _server_sync is not None:
        _server_sync[SYNC_STOP] = 1  # a stream's server leaves at its next pause


def get_num_threads():
    """The count set_num_threads set: 1 or 2."""
    return _num_threads


PIN_PARTNER = os.environ.get("FASTRNN_PIN", "1") == "1"


def _pin_to_last_core():
    """Keep the partner thread on one core (the last this process may use), so that the weights
    it streams stay in that core's cache instead of following the thread around."""
    try:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) >= 2:
            os.sched_setaffinity(0, {cores[-1]})  # 0: this thread, on Linux
    except (AttributeError, OSError):  # not Linux, or not allowed: unpinned
        pass


class _Partner:
    """The partner thread: runs `kernel(1, *args)` for each job put in its queue; releases the
    lock after a job that asks it to (a stream's step server, whose caller does not wait)."""

    def __init__(self):
        self.lock = threading.Lock()  # held by the caller for the whole of a pair job
        self.jobs = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name="fastrnn-partner", daemon=True)
        self.thread.start()

    def _serve(self):
        if PIN_PARTNER:
            _pin_to_last_core()
        while True:
            kernel_function, args, sync, failures, release = self.jobs.get()
            try:
                kernel_function(1, *args)
            except BaseException as error:  # noqa: BLE001 -- reported by the caller
                failures.append(error)
                sync[SYNC_ABORT] = 1
            finally:
                if release:
                    self.lock.release()


_partner = None
_partner_lock = threading.Lock()


def _get_partner():
    global _partner
    with _partner_lock:
        if _partner is None:
            _partner = _Partner()
        return _partner


def _forget_partner_after_fork():
    """A forked child has no partner thread (only the forking thread survives a fork): it starts
    its own on first use instead of queueing jobs for one that will never take them."""
    global _partner, _partner_lock, _server_sync, _server_thread
    _partner, _partner_lock = None, threading.Lock()
    _server_sync = _server_thread = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_partner_after_fork)


# A pair job whose waits gave the core away this often (see MET_LATE) says the machine has more
# runnable threads than cores; two-core runs then pause for CONTENDED_SECONDS, since a spinning
# pair there is far slower than one core (a 10 us step took 70-240 us).
LATE_WAITS_LIMIT = 8
CONTENDED_SECONDS = 0.2
_contended_until = 0.0


def report_late_waits(count):
    """Note a pair job's late waits; past LATE_WAITS_LIMIT, pause two-core runs for a while."""
    if count > LATE_WAITS_LIMIT:
        pause_pairs()


def pause_pairs():
    """No new two-core run for CONTENDED_SECONDS (the machine is busy)."""
    global _contended_until
    _contended_until = time.monotonic() + CONTENDED_SECONDS


def _pair_available():
    return _num_threads >= 2 and time.monotonic() >= _contended_until


_server_sync = None   # the sync array of the step server last started
_server_thread = None  # and the thread that started it


def _partner_wanted_elsewhere():
    """The partner is taken when this thread wants it. If another thread took it, more threads are
    running fastrnn than there are cores for pairs: pause two-core runs (the server holding it
    leaves), so that each thread runs on a core of its own. If this thread's own stream holds it
    (one thread stepping several streams), this call just runs on one core."""
    if _server_thread == threading.get_ident() and _server_sync is not None \
            and _server_sync[SYNC_CHANNEL] != CLOSED:
        return
    pause_pairs()
    server_sync = _server_sync
    if server_sync is not None:
        server_sync[SYNC_STOP] = 1


def _take_partner():
    """The partner with its lock held for a job, or None when it is not to be had now."""
    if not _pair_available():
        return None
    partner = _get_partner()
    if not partner.lock.acquire(blocking=False):
        _partner_wanted_elsewhere()
        return None
    return partner


def run_pair(kernel_function, args):
    """kernel(0, *args) here and kernel(1, *args) on the partner thread, at once.

    The kernel's last argument must be a fresh zeroed int64 sync array of SYNC_SIZE; it returns how
    many of its waits were late (MET_LATE), or a negative number if the partner failed. Returns
    False without running anything when the pair is not available now (one thread set, the
    partner busy with another caller's job, or the machine found busy a moment ago): the caller
    runs its single-core path instead.
    """
    partner = _take_partner()
    if partner is None:
        return False
    sync = args[-1]
    failures = []
    try:
        partner.jobs.put((kernel_function, args, sync, failures, False))
        try:
            late_waits = kernel_function(0, *args)
        except BaseException:
            sync[SYNC_ABORT] = 1  # lets the partner's part out of its barrier
            raise
        if late_waits < 0:  # only the partner sets the abort slot, after recording why
            raise RuntimeError("fastrnn's partner thread failed") from failures[0]
        report_late_waits(late_waits)
    finally:
        partner.lock.release()
    return True


def start_server(server_kernel, args):
    """Have the partner run server_kernel(1, *args) until the server closes its channel, and
    return its failures list (empty while all is well), or None when the partner is not available
    now (one thread set, or busy).

    A step server (fastrnn.engine.driver.pair_step_server) waits at the channel slot of its sync array
    (the last argument, fresh from new_sync) for steps that the caller asks for with
    compare_exchange, and closes the channel when it has waited long enough for none.
    The partner is the server's until then.
    """
    global _server_sync, _server_thread
    partner = _take_partner()
    if partner is None:
        return None
    _server_sync, _server_thread = args[-1], threading.get_ident()
    failures = []
    partner.jobs.put((server_kernel, args, args[-1], failures, True))
    return failures


def close_server(sync, requested):
    """Close a step server's channel from the caller's side, once its `requested` steps are done.

    Returns True if this call closed it (False: the server had closed it already). Either way the
    server leaves at its next look at the channel; the partner is free a moment later.
    """
    return _close_channel(sync, requested)


@kernel
def _close_channel(sync, requested):
    return compare_exchange(sync, SYNC_CHANNEL, requested, CLOSED)


@kernel
def _read_cycle_counter():
    return cycle_counter()


_cycles_per_second = None


def cycles_per_second():
    """The rate of cycle_counter, measured once (over about 2 ms) on first use."""
    global _cycles_per_second
    if _cycles_per_second is None:
        _read_cycle_counter()  # compiled before timing
        start_time, start_cycles = time.perf_counter(), _read_cycle_counter()
        while time.perf_counter() - start_time < 0.002:
            pass
        elapsed, cycles = time.perf_counter() - start_time, _read_cycle_counter() - start_cycles
        _cycles_per_second = max(cycles / elapsed, 1e6)  # a counter that does not count: 1 MHz
    return _cycles_per_second


def wait_until_free(timeout=0.05):
    """Wait (up to `timeout` seconds) until the partner has no job: after close_server, so that
    the caller's next sequence can have it."""
    partner = _get_partner()
    if partner.lock.acquire(timeout=timeout):
        partner.lock.release()


def new_sync():
    """A zeroed sync array for one pair job."""
    return np.zeros(SYNC_SIZE, np.int64)
