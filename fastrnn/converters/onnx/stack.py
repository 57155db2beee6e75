"""fastrnn.from_onnx: a Model from a graph that is a recurrent stack.

A recurrent stack is one LSTM, GRU or RNN node, or a chain of them of one kind and one set of
options (as torch.onnx.export writes a multi-layer nn.LSTM/GRU/RNN), with nothing around them but
shape glue. A graph with anything else (a Linear head, an activation) is refused: the Model has no
head, and fastrnn.InferenceSession runs the whole graph. After building, the Model is checked
against the graph itself on a small random input, so glue that changes the result is caught.
"""

import numpy as np

from fastrnn.converters.onnx.recurrent import RECURRENT_OPS
from fastrnn.model import Model
from fastrnn.engine.weights import Config

# Ops that may sit around and between the recurrent nodes of a stack.
STACK_GLUE = {"Squeeze", "Unsqueeze", "Transpose", "Reshape", "Concat", "Slice", "Gather", "Shape",
              "Cast", "Identity", "Constant", "ConstantOfShape", "ConstantFill", "Expand", "Split",
              "Flatten"}
# Options every node of a stack must share.
SHARED_OPTIONS = ("kind", "hidden_size", "bidirectional", "clip", "input_forget",
                  "linear_before_reset", "activations")
PROBE_TOLERANCE = 1e-4


def _plain_steps(steps):
    """The plan's steps, those of a shape chain (shape_chain.ShapeChain) one by one."""
    for step in steps:
        members = getattr(step.function, "members", None)
        yield from (members if members is not None else (step,))


def from_onnx(source):
    """A fastrnn.Model from a path, bytes or ModelProto holding a recurrent stack (see module)."""
    from fastrnn.converters.onnx.session import InferenceSession

    session = InferenceSession(source)
    graph = session._graph
    nodes = [node for node, _ in graph.recurrent_nodes]
    if not nodes:
        raise ValueError("the graph has no LSTM, GRU or RNN node; fastrnn.from_onnx converts "
                         "recurrent stacks (use fastrnn.InferenceSession to run other graphs)")
    for step in _plain_steps(graph.steps):
        op_type = step.op_type
        if op_type not in STACK_GLUE and op_type not in RECURRENT_OPS:
            raise ValueError(f"the graph has a {op_type} node ({step.node!r}) besides its "
                             f"recurrent stack; fastrnn.from_onnx converts recurrent stacks only "
                             f"(a fastrnn.Model has no head): run the whole graph with "
                             f"fastrnn.InferenceSession")
    first = nodes[0]
    for node in nodes[1:]:
        for option in SHARED_OPTIONS:
            if getattr(node.config, option) != getattr(first.config, option):
                raise ValueError(f"recurrent nodes {first.name!r} and {node.name!r} differ in "
                                 f"{option}; a fastrnn.Model stacks layers of one configuration")
        if (node.layers[0].peephole is None) != (first.layers[0].peephole is None) or \
                node.dtype != first.dtype:
            raise ValueError(f"recurrent nodes {first.name!r} and {node.name!r} differ in "
                             f"peepholes or dtype")
    if first.direction == "reverse":
        raise ValueError(f"node {first.name!r} runs in reverse only; a fastrnn.Model runs "
                         f"forward or bidirectional stacks (use fastrnn.InferenceSession)")
    source_input, transposed = _trace(graph, nodes, first, previous=None)
    for previous, node in zip(nodes, nodes[1:]):
        _trace(graph, nodes, node, previous)
    batch_first = bool(first.layout) != transposed
    config = Config(**{**first.config.to_json(), "activations": first.config.activations,
                       "num_layers": len(nodes), "batch_first": batch_first})
    layers = [layer for node in nodes for layer in node.layers]
    model = Model(config, layers, first.dtype)
    _probe(session, model, source_input)
    return model


def _trace(graph, nodes, node, previous):
    """Follow node's X up through glue to `previous`'s Y (or, for the first, to a graph input).

    Returns (graph input name, whether a (1, 0, 2) Transpose lies on the way) for the first node.
    """
    value = node.node.inputs[0]
    transposed = False
    input_names = {v.name for v in graph.inputs}
    by_output = {name: n for n in nodes for name in n.node.outputs if name}
    while True:
        if value in by_output:
            producer = by_output[value]
            if previous is not None and producer is previous and value == previous.node.outputs[0]:
                return None, transposed
            break
        if value in input_names:
            if previous is None:
                return value, transposed
            break
        if value not in graph.producers:
            break
        proto, _ = graph.producers[value]
        if proto.op_type == "Transpose":
            perm = next((list(a.ints) for a in proto.attribute if a.name == "perm"), None)
            if perm == [1, 0, 2]:
                transposed = not transposed
        value = proto.input[0]
    expected = f"the output Y of {previous.name!r}" if previous is not None else "a graph input"
    raise ValueError(f"the input X of {node.name!r} does not come from {expected} through shape "
                     f"glue; this graph is not a plain recurrent stack (use "
                     f"fastrnn.InferenceSession)")


def _probe(session, model, source_input):
    """Run graph and model on a small random input: the graph's first output must be the model's."""
    rng = np.random.default_rng(0)
    c = model.config
    x_info = next(v for v in session.get_inputs() if v.name == source_input)
    # X's declared sizes, 2 where a size is not fixed (or no shape is declared at all), and the
    # model's input size on the feature axis.
    x_shape = _probe_shape(x_info.shape, [2, 2, c.input_size])
    if len(x_shape) == 3:
        x_shape[2] = c.input_size
    steps, batch = (x_shape[1], x_shape[0]) if c.batch_first else (x_shape[0], x_shape[1])
    roles = {name: (position, node) for node, proto in session._graph.recurrent_nodes
             for position, name in enumerate(proto.input) if name}
    feeds = {}
    for info in session.get_inputs():
        if info.name == source_input:
            feeds[info.name] = rng.standard_normal(x_shape).astype(info.dtype)
            continue
        position, node = roles.get(info.name, (None, None))
        if position == 4:         # sequence_lens
            role_shape = [batch]
        elif position in (5, 6):  # initial_h, initial_c
            role_shape = [node.num_directions, batch, c.hidden_size if position == 6
                          else c.output_size]
            if node.layout:
                role_shape[:2] = role_shape[1::-1]
        elif info.shape is None:
            raise ValueError(f"graph input {info.name!r} declares no shape and is not a "
                             f"recurrent node's sequence_lens or initial state: "
                             f"fastrnn.from_onnx cannot make a feed for it to check the "
                             f"conversion (declare its shape in the graph)")
        else:
            role_shape = None
        shape = _probe_shape(info.shape, role_shape)
        if info.dtype is None:
            raise ValueError(f"graph input {info.name!r} has element type {info.type}, which "
                             f"fastrnn.from_onnx cannot feed")
        if info.dtype.kind in "iu":
            feeds[info.name] = np.full(shape, steps, info.dtype)
        else:
            feeds[info.name] = np.zeros(shape, info.dtype)
    graph_output = session.run(None, feeds)[0]
    y, state = model(feeds[source_input])
    h_n, c_n = state if model.kind == "lstm" else (state, None)  # a GRU's or RNN's is h alone
    c = model.config
    time_major = y.transpose(1, 0, 2) if c.batch_first else y
    steps, batch = time_major.shape[:2]
    onnx_y = time_major.reshape(steps, batch, c.num_directions, -1).transpose(0, 2, 1, 3)
    candidates = [y, onnx_y, onnx_y.transpose(2, 0, 1, 3), h_n, c_n, h_n[-c.num_directions:],
                  None if c_n is None else c_n[-c.num_directions:]]
    for candidate in candidates:
        if candidate is not None and candidate.shape == graph_output.shape and \
                np.allclose(candidate, graph_output, atol=PROBE_TOLERANCE, rtol=0):
            return
    raise ValueError("the graph's glue changes the recurrent stack's result (its first output "
                     "matches none of the Model's); this graph is not a plain recurrent stack: "
                     "run it with fastrnn.InferenceSession")


def _probe_shape(declared, role_shape):
    """A probe feed's shape: the declared sizes where fixed, else those of its role (role_shape,
    when the rank agrees), else 2; the role's shape when nothing is declared."""
    if declared is None:
        return list(role_shape)
    if role_shape is None or len(role_shape) != len(declared):
        role_shape = [2] * len(declared)
    return [size if isinstance(size, int) and size > 0 else fallback
            for size, fallback in zip(declared, role_shape)]
