"""The weight products every path makes: sums of scaled weight rows, in Numba.

Every product of fastrnn's CPU kernels is one of these two: `add_scaled_rows` for one row,
`add_scaled_rows_batch` for a block of rows. On the development machine they ran at or above
OpenBLAS's single-thread rate for the shapes a recurrent step has (a few to a few dozen rows of
up to a thousand inputs), and they run inside the jitted kernels: no call into BLAS, whose own
thread pool would compete with the kernels' threads for the same cores.

The weight matrix `rows` is stored in one of three ways (fastrnn.engine.quantise), and the
product is picked by its dtype when the kernel is compiled (nothing is decided per call):

    float32/float64   the values themselves, (count, width)
    uint32            bfloat16, two rows a word: rows[p, j] holds row 2p's bit pattern in its
                      low half and row 2p + 1's in its high half ((count + 1) // 2, width); a
                      weight is the float32 whose high half its pattern is
    int8              q (count, width) then 4 more rows holding the float32 column scales s
                      (width,) as bytes: a weight is s_j * q_kj, and a product adds
                      s_j * (sum over a pass of rows of v_k q_kj), one multiply per pass

Low-bit weights are widened to float32 in registers as they are read, and the loops vectorise
(LLVM, AVX2 here) as the float ones do: a bfloat16 word gives its two weights with one shift and
one mask (a word per row needed a zero-extend and a shift per weight: 1.8x slower), an int8 weight
takes a sign-extend and a convert. A step then streams 2 or 1 bytes a weight, not 4. `float_block`
and `matrix_block` cut a plan's flat array (fastrnn.engine.plan) into its float32 blocks and its
matrices, whatever its storage.
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from fastrnn.engine.jit import FASTMATH, kernel

# Rows of an int8 matrix after its weights that hold its float32 column scales (4 bytes each).
SCALE_ROWS = 4
# Weight rows summed before an int8 pass is scaled: eight broadcast inputs, the sum and a weight
# fit in AVX2's sixteen vector registers.
INT8_PASS = 8


def _bfloat16_intrinsic(keep_high):
    """An intrinsic taking a uint32 holding two bfloat16 bit patterns to the float32 of its low
    half (shifted up) or of its high half (the low half masked off): one integer op each."""
    @intrinsic
    def half(typingctx, pair):
        if pair != types.uint32:
            return None

        def codegen(context, builder, signature, arguments):
            word = ir.IntType(32)
            if keep_high:
                bits = builder.and_(arguments[0], ir.Constant(word, 0xFFFF0000))
            else:
                bits = builder.shl(arguments[0], ir.Constant(word, 16))
            return builder.bitcast(bits, ir.FloatType())
        return types.float32(types.uint32), codegen
    return half


low_bfloat16 = _bfloat16_intrinsic(keep_high=False)
high_bfloat16 = _bfloat16_intrinsic(keep_high=True)


def float_block(weights, start, count):
    """weights' `count` float values from element `start`: the block itself for a float array,
    the float32 words its bytes hold for a uint32 or int8 one (start counts storage elements)."""
    raise NotImplementedError("float_block is called from jitted code only")


@overload(float_block)
def _float_block(weights, start, count):
    if isinstance(weights.dtype, types.Float):
        return lambda weights, start, count: weights[start:start + count]
    per_float = 4 * 8 // weights.dtype.bitwidth
    return lambda weights, start, count: \
        weights[start:start + count * per_float].view(np.float32)


def matrix_block(weights, start, rows, columns):
    """The (rows, columns) matrix at element `start` of weights, as the products read it: for an
    int8 array with rows > 0, SCALE_ROWS more rows holding its column scales."""
    raise NotImplementedError("matrix_block is called from jitted code only")


@overload(matrix_block)
def _matrix_block(weights, start, rows, columns):
    if weights.dtype == types.uint32:  # bfloat16, two rows a word
        def block(weights, start, rows, columns):
            stored = (rows + 1) // 2
            return weights[start:start + stored * columns].reshape((stored, columns))
        return block
    extra = SCALE_ROWS if weights.dtype == types.int8 else 0

    def block(weights, start, rows, columns):
        stored = rows + extra if rows > 0 else 0
        return weights[start:start + stored * columns].reshape((stored, columns))
    return block


@kernel
def column_scales(rows, count):
    """The float32 column scales an int8 matrix of `count` weight rows carries after them."""
    return rows[count:count + SCALE_ROWS].reshape(SCALE_ROWS * rows.shape[1]).view(np.float32)


# The products are overloads, their implementation picked by the weights' dtype when a kernel is
# typed: one compiled function a product and dtype, with the kernels' flags (a dispatcher between
# would be one more function to compile on every path).
_PRODUCT_OPTIONS = {"fastmath": set(FASTMATH), "error_model": "numpy", "nogil": True}


# -- one row ---------------------------------------------------------------------------------------

def add_scaled_rows(out, vector, rows, column):
    """out += vector @ rows[:, column:column + len(out)]   (rows: (len(vector), >= column + len(out)),
    float, bfloat16 or int8 as the module docstring says). Called from jitted code only."""
    raise NotImplementedError("add_scaled_rows is called from jitted code only")


@overload(add_scaled_rows, jit_options=_PRODUCT_OPTIONS)
def _pick_scaled_rows(out, vector, rows, column):
    if rows.dtype == types.uint32:
        return _bfloat16_scaled_rows
    if rows.dtype == types.int8:
        return _int8_scaled_rows
    return _float_scaled_rows


def _float_scaled_rows(out, vector, rows, column):
    """add_scaled_rows for float weights.

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


def _bfloat16_scaled_rows(out, vector, rows, column):
    """add_scaled_rows for bfloat16 weights, two rows a word (uint32): _float_scaled_rows' loop,
    four rows (two words) a pass."""
    width = out.shape[0]
    count = vector.shape[0]
    k = 0
    while k + 4 <= count:
        s0, s1, s2, s3 = vector[k], vector[k + 1], vector[k + 2], vector[k + 3]
        first = rows[k // 2, column:column + width]
        second = rows[k // 2 + 1, column:column + width]
        for j in range(width):
            a, b = first[j], second[j]
            out[j] += (s0 * low_bfloat16(a) + s1 * high_bfloat16(a)
                       + s2 * low_bfloat16(b) + s3 * high_bfloat16(b))
        k += 4
    if k + 2 <= count:
        s0, s1 = vector[k], vector[k + 1]
        pair = rows[k // 2, column:column + width]
        for j in range(width):
            out[j] += s0 * low_bfloat16(pair[j]) + s1 * high_bfloat16(pair[j])
        k += 2
    if k < count:  # an odd count: the last word's high half is padding
        s0 = vector[k]
        pair = rows[k // 2, column:column + width]
        for j in range(width):
            out[j] += s0 * low_bfloat16(pair[j])


def _int8_scaled_rows(out, vector, rows, column):
    """add_scaled_rows for int8 weights: out_j += s_j * sum_k v_k q_kj, the sum made INT8_PASS
    rows at a time in float32 and scaled once a pass."""
    width = out.shape[0]
    count = vector.shape[0]
    scales = column_scales(rows, count)[column:column + width]
    k = 0
    while k + INT8_PASS <= count:
        s0, s1, s2, s3 = vector[k], vector[k + 1], vector[k + 2], vector[k + 3]
        s4, s5, s6, s7 = vector[k + 4], vector[k + 5], vector[k + 6], vector[k + 7]
        r0 = rows[k, column:column + width]
        r1 = rows[k + 1, column:column + width]
        r2 = rows[k + 2, column:column + width]
        r3 = rows[k + 3, column:column + width]
        r4 = rows[k + 4, column:column + width]
        r5 = rows[k + 5, column:column + width]
        r6 = rows[k + 6, column:column + width]
        r7 = rows[k + 7, column:column + width]
        for j in range(width):
            total = (s0 * np.float32(r0[j]) + s1 * np.float32(r1[j])
                     + s2 * np.float32(r2[j]) + s3 * np.float32(r3[j])
                     + s4 * np.float32(r4[j]) + s5 * np.float32(r5[j])
                     + s6 * np.float32(r6[j]) + s7 * np.float32(r7[j]))
            out[j] += scales[j] * total
        k += INT8_PASS
    if k < count:
        for j in range(width):
            total = np.float32(0.0)
            for m in range(k, count):
                total += vector[m] * np.float32(rows[m, column + j])
            out[j] += scales[j] * total


# -- a block of rows -------------------------------------------------------------------------------

def add_scaled_rows_batch(out, vectors, rows, out_column, column, width):
    """out[b, out_column:+width] += vectors[b] @ rows[:, column:+width] for every row b
    (out (B, >= out_column + width), vectors (B, K), rows (K, >= column + width), float, bfloat16
    or int8 as the module docstring says). Called from jitted code only."""
    raise NotImplementedError("add_scaled_rows_batch is called from jitted code only")


@overload(add_scaled_rows_batch, jit_options=_PRODUCT_OPTIONS)
def _pick_scaled_rows_batch(out, vectors, rows, out_column, column, width):
    if rows.dtype == types.uint32:
        return _bfloat16_scaled_rows_batch
    if rows.dtype == types.int8:
        return _int8_scaled_rows_batch
    return _float_scaled_rows_batch


def _float_scaled_rows_batch(out, vectors, rows, out_column, column, width):
    """add_scaled_rows_batch for float weights.

    add_scaled_rows for a small batch with the loops turned inside out: four weight rows are
    applied to the batch rows, two at a time, before the next four are read, so each weight is
    read from memory once a step and then from L1 (loaded once per two rows: 10-20% faster than
    one at a time at B = 4-64), instead of once per batch row.
    """
    count = vectors.shape[1]
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


def _bfloat16_scaled_rows_batch(out, vectors, rows, out_column, column, width):
    """add_scaled_rows_batch for bfloat16 weights, two rows a word (uint32):
    _float_scaled_rows_batch's loops, each pair of words widened once and used for two batch
    rows; a lone batch row (a stream's step) takes _bfloat16_scaled_rows."""
    count = vectors.shape[1]
    batch = out.shape[0]
    if batch == 1:
        add_scaled_rows(out[0, out_column:out_column + width], vectors[0], rows, column)
        return
    k = 0
    while k + 4 <= count:
        p0 = rows[k // 2, column:column + width]
        p1 = rows[k // 2 + 1, column:column + width]
        b = 0
        while b + 2 <= batch:
            first = out[b, out_column:out_column + width]
            second = out[b + 1, out_column:out_column + width]
            u, v = vectors[b], vectors[b + 1]
            u0, u1, u2, u3 = u[k], u[k + 1], u[k + 2], u[k + 3]
            v0, v1, v2, v3 = v[k], v[k + 1], v[k + 2], v[k + 3]
            for j in range(width):
                a, c = p0[j], p1[j]
                w0, w1 = low_bfloat16(a), high_bfloat16(a)
                w2, w3 = low_bfloat16(c), high_bfloat16(c)
                first[j] += u0 * w0 + u1 * w1 + u2 * w2 + u3 * w3
                second[j] += v0 * w0 + v1 * w1 + v2 * w2 + v3 * w3
            b += 2
        if b < batch:
            target = out[b, out_column:out_column + width]
            u = vectors[b]
            u0, u1, u2, u3 = u[k], u[k + 1], u[k + 2], u[k + 3]
            for j in range(width):
                a, c = p0[j], p1[j]
                target[j] += (u0 * low_bfloat16(a) + u1 * high_bfloat16(a)
                              + u2 * low_bfloat16(c) + u3 * high_bfloat16(c))
        k += 4
    while k < count:  # at most three rows: one at a time, the word's half picked by k's parity
        pair = rows[k // 2, column:column + width]
        high = k % 2 == 1
        for b in range(batch):
            target = out[b, out_column:out_column + width]
            scale = vectors[b, k]
            if high:
                for j in range(width):
                    target[j] += scale * high_bfloat16(pair[j])
            else:
                for j in range(width):
                    target[j] += scale * low_bfloat16(pair[j])
        k += 1


def _int8_scaled_rows_batch(out, vectors, rows, out_column, column, width):
    """add_scaled_rows_batch for int8 weights: out[b, j] += s_j * sum_k vectors[b, k] q_kj.

    Four weight rows a pass, applied to two batch rows at a time (as _float_scaled_rows_batch),
    each pass's sum scaled once; a lone batch row (a stream's step) takes INT8_PASS rows a pass.
    """
    count = vectors.shape[1]
    batch = out.shape[0]
    if batch == 1:
        add_scaled_rows(out[0, out_column:out_column + width], vectors[0], rows, column)
        return
    scales = column_scales(rows, count)[column:column + width]
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
                w0, w1 = np.float32(r0[j]), np.float32(r1[j])
                w2, w3 = np.float32(r2[j]), np.float32(r3[j])
                scale = scales[j]
                first[j] += scale * (u0 * w0 + u1 * w1 + u2 * w2 + u3 * w3)
                second[j] += scale * (v0 * w0 + v1 * w1 + v2 * w2 + v3 * w3)
            b += 2
        if b < batch:
            target = out[b, out_column:out_column + width]
            u = vectors[b]
            u0, u1, u2, u3 = u[k], u[k + 1], u[k + 2], u[k + 3]
            for j in range(width):
                target[j] += scales[j] * (u0 * np.float32(r0[j]) + u1 * np.float32(r1[j])
                                          + u2 * np.float32(r2[j]) + u3 * np.float32(r3[j]))
        k += 4
    while k < count:
        row = rows[k, column:column + width]
        for b in range(batch):
            target = out[b, out_column:out_column + width]
            scale = vectors[b, k]
            for j in range(width):
                target[j] += scales[j] * (scale * np.float32(row[j]))
        k += 1
