"""Shape-only chains (fastrnn.converters.onnx.shape_chain): a Shape -> Gather -> Unsqueeze ->
Concat -> Reshape chain runs once per input shape and is remembered; answers must follow the input
shape as it changes between runs, match onnxruntime, and never hand a caller an array that a
later run (or the remembered chain) shares."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import fastrnn
from onnx_cases import onnxruntime_session


def reshape_graph(with_shape_output=False):
    """y = Reshape(x, [x.shape[0] * x.shape[1], -1]) computed from Shape at run time (as torch
    exports x.flatten(0, 1)), plus, if asked, the computed shape itself as a graph output."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="the_shape"),
        helper.make_node("Gather", ["shape", "zero"], ["n"], name="take_n", axis=0),
        helper.make_node("Gather", ["shape", "one"], ["c"], name="take_c", axis=0),
        helper.make_node("Mul", ["n", "c"], ["nc"], name="times"),
        helper.make_node("Unsqueeze", ["nc", "axes"], ["nc1"], name="lift"),
        helper.make_node("Concat", ["nc1", "minus_one"], ["target"], name="join", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"], name="the_reshape"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if with_shape_output:
        outputs.append(helper.make_tensor_value_info("target", TensorProto.INT64, [2]))
    constants = {"zero": np.array(0, np.int64), "one": np.array(1, np.int64),
                 "axes": np.array([0], np.int64), "minus_one": np.array([-1], np.int64)}
    graph = helper.make_graph(
        nodes, "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", "b", "c"])], outputs,
        [numpy_helper.from_array(v, n) for n, v in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def chain_steps(session):
    return [step for step in session._graph.steps if step.op_type == "ShapeChain"]


def test_chain_is_one_step_and_follows_the_input_shape():
    model = reshape_graph()
    session, peer = fastrnn.InferenceSession(model), onnxruntime_session(model)
    (chain,) = chain_steps(session)
    assert [member.op_type for member in chain.function.members] == \
        ["Shape", "Gather", "Gather", "Mul", "Unsqueeze", "Concat"]
    rng = np.random.default_rng(0)
    for shape in [(2, 3, 4), (5, 1, 2), (2, 3, 4), (1, 6, 3), (5, 1, 2)]:
        x = rng.standard_normal(shape).astype(np.float32)
        (got,) = session.run(None, {"x": x})
        (expected,) = peer.run(None, {"x": x})
        assert got.shape == expected.shape == (shape[0] * shape[1], shape[2])
        np.testing.assert_array_equal(got, expected)


def test_remembered_shape_output_is_not_shared():
    model = reshape_graph(with_shape_output=True)
    session = fastrnn.InferenceSession(model)
    x = np.ones((2, 3, 4), np.float32)
    _, first = session.run(None, {"x": x})
    np.testing.assert_array_equal(first, [6, -1])
    first[:] = 99                      # a caller's change must not reach the remembered value
    y, second = session.run(None, {"x": x})
    np.testing.assert_array_equal(second, [6, -1])
    assert y.shape == (6, 4)
    assert not np.shares_memory(first, second)


def test_error_in_a_chain_names_its_node():
    model = reshape_graph()
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.array(5, np.int64), "one"))
    session = fastrnn.InferenceSession(model)
    with pytest.raises(ValueError, match="take_c"):
        session.run(None, {"x": np.ones((2, 3, 4), np.float32)})


def test_chain_read_before_its_last_shape_stays_unfused():
    # `early` (from Shape(x)) is read by an Add before Shape(z) runs: fusing the chain at Shape(z)
    # would leave that read empty, so the chain stays as separate steps and the answer is right.
    nodes = [
        helper.make_node("Shape", ["x"], ["sx"], name="shape_x"),
        helper.make_node("Cast", ["sx"], ["early"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Add", ["v", "early"], ["z"], name="add"),
        helper.make_node("Shape", ["z"], ["sz"], name="shape_z"),
        helper.make_node("Concat", ["sx", "sz"], ["both"], name="join", axis=0),
    ]
    graph = helper.make_graph(
        nodes, "late",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", "b"]),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("both", TensorProto.INT64, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session, peer = fastrnn.InferenceSession(model), onnxruntime_session(model)
    assert chain_steps(session) == []
    for shape in [(2, 3), (4, 5)]:
        feeds = {"x": np.zeros(shape, np.float32), "v": np.array([0.5, 1.5], np.float32)}
        for got, expected in zip(session.run(None, feeds), peer.run(None, feeds)):
            np.testing.assert_array_equal(got, expected)


def test_branch_chain_reading_an_enclosing_shape_follows_it():
    # In the branch, c = x.shape[0] + y.shape[0]: x's shape comes from the enclosing graph, so the
    # branch's chain may not be remembered by y's shape alone.
    branch = helper.make_graph(
        [helper.make_node("Shape", ["y"], ["sy"], name="shape_y"),
         helper.make_node("Gather", ["sx", "zero"], ["a"], name="take_x", axis=0),
         helper.make_node("Gather", ["sy", "zero"], ["b"], name="take_y", axis=0),
         helper.make_node("Add", ["a", "b"], ["c"], name="add")],
        "then", [], [helper.make_tensor_value_info("c", TensorProto.INT64, [])])
    other = helper.make_graph(
        [helper.make_node("Identity", ["zero"], ["d"], name="keep")], "else", [],
        [helper.make_tensor_value_info("d", TensorProto.INT64, [])])
    graph = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["sx"], name="shape_x"),
         helper.make_node("If", ["flag"], ["out"], name="choose", then_branch=branch,
                          else_branch=other)],
        "outer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a"]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.INT64, [])],
        [numpy_helper.from_array(np.array(0, np.int64), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = fastrnn.InferenceSession(model)
    y, flag = np.zeros(3, np.float32), np.array(True)
    for size in (2, 5, 2):
        (got,) = session.run(None, {"x": np.zeros(size, np.float32), "y": y, "flag": flag})
        assert int(got) == size + 3
