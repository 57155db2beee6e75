"""The weight products every path makes: sums of scaled weight rows, in Numba.

Every product of fastrnn's CPU kernels is one of these two: `add_scaled_rows` for one row,
`add_scaled_rows_batch` for a block of rows. On the development machine they ran at or above
OpenBLAS's single-thread rate for the shapes a recurrent step has (a few to a few dozen rows of
up to a thousand inputs), and they run inside the jitted kernels: no call into BLAS, whose own
thread pool would compete with the kernels' threads for the same cores.
"""

from fastrnn.engine.jit import kernel


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
def add_scaled_rows_batch(out, vectors, rows, out_column, column, width):
    """out[b, out_column:+width] += vectors[b] @ rows[:, column:+width] for every row b
    (out (B, >= out_column + width), vectors (B, K), rows (K, >= column + width)).

    add_scaled_rows for a small batch with the loops turned inside out: four weight rows are
    applied to the batch rows, two at a time, before the next four are read, so each weight is
    read from memory once a step and then from L1 (loaded once per two rows: 10-20% faster than
    one at a time at B = 4-64), instead of once per batch row.
    """
    count = rows.shape[0]
    batch = out.shape[0]
    k = 0
    while k + 4 <= count:
        r0 = rows[k, column:column + width]
        r1 = rows[k + 1, column:column + width]
        r2 = rows[k + 2, column:column + width]
        r3 = rows[k + 3, column:column + width]
        b = 0
        while b + 2 <= batch:
            first = out[b, out_column:out_column + width]
            second = out[b + 1, out_column:out_column + width]
            u, v = vectors[b], vectors[b + 1]
            u0, u1, u2, u3 = u[k], u[k + 1], u[k + 2], u[k + 3]
            v0, v1, v2, v3 = v[k], v[k + 1], v[k + 2], v[k + 3]
            for j in range(width):
                w0, w1, w2, w3 = r0[j], r1[j], r2[j], r3[j]
                first[j] += u0 * w0 + u1 * w1 + u2 * w2 + u3 * w3
                second[j] += v0 * w0 + v1 * w1 + v2 * w2 + v3 * w3
            b += 2
        if b < batch:
            target = out[b, out_column:out_column + width]
            u = vectors[b]
            u0, u1, u2, u3 = u[k], u[k + 1], u[k + 2], u[k + 3]
            for j in range(width):
                target[j] += u0 * r0[j] + u1 * r1[j] + u2 * r2[j] + u3 * r3[j]
        k += 4
    while k < count:
        row = rows[k, column:column + width]
        for b in range(batch):
            target = out[b, out_column:out_column + width]
            scale = vectors[b, k]
            for j in range(width):
                target[j] += scale * row[j]
        k += 1
