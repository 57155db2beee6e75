"""ONNX graphs for the tests, built with onnx.helper, and the peers that run them."""

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
ELEM_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}
TOLERANCE = 2e-5


def recurrent_graph(op_type, *, steps=4, batch=3, input_size=3, hidden=5, direction="forward",
                    layout=0, sequence_lens=False, initial_state=False, peephole=False, bias=True,
                    outputs=("Y", "Y_h", "Y_c"), dtype=np.float32, opset=14,
                    weights_as="initializer", seed=0, scale=0.6, **attributes):
    """A model with one recurrent node; inputs X (and lens, h0, c0 as asked), weights as asked."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    elem = ELEM_TYPES[dtype]
    directions = 2 if direction == "bidirectional" else 1
    gates = GATES[op_type]
    weights = {"W": rng.uniform(-scale, scale, (directions, gates * hidden, input_size)),
               "R": rng.uniform(-scale, scale, (directions, gates * hidden, hidden))}
    if bias:
        weights["B"] = rng.uniform(-scale, scale, (directions, 2 * gates * hidden))
    if peephole:
        weights["P"] = rng.uniform(-scale, scale, (directions, 3 * hidden))
    weights = {name: value.astype(dtype) for name, value in weights.items()}

    def batch_major(shape):  # layout 1 swaps the first two axes
        return [shape[1], shape[0], *shape[2:]] if layout else shape

    x_shape = batch_major([steps, batch, input_size])
    graph_inputs = [helper.make_tensor_value_info("X", elem, x_shape)]
    node_inputs = ["X", "W", "R", "B" if bias else "", "", "", "", "P" if peephole else ""]
    if sequence_lens:
        graph_inputs.append(helper.make_tensor_value_info("lens", TensorProto.INT32, [batch]))
        node_inputs[4] = "lens"
    if initial_state:
        graph_inputs.append(helper.make_tensor_value_info(
            "h0", elem, batch_major([directions, batch, hidden])))
        node_inputs[5] = "h0"
        if op_type == "LSTM":
            graph_inputs.append(helper.make_tensor_value_info(
                "c0", elem, batch_major([directions, batch, hidden])))
            node_inputs[6] = "c0"
    while node_inputs[-1] == "":
        node_inputs.pop()
    names = ["Y", "Y_h", "Y_c"][:3 if op_type == "LSTM" else 2]
    node_outputs = [name if name in outputs else "" for name in names]
    while node_outputs[-1] == "":
        node_outputs.pop()
    if layout:
        attributes["layout"] = 1
    node = helper.make_node(op_type, node_inputs, node_outputs, name=f"{op_type.lower()}_node",
                            hidden_size=hidden, direction=direction, **attributes)
    nodes, initializers = [node], []
    for name, value in weights.items():
        tensor = numpy_helper.from_array(value, name)
        if weights_as == "initializer":
            initializers.append(tensor)
        elif weights_as == "constant":
            nodes.insert(0, helper.make_node("Constant", [], [name], value=tensor))
        else:
            graph_inputs.append(helper.make_tensor_value_info(name, elem, value.shape))
    graph_outputs = [helper.make_tensor_value_info(name, elem, None)
                     for name in node_outputs if name]
    graph = helper.make_graph(nodes, "recurrent", graph_inputs, graph_outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=min(onnx.IR_VERSION, 10))


def random_feeds(model, seed=1, zero_length_rows=()):
    """Feeds for every input of `model`: normal floats, sequence lengths spread over 1..T."""
    rng = np.random.default_rng(seed)
    feeds = {}
    inputs = {v.name: v for v in model.graph.input}
    x_shape = [d.dim_value for d in inputs["X"].type.tensor_type.shape.dim]
    layout = any(a.name == "layout" and a.i == 1 for a in model.graph.node[-1].attribute)
    steps = x_shape[1] if layout else x_shape[0]
    for name, info in inputs.items():
        elem = info.type.tensor_type.elem_type
        shape = [d.dim_value for d in info.type.tensor_type.shape.dim]
        if name == "lens":
            lengths = rng.integers(1, steps + 1, shape)
            lengths[0] = steps
            lengths[list(zero_length_rows)] = 0
            feeds[name] = lengths.astype(np.int32)
        elif name in ("X", "h0", "c0"):
            feeds[name] = rng.standard_normal(shape).astype(helper.tensor_dtype_to_np_dtype(elem))
    return feeds


def onnxruntime_session(model):
    if not isinstance(model, bytes):
        model = model.SerializeToString()
    return onnxruntime.InferenceSession(model,
                                        providers=["CPUExecutionProvider"])


def assert_outputs_close(got, expected, tolerance=TOLERANCE):
    assert len(got) == len(expected)
    for index, (ours, theirs) in enumerate(zip(got, expected)):
        assert ours.shape == theirs.shape, f"output {index}: shape {ours.shape} != {theirs.shape}"
        assert ours.dtype == theirs.dtype, f"output {index}: dtype {ours.dtype} != {theirs.dtype}"
        np.testing.assert_allclose(ours, theirs, atol=tolerance, rtol=0,
                                   err_msg=f"output {index}")
