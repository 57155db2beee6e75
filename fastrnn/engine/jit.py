"""The one place that says how fastrnn's CPU kernels are compiled.

Kernels are module-level functions decorated with `kernel`: compiled once, cached on disk,
released from the GIL so that threads each driving a stream run in parallel.

fastmath leaves out `nnan` and `ninf`: NaN in an input must reach the output, never be folded away.
error_model="numpy": a float division by zero gives inf/NaN as in numpy instead of raising; the
check Python's model puts on every division keeps LLVM from vectorising a loop that divides
(the float32 tanh does).
"""

import gc
import importlib.util
import logging
import signal
import sys
import threading
import time

import numba

from fastrnn.engine import parallel  # noqa: F401 (chooses the threading layer before any kernel runs)

FASTMATH = frozenset({"contract", "arcp", "nsz", "reassoc", "afn"})


def kernel(function):
    """Compile a CPU kernel: nopython, no GIL, cached, with fastmath minus the NaN/inf assumptions."""
    return numba.njit(fastmath=set(FASTMATH), error_model="numpy", nogil=True, cache=True)(function)


def parallel_kernel(function):
    """`kernel`, with its `numba.prange` loops run on the threading layer (fastrnn.engine.parallel
    chooses it and says how many blocks a call is cut into)."""
    return numba.njit(fastmath=set(FASTMATH), error_model="numpy", nogil=True, cache=True,
                      parallel=True)(function)


_log = logging.getLogger("fastrnn")


def call(dispatcher, *arguments):
    """dispatcher(*arguments), noting when the call compiled a specialisation (or loaded one from
    the cache): a log record on the "fastrnn" logger says which and how long it took, and the
    compiler's garbage is collected at once (collect_compiler_garbage)."""
    known = len(dispatcher.overloads)
    start = time.perf_counter()
    try:
        return dispatcher(*arguments)
    finally:
        if len(dispatcher.overloads) != known or sys.exc_info()[0] is KeyboardInterrupt:
            collect_compiler_garbage()
            _log.info("compiled %s in %.2f s", dispatcher.py_func.__qualname__,
                      time.perf_counter() - start)


def collect_compiler_garbage():
    """Free what a compile left for the cyclic collector now, with Ctrl-C held back meanwhile.

    llvmlite frees its objects in __del__, and a KeyboardInterrupt raised inside one (right after
    the C call that freed it) makes it free the object again later: an abort. Left to the
    collector, that can happen at any later call of the user's; here it happens once, after the
    compile, and a Ctrl-C meanwhile is raised when the collection is over.
    """
    if threading.current_thread() is not threading.main_thread():
        gc.collect()  # signal handlers run in the main thread only: nothing to hold back here
        return
    held = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: held.append((number, frame)))
    try:
        gc.collect()
    finally:
        signal.signal(signal.SIGINT, previous)
    if held and callable(previous):
        previous(*held[0])


def _import_numba_arraymath_without_scipy():
    """Import numba.np.arraymath, which Numba loads before running any compiled function, without
    its check for SciPy's BLAS: that check imports scipy.linalg, about 0.45 s of a 1 s cold start.

    The check only picks how a few numpy functions fastrnn never calls are compiled; where SciPy
    is installed the answer is the same, and np.dot and friends still import it when compiled.
    """
    if "numba.np.arraymath" in sys.modules or importlib.util.find_spec("scipy") is None:
        return
    import numba.np.linalg as linalg
    check = linalg.ensure_blas
    linalg.ensure_blas = lambda: None
    try:
        import numba.np.arraymath  # noqa: F401
    finally:
        linalg.ensure_blas = check


_import_numba_arraymath_without_scipy()
