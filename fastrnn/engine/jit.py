"""The one place that says how fastrnn's CPU kernels are compiled.

Kernels are module-level functions decorated with `kernel`: compiled once, cached on disk,
released from the GIL so that threads each driving a stream run in parallel.

The disk cache is checked against every source file of the package, not only the kernel's own:
Numba alone compares a cached kernel with its own file's contents, so an edit of a callee's file
(a cell, an activation, a product) would leave the kernels that inline it stale. Each kernel's
cache index is stamped with a digest of all of fastrnn's sources and Numba's version
(source_digest); any change there recompiles, wherever the cache lives (FASTRNN_CACHE_DIR, the
__pycache__ beside the sources, or Numba's user cache directory when those are read-only).

fastmath leaves out `nnan` and `ninf`: NaN in an input must reach the output, never be folded away.
error_model="numpy": a float division by zero gives inf/NaN as in numpy instead of raising; the
check Python's model puts on every division keeps LLVM from vectorising a loop that divides
(the float32 tanh does).
"""

import functools
import gc
import hashlib
import importlib.util
import logging
import os
import signal
import sys
import threading
import time

import numba
from numba.core import caching
from numba.core.compiler_lock import global_compiler_lock

from fastrnn.engine import parallel  # noqa: F401 (chooses the threading layer before any kernel runs)

FASTMATH = frozenset({"contract", "arcp", "nsz", "reassoc", "afn"})


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=None)
def source_digest():
    """sha256 (hex) of every .py file of the fastrnn package (relative path and contents) and of
    Numba's version: what a cached kernel was compiled from."""
    digest = hashlib.sha256(f"numba {numba.__version__}\n".encode())
    paths = []
    for folder, subfolders, files in os.walk(_PACKAGE):
        subfolders[:] = sorted(name for name in subfolders if name != "__pycache__")
        paths += [os.path.join(folder, name) for name in files if name.endswith(".py")]
    for path in sorted(paths):
        digest.update(os.path.relpath(path, _PACKAGE).replace(os.sep, "/").encode() + b"\0")
        with open(path, "rb") as file:
            digest.update(file.read() + b"\0")
    return digest.hexdigest()


def _stamped(locator_class):
    """locator_class (one of Numba's cache locators), with the package's digest in its stamp."""
    class Stamped(locator_class):
        def get_source_stamp(self):
            return (super().get_source_stamp(), source_digest())
    Stamped.__name__ = Stamped.__qualname__ = f"Stamped{locator_class.__name__}"
    return Stamped


class _KernelCacheImpl(caching.CompileResultCacheImpl):
    _locator_classes = [_stamped(cls) for cls in caching.CompileResultCacheImpl._locator_classes]


class _KernelCache(caching.FunctionCache):
    """Numba's per-function disk cache, invalidated by an edit of any of fastrnn's sources."""
    _impl_class = _KernelCacheImpl


def _cached(dispatcher):
    dispatcher._cache = _KernelCache(dispatcher.py_func)
    return dispatcher


def kernel(function):
    """Compile a CPU kernel: nopython, no GIL, cached, with fastmath minus the NaN/inf assumptions."""
    return _cached(numba.njit(fastmath=set(FASTMATH), error_model="numpy", nogil=True)(function))


def parallel_kernel(function):
    """`kernel`, with its `numba.prange` loops run on the threading layer (fastrnn.engine.parallel
    chooses it and says how many blocks a call is cut into)."""
    return _cached(numba.njit(fastmath=set(FASTMATH), error_model="numpy", nogil=True,
                              parallel=True)(function))


_log = logging.getLogger("fastrnn")

COMPILE_MODES = ("background", "wait")


def compile_mode() -> str:
    """FASTRNN_COMPILE: "background" (the default) lets a stream whose step kernel is neither
    compiled nor cached answer from numpy while a helper process compiles it (fastrnn.engine.table);
    "wait" compiles it in the process before the first answer, so that every answer comes from
    the kernel (deterministic to the last bit; the test suite sets it)."""
    value = os.environ.get("FASTRNN_COMPILE", "").strip().lower() or "background"
    if value not in COMPILE_MODES:
        raise ValueError(f"FASTRNN_COMPILE must be one of {', '.join(COMPILE_MODES)}, got "
                         f"{os.environ['FASTRNN_COMPILE']!r}")
    return value


def load_cached(dispatcher, arguments):
    """dispatcher's compiled entry point for these arguments' types if it is compiled in this
    process or can be loaded from the disk cache, else None: never compiles. None too where
    Numba's internals differ from what this expects (the caller then compiles as usual)."""
    signature = tuple(numba.typeof(a) for a in arguments)
    existing = dispatcher.overloads.get(signature)
    if existing is not None:
        return existing.entry_point
    try:
        start = time.perf_counter()
        with global_compiler_lock:
            result = dispatcher._cache.load_overload(signature, dispatcher.targetctx)
            if result is None:
                return None
            # What Dispatcher.compile does with a result it loaded from the cache.
            dispatcher.targetctx.insert_user_function(result.entry_point, result.fndesc,
                                                      [result.library])
            dispatcher.add_overload(result)
            dispatcher._cache_hits[signature] += 1
    except Exception:  # noqa: BLE001 (an internal that moved: compile the usual way instead)
        return None
    _log.info("loaded %s from the disk cache in %.2f s", dispatcher.py_func.__qualname__,
              time.perf_counter() - start)
    return result.entry_point


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
