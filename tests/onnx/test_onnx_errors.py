"""Bad graphs and bad feeds: each a clear error naming what was wrong."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import fastrnn
from fastrnn.converters.onnx import register
from onnx_cases import random_feeds, recurrent_graph


@pytest.fixture(scope="module")
def lstm_model():
    return recurrent_graph("LSTM", sequence_lens=True, initial_state=True)


@pytest.fixture(scope="module")
def session(lstm_model):
    return fastrnn.InferenceSession(lstm_model)


def test_bytes_that_are_not_onnx():
    with pytest.raises(ValueError, match="not an ONNX model"):
        fastrnn.InferenceSession(b"\x00\x01 certainly not a protobuf \xff")
    with pytest.raises(ValueError, match="not an ONNX model"):
        fastrnn.from_onnx(b"")


def test_missing_file_and_wrong_type(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ONNX file"):
        fastrnn.InferenceSession(tmp_path / "absent.onnx")
    with pytest.raises(TypeError, match="path, bytes or an onnx.ModelProto"):
        fastrnn.InferenceSession(42)


def test_loads_from_a_path(tmp_path, lstm_model):
    path = tmp_path / "lstm.onnx"
    onnx.save(lstm_model, path)
    feeds = random_feeds(lstm_model)
    by_path = fastrnn.InferenceSession(str(path)).run(None, feeds)
    by_bytes = fastrnn.InferenceSession(lstm_model.SerializeToString()).run(None, feeds)
    for a, b in zip(by_path, by_bytes):
        np.testing.assert_array_equal(a, b)


def _graph_with(node, inputs, outputs, opset=17):
    graph = helper.make_graph([node], "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_unsupported_op_names_op_and_node():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    model = _graph_with(helper.make_node("Erf", ["x"], ["y"], name="the_erf"), [x], [y])
    with pytest.raises(ValueError, match=r"'Erf'.*'the_erf'"):
        fastrnn.InferenceSession(model)
    with pytest.raises(ValueError, match=r"'Erf'.*'the_erf'"):
        fastrnn.from_onnx(model)


def test_op_from_another_domain_is_refused():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    node = helper.make_node("FusedGemm", ["x", "x"], ["y"], name="fused", domain="com.microsoft")
    graph = helper.make_graph([node], "g", [x], [x])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    with pytest.raises(ValueError, match=r"'FusedGemm'.*'fused'.*com.microsoft"):
        fastrnn.InferenceSession(model)


def test_recurrent_weights_fed_at_run_time_are_refused():
    model = recurrent_graph("GRU", weights_as="input")
    with pytest.raises(ValueError, match=r"gru_node.*weight input W.*initializers"):
        fastrnn.InferenceSession(model)


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="duplicate handler for ONNX op 'LSTM'"):
        register("LSTM", opsets=(14, 30))(lambda node: None)


def test_missing_and_misnamed_inputs(session, lstm_model):
    feeds = random_feeds(lstm_model)
    partial = {name: value for name, value in feeds.items() if name != "h0"}
    with pytest.raises(ValueError, match=r"missing input\(s\) \['h0'\]"):
        session.run(None, partial)
    with pytest.raises(ValueError, match=r"unknown input name\(s\) \['h_0'\]"):
        session.run(None, {**partial, "h_0": feeds["h0"]})


def test_wrong_dtype_rank_and_size(session, lstm_model):
    feeds = random_feeds(lstm_model)
    with pytest.raises(TypeError, match=r"input 'X' must be tensor\(float\).*float64"):
        session.run(None, {**feeds, "X": feeds["X"].astype(np.float64)})
    with pytest.raises(ValueError, match=r"input 'X' must have rank 3"):
        session.run(None, {**feeds, "X": feeds["X"][0]})
    with pytest.raises(ValueError, match=r"input 'h0' must have size 5 on axis 2"):
        session.run(None, {**feeds, "h0": feeds["h0"][..., :4]})
    with pytest.raises(TypeError, match=r"input 'lens' must be tensor\(int32\)"):
        session.run(None, {**feeds, "lens": feeds["lens"].astype(np.float32)})
    with pytest.raises(TypeError, match=r"input 'X' must be a numpy array"):
        session.run(None, {**feeds, "X": object()})


def test_sequence_lengths_out_of_range(session, lstm_model):
    feeds = random_feeds(lstm_model)
    with pytest.raises(ValueError, match=r"lstm_node.*sequence_lens must lie in 0..4"):
        session.run(None, {**feeds, "lens": np.array([5, 1, 1], np.int32)})


def test_dynamic_shapes_checked_against_the_weights():
    model = recurrent_graph("RNN")
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "features"
    session = fastrnn.InferenceSession(model)
    with pytest.raises(ValueError, match=r"rnn_node.*X must have 3 features"):
        session.run(None, {"X": np.zeros((4, 3, 7), np.float32)})


def test_unknown_output_name(session, lstm_model):
    with pytest.raises(ValueError, match=r"unknown output 'Z'"):
        session.run(["Z"], random_feeds(lstm_model))


def test_from_onnx_refuses_graphs_that_are_not_stacks():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    model = _graph_with(helper.make_node("Relu", ["x"], ["y"]), [x],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    with pytest.raises(ValueError, match="no LSTM, GRU or RNN node"):
        fastrnn.from_onnx(model)
    with pytest.raises(ValueError, match="reverse only"):
        fastrnn.from_onnx(recurrent_graph("GRU", direction="reverse"))


def test_from_onnx_single_node_keeps_every_option():
    model = recurrent_graph("LSTM", peephole=True, clip=0.7, input_forget=1,
                            direction="bidirectional",
                            activations=["HardSigmoid", "Tanh", "Softsign"] * 2)
    converted = fastrnn.from_onnx(model)
    c = converted.config
    assert (c.clip, c.input_forget, c.bidirectional) == (pytest.approx(0.7), True, True)
    assert converted.layers[0].peephole is not None
    feeds = random_feeds(model)
    y_onnx, h_onnx, c_onnx = fastrnn.InferenceSession(model).run(None, feeds)
    y, state = converted(feeds["X"])
    np.testing.assert_allclose(y, y_onnx.transpose(0, 2, 1, 3).reshape(y.shape), atol=1e-6)
    np.testing.assert_allclose(state.h, h_onnx, atol=1e-6)
    np.testing.assert_allclose(state.c, c_onnx, atol=1e-6)


def test_graph_input_passed_straight_to_an_output_is_copied():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])
    relu = helper.make_node("Relu", ["x"], ["y"])
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [3]) for name in "yx"]
    graph = helper.make_graph([relu], "g", [x], outputs)
    session = fastrnn.InferenceSession(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)]))
    value = np.array([-1.0, 0.5, 2.0], np.float32)
    y, echoed = session.run(None, {"x": value})
    np.testing.assert_array_equal(y, [0.0, 0.5, 2.0])
    np.testing.assert_array_equal(echoed, value)
    assert not np.shares_memory(echoed, value)


def test_file_that_is_not_onnx(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07garbage that is not a model\xff\xfe")
    with pytest.raises(ValueError, match="not an ONNX model"):
        fastrnn.InferenceSession(path)


def test_weights_stored_as_external_data(tmp_path):
    model = recurrent_graph("GRU", hidden=16, input_size=8, initial_state=True)
    path = tmp_path / "external.onnx"
    saved = onnx.ModelProto()
    saved.CopyFrom(model)  # saving with external data rewrites the proto it is given
    onnx.save_model(saved, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    feeds = random_feeds(model)
    from_file = fastrnn.InferenceSession(path).run(None, feeds)
    in_memory = fastrnn.InferenceSession(model).run(None, feeds)
    for a, b in zip(from_file, in_memory):
        np.testing.assert_array_equal(a, b)
