"""Bad graphs and bad feeds: each a clear error naming what was wrong."""

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fastrnn
import limited
from fastrnn.converters.onnx import register
from fastrnn.converters.onnx.graph import FOLD_LIMIT_BYTES
from onnx_cases import assert_outputs_close, onnxruntime_session, random_feeds, recurrent_graph


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
    model = _graph_with(helper.make_node("Einsum", ["x"], ["y"], name="the_einsum",
                                         equation="ij->ij"), [x], [y])
    with pytest.raises(ValueError, match=r"'Einsum'.*'the_einsum'"):
        fastrnn.InferenceSession(model)
    with pytest.raises(ValueError, match=r"'Einsum'.*'the_einsum'"):
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
    with pytest.raises(TypeError, match=r"output_names must be a list.*'Y'"):
        session.run("Y", random_feeds(lstm_model))  # not the list of its letters


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


# -- bounded loading ---------------------------------------------------------------------------

def I64(*values):
    return np.array(values, np.int64)


def _folding_graph(nodes, initializers):
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info(
        nodes[-1].output[0], TensorProto.FLOAT, None)], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _doubling_concats(count):
    """x0 = 1 KiB of floats; x(k+1) = Concat(xk, xk): 2**count KiB from a file of a few KB."""
    nodes = [helper.make_node("Concat", [f"x{k}", f"x{k}"], [f"x{k + 1}"], axis=0,
                              name=f"concat_{k}") for k in range(count)]
    return _folding_graph(nodes, [numpy_helper.from_array(np.ones(256, np.float32), "x0")])


FOLDING_BOMBS = {
    # 1 GiB from 82 bytes (it took 1.17 GiB to load), and sizes numpy cannot even allocate
    "ConstantOfShape 1 GiB": (_folding_graph(
        [helper.make_node("ConstantOfShape", ["shape"], ["y"], name="bomb")],
        [numpy_helper.from_array(I64(2 ** 14, 2 ** 14), "shape")]), "bomb"),
    "ConstantOfShape 2**124": (_folding_graph(
        [helper.make_node("ConstantOfShape", ["shape"], ["y"], name="bomb")],
        [numpy_helper.from_array(I64(2 ** 62, 2 ** 62), "shape")]), "bomb"),
    "Expand": (_folding_graph(
        [helper.make_node("Expand", ["one", "shape"], ["y"], name="expand")],
        [numpy_helper.from_array(np.ones(1, np.float32), "one"),
         numpy_helper.from_array(I64(2 ** 15, 2 ** 15), "shape")]), "expand"),
    "Add broadcast": (_folding_graph(
        [helper.make_node("Add", ["column", "row"], ["y"], name="outer")],
        [numpy_helper.from_array(np.ones((2 ** 15, 1), np.float32), "column"),
         numpy_helper.from_array(np.ones((1, 2 ** 15), np.float32), "row")]), "outer"),
    # each result within bounds, together past them
    "doubling Concats": (_doubling_concats(22), "concat_"),
}


@pytest.mark.parametrize("case", list(FOLDING_BOMBS))
def test_constant_folding_is_bounded(case):
    model, node = FOLDING_BOMBS[case]
    assert model.ByteSize() < 300_000
    outcome = limited.worker().call("session", model.SerializeToString(), timeout=60)
    assert outcome.kind == "error" and outcome.type == "ValueError", outcome
    assert f"node '{node}" in outcome.message and "folding" in outcome.message, outcome
    assert f"{FOLD_LIMIT_BYTES:,} bytes" in outcome.message, outcome


def test_constant_folding_within_the_bound_matches_onnxruntime():
    model = _doubling_concats(10)  # 1 MiB
    ours = fastrnn.InferenceSession(model).run(None, {})
    assert_outputs_close(ours, onnxruntime_session(model).run(None, {}))


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_onnx_path_that_is_not_a_regular_file_is_refused_at_once(tmp_path, kind):
    if kind == "device":
        path = "/dev/zero"
    else:
        path = str(tmp_path / "pipe.onnx")
        os.mkfifo(path)
    outcome = limited.worker().call("session", path, timeout=30)
    assert outcome.kind == "error" and outcome.type == "ValueError", outcome
    assert path in outcome.message and "not a regular file" in outcome.message, outcome
    assert outcome.seconds < 5, outcome


def _external_model(tmp_path):
    model = recurrent_graph("GRU", hidden=16, input_size=8)
    path = tmp_path / "external.onnx"
    saved = onnx.ModelProto()
    saved.CopyFrom(model)
    onnx.save_model(saved, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda entries: entries.update(length=str(2 ** 40)), "declares external data"),
    (lambda entries: entries.update(offset=str(2 ** 40)), "declares external data"),
    (lambda entries: entries.update(location="../outside.bin"), "not a file in the model's"),
    (lambda entries: entries.update(location="/dev/zero"), "not a file in the model's"),
])
def test_external_data_outside_its_file_is_refused(tmp_path, edit, message):
    path = _external_model(tmp_path)
    model = onnx.load(path, load_external_data=False)
    tensor = model.graph.initializer[0]
    entries = {entry.key: entry.value for entry in tensor.external_data}
    edit(entries)
    del tensor.external_data[:]
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    onnx.save(model, path)
    with pytest.raises(ValueError, match=f"{tensor.name!r}.*{message}"):
        fastrnn.InferenceSession(path)


def test_initializer_with_dims_its_data_cannot_fill_names_the_tensor():
    model = recurrent_graph("RNN")
    weights = model.graph.initializer[0]
    weights.dims[1] = 2 ** 40
    with pytest.raises(ValueError, match=f"initializer tensor {weights.name!r}"):
        fastrnn.InferenceSession(model)
    weights.dims[1] = -3
    with pytest.raises(ValueError, match=f"{weights.name!r} has a negative dimension"):
        fastrnn.InferenceSession(model)


# -- from_onnx on inputs of undeclared shape, and empty batches --------------------------------

@pytest.mark.parametrize("declared", ["no shape", "named sizes"])
def test_from_onnx_where_x_has_no_fixed_shape(declared):
    """No declared shape crashed (TypeError: 'NoneType' object is not iterable); a named feature
    size gave a probe of 2 features that the node refused."""
    model = recurrent_graph("GRU", sequence_lens=True, initial_state=True)
    for value in model.graph.input:
        tensor_type = value.type.tensor_type
        if declared == "no shape":
            tensor_type.ClearField("shape")
        else:
            for index, dim in enumerate(tensor_type.shape.dim):
                dim.dim_param = f"{value.name}_{index}"
    converted = fastrnn.from_onnx(model)
    assert converted.config.input_size == 3 and converted.config.hidden_size == 5
    feeds = random_feeds(recurrent_graph("GRU", sequence_lens=True, initial_state=True))
    expected = onnxruntime_session(model).run(None, feeds)
    y, h = converted(feeds["X"], state=feeds["h0"], lengths=feeds["lens"])
    np.testing.assert_allclose(y, expected[0][:, 0], atol=2e-5)
    np.testing.assert_allclose(h, expected[1], atol=2e-5)


def test_from_onnx_names_an_input_it_cannot_feed():
    model = recurrent_graph("GRU")
    model.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, None))
    with pytest.raises(ValueError, match="graph input 'extra' declares no shape"):
        fastrnn.from_onnx(model)


@pytest.mark.parametrize("layout", [0, 1])
def test_a_batch_of_no_rows_with_sequence_lens(layout):
    """0 rows with sequence_lens gave "zero-size array to reduction operation minimum"; it runs
    as without sequence_lens: empty outputs of the shapes ONNX defines (onnxruntime itself
    aborts the process on an empty batch, so the shapes are checked against the spec)."""
    results = []
    for lens in (True, False):
        model = recurrent_graph("LSTM", sequence_lens=lens, direction="bidirectional",
                                layout=layout)
        for value in model.graph.input:
            batch_axis = (0 if layout else 1) if value.name == "X" else 0
            value.type.tensor_type.shape.dim[batch_axis].dim_param = "B"
        x = np.zeros((4, 0, 3) if layout == 0 else (0, 4, 3), np.float32)
        feeds = {"X": x, **({"lens": np.zeros(0, np.int32)} if lens else {})}
        results.append(fastrnn.InferenceSession(model).run(None, feeds))
    expected = [(4, 2, 0, 5), (2, 0, 5), (2, 0, 5)] if layout == 0 else \
        [(0, 4, 2, 5), (0, 2, 5), (0, 2, 5)]
    for with_lens, without in zip(*results):
        assert with_lens.shape == without.shape
    assert [y.shape for y in results[0]] == expected
    model = recurrent_graph("LSTM", sequence_lens=True)
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "B"
    model.graph.input[1].type.tensor_type.shape.dim[0].dim_param = "B"
    with pytest.raises(ValueError, match=r"lstm_node.*sequence_lens must be \(3,\)"):
        fastrnn.InferenceSession(model).run(None, {"X": np.zeros((4, 3, 3), np.float32),
                                                   "lens": np.zeros(0, np.int32)})


def test_an_index_out_of_range_at_run_time_is_a_value_error_naming_the_node():
    """Found by the fuzz suite: an IndexError from numpy came out as it was."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])
    indices = helper.make_tensor_value_info("i", TensorProto.INT64, [1])
    graph = helper.make_graph([helper.make_node("Gather", ["x", "i"], ["y"], name="pick")], "g",
                              [x, indices], [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                           None)])
    session = fastrnn.InferenceSession(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)]))
    feeds = {"x": np.zeros(3, np.float32)}
    np.testing.assert_array_equal(session.run(None, {**feeds, "i": I64(2)})[0], [0.0])
    with pytest.raises(ValueError, match="node 'pick'.*index 4 is out of bounds"):
        session.run(None, {**feeds, "i": I64(4)})


@pytest.mark.parametrize("node, inputs", [
    (helper.make_node("Cast", ["x"], ["y"], name="cast", to=99), ["x"]),
    (helper.make_node("Reshape", ["k", "shape"], ["y"], name="fold"), []),  # folded
])
def test_errors_of_handlers_and_folds_name_the_node(node, inputs):
    """A bare KeyError: 99 (no such element type), and numpy's reshape error without the node."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])
    graph = helper.make_graph(
        [node], "g", [x] if inputs else [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.zeros(3, np.float32), "k"),
         numpy_helper.from_array(I64(2, 2), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    expected = "99 is not an ONNX tensor element type" if inputs else "cannot reshape"
    with pytest.raises(ValueError, match=f"{node.op_type} node '{node.name}': {expected}"):
        fastrnn.InferenceSession(model)


def test_an_attribute_that_is_not_utf8_names_the_node():
    """Found by the fuzz suite: a bit flip in a string attribute gave a bare UnicodeDecodeError."""
    model = recurrent_graph("GRU")
    direction = next(a for a in model.graph.node[0].attribute if a.name == "direction")
    direction.s = b"\x80forward"
    with pytest.raises(ValueError, match="node 'gru_node': attribute 'direction' is not UTF-8"):
        fastrnn.InferenceSession(model)
