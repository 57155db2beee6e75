"""All of fastrnn's CPU parallelism, in one place: Numba's TBB threading layer and its lifecycle.

Work is spread over cores only where it divides without talking: the rows of a batch (or the
streams of a pool tick) are independent for the whole call, so `driver` hands each thread a
block of rows through one `prange` and nothing waits for anything until the call returns. A
batch-1 recurrence stays on one core; there is no partner thread, barrier or spinning wait. (The
two directions of a bidirectional layer are independent too: a batch too small for blocks runs
them one per thread, driver.run_sequence.)

The threading layer is TBB (the `tbb` package): it is safe to call from many threads at once and
in a forked child, and its workers sleep when idle, so an idle process burns no core. pip puts
libtbb in the environment's lib/ folder, which the loader does not search, so it is loaded here
by path before Numba looks for it. Without TBB, Numba's own workqueue layer is used, which
aborts the process if two threads enter it at once and is not known to survive a fork: then
`parallel_section()` serialises callers with a lock and a forked child runs on one core.

    set_num_threads(n)   at most n threads per call (1: everything on the calling thread)
    get_num_threads()
    FASTRNN_NUM_THREADS  the same, from the environment (read at import)

Ctrl-C during a parallel call is delivered when the call returns (Numba's kernels do not look
at signals), and leaves nothing half-done behind: the next call starts afresh.
"""

import contextlib
import ctypes
import glob
import os
import sys
import threading
import warnings

import numba

_SAFE_LAYERS = ("tbb",)


def _load_tbb():
    """Make libtbb loadable for Numba's TBB layer (pip installs it where the loader never looks)."""
    for folder in (os.path.join(sys.prefix, "lib"), os.path.join(sys.base_prefix, "lib")):
        for path in sorted(glob.glob(os.path.join(folder, "libtbb.so.12*"))):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                return True
            except OSError:
                continue
    try:  # a system TBB on the loader's path
        ctypes.CDLL("libtbb.so.12", mode=ctypes.RTLD_GLOBAL)
        return True
    except OSError:
        return False


def _choose_layer():
    if os.environ.get("NUMBA_THREADING_LAYER"):  # the user's choice stands
        return
    numba.config.THREADING_LAYER = "tbb" if _load_tbb() else "workqueue"


def _threads_from_environment():
    value = os.environ.get("FASTRNN_NUM_THREADS", "").strip()
    if not value:
        return numba.config.NUMBA_NUM_THREADS
    try:
        count = int(value)
        if count < 1:
            raise ValueError
    except ValueError:
        warnings.warn(f"FASTRNN_NUM_THREADS must be a positive integer, got {value!r}; using "
                      f"{numba.config.NUMBA_NUM_THREADS} (all cores)", RuntimeWarning, stacklevel=3)
        return numba.config.NUMBA_NUM_THREADS
    return min(count, numba.config.NUMBA_NUM_THREADS)


_choose_layer()
_num_threads = _threads_from_environment()
_owner_pid = os.getpid()
_unsafe_lock = threading.Lock()


def set_num_threads(count):
    """Use at most `count` threads per call (1 runs everything on the calling thread)."""
    global _num_threads
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"the number of threads must be a positive integer, got {count!r}")
    _num_threads = min(count, numba.config.NUMBA_NUM_THREADS)


def get_num_threads():
    return _num_threads


def threads_for_call():
    """How many threads this call may use: 1 in a forked child of a layer that cannot fork."""
    if _num_threads > 1 and os.getpid() != _owner_pid and not _layer_is_safe():
        return 1
    return _num_threads


def _layer_is_safe():
    layer = numba.config.THREADING_LAYER
    if layer in _SAFE_LAYERS:
        return True
    try:  # "default" and friends: ask what was loaded (only known after a first parallel call)
        return numba.threading_layer() in _SAFE_LAYERS
    except ValueError:
        return False


def threading_layer():
    """The Numba threading layer the parallel kernels run on ("tbb" or "workqueue")."""
    try:
        return numba.threading_layer()
    except ValueError:  # not launched yet
        return numba.config.THREADING_LAYER


@contextlib.contextmanager
def parallel_section():
    """Around every parallel kernel call: serialises callers when the layer is not thread-safe."""
    if _layer_is_safe():
        yield
        return
    with _unsafe_lock:
        yield


def block_bounds(count, blocks):
    """Row ranges of `blocks` near-equal blocks of `count` rows (as the parallel kernels cut them)."""
    return [(block * count // blocks, (block + 1) * count // blocks) for block in range(blocks)]
