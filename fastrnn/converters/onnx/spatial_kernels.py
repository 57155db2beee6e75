"""Numba kernels for the spatial ONNX ops: convolution (im2col, col2im), pooling, normalization.

Every kernel sees images as (N, C, H, W), C-contiguous; a 1-D op runs as a 2-D one with H = 1
(kernel 1, stride 1, dilation 1, no padding along H), so one specialisation per dtype serves both.
Output index o along an axis reads the input positions

    i = o * stride - pad_begin + k * dilation,   k = 0 .. kernel - 1,

and positions outside [0, size) are padding: zero for Conv, skipped for MaxPool, counted or not
for AveragePool. The handlers in spatial.py validate shapes and attributes; kernels trust them.
Sums of normalization statistics are kept in float64 whatever the data's dtype.
"""

import math

import numpy as np

from numba import prange, uint64

from fastrnn.engine import simd
from fastrnn.engine.jit import kernel, parallel_kernel

# Output rows at least this wide are copied (im2col) and pooled (max_pool) between slices indexed
# from 0, without a wraparound test per element; shorter ones index per element, as the set-up of
# a slice costs more than a few elements' tests (the two differ in the innermost loop only).
SLICED_ROWS = 16


@kernel
def im2col(x, col, out_h, out_w, kernel_h, kernel_w, stride_h, stride_w, dilation_h,
           dilation_w, pad_top, pad_left):
    """col[n, (c, ky, kx), (oy, ox)] = x[n, c, oy*sh - pt + ky*dh, ox*sw - pl + kx*dw], 0 outside.

    x: (N, C, H, W); col: (N, C*kh*kw, OH*OW).
    """
    batch, channels, height, width = x.shape
    zero = 0
    sliced = out_w >= SLICED_ROWS
    for n in range(batch):
        for c in range(channels):
            for ky in range(kernel_h):
                for kx in range(kernel_w):
                    row = (c * kernel_h + ky) * kernel_w + kx
                    # ox range whose ix lies inside [0, width): the rest is padding.
                    offset = kx * dilation_w - pad_left
                    first = 0 if offset >= 0 else (-offset + stride_w - 1) // stride_w
                    last = (width - 1 - offset) // stride_w + 1 if width - 1 - offset >= 0 else 0
                    first = min(first, out_w)
                    last = max(first, min(last, out_w))
                    for oy in range(out_h):
                        iy = oy * stride_h - pad_top + ky * dilation_h
                        target = col[n, row, oy * out_w:(oy + 1) * out_w]
                        if iy < 0 or iy >= height:
                            for ox in range(out_w):
                                target[ox] = zero
                            continue
                        for ox in range(first):
                            target[ox] = zero
                        inside = target[first:last]
                        start = first * stride_w + offset
                        # Wide rows: slices indexed from 0 by range variables, no wraparound
                        # test in the loops, so the copy vectorises (4-D indexing ran 3x slower).
                        if not sliced:
                            for i in range(last - first):
                                inside[i] = x[n, c, iy, start + i * stride_w]
                        elif stride_w == 1:
                            source = x[n, c, iy, start:start + last - first]
                            for i in range(last - first):
                                inside[i] = source[i]
                        else:
                            source = x[n, c, iy, start:]
                            for i in range(last - first):
                                inside[i] = source[i * stride_w]
                        tail = target[last:]
                        for i in range(out_w - last):
                            tail[i] = zero


@parallel_kernel
def im2col_blocks(x, col, blocks, out_h, out_w, kernel_h, kernel_w, stride_h, stride_w,
                  dilation_h, dilation_w, pad_top, pad_left):
    """im2col for `blocks` near-equal blocks of the images at once, one per thread."""
    batch = x.shape[0]
    for block in prange(blocks):
        first, stop = block * batch // blocks, (block + 1) * batch // blocks
        im2col(x[first:stop], col[first:stop], out_h, out_w, kernel_h, kernel_w, stride_h,
               stride_w, dilation_h, dilation_w, pad_top, pad_left)


@parallel_kernel
def max_pool_blocks(x, y, blocks, kernel_h, kernel_w, stride_h, stride_w, dilation_h,
                    dilation_w, pad_top, pad_left):
    """max_pool for `blocks` near-equal blocks of the images at once, one per thread."""
    batch = x.shape[0]
    for block in prange(blocks):
        first, stop = block * batch // blocks, (block + 1) * batch // blocks
        max_pool(x[first:stop], y[first:stop], kernel_h, kernel_w, stride_h, stride_w,
                 dilation_h, dilation_w, pad_top, pad_left)


@kernel
def col2im(col, y, in_h, in_w, kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w,
           pad_top, pad_left):
    """The transpose of im2col, added into y: for every column entry of ConvTranspose's product,

        y[n, m, iy*sh - pt + ky*dh, ix*sw - pl + kx*dw] += col[n, (m, ky, kx), (iy, ix)]

    for the targets inside y. col: (N, M*kh*kw, H*W); y: (N, M, OH, OW), holding the bias.
    """
    batch, channels, out_h, out_w = y.shape
    for n in range(batch):
        for m in range(channels):
            for ky in range(kernel_h):
                for kx in range(kernel_w):
                    row = (m * kernel_h + ky) * kernel_w + kx
                    offset = kx * dilation_w - pad_left
                    first = 0 if offset >= 0 else (-offset + stride_w - 1) // stride_w
                    last = (out_w - 1 - offset) // stride_w + 1 if out_w - 1 - offset >= 0 else 0
                    first = min(first, in_w)
                    last = max(first, min(last, in_w))
                    for iy in range(in_h):
                        oy = iy * stride_h - pad_top + ky * dilation_h
                        if oy < 0 or oy >= out_h:
                            continue
                        base = iy * in_w
                        for ix in range(first, last):
                            y[n, m, oy, ix * stride_w + offset] += col[n, row, base + ix]


@kernel
def fill_channel_bias(y, bias):
    """y[n, c, :] = bias[c], y: (N, C, S)."""
    batch, channels, size = y.shape
    for n in range(batch):
        for c in range(channels):
            b = bias[c]
            for s in range(size):
                y[n, c, s] = b


@kernel
def _nan_max(value, current):
    """The larger of the two, NaN if value is NaN: a select, not a branch (2-3x faster on random
    data)."""
    return value if (value > current or value != value) else current


@kernel
def max_pool(x, y, kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, pad_top,
             pad_left):
    """y[n, c, oy, ox] = max over the window's taps inside x (padding is never the maximum).

    x: (N, C, H, W); y: (N, C, OH, OW). Each output row is taken tap by tap over the range of ox
    whose tap lies inside x (no bounds test in the inner loop). A window with no tap inside x
    (possible only with pads of a window's size) gives -inf. NaN propagates, as in onnxruntime.
    """
    batch, channels, height, width = x.shape
    out_h, out_w = y.shape[2], y.shape[3]
    sliced = out_w >= SLICED_ROWS
    for n in range(batch):
        for c in range(channels):
            for oy in range(out_h):
                target = y[n, c, oy]
                for ox in range(out_w):
                    target[ox] = -np.inf
                for ky in range(kernel_h):
                    iy = oy * stride_h - pad_top + ky * dilation_h
                    if iy < 0 or iy >= height:
                        continue
                    source = x[n, c, iy]
                    for kx in range(kernel_w):
                        offset = kx * dilation_w - pad_left
                        first = 0 if offset >= 0 else (-offset + stride_w - 1) // stride_w
                        last = (width - 1 - offset) // stride_w + 1 \
                            if width - 1 - offset >= 0 else 0
                        first = min(first, out_w)
                        last = max(first, min(last, out_w))
                        if not sliced:
                            for ox in range(first, last):
                                target[ox] = _nan_max(source[ox * stride_w + offset], target[ox])
                            continue
                        # Slices indexed from 0 by the range variable: no wraparound test in
                        # the loop (1.3-1.4x faster).
                        taps = source[first * stride_w + offset:]
                        best = target[first:last]
                        for i in range(last - first):
                            best[i] = _nan_max(taps[i * stride_w], best[i])


@kernel
def average_pool(x, y, kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, pad_top,
                 pad_left, pad_bottom, pad_right, count_include_pad):
    """y[n, c, oy, ox] = (sum of the window's taps inside x) / divisor.

    divisor: with count_include_pad, the taps inside the padded input [-pt, H + pb) x
    [-pl, W + pr) (a ceil_mode window reaching past the padding counts only what lies inside it);
    without, the taps inside x. x: (N, C, H, W); y: (N, C, OH, OW).
    """
    batch, channels, height, width = x.shape
    out_h, out_w = y.shape[2], y.shape[3]
    for oy in range(out_h):
        y0 = oy * stride_h - pad_top
        rows_in, rows_padded = 0, 0
        for ky in range(kernel_h):
            iy = y0 + ky * dilation_h
            if 0 <= iy < height:
                rows_in += 1
            if -pad_top <= iy < height + pad_bottom:
                rows_padded += 1
        for ox in range(out_w):
            x0 = ox * stride_w - pad_left
            columns_in, columns_padded = 0, 0
            for kx in range(kernel_w):
                ix = x0 + kx * dilation_w
                if 0 <= ix < width:
                    columns_in += 1
                if -pad_left <= ix < width + pad_right:
                    columns_padded += 1
            count = rows_padded * columns_padded if count_include_pad else rows_in * columns_in
            for n in range(batch):
                for c in range(channels):
                    total = 0.0
                    for ky in range(kernel_h):
                        iy = y0 + ky * dilation_h
                        if iy < 0 or iy >= height:
                            continue
                        for kx in range(kernel_w):
                            ix = x0 + kx * dilation_w
                            if 0 <= ix < width:
                                total += x[n, c, iy, ix]
                    y[n, c, oy, ox] = total / count if count > 0 else np.nan


@kernel
def global_pool(x, y, take_max):
    """y[r] = mean (or max) of x[r, :], x: (rows, size)."""
    rows, size = x.shape
    for r in range(rows):
        if take_max:
            best = -np.inf
            for s in range(size):
                value = x[r, s]
                if value > best or value != value:
                    best = value
            y[r] = best
        else:
            total = 0.0
            for s in range(size):
                total += x[r, s]
            y[r] = total / size


@kernel
def channel_affine(x, y, scale, shift):
    """y[n, c, s] = x[n, c, s] * scale[c] + shift[c] (BatchNormalization, scale and shift folded
    from its statistics once). x, y: (N, C, S)."""
    batch, channels, size = x.shape
    for n in range(batch):
        for c in range(channels):
            a, b = scale[c], shift[c]
            for s in range(size):
                y[n, c, s] = x[n, c, s] * a + b


@kernel
def normalize_rows(x, y, scale, bias, epsilon, channels, per_channel, mean_out, inv_std_out):
    """Each row of x (rows, D) normalized to zero mean and unit variance, then scaled:

        mean = sum(x_r) / D,  var = sum((x_r - mean)^2) / D,  inv_std = 1 / sqrt(var + epsilon)
        y_r = (x_r - mean) * inv_std * scale + bias

    per_channel (InstanceNormalization): row r = (n, c) takes scale[c] and bias[c], with
    c = r % channels; otherwise (LayerNormalization) scale and bias are (D,) vectors over the
    row. mean_out and inv_std_out (rows,) receive the statistics.
    """
    rows, size = x.shape
    for r in range(rows):
        total = 0.0
        for s in range(size):
            total += x[r, s]
        mean = total / size
        spread = 0.0
        for s in range(size):
            d = x[r, s] - mean
            spread += d * d
        inv_std = 1.0 / math.sqrt(spread / size + epsilon)
        mean_out[r] = mean
        inv_std_out[r] = inv_std
        if per_channel:
            c = r % channels
            a = scale[c] * inv_std
            b = bias[c] - mean * a
            for s in range(size):
                y[r, s] = x[r, s] * a + b
        else:
            for s in range(size):
                y[r, s] = (x[r, s] - mean) * inv_std * scale[s] + bias[s]


@kernel
def tile_sums(vectors, at, step, scalars, first, second, third, fourth, count, sums):
    """The register tile of grouped_product and narrow_tiles: sums (four rows' two vectors each,
    fastrnn.engine.simd) plus, for k < count, the two vectors at vectors[at + k step] times row
    r's scalar scalars[start_r + k] (start_r: first, second, third, fourth), one fused
    multiply-add a term in the order of k. Returns the eight vectors."""
    lanes = simd.lanes(vectors)
    s00, s01, s10, s11, s20, s21, s30, s31 = sums
    for k in range(count):
        v0 = simd.load(vectors, at + k * step)
        v1 = simd.load(vectors, at + k * step + lanes)
        x = scalars[uint64(first + k)]
        s00, s01 = simd.fma(v0, x, s00), simd.fma(v1, x, s01)
        x = scalars[uint64(second + k)]
        s10, s11 = simd.fma(v0, x, s10), simd.fma(v1, x, s11)
        x = scalars[uint64(third + k)]
        s20, s21 = simd.fma(v0, x, s20), simd.fma(v1, x, s21)
        x = scalars[uint64(fourth + k)]
        s30, s31 = simd.fma(v0, x, s30), simd.fma(v1, x, s31)
    return s00, s01, s10, s11, s20, s21, s30, s31


# Positions per work unit of grouped_product (units are what its parallel version spreads).
POSITION_BLOCK = 256


@kernel
def grouped_product(a, b, bias, out, first_unit, stop_unit):
    """out[n, g] = a[g] @ b[n, g] + bias[g][:, None] for every image n and group g, without BLAS,
    for the work units first_unit..stop_unit - 1 (a unit: one image, one group, one block of
    POSITION_BLOCK positions; product_units gives their count).

    a: (G, M, K); b: (N, G, K, P); bias: (G, M); out: (N, G, M, P). As a BLAS GEMM does: a
    panel of b's K rows, two vectors of positions wide (fastrnn.engine.simd: 16 float32 or 8
    float64), is copied into a contiguous buffer, then four rows of a at a time meet it with
    their 4 x 2 vector sums held in registers for the whole of K: one load of each panel vector
    serves four rows, and no partial sum goes through memory. On the development machine (AMD
    EPYC, one thread) a (64, 288) x (288, 1024) product went from 44 to 89 GFLOP/s (OpenBLAS on
    one thread: 81), where the former loops kept a 4 x 4 tile's sums in memory. BLAS itself is
    not called: its thread pool competes with the session's other kernels for the same cores (on
    a loaded 2-core machine a BLAS call of this size took 5 to 50 times this loop's time).
    """
    batch, groups, depth, positions = b.shape
    rows = a.shape[1]
    lanes = simd.lanes(out)
    width = 2 * lanes
    blocks = (positions + POSITION_BLOCK - 1) // POSITION_BLOCK
    size = depth * width  # of a panel
    panels = np.zeros((POSITION_BLOCK // width) * size, out.dtype)
    tail = np.empty(4 * width, out.dtype)  # a last, narrower panel's sums, on their way out
    a_flat, b_flat, out_flat = a.reshape(-1), b.reshape(-1), out.reshape(-1)
    for unit in range(first_unit, stop_unit):
        n, g = unit // (groups * blocks), (unit // blocks) % groups
        image = n * groups + g
        start = (unit % blocks) * POSITION_BLOCK
        stop = min(start + POSITION_BLOCK, positions)
        # The unit's panels at once, each of b's rows read in one contiguous sweep. Past a last,
        # narrower panel the lanes keep older values: their sums are never stored.
        for k in range(depth):
            row = image * depth * positions + k * positions + start
            for j in range(stop - start):
                panels[uint64((j // width) * size + k * width + j % width)] = b_flat[uint64(row + j)]
        for first in range(start, stop, width):
            count = min(width, stop - first)
            panel = ((first - start) // width) * size  # this panel's offset in panels
            m = 0
            while m + 4 <= rows:
                w0 = (g * rows + m) * depth
                s00 = simd.splat(bias[g, m])
                s10 = simd.splat(bias[g, m + 1])
                s20 = simd.splat(bias[g, m + 2])
                s30 = simd.splat(bias[g, m + 3])
                s00, s01, s10, s11, s20, s21, s30, s31 = tile_sums(
                    panels, panel, width, a_flat, w0, w0 + depth, w0 + 2 * depth,
                    w0 + 3 * depth, depth, (s00, s00, s10, s10, s20, s20, s30, s30))
                o = (image * rows + m) * positions + first
                target, at, step = (out_flat, o, positions) if count == width else (tail, 0, width)
                simd.store(target, at, s00)
                simd.store(target, at + lanes, s01)
                simd.store(target, at + step, s10)
                simd.store(target, at + step + lanes, s11)
                simd.store(target, at + 2 * step, s20)
                simd.store(target, at + 2 * step + lanes, s21)
                simd.store(target, at + 3 * step, s30)
                simd.store(target, at + 3 * step + lanes, s31)
                if count < width:
                    for r in range(4):
                        for j in range(count):
                            out_flat[uint64(o + r * positions + j)] = tail[r * width + j]
                m += 4
            while m < rows:
                w0 = (g * rows + m) * depth
                s00 = simd.splat(bias[g, m])
                s01 = s00
                for k in range(depth):
                    x = a_flat[uint64(w0 + k)]
                    s00 = simd.fma(simd.load(panels, panel + k * width), x, s00)
                    s01 = simd.fma(simd.load(panels, panel + k * width + lanes), x, s01)
                simd.store(tail, 0, s00)
                simd.store(tail, lanes, s01)
                o = (image * rows + m) * positions + first
                for j in range(count):
                    out_flat[uint64(o + j)] = tail[j]
                m += 1


@kernel
def product_units(b):
    """The work units of grouped_product over b (N, G, K, P)."""
    batch, groups, _, positions = b.shape
    return batch * groups * ((positions + POSITION_BLOCK - 1) // POSITION_BLOCK)


@parallel_kernel
def grouped_product_blocks(a, b, bias, out, blocks):
    """grouped_product's units cut into `blocks` near-equal ranges, one per thread: units write
    disjoint parts of out and read only a, b and bias."""
    units = product_units(b)
    for block in prange(blocks):
        grouped_product(a, b, bias, out, block * units // blocks, (block + 1) * units // blocks)


@kernel
def im2col_rows(x, col_t, groups, out_h, out_w, kernel_h, kernel_w, stride_h, stride_w,
                dilation_h, dilation_w, pad_top, pad_left):
    """im2col with positions as rows, for narrow_product:

        col_t[n, g, (oy, ox), (c, ky, kx)] = x[n, g*C/G + c, oy*sh - pt + ky*dh, ox*sw - pl + kx*dw]

    0 outside x. x: (N, C, H, W); col_t: (N, G, OH*OW, C/G*kh*kw).
    """
    batch, channels, height, width = x.shape
    per_group = channels // groups
    for n in range(batch):
        for g in range(groups):
            for oy in range(out_h):
                for ox in range(out_w):
                    target = col_t[n, g, oy * out_w + ox]
                    x0 = ox * stride_w - pad_left
                    for c in range(per_group):
                        channel = x[n, g * per_group + c]
                        for ky in range(kernel_h):
                            iy = oy * stride_h - pad_top + ky * dilation_h
                            base = (c * kernel_h + ky) * kernel_w
                            if iy < 0 or iy >= height:
                                for kx in range(kernel_w):
                                    target[base + kx] = 0
                                continue
                            row = channel[iy]
                            for kx in range(kernel_w):
                                ix = x0 + kx * dilation_w
                                target[base + kx] = row[ix] if 0 <= ix < width else 0


@kernel
def narrow_tiles(a_t, col_t, bias, out):
    """narrow_product's outputs for rows in blocks of two vectors (fastrnn.engine.simd: 16
    float32, 8 float64); returns the first row it left (the rest are narrow_product's).

    a_t: (G, K, M), a transposed; col_t (N, G, P, K), bias (G, M), out (N, G, M, P) as in
    narrow_product. The channels are the vectors: per k, two loads of a_t's row serve four
    positions, whose 4 x 2 sums stay in registers for the whole of K; a position's inputs come
    one at a time. Where narrow_product's dot products end in a horizontal sum per output, this
    has none. On the development machine, Silero VAD's 129 -> 128 convolution at 4 positions
    (K = 387) took 4.7 us against narrow_product's 8.4, its STFT's 258 rows 9.3 against 11.0; at 1
    or 2 positions, where most of each tile is waste, narrow_product is the faster.
    """
    batch, groups, positions, depth = col_t.shape
    rows = a_t.shape[2]
    lanes = simd.lanes(out)
    width = 2 * lanes
    tiled = rows - rows % width
    sums = np.empty(4 * width, out.dtype)
    a_flat, col_flat, bias_flat = a_t.reshape(-1), col_t.reshape(-1), bias.reshape(-1)
    for n in range(batch):
        for g in range(groups):
            columns = (n * groups + g) * positions * depth
            for m in range(0, tiled, width):
                c0 = simd.load(bias_flat, g * rows + m)
                c1 = simd.load(bias_flat, g * rows + m + lanes)
                w = g * depth * rows + m
                for first in range(0, positions, 4):
                    count = min(4, positions - first)
                    r0 = columns + first * depth
                    # Past the last position the tile reads its last one again: sums not stored.
                    r1 = r0 + min(1, count - 1) * depth
                    r2 = r0 + min(2, count - 1) * depth
                    r3 = r0 + min(3, count - 1) * depth
                    s00, s01, s10, s11, s20, s21, s30, s31 = tile_sums(
                        a_flat, w, rows, col_flat, r0, r1, r2, r3, depth,
                        (c0, c1, c0, c1, c0, c1, c0, c1))
                    simd.store(sums, 0, s00)
                    simd.store(sums, lanes, s01)
                    simd.store(sums, width, s10)
                    simd.store(sums, width + lanes, s11)
                    simd.store(sums, 2 * width, s20)
                    simd.store(sums, 2 * width + lanes, s21)
                    simd.store(sums, 3 * width, s30)
                    simd.store(sums, 3 * width + lanes, s31)
                    for q in range(count):
                        for j in range(width):
                            out[n, g, m + j, first + q] = sums[q * width + j]
    return tiled


@kernel
def narrow_product(a, col_t, bias, out, first_row):
    """out[n, g, m, p] = bias[g, m] + sum_k a[g, m, k] * col_t[n, g, p, k], for few positions
    and the rows m >= first_row (narrow_tiles makes the others).

    a: (G, M, K); col_t: (N, G, P, K) (im2col_rows); bias: (G, M); out: (N, G, M, P). Each
    weight row meets four positions per pass, as four dot products along K, both operands
    contiguous (the loop vectorises): with a few positions per image grouped_product's inner loop
    over positions would be a few elements long, this one is K long.
    """
    batch, groups, positions, depth = col_t.shape
    rows = a.shape[1]
    for n in range(batch):
        for g in range(groups):
            for m in range(first_row, rows):
                w = a[g, m]
                c = bias[g, m]
                p = 0
                while p + 4 <= positions:
                    r0, r1 = col_t[n, g, p], col_t[n, g, p + 1]
                    r2, r3 = col_t[n, g, p + 2], col_t[n, g, p + 3]
                    s0, s1, s2, s3 = c, c, c, c
                    for k in range(depth):
                        v = w[k]
                        s0 += v * r0[k]
                        s1 += v * r1[k]
                        s2 += v * r2[k]
                        s3 += v * r3[k]
                    out[n, g, m, p] = s0
                    out[n, g, m, p + 1] = s1
                    out[n, g, m, p + 2] = s2
                    out[n, g, m, p + 3] = s3
                    p += 4
                while p < positions:
                    r0 = col_t[n, g, p]
                    s0 = c
                    for k in range(depth):
                        s0 += w[k] * r0[k]
                    out[n, g, m, p] = s0
                    p += 1


@kernel
def pad_rows(x, y, begin, end, mode):
    """y[r] = x[r] padded along its last axis by begin and end: mode 0 reflect (the edge not
    repeated), 1 edge (the edge repeated), 2 wrap. x: (rows, W); y: (rows, begin + W + end);
    reflect needs begin, end < W, the others W >= 1."""
    rows, width = x.shape
    for r in range(rows):
        source, target = x[r], y[r]
        for i in range(width):
            target[begin + i] = source[i]
        for i in range(begin):
            # target position begin - 1 - i lies i + 1 before the first element
            if mode == 0:
                j = i + 1
            elif mode == 1:
                j = 0
            else:
                j = width - 1 - (i % width)
            target[begin - 1 - i] = source[j]
        for i in range(end):
            if mode == 0:
                j = width - 2 - i
            elif mode == 1:
                j = width - 1
            else:
                j = i % width
            target[begin + width + i] = source[j]


@kernel
def relu(x, y):
    """y = max(x, 0) elementwise, NaN kept (as np.maximum); x, y: 1-D, may be the same array."""
    for i in range(x.shape[0]):
        v = x[i]
        y[i] = v if v > 0 or v != v else 0


@kernel
def narrow_conv(x, a, a_t, bias, col_t, out, geometry):
    """im2col_rows, narrow_tiles and narrow_product in one call (a call from Python costs more
    than these kernels' work at a few positions). a (G, M, K) and a_t (G, K, M): the weights
    both ways; geometry: int64 (groups, oh, ow, kh, kw, sh, sw, dh, dw, pad top, pad left); out:
    (N, G, M, P)."""
    im2col_rows(x, col_t, geometry[0], geometry[1], geometry[2], geometry[3], geometry[4],
                geometry[5], geometry[6], geometry[7], geometry[8], geometry[9], geometry[10])
    # Below three positions a tile's four would be mostly waste: dot products do better there.
    first_row = narrow_tiles(a_t, col_t, bias, out) if col_t.shape[2] >= 3 else 0
    narrow_product(a, col_t, bias, out, first_row)


@kernel
def sigmoid(x, y, cap):
    """y = 1 / (1 + exp(min(-x, cap))) elementwise, NaN kept; x, y: 1-D. cap keeps exp finite:
    for x below -cap the result is a tiny positive number instead of 0 with an overflow."""
    for i in range(x.shape[0]):
        t = -x[i]
        if t > cap:
            t = cap
        y[i] = 1 / (1 + np.exp(t))
