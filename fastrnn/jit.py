"""The one place that says how fastrnn's CPU kernels are compiled.

Kernels are module-level functions decorated with `kernel`: compiled once, cached on disk,
released from the GIL so that threads each driving a stream run in parallel.

fastmath leaves out `nnan` and `ninf`: NaN in an input must reach the output, never be folded away.
"""

import numba

FASTMATH = frozenset({"contract", "arcp", "nsz", "reassoc", "afn"})


def kernel(function):
    """Compile a CPU kernel: nopython, no GIL, cached, with fastmath minus the NaN/inf assumptions."""
    return numba.njit(fastmath=set(FASTMATH), nogil=True, cache=True)(function)
