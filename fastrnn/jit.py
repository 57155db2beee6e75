"""The one place that says how fastrnn's CPU kernels are compiled.

Kernels are module-level functions decorated with `kernel`: compiled once, cached on disk,
released from the GIL so that threads each driving a stream run in parallel.

fastmath leaves out `nnan` and `ninf`: NaN in an input must reach the output, never be folded away.
error_model="numpy": a float division by zero gives inf/NaN as in numpy instead of raising; the
check Python's model puts on every division keeps LLVM from vectorising a loop that divides
(the float32 tanh does).
"""

import numba

FASTMATH = frozenset({"contract", "arcp", "nsz", "reassoc", "afn"})


def kernel(function):
    """Compile a CPU kernel: nopython, no GIL, cached, with fastmath minus the NaN/inf assumptions."""
    return numba.njit(fastmath=set(FASTMATH), error_model="numpy", nogil=True, cache=True)(function)
