"""Elementwise math, comparisons, logic, reductions and activations, one node each: fastrnn against
onnxruntime, fed at run time and (for the inputs exporters make constants) with them folded."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import fastrnn
from fastrnn.converters.onnx import registry
from onnx_cases import assert_outputs_close, onnxruntime_session

rng = np.random.default_rng(3)
A = rng.standard_normal((2, 3, 4)).astype(np.float32)
B = rng.standard_normal((3, 4)).astype(np.float32)
P = np.abs(A) + np.float32(0.1)            # positive, for Sqrt, Log, Pow with fractions
D = rng.standard_normal((3, 4))            # float64
K = np.array([[1, -2, 3], [0, 5, -6]], np.int64)
MASK = A > 0
I64 = lambda *values: np.array(values, np.int64)  # noqa: E731
F32 = lambda *values: np.array(values, np.float32)  # noqa: E731
scalar = lambda value, dtype: np.array(value, dtype)  # noqa: E731

# (op, inputs, attributes, opset, number of outputs)
CASES = [
    ("Sqrt", [P], {}, 17, 1), ("Exp", [A], {}, 17, 1), ("Log", [P], {}, 17, 1),
    ("Abs", [A], {}, 17, 1), ("Abs", [K], {}, 17, 1), ("Neg", [A], {}, 17, 1),
    ("Neg", [K], {}, 17, 1), ("Reciprocal", [P], {}, 17, 1), ("Erf", [A], {}, 17, 1),
("Floor", [A], {}, 17, 1), ("Ceil", [A], {}, 17, 1),
    ("Round", [A * 2], {}, 17, 1), ("Sign", [A], {}, 17, 1), ("Sin", [A], {}, 17, 1),
    ("Cos", [A], {}, 17, 1),
    ("Pow", [A, scalar(2.0, np.float32)], {}, 17, 1),
    ("Pow", [P, scalar(0.5, np.float32)], {}, 17, 1),
    ("Pow", [P, B], {}, 17, 1),
    ("Pow", [P, scalar(3, np.int64)], {}, 17, 1),
    ("Pow", [np.abs(D) + 0.1, scalar(-1.5, np.float64)], {}, 12, 1),
    ("Pow", [K, scalar(2, np.int64)], {}, 17, 1),
    ("Clip", [A], {"min": -0.5, "max": 0.7}, 6, 1),
    ("Clip", [A], {"max": 0.2}, 6, 1),
    ("Clip", [A, scalar(-0.5, np.float32), scalar(0.5, np.float32)], {}, 13, 1),
    ("Clip", [A, scalar(-0.5, np.float32)], {}, 13, 1),
    ("Clip", [K, scalar(-1, np.int64), scalar(2, np.int64)], {}, 13, 1),
    ("Max", [A, B], {}, 17, 1), ("Max", [A, B, A[:, :1]], {}, 17, 1), ("Max", [A], {}, 17, 1),
    ("Min", [A, B], {}, 17, 1), ("Min", [K, K[:1] * 0], {}, 17, 1),
    ("Sum", [A, B, B], {}, 17, 1), ("Mean", [A, B], {}, 17, 1),
    ("Mod", [K, I64(4)], {}, 17, 1), ("Mod", [A, F32(0.7)], {"fmod": 1}, 17, 1),
    ("Where", [MASK, A, B], {}, 17, 1), ("Where", [MASK[0, 0], scalar(1.0, np.float32), A], {},
                                          17, 1),
    ("Equal", [K, I64(0, 5, 3)], {}, 17, 1), ("Equal", [A, A[:, :, :1]], {}, 17, 1),
    ("Less", [A, B], {}, 17, 1), ("Greater", [K, I64(1)], {}, 17, 1),
    ("LessOrEqual", [K, I64(3)], {}, 17, 1), ("GreaterOrEqual", [A, B], {}, 17, 1),
    ("Not", [MASK], {}, 17, 1), ("And", [MASK, MASK[:1]], {}, 17, 1),
    ("Or", [MASK, ~MASK[0]], {}, 17, 1), ("Xor", [MASK, MASK[:, :1]], {}, 17, 1),
    ("Size", [A], {}, 17, 1), ("Size", [K], {}, 17, 1),
    ("Range", [scalar(0, np.int64), scalar(7, np.int64), scalar(2, np.int64)], {}, 17, 1),
    ("Range", [scalar(5, np.int64), scalar(-3, np.int64), scalar(-3, np.int64)], {}, 17, 1),
    ("Range", [scalar(0.5, np.float32), scalar(3.0, np.float32), scalar(0.75, np.float32)], {},
     17, 1),
    ("Range", [scalar(4, np.int64), scalar(1, np.int64), scalar(1, np.int64)], {}, 17, 1),
    ("Tile", [A, I64(1, 2, 3)], {}, 17, 1), ("Tile", [K, I64(2, 1)], {}, 17, 1),
    ("LeakyRelu", [A], {}, 17, 1), ("LeakyRelu", [A], {"alpha": 0.3}, 17, 1),
    ("PRelu", [A, F32(0.1, 0.2, 0.3, 0.4)], {}, 17, 1),
    ("PRelu", [A, np.full((3, 1), 0.25, np.float32)], {}, 17, 1),
    ("Elu", [A], {}, 17, 1), ("Elu", [A], {"alpha": 0.5}, 17, 1),
    ("Selu", [A], {}, 17, 1),
    ("HardSigmoid", [A * 4], {}, 17, 1), ("HardSigmoid", [A], {"alpha": 0.5, "beta": 0.1}, 17, 1),
    ("HardSwish", [A * 4], {}, 17, 1),
    ("Softplus", [A * 30], {}, 17, 1), ("Softsign", [A], {}, 17, 1),
    ("Gelu", [A * 3], {}, 20, 1), ("Gelu", [A * 3], {"approximate": "tanh"}, 20, 1),
    ("Gelu", [D], {"approximate": "tanh"}, 20, 1),
    ("Dropout", [A], {}, 17, 1), ("Dropout", [A], {}, 17, 2),
    ("Dropout", [A, scalar(0.3, np.float32)], {}, 17, 2),
    ("Dropout", [A, scalar(0.3, np.float32), np.array(False)], {}, 17, 2),
]

REDUCTIONS = ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2",
              "ReduceL1", "ReduceSumSquare", "ReduceLogSumExp"]
for _op in REDUCTIONS:
    axes_input = 13 if _op == "ReduceSum" else 18
    CASES += [
        (_op, [A], {"axes": [1]}, axes_input - 1, 1),
        (_op, [A], {"axes": [-1, 0], "keepdims": 0}, axes_input - 1, 1),
        (_op, [A], {}, axes_input - 1, 1),
        (_op, [A, I64(2)], {}, axes_input, 1),
        (_op, [A, I64(0, -1)], {"keepdims": 0}, axes_input, 1),
        (_op, [A], {"keepdims": 0}, axes_input, 1),
        (_op, [A, I64()], {"noop_with_empty_axes": 1}, axes_input, 1),
        (_op, [A, I64()], {}, axes_input, 1),
    ]
CASES += [("ReduceLogSum", [P, I64(1)], {}, 18, 1), ("ReduceMean", [D, I64(1)], {}, 18, 1),
          ("ReduceMax", [K, I64(1)], {"keepdims": 0}, 18, 1)]

ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
        np.dtype(np.int64): TensorProto.INT64, np.dtype(bool): TensorProto.BOOL}


def single_node(op_type, inputs, attributes, opset, outputs, constant_from=None):
    """The node's graph; inputs from position `constant_from` on are initializers, not fed."""
    names = [f"in{k}" for k in range(len(inputs))]
    out_names = [f"out{k}" for k in range(outputs)]
    node = helper.make_node(op_type, names, out_names, name=f"the_{op_type.lower()}", **attributes)
    fed = len(inputs) if constant_from is None else constant_from
    graph = helper.make_graph(
        [node], "math",
        [helper.make_tensor_value_info(n, ELEM[np.asarray(v).dtype], list(np.shape(v)))
         for n, v in zip(names[:fed], inputs[:fed])],
        [helper.make_empty_tensor_value_info(n) for n in out_names],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in zip(names[fed:], inputs[fed:])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model, {n: np.asarray(v) for n, v in zip(names[:fed], inputs[:fed])}


def _tolerance(op_type, inputs):
    if op_type == "Gelu" and np.asarray(inputs[0]).dtype == np.float64:
        return 1e-7  # onnxruntime's float64 tanh Gelu is off by ~6e-9; fastrnn's is exact (below)
    if op_type in ("ReduceProd", "ReduceSumSquare", "Sum", "Softplus", "Tile"):
        return 1e-5 * max(1.0, float(np.max(np.abs(inputs[0]))) ** 2)
    return 1e-5 if np.asarray(inputs[0]).dtype != np.float64 else 1e-12


@pytest.mark.parametrize("op_type, inputs, attributes, opset, outputs", CASES,
                         ids=[f"{case[0]}-{index}" for index, case in enumerate(CASES)])
def test_op_matches_onnxruntime(op_type, inputs, attributes, opset, outputs):
    model, feeds = single_node(op_type, inputs, attributes, opset, outputs)
    theirs = onnxruntime_session(model).run(None, feeds)
    ours = fastrnn.InferenceSession(model).run(None, feeds)
    assert_outputs_close(ours, theirs, _tolerance(op_type, inputs))
    # The same node with its later inputs (exponent, axes, bounds, repeats) as initializers:
    # taken when loading, as exporters make them.
    if len(inputs) > 1 and op_type not in ("Where", "And", "Or", "Xor"):
        model, feeds = single_node(op_type, inputs, attributes, opset, outputs, constant_from=1)
        session = fastrnn.InferenceSession(model)
        for _ in range(2):
            assert_outputs_close(session.run(None, feeds), theirs, _tolerance(op_type, inputs))


def test_all_constant_node_is_folded_to_onnxruntime_answer():
    # Every input an initializer: computed once when loading, the same answer as onnxruntime's.
    model, _ = single_node("ReduceMean", [A, I64(1)], {}, 18, 1, constant_from=0)
    session = fastrnn.InferenceSession(model)
    assert session._graph.steps == []
    assert_outputs_close(session.run(None, {}), onnxruntime_session(model).run(None, {}), 1e-6)


def test_erf_in_float64_matches_math_erf():
    # onnxruntime has no float64 Erf: held to Python's own erf instead.
    import math
    x = np.linspace(-4, 4, 41)
    model, feeds = single_node("Erf", [x], {}, 17, 1)
    (got,) = fastrnn.InferenceSession(model).run(None, feeds)
    np.testing.assert_allclose(got, [math.erf(v) for v in x], rtol=1e-14, atol=1e-16)


def test_gelu_approximations_match_the_formulas_in_float64():
    x = np.linspace(-6, 6, 101)
    from scipy.special import erf
    exact = 0.5 * x * (1 + erf(x / np.sqrt(2)))
    approx = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    for attributes, expected in (({}, exact), ({"approximate": "tanh"}, approx)):
        model, feeds = single_node("Gelu", [x], attributes, 20, 1)
        (got,) = fastrnn.InferenceSession(model).run(None, feeds)
        np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("opset", [7, 10, 12, 17])
def test_dropout_mask_is_all_true_at_inference(opset):
    """The mask is all ones at inference (the ONNX spec); onnxruntime's opset 7-11 kernel gives
    all false there, so only the data output is held to onnxruntime."""
    model, feeds = single_node("Dropout", [A], {"ratio": 0.2} if opset < 12 else {}, opset, 2)
    output, mask = fastrnn.InferenceSession(model).run(None, feeds)
    np.testing.assert_array_equal(output, onnxruntime_session(model).run(None, feeds)[0])
    assert not np.shares_memory(output, feeds["in0"])
    np.testing.assert_array_equal(mask, np.ones(A.shape, bool if opset >= 10 else A.dtype))


def test_dropout_in_training_mode_is_refused_at_run_time():
    model, feeds = single_node("Dropout", [A, scalar(0.5, np.float32), np.array(True)], {}, 17, 2)
    with pytest.raises(ValueError, match="the_dropout.*training_mode is true"):
        fastrnn.InferenceSession(model).run(None, feeds)


@pytest.mark.parametrize("op_type, inputs", [
    ("Range", [scalar(0, np.int64), scalar(1 << 40, np.int64), scalar(1, np.int64)]),
    ("Tile", [A, I64(1 << 20, 1 << 20, 1)]),
    ("ConstantOfShape", [I64(1 << 20, 1 << 20)]),
    ("Expand", [A[:1, :1, :1], I64(1 << 16, 1 << 16, 1 << 4)]),
])
def test_run_time_allocations_beyond_the_limit_are_refused(op_type, inputs):
    """A few bytes of input asking for terabytes: refused before anything is allocated."""
    model, feeds = single_node(op_type, inputs, {}, 17, 1)
    session = fastrnn.InferenceSession(model)
    with pytest.raises(ValueError, match=f"the_{op_type.lower()}.*beyond the "
                                         f"{registry.MAX_RUN_BYTES:,} bytes"):
        session.run(None, feeds)


def test_range_with_zero_delta_is_an_error():
    model, feeds = single_node("Range", [scalar(0, np.int64), scalar(3, np.int64),
                                         scalar(0, np.int64)], {}, 17, 1)
    with pytest.raises(ValueError, match="the_range.*delta must not be 0"):
        fastrnn.InferenceSession(model).run(None, feeds)
