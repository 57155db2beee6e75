"""Arrays the kernels loop over, allocated on a cache line.

numpy aligns an array to 16 bytes, so a 32-byte vector load (AVX2) from it may straddle two
64-byte cache lines, and whether it does changes from run to run with where the allocator put
it. On the development machine (2-vCPU AMD EPYC, AVX2; the fastest of 300 interleaved calls) a
chain streaming one LSTM 16 -> 32 took 0.61 us a step with its weights, state and scratch on a
cache line, 0.71 us with them 4 bytes off and 0.68 us 16 bytes off (an LSTM 1 -> 16: 0.29 against
0.31). So the plans' weights, the state tables, the chains' programs and their scratch come from
here: every array on a 64-byte boundary, and `padding` rounds a block inside a flat array up to
one, so that the blocks after it start on a line too.
"""

import math

import numpy as np

ALIGNMENT = 64  # bytes: one cache line, and one AVX-512 vector


def empty(shape, dtype):
    """An uninitialised C-contiguous array whose first element starts on a 64-byte boundary."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    size = math.prod(shape) * dtype.itemsize
    raw = np.empty(size + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + size].view(dtype).reshape(shape)


def zeros(shape, dtype):
    """empty(shape, dtype), filled with zeros."""
    array = empty(shape, dtype)
    array.fill(0)
    return array


def copy(array, dtype=None):
    """A C-contiguous, aligned copy of `array` (as `dtype` if given)."""
    array = np.asarray(array)
    result = empty(array.shape, array.dtype if dtype is None else dtype)
    result[...] = array
    return result


def padding(count, dtype):
    """Elements of `dtype` that, put after `count` of them, bring the next to a 64-byte line."""
    itemsize = np.dtype(dtype).itemsize
    return -(count * itemsize) % ALIGNMENT // itemsize
