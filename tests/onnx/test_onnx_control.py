"""If (both branches planned when loading, reading the enclosing graph's values) against
onnxruntime, and the one load error that lists every op fastrnn cannot run."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import fastrnn
from onnx_cases import assert_outputs_close, onnxruntime_session

FLOAT, BOOL, INT64 = TensorProto.FLOAT, TensorProto.BOOL, TensorProto.INT64
rng = np.random.default_rng(5)
X = rng.standard_normal((2, 3)).astype(np.float32)


def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "control", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _branch(name, nodes, outputs, initializers=()):
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(o, FLOAT, None)
                                               for o in outputs], list(initializers))


def _if_model():
    """y = If(sum(x) > limit): then x * w + 1 (an outer initializer and a branch initializer),
    else Relu(x) - x; plus a nested If in the else branch on the flag input."""
    then_branch = _branch("then", [
        helper.make_node("Mul", ["x", "w"], ["then_mul"], name="then_mul"),
        helper.make_node("Add", ["then_mul", "one"], ["then_y"], name="then_add"),
        helper.make_node("Identity", ["x"], ["then_x"], name="then_x")],
        ["then_y", "then_x"], [numpy_helper.from_array(np.float32(1.0).reshape(()), "one")])
    inner_then = _branch("inner_then", [helper.make_node("Neg", ["x"], ["inner_y"], name="neg")],
                         ["inner_y"])
    inner_else = _branch("inner_else", [helper.make_node("Exp", ["x"], ["inner_e"], name="exp")],
                         ["inner_e"])
    else_branch = _branch("else", [
        helper.make_node("Relu", ["x"], ["else_relu"], name="else_relu"),
        helper.make_node("If", ["flag"], ["nested"], name="nested_if",
                         then_branch=inner_then, else_branch=inner_else),
        helper.make_node("Sub", ["else_relu", "nested"], ["else_y"], name="else_sub"),
        helper.make_node("Constant", [], ["else_k"], name="else_k",
                         value=numpy_helper.from_array(np.full((2, 3), 7, np.float32)))],
        ["else_y", "else_k"])
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0, name="total"),
        helper.make_node("Greater", ["total", "limit"], ["cond"], name="cond"),
        helper.make_node("If", ["cond"], ["y", "z"], name="the_if", then_branch=then_branch,
                         else_branch=else_branch),
        helper.make_node("Mul", ["y", "z"], ["yz"], name="product")]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", FLOAT, [2, 3]),
         helper.make_tensor_value_info("limit", FLOAT, []),
         helper.make_tensor_value_info("flag", BOOL, [])],
        [helper.make_tensor_value_info(name, FLOAT, None) for name in ("y", "z", "yz")],
        [numpy_helper.from_array(np.arange(3, dtype=np.float32), "w")])


@pytest.mark.parametrize("limit, flag", [(-100.0, False), (100.0, True), (100.0, False)])
def test_if_branches_match_onnxruntime(limit, flag):
    model = _if_model()
    session = fastrnn.InferenceSession(model)
    feeds = {"x": X, "limit": np.array(limit, np.float32), "flag": np.array(flag)}
    expected = onnxruntime_session(model).run(None, feeds)
    for _ in range(2):
        outputs = session.run(None, feeds)
        assert_outputs_close(outputs, expected, 1e-6)
    # A branch output that is an enclosing value or a constant is still a fresh array.
    outputs[0][...] = 0
    outputs[1][...] = 0
    assert_outputs_close(session.run(None, feeds), expected, 1e-6)
    assert not np.shares_memory(outputs[1], X)


def test_if_is_one_step_with_its_branches_planned_inside():
    session = fastrnn.InferenceSession(_if_model())
    steps = session._graph.steps
    assert [step.op_type for step in steps] == ["ReduceSum", "Greater", "If", "Mul"]
    branch = steps[2].function
    # The Identity is no step: its output is read from the enclosing input's own slot.
    assert [s.op_type for s in branch.then_branch.steps] == ["Mul", "Add"]
    assert branch.then_branch.outputs[1] == (session._graph.slots["x"], None)
    # The else branch's Constant was folded; its nested If is one step of that branch.
    assert [s.op_type for s in branch.else_branch.steps] == ["Relu", "If", "Sub"]
    assert branch.else_branch.outputs[1][0] is None


def test_an_error_in_a_branch_names_the_branch_node():
    then_branch = _branch("then", [helper.make_node("Reshape", ["x", "bad_shape"], ["r"],
                                                    name="bad_reshape")], ["r"])
    else_branch = _branch("else", [helper.make_node("Identity", ["x"], ["i"], name="ok")], ["i"])
    model = _model(
        [helper.make_node("If", ["cond"], ["y"], name="the_if", then_branch=then_branch,
                          else_branch=else_branch)],
        [helper.make_tensor_value_info("x", FLOAT, [2, 3]),
         helper.make_tensor_value_info("cond", BOOL, []),
         helper.make_tensor_value_info("bad_shape", INT64, [1])],
        [helper.make_tensor_value_info("y", FLOAT, None)])
    session = fastrnn.InferenceSession(model)
    feeds = {"x": X, "bad_shape": np.array([5], np.int64)}
    np.testing.assert_array_equal(session.run(None, {**feeds, "cond": np.array(False)})[0], X)
    with pytest.raises(ValueError, match="'bad_reshape'.*the_if.*then_branch"):
        session.run(None, {**feeds, "cond": np.array(True)})


def test_a_branch_that_cannot_be_folded_loads_and_fails_only_when_taken():
    """A constant Reshape that fails in the branch not taken must not refuse the graph."""
    then_branch = _branch("then", [helper.make_node("Reshape", ["w", "bad"], ["r"],
                                                    name="folds_badly")], ["r"],
                          [numpy_helper.from_array(np.array([7], np.int64), "bad")])
    else_branch = _branch("else", [helper.make_node("Add", ["x", "w"], ["s"], name="add")], ["s"])
    model = _model(
        [helper.make_node("If", ["cond"], ["y"], name="the_if", then_branch=then_branch,
                          else_branch=else_branch)],
        [helper.make_tensor_value_info("x", FLOAT, [2, 3]),
         helper.make_tensor_value_info("cond", BOOL, [])],
        [helper.make_tensor_value_info("y", FLOAT, None)],
        [numpy_helper.from_array(np.arange(3, dtype=np.float32), "w")])
    session = fastrnn.InferenceSession(model)
    feeds = {"x": X, "cond": np.array(False)}
    assert_outputs_close(session.run(None, feeds), onnxruntime_session(model).run(None, feeds))
    with pytest.raises(ValueError, match="folds_badly"):
        session.run(None, {"x": X, "cond": np.array(True)})


def test_cond_must_be_one_element():
    then_branch = _branch("then", [helper.make_node("Identity", ["x"], ["a"])], ["a"])
    else_branch = _branch("else", [helper.make_node("Neg", ["x"], ["b"])], ["b"])
    model = _model([helper.make_node("If", ["cond"], ["y"], name="the_if",
                                     then_branch=then_branch, else_branch=else_branch)],
                   [helper.make_tensor_value_info("x", FLOAT, [2, 3]),
                    helper.make_tensor_value_info("cond", BOOL, [2])],
                   [helper.make_tensor_value_info("y", FLOAT, None)])
    with pytest.raises(ValueError, match="the_if.*cond must hold one element"):
        fastrnn.InferenceSession(model).run(None, {"x": X, "cond": np.array([True, False])})


def test_branches_with_other_output_counts_are_refused():
    then_branch = _branch("then", [helper.make_node("Identity", ["x"], ["a"])], ["a"])
    else_branch = _branch("else", [helper.make_node("Neg", ["x"], ["b"]),
                                   helper.make_node("Abs", ["x"], ["c"])], ["b", "c"])
    model = _model([helper.make_node("If", ["cond"], ["y"], name="the_if",
                                     then_branch=then_branch, else_branch=else_branch)],
                   [helper.make_tensor_value_info("x", FLOAT, [2, 3]),
                    helper.make_tensor_value_info("cond", BOOL, [])],
                   [helper.make_tensor_value_info("y", FLOAT, None)])
    with pytest.raises(ValueError, match="the_if.*else_branch has 2 outputs, the node 1"):
        fastrnn.InferenceSession(model)


def test_one_error_lists_every_unsupported_op():
    """Every op type fastrnn lacks (in branches too), each with its count and first node, and
    ops of other domains and opsets, in one error."""
    x = helper.make_tensor_value_info("x", FLOAT, [2, 3])
    inner = _branch("then", [helper.make_node("Einsum", ["x"], ["e"], equation="ij->ij",
                                              name="einsum_in_branch"),
                             helper.make_node("Celu", ["e"], ["c"], name="celu_in_branch")], ["c"])
    other = _branch("else", [helper.make_node("Identity", ["x"], ["i"])], ["i"])
    nodes = [helper.make_node("Einsum", ["x"], ["a"], equation="ij->ij", name="einsum_1"),
             helper.make_node("Einsum", ["a"], ["b"], equation="ij->ij", name="einsum_2"),
             helper.make_node("Det", ["b"], ["d"], name="det_1"),
             helper.make_node("FusedGemm", ["x", "x"], ["f"], name="fused", domain="com.microsoft"),
             helper.make_node("If", ["cond"], ["y"], name="the_if", then_branch=inner,
                              else_branch=other)]
    model = _model(nodes, [x, helper.make_tensor_value_info("cond", BOOL, [])],
                   [helper.make_tensor_value_info("y", FLOAT, None)])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(ValueError) as raised:
        fastrnn.InferenceSession(model)
    message = str(raised.value)
    assert "4 op types" in message
    assert "'Einsum': 3 nodes, the first 'einsum_1'" in message
    assert "'Det': 1 node, the first 'det_1'" in message
    assert "'Celu': 1 node, the first 'celu_in_branch'" in message
    assert "'FusedGemm': 1 node, the first 'fused'; from domain 'com.microsoft'" in message
    assert "supported ops:" in message and "ReduceMean" in message


def test_an_opset_beyond_the_handlers_is_listed_with_its_opset():
    x = helper.make_tensor_value_info("x", FLOAT, [2, 3])
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="relu_node"),
                    helper.make_node("Celu", ["y"], ["z"], name="celu_node")], [x],
                   [helper.make_tensor_value_info("z", FLOAT, None)], opset=40)
    with pytest.raises(ValueError) as raised:
        fastrnn.InferenceSession(model)
    message = str(raised.value)
    assert "'Relu': 1 node, the first 'relu_node'; at opset 40" in message
    assert "'Celu': 1 node, the first 'celu_node'" in message
