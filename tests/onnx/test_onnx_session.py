"""The session's fast paths for one timestep: the step kernel on feeds of declared shapes (no checks
at run time), on feeds of other shapes (checked), and the Squeeze after a one-direction node fused
into it. Each against onnxruntime, the general path never taken where a fast one applies, and the
bad feeds each fast path used to see still refused with a clear error."""

import threading

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import fastrnn
from onnx_cases import assert_outputs_close, onnxruntime_session, random_feeds, recurrent_graph

OPS = ("LSTM", "GRU", "RNN")


def with_squeezed_y(model, axis=1, keep_y=False):
    """`model` with Y replaced, as torch exports it, by Squeeze(Y, axis) as the output "y"."""
    graph = model.graph
    opset = model.opset_import[0].version
    if opset >= 13:
        graph.initializer.append(numpy_helper.from_array(np.array([axis], np.int64), "axes"))
        graph.node.append(helper.make_node("Squeeze", ["Y", "axes"], ["y"], name="squeeze"))
    else:
        graph.node.append(helper.make_node("Squeeze", ["Y"], ["y"], name="squeeze", axes=[axis]))
    y_type = graph.output[0].type.tensor_type.elem_type
    graph.output[0].CopyFrom(helper.make_tensor_value_info("y", y_type, None))
    if keep_y:
        graph.output.append(helper.make_tensor_value_info("Y", y_type, None))
    return model


def dynamic_batch(model):
    """`model` with the batch axis of X and the states declared by name, not size."""
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        dims[1].dim_param = "batch"
    return model


def never_general(session):
    """Make the session's recurrent nodes fail if a run takes their general path."""
    def general(*args):
        raise AssertionError("the general path was taken")
    for node, _ in session._graph.recurrent_nodes:
        node._general = general


def compare(model, feeds, fast=True):
    ours = fastrnn.InferenceSession(model)
    if fast:
        never_general(ours)
    got = ours.run(None, feeds)
    assert_outputs_close(got, onnxruntime_session(model).run(None, feeds))
    return ours, got


@pytest.mark.parametrize("op_type", OPS)
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("declared", [True, False], ids=["declared-shapes", "dynamic-batch"])
def test_one_step_fast_paths_match_onnxruntime(op_type, direction, declared):
    model = recurrent_graph(op_type, steps=1, batch=2, direction=direction, initial_state=True)
    feeds = random_feeds(model)
    compare(model if declared else dynamic_batch(model), feeds)


@pytest.mark.parametrize("op_type", OPS)
@pytest.mark.parametrize("opset, axis", [(11, 1), (17, 1), (17, -3)])
@pytest.mark.parametrize("steps", [1, 4])
def test_squeeze_of_y_is_fused(op_type, opset, axis, steps):
    model = with_squeezed_y(recurrent_graph(op_type, steps=steps, opset=opset,
                                            initial_state=True), axis)
    session, (y, *_) = compare(model, random_feeds(model), fast=steps == 1)
    assert [step.op_type for step in session._graph.steps] == [op_type]
    assert y.shape == (steps, 3, 5) and y.flags.c_contiguous


@pytest.mark.parametrize("options", [dict(direction="bidirectional"),
                                     dict(layout=1, steps=1, batch=1)])
def test_squeeze_not_fused_where_axis_1_is_not_the_direction_axis(options):
    # Bidirectional Y has two directions there; at layout 1, Y is (B, T, D, H).
    model = with_squeezed_y(recurrent_graph("GRU", initial_state=True, **options))
    session = fastrnn.InferenceSession(model)
    assert [step.op_type for step in session._graph.steps] == ["GRU", "Squeeze"]
    if options.get("layout"):  # onnxruntime refuses layout 1
        feeds = random_feeds(model)
        assert_outputs_close(session.run(None, feeds), ReferenceEvaluator(model).run(None, feeds))


def test_squeeze_not_fused_when_y_is_also_read_elsewhere():
    model = with_squeezed_y(recurrent_graph("LSTM", steps=1, initial_state=True), keep_y=True)
    session, (y, _, _, full_y) = compare(model, random_feeds(model))
    assert [step.op_type for step in session._graph.steps] == ["LSTM", "Squeeze"]
    np.testing.assert_array_equal(y, full_y[:, 0])


def test_steps_fed_back_leave_earlier_outputs_alone():
    # The caller keeps every output: a later run writes none of them (nor the feeds).
    model = with_squeezed_y(recurrent_graph("LSTM", steps=1, batch=2, initial_state=True))
    session = fastrnn.InferenceSession(model)
    reference = onnxruntime_session(model)
    feeds = random_feeds(model)
    kept = []
    for t in range(4):
        outputs = session.run(None, feeds)
        assert_outputs_close(outputs, reference.run(None, feeds))
        kept.append((outputs, [array.copy() for array in outputs]))
        feeds = {"X": feeds["X"] + 1, "h0": outputs[1], "c0": outputs[2]}
    for outputs, copies in kept:
        for array, copy in zip(outputs, copies):
            np.testing.assert_array_equal(array, copy)
    arrays = [array for outputs, _ in kept for array in outputs]
    assert not any(np.shares_memory(a, b) for i, a in enumerate(arrays) for b in arrays[i + 1:])


def test_inputs_the_kernel_cannot_take_as_they_are():
    # Strided, read-only and unaligned X, and states of an ndarray subclass: all copied or
    # converted on the way, the answers those of contiguous inputs.
    model = recurrent_graph("LSTM", steps=1, batch=2, initial_state=True)
    feeds = random_feeds(model)
    expected = onnxruntime_session(model).run(None, feeds)
    session = fastrnn.InferenceSession(model)
    never_general(session)
    strided = np.zeros((1, 2, 6), np.float32)
    strided[..., ::2] = feeds["X"]
    read_only = feeds["X"].copy()
    read_only.flags.writeable = False
    unaligned = np.frombuffer(b"\0" + feeds["X"].tobytes(), np.float32, offset=1).reshape(1, 2, 3)
    assert not unaligned.flags.aligned
    subclass = feeds["h0"].view(np.recarray)
    for x in (strided[..., ::2], read_only, unaligned):
        assert_outputs_close(session.run(None, {**feeds, "X": x}), expected)
    outputs = session.run(None, {**feeds, "h0": subclass})
    assert_outputs_close(outputs, expected)
    assert all(type(array) is np.ndarray for array in outputs)


def test_bad_feeds_of_a_one_step_graph():
    model = with_squeezed_y(recurrent_graph("LSTM", steps=1, batch=2, initial_state=True))
    session = fastrnn.InferenceSession(model)
    feeds = random_feeds(model)
    with pytest.raises(TypeError, match=r"input 'X' must be tensor\(float\).*float64"):
        session.run(None, {**feeds, "X": feeds["X"].astype(np.float64)})
    with pytest.raises(ValueError, match=r"input 'X' must have size 1 on axis 0"):
        session.run(None, {**feeds, "X": np.concatenate([feeds["X"]] * 2)})
    with pytest.raises(ValueError, match=r"input 'h0' must have size 2 on axis 1"):
        session.run(None, {**feeds, "h0": feeds["h0"][:, :1]})
    with pytest.raises(ValueError, match=r"input 'c0' must have rank 3"):
        session.run(None, {**feeds, "c0": feeds["c0"][0]})
    with pytest.raises(TypeError, match=r"input 'c0' must be a numpy array"):
        session.run(None, {**feeds, "c0": "zeros"})
    with pytest.raises(TypeError, match=r"feeds must be a dict"):
        session.run(None, list(feeds.values()))
    with pytest.raises(TypeError, match=r"input 'X' must be tensor\(float\).*float64"):
        session.run(None, {**feeds, "X": feeds["X"].tolist()})  # a list's floats are float64


def test_bad_feeds_of_a_dynamic_batch_graph_reach_the_node_checks():
    model = recurrent_graph("LSTM", steps=1, batch=2, initial_state=True)
    feeds = random_feeds(model)
    session = fastrnn.InferenceSession(dynamic_batch(model))
    with pytest.raises(ValueError, match=r"lstm_node.*initial_h must have shape \(1, 2, 5\)"):
        session.run(None, {**feeds, "h0": np.zeros((1, 3, 5), np.float32)})
    with pytest.raises(ValueError, match=r"input 'X' must have size 3 on axis 2"):
        session.run(None, {**feeds, "X": np.zeros((1, 2, 4), np.float32)})
    # Another batch size takes the fast path too, with its own shapes.
    wider = random_feeds(recurrent_graph("LSTM", steps=1, batch=5, initial_state=True))
    assert_outputs_close(session.run(None, wider), onnxruntime_session(model).run(None, wider))


def test_output_names_given_copy_an_echoed_input():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [3]) for name in "yx"]
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], outputs)
    session = fastrnn.InferenceSession(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)]))
    value = np.array([-1.0, 0.5, 2.0], np.float32)
    (echoed,) = session.run(["x"], {"x": value})
    np.testing.assert_array_equal(echoed, value)
    assert not np.shares_memory(echoed, value)


def test_threads_share_a_session():
    model = with_squeezed_y(recurrent_graph("GRU", steps=1, batch=2, initial_state=True,
                                            hidden=64, input_size=32))
    session = fastrnn.InferenceSession(model)
    reference = onnxruntime_session(model)
    feeds = [random_feeds(model, seed=seed) for seed in range(4)]
    expected = [reference.run(None, f) for f in feeds]
    failures = []

    def run(index):
        try:
            for _ in range(200):
                assert_outputs_close(session.run(None, feeds[index]), expected[index])
        except AssertionError as error:
            failures.append(error)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
