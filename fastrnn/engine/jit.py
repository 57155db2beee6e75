"""The one place that says how fastrnn's CPU kernels are compiled.

Kernels are module-level functions decorated with `kernel`: compiled once, cached on disk,
released from the GIL so that threads each driving a stream run in parallel.

fastmath leaves out `nnan` and `ninf`: NaN in an input must reach the output, never be folded away.
error_model="numpy": a float division by zero gives inf/NaN as in numpy instead of raising; the
check Python's model puts on every division keeps LLVM from vectorising a loop that divides
(the float32 tanh does).
"""

import importlib.util
import sys

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
