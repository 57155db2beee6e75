"""Spatial ONNX ops: Conv, ConvTranspose, Pad, BatchNormalization, LayerNormalization,
InstanceNormalization, MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool.

Each handler follows the ONNX operator of the same name. Conv, ConvTranspose and the pools take
1-D (N, C, T) and 2-D (N, C, H, W) inputs; a 1-D input runs through the 2-D kernels with H = 1.
Attributes are checked when the graph is loaded, and so are weight shapes against the input's
declared shape where the model declares one; anything that depends on a shape only a run knows is
checked on that run. Both refuse with a ValueError naming the node.

Conv is an im2col (spatial_kernels.im2col) and one product over all images and groups
(spatial_kernels.grouped_product, in Numba: no BLAS thread pool competing for the cores; a big
product is cut into blocks of images, groups and positions over fastrnn's threads):

    col[n, (c, ky, kx), (oy, ox)] = x_padded[n, c, oy*sh + ky*dh, ox*sw + kx*dw]
    y[n, g, m, :] = W[g, m, :] @ col[n, g, :, :] + B[g*M/G + m]

Below NARROW_POSITIONS output positions per image the columns are written as rows instead
(spatial_kernels.im2col_rows) and each output is a dot product along K (narrow_product), the
two in one kernel call (narrow_conv); with W constant, each X shape and dtype is checked once.

ConvTranspose is its transpose: the product of W^T with the input, then col2im adds every column
entry into the output position it came from. Geometry (output sizes, pads from auto_pad) is worked
out once per input shape and remembered; the im2col and col2im buffers are allocated once per
input shape and thread (threads may run one session at once). Outputs are fresh arrays each run.

Data types: the kernels run in the input's own float dtype, float32 or float64 (each compiled
once, the float64 specialisation on its first use); normalization statistics are summed in
float64 for either.
"""

import threading

import numpy as np

from fastrnn.converters.onnx import spatial_kernels as kernels
from fastrnn.converters.onnx.registry import as_ints, register
from fastrnn.engine import parallel

MAX_OPSET = 22
AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")
FLOAT_TYPES = (np.dtype(np.float32), np.dtype(np.float64))
CACHE_LIMIT = 64  # shapes remembered per node; past that, geometry is recomputed each run
# Multiply-adds below which a product stays on the calling thread (about half a millisecond of
# one core's work): under it, waking a second thread costs more than it saves.
PARALLEL_PRODUCT = 1 << 22
# Elements (of im2col's columns, of MaxPool's input) from which those two run their images on
# several threads: about a quarter of a millisecond of one core's copying.
PARALLEL_COLUMNS = 1 << 20
# Output positions per image below which Conv takes narrow_product (dot products along K, columns
# as rows) over grouped_product (register tiles 16 float32 positions wide): on the development
# machine 1.3-6x faster at Silero VAD's 1-9 positions (128 x 384 x 4: 6.4 against 21.7 us),
# 1.2x at 16, and slower from 32 on (64 x 200 x 32: 16.7 against 12.0 us; x 50: 30.6 against 21.0).
NARROW_POSITIONS = 24


def _product(a, b, bias, out):
    """out[n, g] = a[g] @ b[n, g] + bias[g][:, None] (spatial_kernels.grouped_product), its work
    units spread over fastrnn's threads (fastrnn.engine.parallel) when it is big enough."""
    batch, groups, _, positions = b.shape
    units = batch * groups * -(-positions // kernels.POSITION_BLOCK)
    blocks = 1
    if out.size * a.shape[2] >= PARALLEL_PRODUCT:
        blocks = min(parallel.threads_for_call(), units)
    if blocks > 1:
        with parallel.parallel_section():
            kernels.grouped_product_blocks(a, b, bias, out, blocks)
    else:
        kernels.grouped_product(a, b, bias, out, 0, units)


def _by_images(serial, blocked, x, y, arguments):
    """serial(x, y, *arguments) (im2col, max_pool), or blocked(x, y, blocks, *arguments) with the
    images cut into blocks over fastrnn's threads once the larger array of the two holds
    PARALLEL_COLUMNS elements: a CRNN's 16 images of 288 x 1024 columns took 1.4 ms to write on
    one thread."""
    blocks = 1
    if max(x.size, y.size) >= PARALLEL_COLUMNS and x.shape[0] > 1:
        blocks = min(parallel.threads_for_call(), x.shape[0])
    if blocks > 1:
        with parallel.parallel_section():
            blocked(x, y, blocks, *arguments)
    else:
        serial(x, y, *arguments)


class _PerShape:
    """Values computed once per input shape (geometry) and buffers once per shape and thread."""

    def __init__(self, compute):
        self.compute = compute
        self.known = {}
        self.local = threading.local()

    def get(self, key):
        value = self.known.get(key)
        if value is None:
            value = self.compute(*key)
            if len(self.known) < CACHE_LIMIT:
                self.known[key] = value
        return value

    def buffer(self, shape, dtype):
        buffers = getattr(self.local, "buffers", None)
        if buffers is None:
            buffers = self.local.buffers = {}
        key = (shape, dtype)
        array = buffers.get(key)
        if array is None:
            array = np.empty(shape, dtype)
            if len(buffers) < CACHE_LIMIT:
                buffers[key] = array
        return array


class ReusableOutput:
    """Where a Conv's or MaxPool's output comes from: a fresh array, or, once the graph has found
    that the value never leaves a run (graph.Graph._reuse_outputs: not a graph output, read only
    by Convs and MaxPools, which copy what they read), a buffer of the calling thread's kept
    from run to run. A fresh array of megabytes is fresh pages from the system each run: a CRNN's
    first Conv at batch 16 (8 MB out) took 6.6 ms of which 5 were page faults."""

    def __init__(self):
        self.reuse = False
        self.local = threading.local()

    def empty(self, shape, dtype):
        if not self.reuse:
            return np.empty(shape, dtype)
        buffers = getattr(self.local, "buffers", None)
        if buffers is None:
            buffers = self.local.buffers = {}
        array = buffers.get((shape, dtype))
        if array is None:
            array = np.empty(shape, dtype)
            if len(buffers) < CACHE_LIMIT:
                buffers[shape, dtype] = array
        return array


# -- attributes and geometry ---------------------------------------------------------------------

def _ints_attribute(node, name, rank, default, minimum):
    value = node.attribute(name)
    if value is None:
        return (default,) * rank
    value = tuple(int(v) for v in value)
    if len(value) != rank:
        raise node.error(f"{name} {list(value)} has {len(value)} values for {rank} spatial "
                         f"axes")
    if any(v < minimum for v in value):
        raise node.error(f"{name} {list(value)} must be {minimum} or more")
    return value


def _window_attributes(node, rank, *, dilations=True):
    """(strides, dilations, pads (begins then ends), auto_pad), checked against `rank`."""
    if rank not in (1, 2):
        raise node.error(f"{rank}-D {node.op_type} is not supported; fastrnn runs 1-D (N, C, T) "
                         f"and 2-D (N, C, H, W) inputs")
    strides = _ints_attribute(node, "strides", rank, 1, 1)
    dilation = _ints_attribute(node, "dilations", rank, 1, 1) if dilations else (1,) * rank
    pads = _ints_attribute(node, "pads", 2 * rank, 0, 0)
    auto_pad = node.attribute("auto_pad", "NOTSET")
    if auto_pad not in AUTO_PADS:
        raise node.error(f"auto_pad {auto_pad!r} is not one of {', '.join(AUTO_PADS)}")
    if auto_pad != "NOTSET" and node.attribute("pads") is not None and any(pads):
        raise node.error(f"pads {list(pads)} cannot be given with auto_pad {auto_pad!r}")
    return strides, dilation, pads, auto_pad


def _window_geometry(sizes, kernel, strides, dilations, pads, auto_pad, ceil_mode):
    """(output sizes, begin pads, end pads) of a sliding window over `sizes`, as ONNX defines it
    for Conv and the pools: SAME_* gives ceil(size / stride) outputs with the odd pad at the end
    (UPPER) or the start (LOWER); ceil_mode keeps a last, partial window unless it would start in
    the end padding."""
    rank = len(sizes)
    outputs, begins, ends = [], [], []
    for axis, size in enumerate(sizes):
        span = (kernel[axis] - 1) * dilations[axis] + 1
        stride = strides[axis]
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = -(-size // stride)
            total = max(0, (out - 1) * stride + span - size)
            half = total // 2
            begin, end = (half, total - half) if auto_pad == "SAME_UPPER" else (total - half, half)
        else:
            begin, end = (0, 0) if auto_pad == "VALID" else (pads[axis], pads[axis + rank])
            room = size + begin + end - span
            if room < 0:
                raise ValueError(f"input size {size} along spatial axis {axis} (padded to "
                                 f"{size + begin + end}) is smaller than the window ({span})")
            if ceil_mode:
                out = -(-room // stride) + 1
                if (out - 1) * stride >= size + begin:
                    out -= 1
            else:
                out = room // stride + 1
        outputs.append(out)
        begins.append(begin)
        ends.append(end)
    return tuple(outputs), tuple(begins), tuple(ends)


def _as_2d(values, fill):
    """A 1-D op's per-axis values as the 2-D kernels' (H first, its `fill`)."""
    return (fill, *values) if len(values) == 1 else tuple(values)


def _image(x, node, rank):
    """x (N, C, T) or (N, C, H, W) as a C-contiguous (N, C, H, W) array, H = 1 for 1-D."""
    if not isinstance(x, np.ndarray) or x.dtype not in FLOAT_TYPES:
        raise TypeError(f"{node.op_type} node {node.name!r}: input X must be a float32 or "
                        f"float64 array, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim != rank + 2:
        raise ValueError(f"{node.op_type} node {node.name!r}: input X has shape {x.shape}; "
                         f"expected {rank + 2} dimensions (N, C and {rank} spatial)")
    x = np.ascontiguousarray(x)
    return x.reshape(x.shape[0], x.shape[1], 1, x.shape[2]) if rank == 1 else x


def _weights(value, dtype, node, name):
    if value.dtype != dtype:
        raise TypeError(f"{node.op_type} node {node.name!r}: {name} is {value.dtype}, X is "
                        f"{dtype}; ONNX needs them of one type")
    return value


# -- Conv -----------------------------------------------------------------------------------------

@register("Conv", opsets=(1, MAX_OPSET))
def conv(node):
    group = node.attribute("group", 1)
    if group < 1:
        raise node.error(f"group {group} must be 1 or more")
    weight = node.constant_input(1)
    kernel_shape = node.attribute("kernel_shape")
    rank = len(kernel_shape) if kernel_shape is not None else (
        weight.ndim - 2 if weight is not None else None)
    x_shape = node.input_shape(0)
    if rank is None and x_shape is not None:
        rank = len(x_shape) - 2
    if rank is None:
        raise node.error("the spatial rank is unknown when loading (no kernel_shape, no "
                         "constant W, no declared X shape)")
    strides, dilations, pads, auto_pad = _window_attributes(node, rank)

    def check_weight(w, channels=None):
        if w.ndim != rank + 2:
            raise node.error(f"W has shape {w.shape}; expected {rank + 2} dimensions (M, C/group "
                             f"and {rank} kernel)")
        if kernel_shape is not None and tuple(w.shape[2:]) != tuple(kernel_shape):
            raise node.error(f"kernel_shape {list(kernel_shape)} differs from W's {w.shape[2:]}")
        if w.shape[0] % group:
            raise node.error(f"W's {w.shape[0]} output channels are not divisible by group "
                             f"{group}")
        if channels is not None and channels != w.shape[1] * group:
            raise node.error(f"X has {channels} channels; W {w.shape} with group {group} needs "
                             f"{w.shape[1] * group} (channels must be divisible by group)")

    bias = node.constant_input(2)
    if weight is not None:
        check_weight(weight, x_shape[1] if x_shape is not None and len(x_shape) > 1 else None)
        if bias is not None and bias.shape != (weight.shape[0],):
            raise node.error(f"B has shape {bias.shape}; expected ({weight.shape[0]},)")
    kernel = tuple(weight.shape[2:]) if weight is not None else None

    def prepare(w):
        """W (M, C/G, k...) as (G, M/G, C/G * prod(k)), C-contiguous, for the batched matmul."""
        return np.ascontiguousarray(w.reshape(group, w.shape[0] // group, -1))

    prepared = prepare(weight) if weight is not None else None
    # (G, K, M/G): the narrow path's channel tiles read W with the channels contiguous. Made
    # when a first input shape takes that path, so that a wide-only Conv keeps one copy of W.
    transposed = None

    def geometry(shape, kernel):
        sizes = shape[2:]
        outputs, begins, _ = _window_geometry(sizes, kernel, strides, dilations, pads, auto_pad,
                                              0)
        k2, s2, d2 = _as_2d(kernel, 1), _as_2d(strides, 1), _as_2d(dilations, 1)
        o2, b2 = _as_2d(outputs, 1), _as_2d(begins, 0)
        pointwise = all(k == 1 for k in kernel) and all(s == 1 for s in strides) and \
            not any(begins) and tuple(outputs) == tuple(sizes)
        positions = o2[0] * o2[1]
        arguments = (o2[0], o2[1], k2[0], k2[1], s2[0], s2[1], d2[0], d2[1], b2[0], b2[1])
        return outputs, positions, arguments, pointwise

    cache = _PerShape(geometry)
    zeros = {}  # (groups, per group, dtype) -> the zero bias of a Conv without B
    constant_bias = bias is not None and node.has_input(2)
    # (X's shape, dtype) -> what a run with constant W (and B, if any) needs, checked once:
    # (narrow, im2col arguments, columns' shape, the product's output shape, Y's shape, bias rows
    # or None where B is fed, X's shape as (N, C, H, W), pointwise)
    fast = {}

    def bias_rows_for(b, groups, per_group, dtype):
        if b is None:
            rows = zeros.get((groups, per_group, dtype))
            if rows is None:
                rows = zeros[groups, per_group, dtype] = np.zeros((groups, per_group), dtype)
            return rows
        if b.shape != (groups * per_group,):
            raise ValueError(f"Conv node {node.name!r}: B has shape {b.shape}; expected "
                             f"({groups * per_group},)")
        return np.ascontiguousarray(_weights(b, dtype, node, "B")).reshape(groups, per_group)

    def plan_shape(x, b):
        """The fast path's entry for x's shape and dtype (constant W): every check made once."""
        nonlocal transposed
        image = _image(x, node, rank)
        _weights(prepared, image.dtype, node, "W")
        batch, channels = image.shape[:2]
        groups, per_group, depth = prepared.shape
        if channels * int(np.prod(kernel)) != groups * depth:
            raise ValueError(f"Conv node {node.name!r}: X has {channels} channels; W with group "
                             f"{group} needs {groups * depth // int(np.prod(kernel))}")
        outputs, positions, arguments, pointwise = cache.get((x.shape, kernel))
        narrow = positions < NARROW_POSITIONS
        if narrow and transposed is None:
            transposed = np.ascontiguousarray(prepared.transpose(0, 2, 1))
        columns = (batch, groups, positions, depth) if narrow else \
            (batch, groups * depth, positions)
        rows = bias_rows_for(b, groups, per_group, image.dtype) if constant_bias else None
        entry = (narrow, np.array((groups, *arguments), np.int64) if narrow else arguments,
                 columns,
                 (batch, groups, per_group, positions), (batch, groups * per_group, *outputs),
                 rows, image.shape, pointwise)
        if len(fast) < CACHE_LIMIT:
            fast[x.shape, x.dtype] = entry
        return entry

    def run(x, w, b=None):
        if prepared is None or type(x) is not np.ndarray or not x.flags.c_contiguous:
            return run_general(x, w, b)
        entry = fast.get((x.shape, x.dtype))
        if entry is None:
            entry = plan_shape(x, b)
        narrow, arguments, columns, product_shape, y_shape, rows, image_shape, pointwise = entry
        image = x.reshape(image_shape)
        if rows is None:
            rows = bias_rows_for(b, product_shape[1], product_shape[2], x.dtype)
        y = output.empty(y_shape, x.dtype)
        if narrow:
            kernels.narrow_conv(image, prepared, transposed, rows,
                                cache.buffer(columns, x.dtype), y.reshape(product_shape),
                                arguments)
        else:
            if pointwise:
                col = image.reshape(columns)
            else:
                col = cache.buffer(columns, x.dtype)
                _by_images(kernels.im2col, kernels.im2col_blocks, image, col, arguments)
            _product(prepared, col.reshape(product_shape[0], product_shape[1], -1,
                                           product_shape[3]), rows, y.reshape(product_shape))
        return y

    def run_general(x, w, b=None):
        """Any W (constant or fed), any X: geometry per shape, every check on every run."""
        nonlocal_w = prepared
        w_kernel = kernel
        if nonlocal_w is None:
            check_weight(w)
            nonlocal_w, w_kernel = prepare(w), tuple(w.shape[2:])
        image = _image(x, node, rank)
        _weights(nonlocal_w, image.dtype, node, "W")
        batch, channels = image.shape[:2]
        groups, per_group, depth = nonlocal_w.shape
        if channels * int(np.prod(w_kernel)) != groups * depth:
            raise ValueError(f"Conv node {node.name!r}: X has {channels} channels; W with group "
                             f"{group} needs {groups * depth // int(np.prod(w_kernel))}")
        outputs, positions, arguments, pointwise = cache.get((x.shape, w_kernel))
        if pointwise:
            col = image.reshape(batch, channels, positions)
        else:
            col = cache.buffer((batch, groups * depth, positions), image.dtype)
            _by_images(kernels.im2col, kernels.im2col_blocks, image, col, arguments)
        bias_rows = bias_rows_for(b, groups, per_group, image.dtype)
        y = output.empty((batch, groups, per_group, positions), image.dtype)
        _product(nonlocal_w, col.reshape(batch, groups, depth, positions), bias_rows, y)
        return y.reshape(batch, groups * per_group, *outputs)
    output = run.reusable_output = ReusableOutput()
    return run


# -- ConvTranspose ---------------------------------------------------------------------------------

@register("ConvTranspose", opsets=(1, MAX_OPSET))
def conv_transpose(node):
    group = node.attribute("group", 1)
    if group < 1:
        raise node.error(f"group {group} must be 1 or more")
    weight = node.constant_input(1)
    if weight is None:
        raise node.error("W must be known when loading (an initializer or a Constant)")
    rank = weight.ndim - 2
    strides, dilations, pads, auto_pad = _window_attributes(node, rank)
    kernel = tuple(weight.shape[2:])
    kernel_shape = node.attribute("kernel_shape")
    if kernel_shape is not None and tuple(kernel_shape) != kernel:
        raise node.error(f"kernel_shape {list(kernel_shape)} differs from W's {kernel}")
    output_padding = _ints_attribute(node, "output_padding", rank, 0, 0)
    for axis, (extra, stride, dilation) in enumerate(zip(output_padding, strides, dilations)):
        if extra >= max(stride, dilation):
            raise node.error(f"output_padding {list(output_padding)}: along axis {axis} it must "
                             f"be less than the stride or the dilation ({stride}, {dilation})")
    output_shape = node.attribute("output_shape")
    if output_shape is not None:
        output_shape = tuple(int(v) for v in output_shape)[-rank:]  # may include N and C
    in_channels = weight.shape[0]
    if in_channels % group:
        raise node.error(f"W's {in_channels} input channels are not divisible by group {group}")
    x_shape = node.input_shape(0)
    if x_shape is not None and len(x_shape) > 1 and x_shape[1] is not None and \
            x_shape[1] != in_channels:
        raise node.error(f"X has {x_shape[1]} channels; W {weight.shape} needs {in_channels}")
    per_group_in, per_group_out = in_channels // group, weight.shape[1]
    out_channels = per_group_out * group
    bias = node.constant_input(2)
    if bias is not None and bias.shape != (out_channels,):
        raise node.error(f"B has shape {bias.shape}; expected ({out_channels},)")
    taps = int(np.prod(kernel))
    # W (C, M/G, k...) -> (G, M/G * prod(k), C/G): the product's rows are (m, ky, kx) per group.
    transposed = np.ascontiguousarray(
        weight.reshape(group, per_group_in, per_group_out * taps).transpose(0, 2, 1))

    def geometry(shape):
        sizes = shape[2:]
        outputs, begins = [], []
        for axis, size in enumerate(sizes):
            natural = strides[axis] * (size - 1) + output_padding[axis] + \
                (kernel[axis] - 1) * dilations[axis] + 1
            if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                target = output_shape[axis] if output_shape is not None else \
                    size * strides[axis]
                total = natural - target
                # As onnxruntime: SAME_UPPER puts the odd pad at the end, otherwise the start.
                begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
                out = target
            elif auto_pad == "VALID":
                begin, out = 0, natural
            else:
                begin, out = pads[axis], natural - pads[axis] - pads[axis + rank]
            if out < 1:
                raise ValueError(f"the output size along spatial axis {axis} would be {out}")
            outputs.append(out)
            begins.append(begin)
        i2 = _as_2d(sizes, 1)
        k2, s2, d2 = _as_2d(kernel, 1), _as_2d(strides, 1), _as_2d(dilations, 1)
        o2, b2 = _as_2d(outputs, 1), _as_2d(begins, 0)
        arguments = (i2[0], i2[1], k2[0], k2[1], s2[0], s2[1], d2[0], d2[1], b2[0], b2[1])
        return tuple(outputs), o2, arguments

    cache = _PerShape(geometry)
    zero_rows = {dtype: np.zeros(transposed.shape[:2], dtype) for dtype in FLOAT_TYPES}

    def run(x, w, b=None):
        image = _image(x, node, rank)
        _weights(transposed, image.dtype, node, "W")
        batch, channels, height, width = image.shape
        if channels != in_channels:
            raise ValueError(f"ConvTranspose node {node.name!r}: X has {channels} channels; W "
                             f"{weight.shape} needs {in_channels}")
        outputs, o2, arguments = cache.get((x.shape,))
        col = cache.buffer((batch, group, per_group_out * taps, height * width), image.dtype)
        _product(transposed, image.reshape(batch, group, per_group_in, height * width),
                 zero_rows[image.dtype], col)
        y = np.empty((batch, out_channels, o2[0] * o2[1]), image.dtype)
        if b is not None:
            kernels.fill_channel_bias(y, _weights(b, image.dtype, node, "B"))
        else:
            y.fill(0)
        kernels.col2im(col.reshape(batch, out_channels * taps, height * width),
                       y.reshape(batch, out_channels, *o2), *arguments)
        return y.reshape(batch, out_channels, *outputs)
    return run


# -- pooling ---------------------------------------------------------------------------------------

def _pool_setup(node, *, dilations):
    kernel = node.attribute("kernel_shape")
    if kernel is None:
        raise node.error("kernel_shape is required")
    kernel = tuple(int(k) for k in kernel)
    rank = len(kernel)
    strides, dilation, pads, auto_pad = _window_attributes(node, rank, dilations=dilations)
    if any(k < 1 for k in kernel):
        raise node.error(f"kernel_shape {list(kernel)} must be 1 or more")
    for axis, k in enumerate(kernel):
        if pads[axis] >= k * dilation[axis] or pads[axis + rank] >= k * dilation[axis]:
            raise node.error(f"pads {list(pads)} must be smaller than the window along each axis "
                             f"(kernel_shape {list(kernel)})")
    ceil_mode = node.attribute("ceil_mode", 0)

    def geometry(shape):
        outputs, begins, ends = _window_geometry(shape[2:], kernel, strides, dilation, pads,
                                                 auto_pad, ceil_mode)
        arguments = (*_as_2d(kernel, 1), *_as_2d(strides, 1), *_as_2d(dilation, 1),
                     *_as_2d(begins, 0))
        return outputs, _as_2d(outputs, 1), arguments, _as_2d(ends, 0)

    return rank, _PerShape(geometry)


@register("MaxPool", opsets=(1, MAX_OPSET))
def max_pool(node):
    if len(node.outputs) > 1 and node.outputs[1]:
        raise node.error("the Indices output is not supported; fastrnn's MaxPool gives Y only")
    if node.attribute("storage_order", 0) not in (0, 1):
        raise node.error("storage_order must be 0 or 1")
    rank, cache = _pool_setup(node, dilations=True)

    def run(x):
        image = _image(x, node, rank)
        outputs, o2, arguments, _ = cache.get((x.shape,))
        y = output.empty((*image.shape[:2], *o2), image.dtype)
        _by_images(kernels.max_pool, kernels.max_pool_blocks, image, y, arguments)
        return y.reshape(*image.shape[:2], *outputs)
    output = run.reusable_output = ReusableOutput()
    return run


@register("AveragePool", opsets=(1, MAX_OPSET))
def average_pool(node):
    rank, cache = _pool_setup(node, dilations=node.opset >= 19)
    include_pad = bool(node.attribute("count_include_pad", 0))

    def run(x):
        image = _image(x, node, rank)
        outputs, o2, arguments, ends = cache.get((x.shape,))
        y = np.empty((*image.shape[:2], *o2), image.dtype)
        kernels.average_pool(image, y, *arguments, *ends, include_pad)
        return y.reshape(*image.shape[:2], *outputs)
    return run


def _global_pool(take_max):
    def handler(node):
        def run(x):
            if not isinstance(x, np.ndarray) or x.dtype not in FLOAT_TYPES or x.ndim < 3:
                raise ValueError(f"{node.op_type} node {node.name!r}: X must be a float32 or "
                                 f"float64 array (N, C, spatial...), got "
                                 f"{getattr(x, 'shape', type(x).__name__)}")
            rows = x.shape[0] * x.shape[1]
            y = np.empty(rows, x.dtype)
            kernels.global_pool(np.ascontiguousarray(x).reshape(rows, -1), y, take_max)
            return y.reshape(*x.shape[:2], *(1,) * (x.ndim - 2))
        return run
    return handler


register("GlobalAveragePool", opsets=(1, MAX_OPSET))(_global_pool(False))
register("GlobalMaxPool", opsets=(1, MAX_OPSET))(_global_pool(True))


# -- normalization ---------------------------------------------------------------------------------

def _float_input(x, node):
    if not isinstance(x, np.ndarray) or x.dtype not in FLOAT_TYPES:
        raise TypeError(f"{node.op_type} node {node.name!r}: X must be a float32 or float64 "
                        f"array, got {getattr(x, 'dtype', type(x).__name__)}")
    return np.ascontiguousarray(x)


@register("BatchNormalization", opsets=(6, MAX_OPSET))
def batch_normalization(node):
    """Inference form: y = (x - mean) / sqrt(var + epsilon) * scale + B, per channel (axis 1)."""
    if node.attribute("training_mode", 0):
        raise node.error("training_mode=1 is not supported; fastrnn runs inference only")
    if node.opset < 9 and node.attribute("spatial", 1) != 1:
        raise node.error("spatial=0 (statistics per element) is not supported")
    if any(node.outputs[1:]):
        raise node.error("the training outputs (running mean and variance, saved statistics) "
                         "are not supported; fastrnn runs inference only")
    epsilon = float(node.attribute("epsilon", 1e-5))
    folded = {}

    def fold(scale, bias, mean, var, dtype):
        """(a, b) with y = x * a + b, computed in float64 and cast to the data's dtype."""
        parts = [np.asarray(v, np.float64).reshape(-1) for v in (scale, bias, mean, var)]
        sizes = {part.shape[0] for part in parts}
        if len(sizes) != 1:
            raise ValueError(f"BatchNormalization node {node.name!r}: scale, B, mean and var "
                             f"must all be (C,); got {[part.shape for part in parts]}")
        a = parts[0] / np.sqrt(parts[3] + epsilon)
        return a.astype(dtype), (parts[1] - parts[2] * a).astype(dtype)

    statistics = [node.constant_input(k) for k in range(1, 5)]
    constant = all(value is not None for value in statistics)
    if constant:
        for dtype in FLOAT_TYPES:
            folded[dtype] = fold(*statistics, dtype)

    def run(x, scale, bias, mean, var):
        x = _float_input(x, node)
        a, b = folded[x.dtype] if constant else fold(scale, bias, mean, var, x.dtype)
        channels = x.shape[1] if x.ndim > 1 else 1
        if a.shape[0] != channels:
            raise ValueError(f"BatchNormalization node {node.name!r}: X has {channels} channels, "
                             f"the statistics {a.shape[0]}")
        y = np.empty_like(x)
        shape = (x.shape[0], channels, -1)
        kernels.channel_affine(x.reshape(shape), y.reshape(shape), a, b)
        return y
    return run


@register("LayerNormalization", opsets=(17, MAX_OPSET))
def layer_normalization(node):
    """y = (x - mean) / sqrt(var + epsilon) * Scale + B over the axes [axis, rank)."""
    axis = node.attribute("axis", -1)
    epsilon = float(node.attribute("epsilon", 1e-5))
    stash_dtype = np.float32 if node.attribute("stash_type", 1) == 1 else None
    wants_mean = len(node.outputs) > 1 and bool(node.outputs[1])
    wants_inv_std = len(node.outputs) > 2 and bool(node.outputs[2])

    def run(x, scale, bias=None):
        x = _float_input(x, node)
        start = axis + x.ndim if axis < 0 else axis
        if not 0 <= start < x.ndim:
            raise ValueError(f"LayerNormalization node {node.name!r}: axis {axis} is out of "
                             f"range for X of shape {x.shape}")
        normalized = x.shape[start:]
        rows, size = int(np.prod(x.shape[:start])), int(np.prod(normalized))
        try:
            scale_row = np.ascontiguousarray(np.broadcast_to(scale, normalized),
                                             x.dtype).reshape(-1)
            bias_row = np.zeros(size, x.dtype) if bias is None else np.ascontiguousarray(
                np.broadcast_to(bias, normalized), x.dtype).reshape(-1)
        except ValueError:
            raise ValueError(f"LayerNormalization node {node.name!r}: Scale {np.shape(scale)} "
                             f"or B {np.shape(bias)} does not broadcast to the normalized shape "
                             f"{normalized}") from None
        y = np.empty_like(x)
        mean, inv_std = np.empty(rows), np.empty(rows)
        kernels.normalize_rows(x.reshape(rows, size), y.reshape(rows, size), scale_row,
                               bias_row, epsilon, 1, False, mean, inv_std)
        if not (wants_mean or wants_inv_std):
            return y
        stats_shape = (*x.shape[:start], *(1,) * (x.ndim - start))
        stats_dtype = stash_dtype or x.dtype
        return (y, mean.astype(stats_dtype).reshape(stats_shape),
                inv_std.astype(stats_dtype).reshape(stats_shape))
    return run


@register("InstanceNormalization", opsets=(6, MAX_OPSET))
def instance_normalization(node):
    """y = (x - mean) / sqrt(var + epsilon) * scale[c] + B[c], statistics per (n, c) over the
    spatial axes."""
    epsilon = float(node.attribute("epsilon", 1e-5))

    def run(x, scale, bias):
        x = _float_input(x, node)
        if x.ndim < 3:
            raise ValueError(f"InstanceNormalization node {node.name!r}: X has shape {x.shape}; "
                             f"expected (N, C, spatial...)")
        channels = x.shape[1]
        if np.shape(scale) != (channels,) or np.shape(bias) != (channels,):
            raise ValueError(f"InstanceNormalization node {node.name!r}: scale {np.shape(scale)} "
                             f"and B {np.shape(bias)} must be ({channels},)")
        rows = x.shape[0] * channels
        y = np.empty_like(x)
        mean, inv_std = np.empty(rows), np.empty(rows)
        kernels.normalize_rows(x.reshape(rows, -1), y.reshape(rows, -1),
                               np.ascontiguousarray(scale, x.dtype),
                               np.ascontiguousarray(bias, x.dtype), epsilon, channels, True,
                               mean, inv_std)
        return y
    return run


# -- Pad -------------------------------------------------------------------------------------------

PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}
ROW_PAD_MODES = {"reflect": 0, "edge": 1, "wrap": 2}  # spatial_kernels.pad_rows' mode codes


def _pad(node, x, pads, value, axes, mode):
    """x padded (negative pads crop) by `pads` (begins then ends, one pair per axis of `axes`)."""
    rank = x.ndim
    axes = range(rank) if axes is None else [a + rank if a < 0 else a for a in axes]
    axes = list(axes)
    if len(pads) != 2 * len(axes):
        raise ValueError(f"Pad node {node.name!r}: pads {list(pads)} need 2 values per padded "
                         f"axis ({len(axes)} axes, X of shape {x.shape})")
    if any(not 0 <= a < rank for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"Pad node {node.name!r}: axes {axes} are not distinct axes of X "
                         f"(rank {rank})")
    widths = [(0, 0)] * rank
    crop = [slice(None)] * rank
    for k, a in enumerate(axes):
        begin, end = pads[k], pads[k + len(axes)]
        crop[a] = slice(-begin if begin < 0 else 0, x.shape[a] + end if end < 0 else None)
        widths[a] = (max(begin, 0), max(end, 0))
    x = x[tuple(crop)]
    if mode == "constant":
        y = np.full([size + b + e for size, (b, e) in zip(x.shape, widths)],
                    value if value is not None else 0, x.dtype)
        y[tuple(slice(b, b + size) for size, (b, _) in zip(x.shape, widths))] = x
        return y
    for a, (b, e) in enumerate(widths):
        if (b or e) and x.shape[a] == 0:
            raise ValueError(f"Pad node {node.name!r}: mode {mode!r} cannot pad an empty axis")
        if mode == "reflect" and max(b, e) >= x.shape[a] and (b or e):
            raise ValueError(f"Pad node {node.name!r}: reflect pads {b, e} along axis {a} must "
                             f"be smaller than its size {x.shape[a]}")
    last = rank - 1
    if rank and x.dtype in FLOAT_TYPES and x.size and all(w == (0, 0) for w in widths[:last]):
        # Padding along the last axis only (an audio front end's reflect pad): one Numba pass.
        begin, end = widths[last]
        source = np.ascontiguousarray(x).reshape(-1, x.shape[last])
        y = np.empty((*x.shape[:last], x.shape[last] + begin + end), x.dtype)
        kernels.pad_rows(source, y.reshape(source.shape[0], -1), begin, end, ROW_PAD_MODES[mode])
        return y
    return np.pad(x, widths, mode=PAD_MODES[mode])


def _pad_mode(node):
    mode = node.attribute("mode", "constant")
    allowed = ("constant", "reflect", "edge", "wrap") if node.opset >= 19 else \
        ("constant", "reflect", "edge")
    if mode not in allowed:
        raise node.error(f"mode {mode!r} is not one of {', '.join(allowed)} (opset {node.opset})")
    return mode


@register("Pad", opsets=(2, 10))
def pad_attribute(node):
    pads = node.attribute("pads")
    if pads is None:
        raise node.error("the pads attribute is required")
    pads = tuple(int(p) for p in pads)
    value = float(node.attribute("value", 0.0))
    mode = _pad_mode(node)
    return lambda x: _pad(node, x, pads, value, None, mode)


@register("Pad", opsets=(11, MAX_OPSET))
def pad_input(node):
    mode = _pad_mode(node)
    pads = as_ints(node.constant_input(1))
    axes = as_ints(node.constant_input(3))
    value = node.constant_input(2)

    # Constant pads and axes, a mode other than constant: per X shape and dtype, (begin, end,
    # mode code, rows, Y's shape) where only the last axis is padded, else None (_pad's path).
    row_pads = {} if pads is not None and mode != "constant" and \
        (axes is not None or not node.has_input(3)) else None

    def row_entry(x):
        rank = x.ndim
        if not rank or x.dtype not in FLOAT_TYPES or not x.size:
            return None
        axes_now = range(rank) if axes is None else [a + rank if a < 0 else a for a in axes]
        axes_now = list(axes_now)
        if len(pads) != 2 * len(axes_now) or any(p < 0 for p in pads) or \
                sorted(axes_now) != sorted(set(axes_now)) or \
                any(not 0 <= a < rank for a in axes_now):
            return None
        begin = end = 0
        for k, a in enumerate(axes_now):
            if a != rank - 1:
                if pads[k] or pads[k + len(axes_now)]:
                    return None
            else:
                begin, end = pads[k], pads[k + len(axes_now)]
        if mode == "reflect" and max(begin, end) >= x.shape[-1]:
            return None   # _pad's path says why
        return (begin, end, ROW_PAD_MODES[mode], x.size // x.shape[-1],
                (*x.shape[:-1], x.shape[-1] + begin + end))

    def run(x, pads_value, constant_value=None, axes_value=None):
        if row_pads is not None and type(x) is np.ndarray and x.flags.c_contiguous:
            key = (x.shape, x.dtype)
            entry = row_pads.get(key, False)
            if entry is False:
                entry = row_entry(x)
                if len(row_pads) < 64:
                    row_pads[key] = entry
            if entry is not None:
                begin, end, code, rows, y_shape = entry
                y = np.empty(y_shape, x.dtype)
                kernels.pad_rows(x.reshape(rows, -1), y.reshape(rows, -1), begin, end, code)
                return y
        value_now = constant_value if value is None else value
        if value_now is not None:
            value_now = np.asarray(value_now).reshape(-1)
            value_now = value_now[0] if value_now.size else None
        return _pad(node, x, pads or as_ints(pads_value), value_now,
                    axes if axes is not None else as_ints(axes_value), mode)
    return run
