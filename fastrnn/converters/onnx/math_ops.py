"""Elementwise math, comparisons, logic, reductions and activations, in plain numpy.

Each handler follows the ONNX operator of the same name for the opsets it is registered for and
keeps the input's dtype as ONNX does (a float32 tensor stays float32: constants are made in the
input's dtype, never promoted to float64). Attributes and inputs known when loading (a reduction's
axes, a Clip's bounds, a Pow's exponent) are read once, at load time; a run only computes.

Sizes a graph computes at run time (Range's length, Tile's repeats) are checked against
registry.MAX_RUN_BYTES before anything is allocated.
"""

import numpy as np

from fastrnn.converters.onnx.glue import MAX_OPSET
from fastrnn.converters.onnx.registry import as_ints, check_allocation, register


def _register_unary(op_type, first_opset, make):
    """Register `make(node)` -> run(x) for op_type from first_opset on."""
    register(op_type, opsets=(first_opset, MAX_OPSET))(make)


# -- elementwise math ----------------------------------------------------------------------------

_register_unary("Sqrt", 1, lambda node: np.sqrt)
_register_unary("Exp", 1, lambda node: np.exp)
_register_unary("Log", 1, lambda node: np.log)
_register_unary("Abs", 1, lambda node: np.abs)
_register_unary("Neg", 1, lambda node: np.negative)
_register_unary("Floor", 1, lambda node: np.floor)
_register_unary("Ceil", 1, lambda node: np.ceil)
_register_unary("Round", 11, lambda node: np.round)   # half to even, as ONNX's
_register_unary("Sign", 9, lambda node: np.sign)
_register_unary("Sin", 7, lambda node: np.sin)
_register_unary("Cos", 7, lambda node: np.cos)


@register("Reciprocal", opsets=(1, MAX_OPSET))
def reciprocal(node):
    return lambda x: np.reciprocal(x) if x.dtype.kind == "f" else x.dtype.type(1) // x


@register("Erf", opsets=(9, MAX_OPSET))
def erf(node):
    from scipy.special import erf as scipy_erf  # imported when a graph has an Erf, not before

    return lambda x: scipy_erf(x).astype(x.dtype, copy=False)


@register("Pow", opsets=(1, MAX_OPSET))
def power(node):
    """Pow(X, Y) = X ** Y, of X's dtype (from opset 12, Y may be of another numeric type)."""
    exponent = node.constant_input(1)
    if exponent is not None and exponent.size == 1 and exponent.reshape(-1)[0] == 2:
        # The square of torch's norms and variances: one product, no pow.
        return lambda x, _: x * x
    if exponent is not None and exponent.size == 1 and exponent.reshape(-1)[0] == 0.5:
        return lambda x, _: np.sqrt(x) if x.dtype.kind == "f" else _power(x, _)

    return _power


def _power(x, y):
    if x.dtype.kind == "f":
        return np.power(x, np.asarray(y).astype(x.dtype, copy=False))
    if np.asarray(y).dtype.kind == "f":
        return np.power(x.astype(np.float64), y).astype(x.dtype)
    return np.power(x, np.asarray(y).astype(x.dtype, copy=False))


@register("Clip", opsets=(1, 10))
def clip_attribute(node):
    low, high = node.attribute("min"), node.attribute("max")

    def run(x):
        return _clip(x, None if low is None else x.dtype.type(low),
                     None if high is None else x.dtype.type(high))
    return run


@register("Clip", opsets=(11, MAX_OPSET))
def clip_input(node):
    def run(x, low=None, high=None):
        return _clip(x, None if low is None else np.asarray(low).astype(x.dtype),
                     None if high is None else np.asarray(high).astype(x.dtype))
    return run


def _clip(x, low, high):
    # ONNX: min(max(x, low), high), so low > high gives high everywhere (np.clip would too).
    if low is not None:
        x = np.maximum(x, low)
    if high is not None:
        x = np.minimum(x, high)
    return x if low is not None or high is not None else x.copy()


def _variadic(function):
    def handler(node):
        def run(*xs):
            result = xs[0]
            for x in xs[1:]:
                result = function(result, x)
            return result if len(xs) > 1 else result.copy()
        return run
    return handler


register("Max", opsets=(1, MAX_OPSET))(_variadic(np.maximum))
register("Min", opsets=(1, MAX_OPSET))(_variadic(np.minimum))
register("Sum", opsets=(1, MAX_OPSET))(_variadic(np.add))


@register("Mean", opsets=(1, MAX_OPSET))
def mean(node):
    add = _variadic(np.add)(node)
    return lambda *xs: (add(*xs) / xs[0].dtype.type(len(xs))).astype(xs[0].dtype, copy=False)


@register("Mod", opsets=(10, MAX_OPSET))
def mod(node):
    if node.attribute("fmod", 0):
        return np.fmod          # the sign of the dividend, as C's fmod
    return np.mod               # the sign of the divisor, as Python's %


# -- comparisons and logic -----------------------------------------------------------------------

register("Equal", opsets=(1, MAX_OPSET))(lambda node: np.equal)
register("Less", opsets=(1, MAX_OPSET))(lambda node: np.less)
register("Greater", opsets=(1, MAX_OPSET))(lambda node: np.greater)
register("LessOrEqual", opsets=(12, MAX_OPSET))(lambda node: np.less_equal)
register("GreaterOrEqual", opsets=(12, MAX_OPSET))(lambda node: np.greater_equal)
register("Not", opsets=(1, MAX_OPSET))(lambda node: np.logical_not)
register("And", opsets=(1, MAX_OPSET))(lambda node: np.logical_and)
register("Or", opsets=(1, MAX_OPSET))(lambda node: np.logical_or)
register("Xor", opsets=(1, MAX_OPSET))(lambda node: np.logical_xor)


@register("Where", opsets=(9, MAX_OPSET))
def where(node):
    return np.where


# -- shapes and sizes ----------------------------------------------------------------------------

@register("Size", opsets=(1, MAX_OPSET))
def size(node):
    return lambda x: np.array(np.size(x), np.int64)


@register("Range", opsets=(11, MAX_OPSET))
def range_(node):
    """Range(start, limit, delta): start + k * delta for k in 0 .. max(ceil((limit - start) /
    delta), 0) - 1, of start's dtype."""
    def run(start, limit, delta):
        start, limit, delta = (np.asarray(v).reshape(()) for v in (start, limit, delta))
        dtype = start.dtype
        if delta == 0:
            raise ValueError("Range: delta must not be 0")
        if dtype.kind == "f":
            count = int(max(np.ceil((float(limit) - float(start)) / float(delta)), 0))
        else:
            span, step = int(limit) - int(start), int(delta)
            count = max(-(-span // step), 0)
        (count,) = check_allocation("Range", (count,), dtype.itemsize)
        if dtype.kind == "f":
            return (start + np.arange(count, dtype=dtype) * delta).astype(dtype, copy=False)
        return np.arange(int(start), int(start) + count * int(delta), int(delta), dtype=dtype)
    return run


@register("Tile", opsets=(6, MAX_OPSET))
def tile(node):
    def run(x, repeats):
        repeats = as_ints(repeats)
        if len(repeats) != x.ndim:
            raise ValueError(f"Tile: repeats has {len(repeats)} entries, the input rank "
                             f"{x.ndim}")
        check_allocation("Tile", [size * count for size, count in zip(x.shape, repeats)],
                         x.dtype.itemsize)
        return np.tile(x, repeats)
    return run


# -- reductions ----------------------------------------------------------------------------------

def _reduction(reduce, axes_input_from):
    """A Reduce* handler: axes an attribute before opset `axes_input_from`, the optional second
    input from it on (with noop_with_empty_axes); keepdims either way."""
    def handler(node):
        keepdims = bool(node.attribute("keepdims", 1))
        if node.opset < axes_input_from:
            fixed = node.attribute("axes")
            fixed = tuple(fixed) if fixed else None   # none or empty: every axis
            return lambda x: reduce(x, fixed, keepdims)
        # Empty axes with noop_with_empty_axes reduce over no axis: what is applied to each
        # element still is (ReduceL1 gives |x|, ReduceSumSquare x * x), as onnxruntime does.
        empty = () if node.attribute("noop_with_empty_axes", 0) else None
        if not node.has_input(1):
            return lambda x: reduce(x, empty, keepdims)
        fixed = as_ints(node.constant_input(1))
        if fixed is not None:
            fixed = fixed or empty
            return lambda x, _: reduce(x, fixed, keepdims)

        def run(x, axes=None):
            return reduce(x, as_ints(axes) or empty, keepdims)
        return run
    return handler


def _reducer(function):
    def reduce(x, axes, keepdims):
        return np.asarray(function(x, axis=axes, keepdims=keepdims)).astype(x.dtype, copy=False)
    return reduce


def _mean(x, axis, keepdims):
    # The sum over the count, in the input's dtype: np.mean's own bookkeeping costs more than
    # the sum on the small tensors of a streaming graph.
    total = np.add.reduce(x, axis=axis, keepdims=keepdims)
    count = x.size // max(np.size(total), 1) if x.size else 0
    return total / x.dtype.type(count) if x.dtype.kind == "f" else total // count


def _l2(x, axis, keepdims):
    return np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims))


def _l1(x, axis, keepdims):
    return np.sum(np.abs(x), axis=axis, keepdims=keepdims)


def _sum_square(x, axis, keepdims):
    return np.sum(x * x, axis=axis, keepdims=keepdims)


def _log_sum(x, axis, keepdims):
    return np.log(np.sum(x, axis=axis, keepdims=keepdims))


def _log_sum_exp(x, axis, keepdims):
    # Shifted by the maximum so that exp cannot overflow; an all -inf slice stays -inf.
    top = np.max(x, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, np.zeros_like(top))
    result = np.log(np.sum(np.exp(x - top), axis=axis, keepdims=True)) + top
    return result if keepdims else np.squeeze(result, axis=axis if axis is not None else None)


for _op_type, _function in (("ReduceSum", np.sum), ("ReduceMean", _mean), ("ReduceMax", np.max),
                            ("ReduceMin", np.min), ("ReduceProd", np.prod), ("ReduceL2", _l2),
                            ("ReduceL1", _l1), ("ReduceSumSquare", _sum_square),
                            ("ReduceLogSum", _log_sum), ("ReduceLogSumExp", _log_sum_exp)):
    # ReduceSum took its axes as an input from opset 13, the others from opset 18.
    register(_op_type, opsets=(1, MAX_OPSET))(
        _reduction(_reducer(_function), 13 if _op_type == "ReduceSum" else 18))


# -- activations ---------------------------------------------------------------------------------

@register("LeakyRelu", opsets=(1, MAX_OPSET))
def leaky_relu(node):
    alpha = node.attribute("alpha", 0.01)
    return lambda x: np.where(x >= 0, x, x * x.dtype.type(alpha))


@register("PRelu", opsets=(1, MAX_OPSET))
def prelu(node):
    return lambda x, slope: np.where(x >= 0, x, x * slope).astype(x.dtype, copy=False)


@register("Elu", opsets=(1, MAX_OPSET))
def elu(node):
    alpha = node.attribute("alpha", 1.0)
    return lambda x: np.where(x >= 0, x, x.dtype.type(alpha) * np.expm1(np.minimum(x, 0)))


@register("Selu", opsets=(1, MAX_OPSET))
def selu(node):
    alpha = node.attribute("alpha", 1.67326319217681884765625)
    gamma = node.attribute("gamma", 1.05070102214813232421875)

    def run(x):
        kind = x.dtype.type
        return kind(gamma) * np.where(x > 0, x, kind(alpha) * np.expm1(np.minimum(x, 0)))
    return run


@register("HardSigmoid", opsets=(1, MAX_OPSET))
def hard_sigmoid(node):
    alpha, beta = node.attribute("alpha", 0.2), node.attribute("beta", 0.5)

    def run(x):
        kind = x.dtype.type
        return np.clip(x * kind(alpha) + kind(beta), kind(0), kind(1))
    return run


@register("HardSwish", opsets=(14, MAX_OPSET))
def hard_swish(node):
    def run(x):
        kind = x.dtype.type
        return x * np.clip(x * kind(1 / 6) + kind(0.5), kind(0), kind(1))
    return run


@register("Softplus", opsets=(1, MAX_OPSET))
def softplus(node):
    # log(1 + exp(x)) as logaddexp(0, x): no overflow for large x.
    return lambda x: np.logaddexp(x.dtype.type(0), x)


@register("Softsign", opsets=(1, MAX_OPSET))
def softsign(node):
    return lambda x: x / (x.dtype.type(1) + np.abs(x))


@register("Gelu", opsets=(20, MAX_OPSET))
def gelu(node):
    """Gelu: 0.5 x (1 + erf(x / sqrt 2)), or with approximate="tanh"
    0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))."""
    approximate = node.attribute("approximate", "none")
    if approximate == "tanh":
        def run(x):
            kind = x.dtype.type
            inner = kind(np.sqrt(2 / np.pi)) * (x + kind(0.044715) * x * x * x)
            return kind(0.5) * x * (kind(1) + np.tanh(inner))
        return run
    if approximate != "none":
        raise node.error(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    from scipy.special import erf as scipy_erf

    def run(x):
        kind = x.dtype.type
        return (kind(0.5) * x * (kind(1) + scipy_erf(x * kind(np.sqrt(0.5))))).astype(
            x.dtype, copy=False)
    return run


@register("Dropout", opsets=(1, MAX_OPSET))
def dropout(node):
    """Dropout at inference: the input as it is; the mask, if asked for, all true (all ones
    before opset 10). A graph that asks for training mode at run time is refused."""
    wants_mask = len(node.outputs) > 1 and node.outputs[1] != ""
    bool_mask = node.opset >= 10

    def run(x, ratio=None, training_mode=None):
        if training_mode is not None and bool(np.asarray(training_mode).reshape(-1)[0]):
            raise ValueError("Dropout: training_mode is true; fastrnn runs inference only")
        if not wants_mask:
            return x
        mask = np.ones(x.shape, bool if bool_mask else x.dtype)
        return x, mask
    return run
