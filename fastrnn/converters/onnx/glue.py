"""Shape glue and head ops, in plain numpy: what exporters put around recurrent nodes.

Each handler follows the ONNX operator of the same name for the opsets it is registered for. They
run on whatever arrays reach them; ops whose inputs are all known when loading (weight slicing and
concatenation in torch exports) are folded into constants once, at load time.
"""

import numpy as np
from onnx import helper

from fastrnn.converters.onnx import spatial_kernels
from fastrnn.converters.onnx.registry import as_ints, check_allocation, register

MAX_OPSET = 22


def numpy_dtype(elem_type):
    """The numpy dtype of an ONNX tensor element type (Cast, ConstantOfShape)."""
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{elem_type!r} is not an ONNX tensor element type that numpy "
                         f"holds") from None


# -- identity and constants ----------------------------------------------------------------------

@register("Identity", opsets=(1, MAX_OPSET))
def identity(node):
    return lambda x: x


@register("Constant", opsets=(1, MAX_OPSET))
def constant(node):
    attrs = node.attributes
    if "value" in attrs:
        value = np.asarray(attrs["value"])
    elif "value_float" in attrs:
        value = np.array(attrs["value_float"], np.float32)
    elif "value_floats" in attrs:
        value = np.array(attrs["value_floats"], np.float32)
    elif "value_int" in attrs:
        value = np.array(attrs["value_int"], np.int64)
    elif "value_ints" in attrs:
        value = np.array(attrs["value_ints"], np.int64)
    else:
        raise node.error(f"needs a value attribute (value, value_float(s) or value_int(s)); "
                         f"got {sorted(attrs)}")
    return lambda: value


@register("ConstantOfShape", opsets=(9, MAX_OPSET))
def constant_of_shape(node):
    fill = node.attribute("value")
    fill = np.zeros(1, np.float32) if fill is None else np.asarray(fill).reshape(-1)
    return lambda shape: np.full(check_allocation("ConstantOfShape", as_ints(shape),
                                                  fill.dtype.itemsize), fill[0], fill.dtype)


@register("ConstantFill", opsets=(1, 8))
def constant_fill(node):
    # Experimental in opsets before 9; torch exports it at opset 7-8 for zero initial states.
    dtype = numpy_dtype(node.attribute("dtype", 1))
    value = node.attribute("value", 0.0)
    fixed_shape = node.attribute("shape")
    from_input = node.attribute("input_as_shape", 0)

    def run(x=None):
        if from_input:
            shape = as_ints(x)
        elif fixed_shape is not None:
            shape = tuple(fixed_shape)
        else:
            shape = np.shape(x)
        return np.full(check_allocation("ConstantFill", shape, dtype.itemsize), value, dtype)
    return run


@register("Shape", opsets=(1, MAX_OPSET))
def shape(node):
    start = node.attribute("start", 0)
    end = node.attribute("end")
    return lambda x: np.array(x.shape[start:end], np.int64)


@register("Cast", opsets=(1, MAX_OPSET))
def cast(node):
    dtype = numpy_dtype(node.attribute("to"))
    return lambda x: np.asarray(x).astype(dtype, copy=False)


# -- shapes ---------------------------------------------------------------------------------------

def _axes(axes, rank):
    return tuple(sorted(a + rank if a < 0 else a for a in axes))


@register("Squeeze", opsets=(1, 12))
def squeeze_attribute(node):
    return _squeeze_fixed(node.attribute("axes"))


@register("Squeeze", opsets=(13, MAX_OPSET))
def squeeze_input(node):
    axes = as_ints(node.constant_input(1))
    if axes is not None:
        return _squeeze_fixed(axes)  # axes known when loading (torch exports)
    return lambda x, axes=None: _squeeze(x, as_ints(axes))


def _squeeze_fixed(axes):
    """Squeeze with axes fixed at load time."""
    return _reshape_by_input_shape(lambda x: _squeeze(x, axes))


def _reshape_by_input_shape(reshape):
    """`reshape` (x -> a reshaped x) for axes fixed at load time, its output shape remembered per
    input shape so that a repeated run only reshapes."""
    shapes = {}

    def run(x, _=None):
        shape = x.shape
        result_shape = shapes.get(shape)
        if result_shape is None:
            result_shape = reshape(x).shape
            if len(shapes) < 64:
                shapes[shape] = result_shape
        return x.reshape(result_shape)
    return run


def _squeeze(x, axes):
    if axes is None:
        return np.squeeze(x)
    shape = x.shape
    rank = len(shape)
    for axis in axes:
        if shape[axis] != 1:
            raise ValueError(f"Squeeze: axis {axis} of shape {shape} is not 1")
    kept = [size for axis, size in enumerate(shape)
            if axis not in axes and axis - rank not in axes]
    return x.reshape(kept)


@register("Unsqueeze", opsets=(1, 12))
def unsqueeze_attribute(node):
    return _unsqueeze_fixed(node.attribute("axes"))


@register("Unsqueeze", opsets=(13, MAX_OPSET))
def unsqueeze_input(node):
    axes = as_ints(node.constant_input(1))
    if axes is not None:
        return _unsqueeze_fixed(axes)  # axes known when loading (torch exports)
    return lambda x, axes: _unsqueeze(x, as_ints(axes))


def _unsqueeze_fixed(axes):
    """Unsqueeze with axes fixed at load time."""
    return _reshape_by_input_shape(lambda x: _unsqueeze(x, axes))


def _unsqueeze(x, axes):
    rank = np.ndim(x) + len(axes)
    axes = _axes(axes, rank)
    shape = list(np.shape(x))
    for axis in axes:
        shape.insert(axis, 1)
    return np.reshape(x, shape)


@register("Transpose", opsets=(1, MAX_OPSET))
def transpose(node):
    perm = node.attribute("perm")
    return lambda x: x.transpose(perm)  # perm None: the axes reversed, as ONNX's default


@register("Reshape", opsets=(5, MAX_OPSET))
def reshape(node):
    allow_zero = node.attribute("allowzero", 0)
    fixed_shape = as_ints(node.constant_input(1))
    if fixed_shape is not None and (allow_zero or 0 not in fixed_shape):
        return lambda x, _: x.reshape(fixed_shape)  # shape known when loading, no 0 in it

    def run(x, shape):
        shape = list(as_ints(shape))
        if not allow_zero:
            # 0 copies the input's size along that axis.
            shape = [x.shape[axis] if size == 0 else size for axis, size in enumerate(shape)]
        return np.reshape(x, shape)
    return run


@register("Flatten", opsets=(1, MAX_OPSET))
def flatten(node):
    axis = node.attribute("axis", 1)

    def run(x):
        split = axis + x.ndim if axis < 0 else axis
        outer = int(np.prod(x.shape[:split], dtype=np.int64))
        return x.reshape(outer, -1)
    return run


@register("Concat", opsets=(1, MAX_OPSET))
def concat(node):
    axis = node.attribute("axis", 0)
    return lambda *xs: np.concatenate(xs, axis=axis)


@register("Slice", opsets=(1, 9))
def slice_attribute(node):
    starts, ends = node.attribute("starts"), node.attribute("ends")
    return _slice_fixed(starts, ends, node.attribute("axes"), None)


@register("Slice", opsets=(10, MAX_OPSET))
def slice_input(node):
    given = [node.has_input(k) for k in range(1, 5)]
    known = [as_ints(node.constant_input(k)) for k in range(1, 5)]
    if all(value is not None or not present for value, present in zip(known, given)):
        return _slice_fixed(*known)  # starts, ends, axes, steps known when loading (torch)
    return lambda x, starts, ends, axes=None, steps=None: _slice(
        x, as_ints(starts), as_ints(ends), as_ints(axes), as_ints(steps))


def _slice_fixed(starts, ends, axes, steps):
    """Slice with every bound fixed at load time; the index is remembered per input rank."""
    indices = {}

    def run(x, *_):
        index = indices.get(x.ndim)
        if index is None:
            index = indices[x.ndim] = _slice_index(x.ndim, starts, ends, axes, steps)
        return x[index]
    return run


def _slice(x, starts, ends, axes, steps):
    return x[_slice_index(x.ndim, starts, ends, axes, steps)]


def _slice_index(rank, starts, ends, axes, steps):
    axes = range(len(starts)) if axes is None else axes
    steps = (1,) * len(starts) if steps is None else steps
    index = [slice(None)] * rank
    for start, end, axis, step in zip(starts, ends, axes, steps):
        # Python slicing clamps as ONNX does, including INT64_MAX ends.
        index[axis + rank if axis < 0 else axis] = slice(start, end, step)
    return tuple(index)


@register("Gather", opsets=(1, MAX_OPSET))
def gather(node):
    axis = node.attribute("axis", 0)
    index = node.constant_input(1)
    if index is not None and index.ndim == 0 and axis >= 0:
        # One index known when loading (torch's x.shape[k], x[:, k]): a basic index, a 0-d view.
        position = (slice(None),) * axis + (int(index), Ellipsis)
        return lambda x, _: x[position]
    return lambda x, indices: np.take(x, np.asarray(indices, np.int64), axis=axis)


@register("Expand", opsets=(8, MAX_OPSET))
def expand(node):
    def run(x, shape):
        target = np.broadcast_shapes(np.shape(x), as_ints(shape))
        check_allocation("Expand", target, np.asarray(x).dtype.itemsize)
        return np.array(np.broadcast_to(x, target))
    return run


@register("Split", opsets=(1, 12))
def split_attribute(node):
    axis = node.attribute("axis", 0)
    sizes = node.attribute("split")
    count = len(node.outputs)
    return lambda x, split=None: _split(x, axis, sizes or as_ints(split), count)


@register("Split", opsets=(13, MAX_OPSET))
def split_input(node):
    axis = node.attribute("axis", 0)
    count = node.attribute("num_outputs", len(node.outputs))
    return lambda x, split=None: _split(x, axis, as_ints(split), count)


def _split(x, axis, sizes, count):
    length = x.shape[axis]
    if sizes is None:
        chunk = -(-length // count)  # ceil: the last piece may be smaller (opset 18)
        sizes = [min(chunk, length - chunk * k) for k in range(count)]
    bounds = np.cumsum(sizes)[:-1]
    return tuple(np.split(x, bounds, axis=axis))


# -- head ops -------------------------------------------------------------------------------------

@register("MatMul", opsets=(1, MAX_OPSET))
def matmul(node):
    return np.matmul


@register("Gemm", opsets=(1, MAX_OPSET))
def gemm(node):
    alpha, beta = node.attribute("alpha", 1.0), node.attribute("beta", 1.0)
    trans_a, trans_b = node.attribute("transA", 0), node.attribute("transB", 0)

    def run(a, b, c=None):
        product = (a.T if trans_a else a) @ (b.T if trans_b else b)
        if alpha != 1.0:
            product = product * product.dtype.type(alpha)
        if c is not None:
            product = product + (c if beta == 1.0 else c * c.dtype.type(beta))
        return product
    return run


def _binary(function):
    def handler(node):
        if node.opset < 7 and node.attribute("broadcast", 0):
            raise node.error("legacy broadcast with the axis attribute (opset < 7) is not "
                             "supported")
        return function
    return handler


def _divide(a, b):
    if np.asarray(a).dtype.kind in "iu":
        return (np.trunc(a / b)).astype(np.result_type(a, b))  # ONNX truncates integer division
    return np.divide(a, b)


register("Add", opsets=(1, MAX_OPSET))(_binary(np.add))
register("Sub", opsets=(1, MAX_OPSET))(_binary(np.subtract))
register("Mul", opsets=(1, MAX_OPSET))(_binary(np.multiply))
register("Div", opsets=(1, MAX_OPSET))(_binary(_divide))


_FLOAT_TYPES = (np.dtype(np.float32), np.dtype(np.float64))


def relu_array(x, out=None):
    """max(x, 0), NaN kept: a float32/float64 C-contiguous array in one Numba pass (np.maximum
    with a scalar runs several times slower), into `out` if given (may be x itself)."""
    if type(x) is np.ndarray and x.dtype in _FLOAT_TYPES and x.flags.c_contiguous:
        y = np.empty_like(x) if out is None else out
        spatial_kernels.relu(x.reshape(-1), y.reshape(-1))
        return y
    return np.maximum(x, x.dtype.type(0), out=out)


@register("Relu", opsets=(1, MAX_OPSET))
def relu(node):
    return relu_array


@register("Tanh", opsets=(1, MAX_OPSET))
def tanh(node):
    return np.tanh


# The largest x whose exp stays finite, by float size: float16, float32, float64.
_EXP_CAPS = {2: 11.0, 4: 88.0, 8: 709.0}


@register("Sigmoid", opsets=(1, MAX_OPSET))
def sigmoid(node):
    def run(x):
        # 1 / (1 + exp(-x)), -x capped below exp's overflow: for x below the cap the result is
        # under 1e-38 (float32) or 1e-307 (float64) instead of a 0 with an overflow warning.
        if type(x) is np.ndarray and x.dtype in _FLOAT_TYPES and x.flags.c_contiguous:
            y = np.empty_like(x)   # one Numba pass: four numpy calls cost more at small sizes
            kind = x.dtype.type
            spatial_kernels.sigmoid(x.reshape(-1), y.reshape(-1),
                                    kind(_EXP_CAPS[x.dtype.itemsize]))
            return y
        kind = x.dtype.type
        cap = kind(_EXP_CAPS.get(x.dtype.itemsize, 88.0))
        return kind(1) / (kind(1) + np.exp(np.minimum(-x, cap)))
    return run


def _softmax_handler(log):
    def handler(node):
        if node.opset < 13:
            # Before opset 13 the input is seen as 2-D: axes [0, axis) by [axis, rank).
            axis = node.attribute("axis", 1)

            def run(x):
                split = axis + x.ndim if axis < 0 else axis
                flat = x.reshape(int(np.prod(x.shape[:split], dtype=np.int64)), -1)
                return _softmax(flat, 1, log).reshape(x.shape)
            return run
        axis = node.attribute("axis", -1)
        return lambda x: _softmax(x, axis, log)
    return handler


def _softmax(x, axis, log):
    shifted = x - np.max(x, axis=axis, keepdims=True)
    if log:
        return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
    exp = np.exp(shifted)
    return exp / np.sum(exp, axis=axis, keepdims=True)


register("Softmax", opsets=(1, MAX_OPSET))(_softmax_handler(log=False))
register("LogSoftmax", opsets=(1, MAX_OPSET))(_softmax_handler(log=True))

