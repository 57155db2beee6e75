"""Register tiles for the products: a 32-byte vector of float32 (8 lanes) or float64 (4) as a
value in jitted code, with loads, stores and fused multiply-adds.

Numba vectorises loops, not register tiles: a product written as loops keeps its partial sums in
memory, so every few rows of the reduction cost a load and a store of every output element, and
the setup of each short loop. With these values a kernel holds a tile of outputs in registers
across the whole reduction: the ONNX convolutions' products (fastrnn.converters.onnx.
spatial_kernels: grouped_product, narrow_tiles). One fused multiply-add per term, in the order
of the reduction. (Tried and dropped: the recurrent cells' one-row product, add_products in
fastrnn.engine.flat. Alone in a loop a tile was 20-50% faster at 16 x 64 to 32 x 128, but inside
a streaming LSTM step, where each step waits on the last, paired runs showed no difference; tried
again on an AVX2 Zen 3 as a tile rounding as add_products does, bit for bit, it was no faster
inside a NAM LSTM-16/24 stream and 1.4x slower at H=64.)

    lanes(array)                 the lane count for array's dtype (a compile-time constant)
    splat(s)                     a vector of lanes copies of the scalar s
    load(array, i)               array[i : i + lanes] as a vector (1-D array, no bounds check)
    store(array, i, v)           array[i : i + lanes] = v
    fma(v, s, acc)               acc + v * s, fused, s a scalar of the same dtype

32 bytes is AVX2's register, which x86-64 CPUs of the last decade have; LLVM splits or widens the
vectors on other targets. The indexes are trusted: callers keep i + lanes <= len(array).
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

VECTOR_BYTES = 32


class Lanes(types.Type):
    """The type of a vector of VECTOR_BYTES of float32 or float64 values in jitted code."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.count = VECTOR_BYTES // (dtype.bitwidth // 8)
        super().__init__(name=f"Lanes({dtype}x{self.count})")


@register_model(Lanes)
class _LanesModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        scalar = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(scalar, fe_type.count))


def _float_array(array):
    return isinstance(array, types.Array) and array.ndim == 1 and \
        isinstance(array.dtype, types.Float)


def _splat(builder, vector_type, scalar):
    count = vector_type.count
    single = builder.insert_element(ir.Constant(vector_type, ir.Undefined), scalar,
                                    ir.Constant(ir.IntType(32), 0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), count), [0] * count)
    return builder.shuffle_vector(single, ir.Constant(vector_type, ir.Undefined), mask)


def _pointer(context, builder, array_type, array, index):
    """A pointer to array[index], cast to a pointer to a vector."""
    data = context.make_array(array_type)(context, builder, array).data
    element = builder.gep(data, [index])
    vector = context.get_value_type(Lanes(array_type.dtype))
    return builder.bitcast(element, vector.as_pointer())


@intrinsic
def lanes(typingctx, array):
    if not isinstance(array, types.Array) or not isinstance(array.dtype, types.Float):
        return None
    count = Lanes(array.dtype).count

    def codegen(context, builder, signature, arguments):
        return context.get_constant(types.intp, count)
    return types.intp(array), codegen


@intrinsic
def splat(typingctx, scalar):
    if not isinstance(scalar, types.Float):
        return None

    def codegen(context, builder, signature, arguments):
        return _splat(builder, context.get_value_type(signature.return_type), arguments[0])
    return Lanes(scalar)(scalar), codegen


@intrinsic
def load(typingctx, array, index):
    if not _float_array(array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, arguments):
        array_type, index_type = signature.args
        at = context.cast(builder, arguments[1], index_type, types.intp)
        pointer = _pointer(context, builder, array_type, arguments[0], at)
        return builder.load(pointer, align=array_type.dtype.bitwidth // 8)
    return Lanes(array.dtype)(array, index), codegen


@intrinsic
def store(typingctx, array, index, vector):
    if not _float_array(array) or not isinstance(index, types.Integer) or \
            vector != Lanes(array.dtype):
        return None

    def codegen(context, builder, signature, arguments):
        array_type, index_type, _ = signature.args
        at = context.cast(builder, arguments[1], index_type, types.intp)
        pointer = _pointer(context, builder, array_type, arguments[0], at)
        builder.store(arguments[2], pointer, align=array_type.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.none(array, index, vector), codegen


@intrinsic
def fma(typingctx, vector, scale, accumulator):
    if not isinstance(vector, Lanes) or accumulator != vector or scale != vector.dtype:
        return None

    def codegen(context, builder, signature, arguments):
        vector_value, scalar, total = arguments
        vector_type = vector_value.type
        splat = _splat(builder, vector_type, scalar)
        scalar_name = "f32" if vector.dtype.bitwidth == 32 else "f64"
        fused = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector_type, [vector_type] * 3),
            f"llvm.fma.v{vector.count}{scalar_name}")
        return builder.call(fused, [vector_value, splat, total])
    return vector(vector, scale, accumulator), codegen

