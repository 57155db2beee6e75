"""Loading an ONNX graph into an execution plan, once.

Loading parses the model, looks up a handler for every node (refusing any op without one, by op
type and node name), folds every node whose inputs are all known (initializers, Constant nodes and
what is computed from them alone: the weight slicing and concatenation torch exports emit) into
constants, and lists the remaining nodes as steps over numbered value slots. A run fills the input
slots, calls each step's function and reads the output slots: no lookups by name, no re-validation
of what loading already checked.

Loading is bounded: a path must be a regular file (a FIFO or a device is refused before it is
read), external data must lie in regular files beside the model and inside them, and folding may
create at most FOLD_LIMIT_BYTES of constants in all (or twice what the file stores, if that is
more): an op whose folded result would pass that (a ConstantOfShape or Expand that turns a few
bytes into gigabytes) is refused, naming the node, before its result is allocated.
"""

import collections
import math
import os

import numpy as np
import onnx
from onnx import external_data_helper, helper, numpy_helper

# Imported to register their handlers.
from fastrnn.converters.onnx import control, glue, math_ops, recurrent  # noqa: F401
from fastrnn.converters.onnx.registry import (ControlNode, NodeContext, find_handler, lookup,
                                              supported_ops)
from fastrnn.converters.onnx.shape_chain import fuse_shape_chains, is_shape_only
from fastrnn.paths import open_regular_file

# The bytes that constant folding may create when a graph is loaded, in all: far above what the
# weight slicing and zero states of exported graphs need, far below what would exhaust a machine.
# The bound grows to twice the bytes the model stores, for graphs whose folding copies big weights.
FOLD_LIMIT_BYTES = 256 << 20
# Ops whose output may be a view of their first input: a graph output reached from a graph input or
# a constant only through these is copied, so a caller never holds the plan's constants.
VIEW_OPS = {"Identity", "Squeeze", "Unsqueeze", "Reshape", "Transpose", "Slice", "Flatten", "Cast",
            "Split", "Expand", "Dropout", "Gather"}
# onnxruntime's type strings for ONNX element types.
TYPE_NAMES = {
    onnx.TensorProto.FLOAT: "float", onnx.TensorProto.DOUBLE: "double",
    onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.INT8: "int8", onnx.TensorProto.INT16: "int16",
    onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.UINT16: "uint16",
    onnx.TensorProto.UINT32: "uint32", onnx.TensorProto.UINT64: "uint64",
    onnx.TensorProto.BOOL: "bool", onnx.TensorProto.STRING: "string",
}


def load_model(source):
    """A ModelProto from a path, bytes or a ModelProto; a clear error for anything else."""
    if isinstance(source, onnx.ModelProto):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        model = onnx.ModelProto()
        try:
            model.ParseFromString(bytes(source))
        except Exception as error:
            raise ValueError(f"the bytes given are not an ONNX model: {error}") from None
        if not model.HasField("graph"):
            raise ValueError("the bytes given are not an ONNX model (no graph in them)")
        return model
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        file, _ = open_regular_file(path, "ONNX file")
        try:
            with file:
                model = onnx.load_model_from_string(file.read())
        except Exception as error:
            raise ValueError(f"{path!r} is not an ONNX model: {error}") from None
        if not model.HasField("graph"):
            raise ValueError(f"{path!r} is not an ONNX model (no graph in it)")
        if any(map(external_data_helper.uses_external_data, _stored_tensors(model))):
            _check_external_data(model, path)
            try:
                external_data_helper.load_external_data_for_model(model, os.path.dirname(path))
            except Exception as error:
                raise ValueError(f"{path!r}: its external data cannot be read: {error}") from None
        return model
    raise TypeError(f"expected a path, bytes or an onnx.ModelProto, got {type(source).__name__}")


def _stored_tensors(model):
    """Every TensorProto of the main graph: initializers and Constant nodes' values."""
    yield from model.graph.initializer
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                yield attribute.t


def _check_external_data(model, path):
    """Every tensor stored outside the model must lie in a regular file in the model's directory,
    within that file: nothing is read from a device, a FIFO or past a file's end."""
    base = os.path.dirname(os.path.abspath(path))
    for tensor in _stored_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        target = os.path.normpath(os.path.join(base, location))
        if not location or os.path.isabs(location) or \
                os.path.commonpath([base, target]) != base:
            raise ValueError(f"{path!r}: tensor {tensor.name!r} names external data "
                             f"{location!r}, which is not a file in the model's directory")
        file, size = open_regular_file(target, "external data file")
        file.close()
        try:
            offset, length = int(info.get("offset", 0)), int(info.get("length", size))
        except ValueError:
            raise ValueError(f"{path!r}: tensor {tensor.name!r} has a malformed external data "
                             f"offset or length") from None
        if offset < 0 or length < 0 or offset + length > size:
            raise ValueError(f"{path!r}: tensor {tensor.name!r} declares external data at "
                             f"{offset}..{offset + length} of {location!r}, which holds {size} "
                             f"bytes")


def tensor_to_array(tensor, where):
    """numpy_helper.to_array with an error naming the tensor and where it is."""
    if any(dim < 0 for dim in tensor.dims):
        raise ValueError(f"{where} tensor {tensor.name!r} has a negative dimension: "
                         f"{list(tensor.dims)}")
    try:
        return numpy_helper.to_array(tensor)
    except Exception as error:
        raise ValueError(f"{where} tensor {tensor.name!r} (dims {list(tensor.dims)}) cannot be "
                         f"read: {error}") from None


class ValueInfo:
    """A graph input or output as onnxruntime's NodeArg shows it: name, shape, type."""

    def __init__(self, proto):
        self.name = proto.name
        tensor = proto.type.tensor_type
        self.elem_type = tensor.elem_type
        self.type = f"tensor({TYPE_NAMES.get(tensor.elem_type, 'undefined')})"
        self.dtype = (np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
                      if tensor.elem_type in TYPE_NAMES else None)
        if tensor.HasField("shape"):
            self.shape = [dim.dim_value if dim.HasField("dim_value") else
                          (dim.dim_param if dim.HasField("dim_param") else None)
                          for dim in tensor.shape.dim]
            self.rank = len(self.shape)
        else:
            self.shape, self.rank = None, None

    def __repr__(self):
        return f"NodeArg(name={self.name!r}, type={self.type!r}, shape={self.shape!r})"


class Step:
    """One node of the plan: its function and the slots it reads and writes.

    squeeze_y: a recurrent node writes Y without its direction axis, into the slot of the Squeeze
    that followed it (fused when loading; see Graph._fuse_direction_squeezes).
    transpose_y: a bidirectional node writes Y as (T, B, D, H), the engine's own order, into the
    slot of the Transpose (perm 0, 2, 1, 3) that followed it (fused the same way).
    shape_only: the step reads only shapes and constants (see shape_chain).
    """

    __slots__ = ("function", "inputs", "outputs", "node", "op_type", "attributes", "squeeze_y",
                 "transpose_y", "shape_only")

    def __init__(self, function, inputs, outputs, node, op_type, attributes):
        self.function, self.inputs, self.outputs = function, inputs, outputs
        self.node, self.op_type = node, op_type  # the node's name and op type, for messages
        self.attributes = attributes
        self.squeeze_y = False
        self.transpose_y = False
        self.shape_only = False


class Subgraph:
    """A planned subgraph (an If branch): steps over the enclosing plan's slot table, and where
    each of its outputs is found, as (slot, None) for a value its steps (or the enclosing graph)
    compute, or (None, array) for a constant."""

    __slots__ = ("steps", "outputs", "names")

    def __init__(self, steps, outputs, names):
        self.steps, self.outputs, self.names = steps, outputs, names


class Graph:
    """A loaded graph: constants, the plan, and the description of its inputs and outputs.

    Values are numbered slots of one table; a subgraph (an If branch) is planned at load into steps
    over the same table, its own values in slots of their own, reading the enclosing graph's
    values from theirs: a run never looks a name up.
    """

    def __init__(self, source):
        model = load_model(source)
        self.model = model
        graph = model.graph
        self.opsets = {entry.domain: entry.version for entry in model.opset_import}
        self.opset = self.opsets.get("", self.opsets.get("ai.onnx", 1))
        _check_supported(graph, self.opsets, self.opset)
        constants = collections.ChainMap({tensor.name: tensor_to_array(tensor, "initializer")
                                          for tensor in graph.initializer})
        self.inputs = [ValueInfo(v) for v in graph.input if v.name not in constants]
        inferred = _with_inferred_shapes(model).graph
        self.outputs = [ValueInfo(v) for v in inferred.output]
        # Declared and inferred shapes, for handlers that check an input's shape when loading.
        self._shapes = {info.name: [size if isinstance(size, int) and size > 0 else None
                                    for size in info.shape]
                        for info in map(ValueInfo, [*inferred.input, *inferred.value_info])
                        if info.shape is not None}
        slots = collections.ChainMap({"": 0})
        self._slot_count = 1
        self._constant_slots = {}    # slot -> the constant it holds on every run
        self.recurrent_nodes = []    # (RecurrentNode, node proto) in graph order, main graph only
        self.producers = {}          # value name -> (node proto, output index) for runtime values
        # Every value's readers, subgraphs' implicit reads included (for fusing Squeezes).
        self._readers = collections.Counter()
        _count_readers(graph, self._readers)
        # Values a run may hand over as a graph input's or a constant's own memory, and for every
        # runtime value the value whose memory it may view: outputs that share memory are copied.
        self._may_alias = {v.name for v in self.inputs}
        self._viewed = {}
        # Values computed from shapes and constants only: remembered between runs (shape_chain).
        self._shape_values = set()
        self._folding = _FoldBudget(sum(array.nbytes for array in constants.values()))
        for value in self.inputs:
            self._slot(value.name, slots, constants)
        self.steps, step_protos = self._plan_nodes(graph.node, slots, constants, top_level=True)
        self._reuse_outputs(self.steps, step_protos, {value.name for value in self.outputs})
        self.steps, step_protos = self._fuse_conv_relus(self.steps, step_protos)
        self.constants = constants
        self._fuse_direction_squeezes(step_protos, slots)
        self.steps = fuse_shape_chains(self.steps, _chain_step, self._constant_slots)
        for value in self.outputs:
            if value.name not in slots:
                if value.name not in constants:
                    raise ValueError(f"graph output {value.name!r} is not produced by any node")
                self._slot(value.name, slots, constants)
        self.slots = dict(slots)
        # The slot table a run starts from: constants that steps read are filled in once.
        self.template = [None] * self._slot_count
        for slot, value in self._constant_slots.items():
            self.template[slot] = value
        may_alias, viewed = self._may_alias, self._viewed
        # Copied on every run: outputs that may be a graph input, a constant or a view of one (a
        # caller must never hold the plan's own arrays), and outputs that may view the memory of
        # an earlier output (each output is an array of its own, as onnxruntime's are).
        self.copy_outputs = {v.name for v in self.outputs
                             if v.name in may_alias or v.name in constants}
        seen = set()
        for value in self.outputs:
            root = viewed.get(value.name, value.name)
            if root in seen:
                self.copy_outputs.add(value.name)
            seen.add(root)
        # Outputs a recurrent step writes: fresh C-contiguous arrays, handed over as they are.
        recurrent_slots = {slot for step in self.steps
                           if isinstance(step.function, recurrent.RecurrentNode)
                           for slot in step.outputs}
        self.fresh_outputs = {v.name for v in self.outputs if slots[v.name] in recurrent_slots
                              and v.name not in self.copy_outputs}

    def _slot(self, name, slots, constants):
        """The slot of value `name` in the scope `slots`; a new one if it has none yet (filled
        with the constant on every run, if `name` is one)."""
        slot = slots.get(name)
        if slot is None:
            slot = slots[name] = self._slot_count
            self._slot_count += 1
            if name in constants:
                self._constant_slots[slot] = constants[name]
        return slot

    def _plan_nodes(self, nodes, slots, constants, top_level, where=""):
        """(steps, node protos) for `nodes` in the scope (slots, constants), folding every node
        whose inputs are all known. In a subgraph (not top_level) a node whose folding fails
        stays a step: its branch may never run, and its error belongs to the run that takes it."""
        steps, protos = [], []
        for index, node in enumerate(nodes):
            name = node.name or f"{where}{node.op_type}_{index}"
            handler = lookup(node.op_type, node.domain, self.opsets.get(node.domain, self.opset),
                             name)
            for value in node.input:
                if value and value not in slots and value not in constants:
                    raise ValueError(f"node {name!r} ({node.op_type}) reads {value!r}, which no "
                                     f"earlier node, input or initializer provides")
            context = NodeContext(
                op_type=node.op_type, name=name, opset=self.opset,
                attributes={a.name: _attribute(a, name) for a in node.attribute},
                inputs=list(node.input), outputs=list(node.output), constants=constants,
                shapes=self._shapes,
                plan_subgraph=self._subgraph_planner(node, name, slots, constants))
            with _naming(node.op_type, name):
                function = handler(context)
            runtime_only = isinstance(function, (recurrent.RecurrentNode, ControlNode))
            if not runtime_only and all(v == "" or v in constants for v in node.input):
                try:
                    self._fold(node, name, context, function, constants)
                    continue
                except (ValueError, TypeError):
                    if top_level:
                        raise
            if node.op_type == "Identity" and len(node.output) == 1 and node.input and \
                    node.input[0]:
                # A runtime Identity is no step: its output is read from its input's slot.
                slots[node.output[0]] = self._slot(node.input[0], slots, constants)
                if node.input[0] in self._shape_values:
                    self._shape_values.add(node.output[0])
                if top_level:
                    self._viewed[node.output[0]] = self._viewed.get(node.input[0], node.input[0])
                    if node.input[0] in self._may_alias:
                        self._may_alias.add(node.output[0])
                continue
            for value_name in node.input:
                self._slot(value_name, slots, constants)
            step = Step(function, tuple(self._slot(v, slots, constants) for v in node.input),
                        tuple(self._slot(v, slots, constants) for v in node.output), name,
                        node.op_type, context.attributes)
            steps.append(step)
            protos.append(node)
            if not runtime_only and is_shape_only(node.op_type, node.input, constants,
                                                  self._shape_values):
                step.shape_only = True
                self._shape_values.update(value for value in node.output if value)
                if top_level:  # remembered between runs, like a constant: outputs are copied
                    self._may_alias.update(node.output)
            if not top_level:
                continue
            for position, value_name in enumerate(node.output):
                self.producers[value_name] = (node, position)
            if isinstance(function, recurrent.RecurrentNode):
                self.recurrent_nodes.append((function, node))
            elif isinstance(function, ControlNode):
                # A branch may hand over an enclosing value or a constant as it is.
                self._may_alias.update(node.output)
            elif node.op_type in VIEW_OPS and node.input:
                source = node.input[0]
                for value_name in node.output:
                    self._viewed[value_name] = self._viewed.get(source, source)
                if source in self._may_alias or source in constants:
                    self._may_alias.update(node.output)
        return steps, protos

    def _fold(self, node, name, context, function, constants):
        """Compute a node whose inputs are all constants, once, into constants (bounded)."""
        values = [constants.get(v) for v in node.input]
        self._folding.check(node.op_type, name, _fold_bytes(context, values))
        with _naming(node.op_type, name):
            results = [np.asarray(value) for value in _as_tuple(function(*values))]
        self._folding.add(node.op_type, name, results)
        for value_name, value in zip(node.output, results):
            if value_name:
                constants[value_name] = value

    def _subgraph_planner(self, node, name, slots, constants):
        """plan_subgraph(attribute name) for a node's handler: the Subgraph planned from that
        graph attribute, in a scope of its own inside (slots, constants)."""
        def plan_subgraph(attribute_name):
            proto = next((a.g for a in node.attribute if a.name == attribute_name and
                          a.type == onnx.AttributeProto.GRAPH), None)
            if proto is None:
                raise ValueError(f"{node.op_type} node {name!r} has no graph attribute "
                                 f"{attribute_name!r}")
            inner_slots, inner_constants = slots.new_child(), constants.new_child()
            for tensor in proto.initializer:
                inner_constants[tensor.name] = tensor_to_array(
                    tensor, f"node {name!r}: {attribute_name} initializer")
            if proto.input:
                raise ValueError(f"{node.op_type} node {name!r}: its {attribute_name} declares "
                                 f"inputs {[v.name for v in proto.input]}; an If branch takes "
                                 f"none")
            steps, protos = self._plan_nodes(proto.node, inner_slots, inner_constants,
                                             top_level=False, where=f"{name}/{attribute_name}/")
            steps, _ = self._fuse_conv_relus(steps, protos)
            steps = fuse_shape_chains(steps, _chain_step, self._constant_slots)
            outputs = []
            for value in proto.output:
                if value.name in inner_constants:
                    outputs.append((None, inner_constants[value.name]))
                elif value.name in inner_slots:
                    outputs.append((inner_slots[value.name], None))
                else:
                    raise ValueError(f"{node.op_type} node {name!r}: {attribute_name} output "
                                     f"{value.name!r} is not produced by any node")
            return Subgraph(steps, outputs, [value.name for value in proto.output])
        return plan_subgraph

    def _fuse_direction_squeezes(self, step_protos, slots):
        """Fuse the Squeeze of axis 1 that torch puts after every one-direction LSTM/GRU/RNN into
        the recurrent step, which then writes Y (T, 1, B, H) as (T, B, H) into the Squeeze's slot:
        one plan step and one array view fewer a run; and the Transpose (0, 2, 1, 3) after a
        bidirectional one (Step.transpose_y). Only where nothing else reads that Y."""
        readers = self._readers
        recurrent_by_y = {proto.output[0]: step for step, proto in zip(self.steps, step_protos)
                          if isinstance(step.function, recurrent.RecurrentNode)
                          and proto.output and proto.output[0]}
        fused = set()
        for step, proto in zip(self.steps, step_protos):
            if proto.op_type == "Transpose" and readers[proto.input[0]] == 1:
                # Y (T, D, B, H) transposed to (T, B, D, H), as torch exports a bidirectional
                # layer: the engine's output order, written as it is (two copies fewer: the
                # transpose's and that of the Reshape to (T, B, D*H) after it).
                producer = recurrent_by_y.get(proto.input[0])
                perm = next((list(a.ints) for a in proto.attribute if a.name == "perm"), None)
                if producer is not None and producer.function.num_directions == 2 and \
                        producer.function.layout == 0 and perm == [0, 2, 1, 3]:
                    producer.outputs = (slots[proto.output[0]], *producer.outputs[1:])
                    producer.transpose_y = True
                    fused.add(id(step))
                continue
            if proto.op_type != "Squeeze" or readers[proto.input[0]] != 1:
                continue
            producer = recurrent_by_y.get(proto.input[0])
            if producer is None or producer.function.num_directions != 1 or \
                    producer.function.layout != 0 or producer.squeeze_y:
                continue
            axes = self._squeeze_axes(proto)
            if axes is None or [axis + 4 if axis < 0 else axis for axis in axes] != [1]:
                continue
            producer.outputs = (slots[proto.output[0]], *producer.outputs[1:])
            producer.squeeze_y = True
            fused.add(id(step))
        self.steps = [step for step in self.steps if id(step) not in fused]

    def _reuse_outputs(self, steps, protos, graph_outputs):
        """Let each Conv and MaxPool whose output never leaves a run write it into a buffer kept
        between runs (spatial.ReusableOutput): not a graph output, and read by Convs and MaxPools
        only (every read counted, subgraphs' included), which copy what they read and return
        arrays of their own; for a Conv followed by the Relu folded into it, the Relu's value.
        A value read by anything else (a Reshape's view, an op that may return its input) stays
        a fresh array each run."""
        consumers = collections.defaultdict(list)
        for proto in protos:
            for name in proto.input:
                consumers[name].append(proto)

        def stays_inside(name):
            readers = consumers[name]
            return name not in graph_outputs and bool(readers) and \
                len(readers) == self._readers[name] and \
                all(reader.op_type in ("Conv", "MaxPool") for reader in readers)

        for step, proto in zip(steps, protos):
            output = getattr(step.function, "reusable_output", None)
            if output is None or len(proto.output) != 1:
                continue
            name = proto.output[0]
            readers = consumers[name]
            if proto.op_type == "Conv" and len(readers) == 1 and readers[0].op_type == "Relu" \
                    and self._readers[name] == 1 and name not in graph_outputs:
                # The Relu is folded into the Conv (_fuse_conv_relus), in place: its value is
                # the Conv's array.
                name = readers[0].output[0]
            output.reuse = stays_inside(name)

    def _fuse_conv_relus(self, steps, protos):
        """(steps, protos) with every Relu whose input is a Conv's output read by nothing else
        folded into that Conv, which then applies max(y, 0) to its own fresh output in place:
        one step and one pass over a fresh array fewer a run."""
        readers = self._readers
        conv_by_output = {proto.output[0]: step for step, proto in zip(steps, protos)
                          if proto.op_type == "Conv" and len(step.outputs) == 1}
        fused = set()
        for step, proto in zip(steps, protos):
            if proto.op_type != "Relu" or not proto.input or readers[proto.input[0]] != 1:
                continue
            conv = conv_by_output.get(proto.input[0])
            if conv is None or conv.op_type != "Conv":
                continue
            conv.function = _then_relu(conv.function)
            conv.outputs = step.outputs
            conv.op_type = "Conv+Relu"
            fused.add(id(step))
        kept = [(step, proto) for step, proto in zip(steps, protos) if id(step) not in fused]
        return [step for step, _ in kept], [proto for _, proto in kept]

    def _squeeze_axes(self, proto):
        """A Squeeze node's axes if known when loading (attribute, or constant input from 13)."""
        if self.opset < 13:
            return next((list(a.ints) for a in proto.attribute if a.name == "axes"), None)
        if len(proto.input) < 2 or proto.input[1] not in self.constants:
            return None
        return [int(axis) for axis in np.asarray(self.constants[proto.input[1]]).reshape(-1)]


def _then_relu(run):
    """A Conv's run followed by Relu on its output, in place (Conv's output is a fresh array)."""
    def run_then_relu(*values):
        y = run(*values)
        return glue.relu_array(y, out=y)
    run_then_relu.reusable_output = getattr(run, "reusable_output", None)
    return run_then_relu


def _chain_step(function, inputs, outputs):
    """The plan step of a shape_chain.ShapeChain (its errors name the chain's own nodes)."""
    return Step(function, inputs, outputs, "", "ShapeChain", {})


def _walk_nodes(graph):
    """Every node of `graph` and of its subgraphs (If branches, Loop bodies), depth first."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _walk_nodes(attribute.g)
            for subgraph in attribute.graphs:
                yield from _walk_nodes(subgraph)


def _count_readers(graph, readers):
    """Count, per value name, the nodes that read it (a subgraph's reads of an enclosing value
    counted as reads by the node that holds it) and the graph outputs that are it."""
    for node in _walk_nodes(graph):
        readers.update(node.input)
    readers.update(value.name for value in graph.output)


def _check_supported(graph, opsets, default_opset):
    """One ValueError naming every op type of the graph and its subgraphs that fastrnn cannot run
    (with its node count and first node), or nothing."""
    problems = {}   # (op type, domain, why) -> [count, first node name]
    for index, node in enumerate(_walk_nodes(graph)):
        opset = opsets.get(node.domain, default_opset)
        handler, problem = find_handler(node.op_type, node.domain, opset)
        if handler is None:
            entry = problems.setdefault((node.op_type, node.domain, problem),
                                        [0, node.name or f"{node.op_type}_{index}"])
            entry[0] += 1
    if not problems:
        return
    lines = []
    for (op_type, domain, problem), (count, first) in problems.items():
        why = "" if problem == "no handler" else f"; {problem}"
        nodes = "1 node" if count == 1 else f"{count} nodes"
        lines.append(f"  {op_type!r}: {nodes}, the first {first!r}{why}")
    kinds = len({key[0] for key in problems})
    raise ValueError(f"unsupported op{'s' if kinds > 1 else ''}: fastrnn cannot run this graph, "
                     f"it has {kinds} op type{'s' if kinds > 1 else ''} without a handler:\n"
                     + "\n".join(lines) + f"\nsupported ops: {', '.join(supported_ops())}")


def _with_inferred_shapes(model):
    """The model with ONNX shape inference applied, so outputs show shapes as onnxruntime's do."""
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is a courtesy for get_outputs(); the plan does not need it
        return model


def _attribute(proto, node_name):
    value = helper.get_attribute_value(proto)
    if isinstance(value, onnx.TensorProto):
        return tensor_to_array(value, f"node {node_name!r}: attribute {proto.name!r}:")
    try:
        if isinstance(value, bytes):
            return value.decode()
        if isinstance(value, list) and value and isinstance(value[0], bytes):
            return [v.decode() for v in value]
    except UnicodeDecodeError as error:
        raise ValueError(f"node {node_name!r}: attribute {proto.name!r} is not UTF-8 text: "
                         f"{error}") from None
    return value


def _as_tuple(results):
    return results if isinstance(results, tuple) else (results,)


class _naming:
    """Re-raise a user-facing error from a handler or a fold as a ValueError (TypeError kept)
    whose message names the node, unless it does already."""

    def __init__(self, op_type, name):
        self.label = f"{op_type} node {name!r}"
        self.name = name

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is None or not issubclass(kind, (ValueError, TypeError, KeyError, IndexError,
                                                  OverflowError, ZeroDivisionError)):
            return False
        message = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
        if repr(self.name) in message:
            if kind in (ValueError, TypeError):
                return False
            raise ValueError(message) from None
        raise (TypeError if kind is TypeError else ValueError)(
            f"{self.label}: {message}") from None


class _FoldBudget:
    """The bytes constant folding has created so far, against FOLD_LIMIT_BYTES (or twice the
    bytes the graph stores, if that is more)."""

    def __init__(self, stored_bytes):
        self.stored, self.folded = stored_bytes, 0

    def limit(self):
        return max(FOLD_LIMIT_BYTES, 2 * self.stored)

    def check(self, op_type, name, size):
        if size is not None and self.folded + size > self.limit():
            raise ValueError(
                f"{op_type} node {name!r}: folding it when the graph is loaded would create "
                f"{size:,} bytes of constants, beyond the {self.limit():,} bytes folding may "
                f"create in all ({self.folded:,} used); fastrnn refuses graphs whose constants "
                f"expand that far")

    def add(self, op_type, name, results):
        size = sum(result.nbytes for result in results)
        if op_type == "Constant":  # its value is stored in the file, not created by folding
            self.stored += size
            return
        self.check(op_type, name, size)
        self.folded += size


def _fold_bytes(node, values):
    """An upper bound on the bytes of a folded node's outputs, known before it runs, for ops whose
    outputs may be far larger than their inputs; None for the others (at most a few times their
    inputs, checked after they run) and for inputs the op itself will refuse."""
    try:
        op, shapes = node.op_type, [np.shape(v) for v in values if v is not None]
        widest = max((np.asarray(v).dtype.itemsize for v in values if v is not None), default=8)
        if op == "ConstantOfShape":
            fill = node.attribute("value")
            itemsize = 4 if fill is None else np.asarray(fill).dtype.itemsize
            return _count(_ints(values[0])) * itemsize
        if op == "ConstantFill":
            if node.attribute("input_as_shape", 0):
                return _count(_ints(values[0])) * 8
            if node.attribute("shape") is not None:
                return _count(node.attribute("shape")) * 8
            return None
        if op == "Expand":
            return _count(_broadcast(shapes[0], _ints(values[1]))) * widest
        if op in ("Add", "Sub", "Mul", "Div"):
            return _count(_broadcast(*shapes)) * widest
        if op == "Cast":
            return _count(shapes[0]) * 8
        if op == "Concat":
            return sum(_count(shape) for shape in shapes) * widest
        if op == "Gather":
            axis = node.attribute("axis", 0)
            rank = len(shapes[0])
            axis = axis + rank if axis < 0 else axis
            return _count(shapes[0][:axis] + shapes[1] + shapes[0][axis + 1:]) * widest
        if op in ("MatMul", "Gemm"):
            a, b = (list(shape) for shape in shapes[:2])
            if op == "Gemm":
                rows = a[-1] if node.attribute("transA", 0) else a[0]
                columns = b[0] if node.attribute("transB", 0) else b[-1]
                return (rows * columns + sum(_count(s) for s in shapes[2:])) * widest
            batch = _broadcast(a[:-2], b[:-2])
            return _count(batch + a[-2:-1] + b[-1:]) * widest
    except (ValueError, TypeError, IndexError, OverflowError):
        return None  # malformed inputs: the op's own run refuses them, with the node named
    return None


def _ints(value):
    return [int(v) for v in np.asarray(value).reshape(-1)]


def _count(shape):
    """Elements of `shape`, in Python ints (2**70 does not overflow); negative sizes count as 0."""
    return math.prod(max(int(size), 0) for size in shape)


def _broadcast(*shapes):
    """The broadcast of `shapes` (sequences of Python ints), largest size where they disagree."""
    rank = max((len(shape) for shape in shapes), default=0)
    padded = [[1] * (rank - len(shape)) + [int(size) for size in shape] for shape in shapes]
    return [max(column) if 0 not in column else 0 for column in zip(*padded)]
