"""Pieces every cell uses: the recurrent product, the clip, and the denormal flush."""

from fastrnn.jit import kernel

# State values smaller than this are stored as zero. A stream fed silence decays towards zero; left
# alone its state would turn denormal after a few thousand steps and every multiply on it would cost
# ~100x more. 1e-30 is far below any tolerance and far above float32's smallest normal (1.2e-38).
DENORMAL_FLUSH = 1e-30


@kernel
def add_recurrent_product(gates, start, stop, hidden, weight_t):
    """gates[start:stop] += hidden @ weight_t[:, start:stop]  (weight_t: (hidden_out, gates*hidden)).

    Written as a sum of scaled weight rows so that the inner loop runs along contiguous memory and
    vectorises without reassociating a reduction. The loop indexes slices from 0: an index that
    could be negative (start + j) keeps Numba's wraparound check in the loop, which stops LLVM
    from vectorising it (measured: 8x slower at H=128).
    """
    window = gates[start:stop]
    for k in range(hidden.shape[0]):
        scale = hidden[k]
        row = weight_t[k, start:stop]
        for j in range(window.shape[0]):
            window[j] += scale * row[j]


@kernel
def clip_range(values, start, stop, clip):
    """Bound values[start:stop] to [-clip, clip]; NaN passes through. clip <= 0 means no clip."""
    if clip > 0:
        for j in range(start, stop):
            v = values[j]
            if v > clip:
                values[j] = clip
            elif v < -clip:
                values[j] = -clip


@kernel
def flush_tiny(values):
    """Store tiny state values as exact zero (see DENORMAL_FLUSH)."""
    for j in range(values.shape[0]):
        if abs(values[j]) < DENORMAL_FLUSH:
            values[j] = 0.0 * values[j]
