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

from fastrnn.engine.jit import kernel


@kernel
def im2col(x, col, out_h, out_w, kernel_h, kernel_w, stride_h, stride_w, dilation_h,
           dilation_w, pad_top, pad_left):
    """col[n, (c, ky, kx), (oy, ox)] = x[n, c, oy*sh - pt + ky*dh, ox*sw - pl + kx*dw], 0 outside.

    x: (N, C, H, W); col: (N, C*kh*kw, OH*OW).
    """
    batch, channels, height, width = x.shape
    zero = 0
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
                        base = oy * out_w
                        if iy < 0 or iy >= height:
                            for ox in range(out_w):
                                col[n, row, base + ox] = zero
                            continue
                        for ox in range(first):
                            col[n, row, base + ox] = zero
                        for ox in range(first, last):
                            col[n, row, base + ox] = x[n, c, iy, ox * stride_w + offset]
                        for ox in range(last, out_w):
                            col[n, row, base + ox] = zero


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
def add_channel_bias(y, bias):
    """y[n, c, :] += bias[c], y: (N, C, S)."""
    batch, channels, size = y.shape
    for n in range(batch):
        for c in range(channels):
            b = bias[c]
            for s in range(size):
                y[n, c, s] += b


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
def max_pool(x, y, kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, pad_top,
             pad_left):
    """y[n, c, oy, ox] = max over the window's taps inside x (padding is never the maximum).

    x: (N, C, H, W); y: (N, C, OH, OW). A window with no tap inside x (possible only with pads
    of a kernel's size or more) gives -inf.
    """
    batch, channels, height, width = x.shape
    out_h, out_w = y.shape[2], y.shape[3]
    for n in range(batch):
        for c in range(channels):
            for oy in range(out_h):
                y0 = oy * stride_h - pad_top
                for ox in range(out_w):
                    x0 = ox * stride_w - pad_left
                    best = -np.inf
                    for ky in range(kernel_h):
                        iy = y0 + ky * dilation_h
                        if iy < 0 or iy >= height:
                            continue
                        for kx in range(kernel_w):
                            ix = x0 + kx * dilation_w
                            if 0 <= ix < width:
                                value = x[n, c, iy, ix]
                                # NaN propagates, as in onnxruntime's max.
                                if value > best or value != value:
                                    best = value
                    y[n, c, oy, ox] = best


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

    per_channel (InstanceNormalization): row r = (n, c) takes scale[c] and bias[c], c = r % channels;
    otherwise (LayerNormalization) scale and bias are (D,) vectors over the row. mean_out and
    inv_std_out (rows,) receive the statistics.
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
