"""Pieces every cell uses: the clip and the denormal flush."""

import numpy as np

from fastrnn.engine.jit import kernel

# State values smaller than this are stored as zero. A stream fed silence decays towards zero; left
# alone its state would turn denormal after a few thousand steps and every multiply on it would cost
# ~100x more. 1e-30 is far below any tolerance and far above float32's smallest normal (1.2e-38).
DENORMAL_FLUSH = np.float32(1e-30)  # float32, so float32 state is compared without conversion


@kernel
def clip_range(values, start, stop, clip):
    """Bound values[start:stop] to [-clip, clip]; NaN passes through. clip <= 0 means no clip.

    Every value is stored, clipped or not: a store under a condition becomes a masked store, which
    is slow on some x86 cores.
    """
    if clip > 0:
        window = values[start:stop]
        for j in range(window.shape[0]):
            v = window[j]
            window[j] = clip if v > clip else (-clip if v < -clip else v)


@kernel
def flush_tiny(values):
    """Store tiny state values as exact zero (see DENORMAL_FLUSH).

    A multiply by the comparison (0 or 1) rather than a store under a condition, which vectorises
    into masked stores that are slow on some x86 cores (6x slower here). NaN and inf pass through.
    """
    for j in range(values.shape[0]):
        v = values[j]
        values[j] = v * (abs(v) >= DENORMAL_FLUSH)
