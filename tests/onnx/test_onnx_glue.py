"""The glue and head ops, one node each, fed at run time (so nothing is folded): fastrnn against
onnxruntime."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import fastrnn
from onnx_cases import assert_outputs_close, onnxruntime_session

rng = np.random.default_rng(0)
A = rng.standard_normal((2, 3, 4)).astype(np.float32)
M = rng.standard_normal((4, 5)).astype(np.float32)
I64 = lambda *values: np.array(values, np.int64)  # noqa: E731

# (op, inputs (name -> array), attributes, opset, number of outputs)
CASES = [
    ("Identity", [A], {}, 17, 1),
    ("Squeeze", [A[:, :1]], {"axes": [1]}, 11, 1),
    ("Squeeze", [A[:, :1], I64(-2)], {}, 17, 1),
    ("Unsqueeze", [A], {"axes": [0, -1]}, 11, 1),
    ("Unsqueeze", [A, I64(1)], {}, 17, 1),
    ("Transpose", [A], {"perm": [2, 0, 1]}, 17, 1),
    ("Transpose", [A], {}, 17, 1),
    ("Reshape", [A, I64(0, -1)], {}, 17, 1),
    ("Reshape", [A, I64(4, 0, 2)], {}, 17, 1),
    ("Flatten", [A], {"axis": 2}, 17, 1),
    ("Concat", [A, A[:, :2]], {"axis": 1}, 17, 1),
    ("Slice", [A], {"starts": [1], "ends": [100], "axes": [2]}, 9, 1),
    ("Slice", [A, I64(0, -1), I64(2, -4), I64(1, 2), I64(1, -1)], {}, 17, 1),
    ("Gather", [A, I64(2, 0)], {"axis": 1}, 17, 1),
    ("Gather", [A, np.array(-1, np.int64)], {"axis": 2}, 17, 1),
    ("Shape", [A], {}, 17, 1),
    ("Shape", [A], {"start": 1}, 17, 1),
    ("Cast", [A], {"to": TensorProto.INT64}, 17, 1),
    ("Cast", [I64(3, -2)], {"to": TensorProto.FLOAT}, 17, 1),
    ("ConstantOfShape", [I64(2, 3)],
     {"value": numpy_helper.from_array(np.array([1.5], np.float32))}, 17, 1),
    ("ConstantOfShape", [I64(3)], {}, 17, 1),
    ("Expand", [A[:, :1], I64(2, 3, 4)], {}, 17, 1),
    ("Expand", [A, I64(3, 1, 1, 1)], {}, 17, 1),
    ("Split", [A], {"axis": 2}, 11, 2),
    ("Split", [A], {"axis": 2, "split": [1, 3]}, 11, 2),
    ("Split", [A, I64(2, 2)], {"axis": 2}, 17, 2),
    ("Split", [A[:, :, :3]], {"axis": 2, "num_outputs": 2}, 18, 2),
    ("MatMul", [A, M], {}, 17, 1),
    ("Gemm", [A[0], M, M[0]], {"alpha": 0.5, "beta": 2.0}, 17, 1),
    ("Gemm", [A[0].T.copy(), M.T.copy()], {"transA": 1, "transB": 1}, 17, 1),
    ("Add", [A, A[0, 0]], {}, 17, 1),
    ("Sub", [A, A[:, :1]], {}, 17, 1),
    ("Mul", [A, np.float32(3.0) * np.ones((4,), np.float32)], {}, 17, 1),
    ("Div", [A, np.full((1, 4), 2.5, np.float32)], {}, 17, 1),
    ("Div", [I64(7, -7, 6), I64(2, 2, -4)], {}, 17, 1),
    ("Relu", [A], {}, 17, 1),
    ("Tanh", [A], {}, 17, 1),
    ("Sigmoid", [A], {}, 17, 1),
    ("Softmax", [A], {}, 17, 1),
    ("Softmax", [A], {"axis": 1}, 11, 1),
    ("LogSoftmax", [A], {"axis": 1}, 17, 1),
    ("LogSoftmax", [A], {}, 11, 1),
]

ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64}


def single_node(op_type, inputs, attributes, opset, outputs, constant_from=None):
    """The node's graph; inputs from position `constant_from` on are initializers, not fed."""
    names = [f"in{k}" for k in range(len(inputs))]
    out_names = [f"out{k}" for k in range(outputs)]
    node = helper.make_node(op_type, names, out_names, name=f"the_{op_type.lower()}", **attributes)
    fed = len(inputs) if constant_from is None else constant_from
    shapes = [list(np.shape(v)) for v in inputs[:fed]]
    if constant_from is not None and shapes[0]:
        shapes[0][0] = "n"  # the leading size left open: runs may feed others
    graph = helper.make_graph(
        [node], "glue",
        [helper.make_tensor_value_info(n, ELEM[np.asarray(v).dtype], shape)
         for n, v, shape in zip(names[:fed], inputs[:fed], shapes)],
        [helper.make_empty_tensor_value_info(n) for n in out_names],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in zip(names[fed:], inputs[fed:])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model, {n: np.asarray(v) for n, v in zip(names[:fed], inputs[:fed])}


@pytest.mark.parametrize("op_type, inputs, attributes, opset, outputs", CASES,
                         ids=[f"{case[0]}-{index}" for index, case in enumerate(CASES)])
def test_op_matches_onnxruntime(op_type, inputs, attributes, opset, outputs):
    model, feeds = single_node(op_type, inputs, attributes, opset, outputs)
    ours = fastrnn.InferenceSession(model).run(None, feeds)
    theirs = onnxruntime_session(model).run(None, feeds)
    assert_outputs_close(ours, theirs, 1e-6)


# Ops whose later inputs (axes, shape, bounds) torch exports as constants: taken when loading.
CONSTANT_INPUT_CASES = [case for case in CASES if len(case[1]) > 1 and
                        case[0] in ("Squeeze", "Unsqueeze", "Reshape", "Slice", "Split", "Gather",
                                    "Expand")]


@pytest.mark.parametrize("op_type, inputs, attributes, opset, outputs", CONSTANT_INPUT_CASES,
                         ids=[f"{case[0]}-{index}" for index, case in
                              enumerate(CONSTANT_INPUT_CASES)])
def test_op_with_constant_inputs_matches_onnxruntime(op_type, inputs, attributes, opset,
                                                      outputs):
    model, feeds = single_node(op_type, inputs, attributes, opset, outputs, constant_from=1)
    session = fastrnn.InferenceSession(model)
    theirs = onnxruntime_session(model).run(None, feeds)
    for _ in range(2):  # the second run takes what the first remembered
        assert_outputs_close(session.run(None, feeds), theirs, 1e-6)
    if op_type in ("Squeeze", "Unsqueeze", "Slice", "Gather", "Split"):
        other = {"in0": np.concatenate([feeds["in0"]] * 2)}  # another shape, remembered apart
        assert_outputs_close(session.run(None, other),
                             onnxruntime_session(model).run(None, other), 1e-6)


def test_folded_constants_are_not_handed_out():
    # An output computed from initializers alone is folded at load; callers get copies of it.
    weights = numpy_helper.from_array(M, "weights")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [5])
    node = helper.make_node("Transpose", ["weights"], ["folded"])
    add = helper.make_node("Add", ["x", "x"], ["twice"])
    graph = helper.make_graph([node, add], "g", [x],
                              [helper.make_tensor_value_info("folded", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("twice", TensorProto.FLOAT, None)],
                              [weights])
    session = fastrnn.InferenceSession(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    folded, _ = session.run(None, {"x": M[0]})
    folded[:] = 0
    again, _ = session.run(None, {"x": M[0]})
    np.testing.assert_array_equal(again, M.T)


def _constant_graph(kind):
    """A graph whose output "out" is known when loading, made as `kind`; and a runtime output."""
    first, second = (numpy_helper.from_array(value, name) for value, name in
                     ((M, "m"), (np.ones_like(M), "ones")))
    nodes = {
        "Add of initializers": [helper.make_node("Add", ["m", "ones"], ["out"])],
        "ConstantOfShape": [helper.make_node("ConstantOfShape", ["shape"], ["out"],
                                             value=numpy_helper.from_array(
                                                 np.array([1.5], np.float32)))],
        "Constant": [helper.make_node("Constant", [], ["out"],
                                      value=numpy_helper.from_array(M))],
        "Identity of a Constant": [helper.make_node("Constant", [], ["k"],
                                                    value=numpy_helper.from_array(M)),
                                   helper.make_node("Identity", ["k"], ["out"])],
    }[kind]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [5])
    nodes.append(helper.make_node("Relu", ["x"], ["relu"]))
    graph = helper.make_graph(
        nodes, "g", [x], [helper.make_tensor_value_info("out", TensorProto.FLOAT, None),
                          helper.make_tensor_value_info("relu", TensorProto.FLOAT, None)],
        [first, second, numpy_helper.from_array(I64(2, 3), "shape")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("kind", ["Add of initializers", "ConstantOfShape", "Constant",
                                  "Identity of a Constant"])
def test_folded_outputs_are_fresh_writable_arrays(kind):
    """These came back as the session's own array (an edit reached the next run) or read-only."""
    model = _constant_graph(kind)
    session = fastrnn.InferenceSession(model)
    feeds = {"x": M[0]}
    expected = onnxruntime_session(model).run(None, feeds)
    for names in (None, ["out"]):
        first = session.run(names, feeds)[0]
        assert first.flags.writeable
        np.testing.assert_array_equal(first, expected[0])
        first[...] = -999
        np.testing.assert_array_equal(session.run(names, feeds)[0], expected[0])


def test_outputs_that_view_one_another_are_separate_arrays():
    """y and a Reshape of y are two outputs, as y asked for twice is: each its own array."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 5])
    nodes = [helper.make_node("Relu", ["x"], ["y"]),
             helper.make_node("Reshape", ["y", "flat"], ["z"])]
    graph = helper.make_graph(nodes, "g", [x], [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in "yz"],
        [numpy_helper.from_array(I64(-1), "flat")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = fastrnn.InferenceSession(model)
    feeds = {"x": M}
    assert_outputs_close(session.run(None, feeds), onnxruntime_session(model).run(None, feeds))
    for names in (None, ["y", "z"], ["z", "y"], ["y", "y"]):
        outputs = session.run(names, feeds)
        assert not np.shares_memory(outputs[0], outputs[1]), names
