"""Pieces every cell uses: the weight product, the clip, and the denormal flush."""

from fastrnn.jit import kernel

# State values smaller than this are stored as zero. A stream fed silence decays towards zero; left
# alone its state would turn denormal after a few thousand steps and every multiply on it would cost
# ~100x more. 1e-30 is far below any tolerance and far above float32's smallest normal (1.2e-38).
DENORMAL_FLUSH = 1e-30


@kernel
def add_scaled_rows(out, vector, rows, column):
    """out += vector @ rows[:, column:column + len(out)]   (rows: (len(vector), >= column + len(out))).

    The product every step makes: written as a sum of scaled weight rows so that the inner loop
    runs along contiguous memory and vectorises without reassociating a reduction, four rows at a
    time so that `out` is loaded and stored once per four rows. Rows are taken as slices indexed
    from 0: an index Numba cannot prove non-negative (column + j) keeps a wraparound check in the
    loop, which stops LLVM from vectorising it.
    """
    width = out.shape[0]
    count = vector.shape[0]
    k = 0
    while k + 4 <= count:
        s0, s1, s2, s3 = vector[k], vector[k + 1], vector[k + 2], vector[k + 3]
        r0 = rows[k, column:column + width]
        r1 = rows[k + 1, column:column + width]
        r2 = rows[k + 2, column:column + width]
        r3 = rows[k + 3, column:column + width]
        for j in range(width):
            out[j] += s0 * r0[j] + s1 * r1[j] + s2 * r2[j] + s3 * r3[j]
        k += 4
    while k < count:
        scale = vector[k]
        row = rows[k, column:column + width]
        for j in range(width):
            out[j] += scale * row[j]
        k += 1


@kernel
def add_scaled_rows_batch(out, vectors, rows):
    """out[b] += vectors[b] @ rows for every b   (out (B, N), vectors (B, K), rows (K, N)).

    add_scaled_rows for a small batch with the loops turned inside out: four weight rows are
    applied to every batch row before the next four are read, so each weight is read from memory
    once a step and then from L1, instead of once per batch row.
    """
    width = out.shape[1]
    count = rows.shape[0]
    batch = out.shape[0]
    k = 0
    while k + 4 <= count:
        r0, r1, r2, r3 = rows[k], rows[k + 1], rows[k + 2], rows[k + 3]
        for b in range(batch):
            target = out[b]
            vector = vectors[b]
            s0, s1, s2, s3 = vector[k], vector[k + 1], vector[k + 2], vector[k + 3]
            for j in range(width):
                target[j] += s0 * r0[j] + s1 * r1[j] + s2 * r2[j] + s3 * r3[j]
        k += 4
    while k < count:
        row = rows[k]
        for b in range(batch):
            target = out[b]
            scale = vectors[b, k]
            for j in range(width):
                target[j] += scale * row[j]
        k += 1


@kernel
def clip_range(values, start, stop, clip):
    """Bound values[start:stop] to [-clip, clip]; NaN passes through. clip <= 0 means no clip."""
    if clip > 0:
        window = values[start:stop]
        for j in range(window.shape[0]):
            v = window[j]
            if v > clip:
                window[j] = clip
            elif v < -clip:
                window[j] = -clip


@kernel
def flush_tiny(values):
    """Store tiny state values as exact zero (see DENORMAL_FLUSH)."""
    for j in range(values.shape[0]):
        if abs(values[j]) < DENORMAL_FLUSH:
            values[j] = 0.0 * values[j]
