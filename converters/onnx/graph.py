"""Loading an ONNX graph into an execution plan, once.

Loading parses the model, looks up a handler for every node (refusing any op without one, by op
type and node name), folds every node whose inputs are all known (initializers, Constant nodes and
what is computed from them alone: the weight slicing and concatenation torch exports emit) into
constants, and lists the remaining nodes as steps over numbered value slots. A run fills the input
slots, calls each step's function and reads the output slots: no lookups by name, no re-validation
of what loading already checked.
"""

import collections
import os

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fastrnn.converters.onnx import glue, recurrent  # noqa: F401  (registers the handlers)
from fastrnn.converters.onnx.registry import NodeContext, lookup

# Ops whose output may be a view of their first input: a graph output reached from a graph input or
# a constant only through these is copied, so a caller never holds the plan's constants.
VIEW_OPS = {"Identity", "Squeeze", "Unsqueeze", "Reshape", "Transpose", "Slice", "Flatten", "Cast",
            "Split", "Expand"}
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
        if not os.path.exists(source):
            raise FileNotFoundError(f"no ONNX file at {os.fspath(source)!r}")
        try:
            model = onnx.load(os.fspath(source))  # also reads tensors stored as external data
        except Exception as error:
            raise ValueError(f"{os.fspath(source)!r} is not an ONNX model: {error}") from None
        if not model.HasField("graph"):
            raise ValueError(f"{os.fspath(source)!r} is not an ONNX model (no graph in it)")
        return model
    raise TypeError(f"expected a path, bytes or an onnx.ModelProto, got {type(source).__name__}")


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
    """

    __slots__ = ("function", "inputs", "outputs", "node", "op_type", "squeeze_y")

    def __init__(self, function, inputs, outputs, node, op_type):
        self.function, self.inputs, self.outputs = function, inputs, outputs
        self.node, self.op_type = node, op_type  # the node's name and op type, for messages
        self.squeeze_y = False


class Graph:
    """A loaded graph: constants, the plan, and the description of its inputs and outputs."""

    def __init__(self, source):
        model = load_model(source)
        self.model = model
        graph = model.graph
        self.opsets = {entry.domain: entry.version for entry in model.opset_import}
        self.opset = self.opsets.get("", self.opsets.get("ai.onnx", 1))
        constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
        self.inputs = [ValueInfo(v) for v in graph.input if v.name not in constants]
        self.outputs = [ValueInfo(v) for v in _with_inferred_shapes(model).graph.output]
        slots = {"": 0}
        self.steps = []
        step_protos = []             # the node proto of each step
        self.recurrent_nodes = []    # (RecurrentNode, step) in graph order
        self.producers = {}          # value name -> (node proto, output index) for runtime values
        may_alias = set(constants) | {v.name for v in self.inputs}
        available = set(constants) | {v.name for v in self.inputs} | {""}
        for index, node in enumerate(graph.node):
            name = node.name or f"{node.op_type}_{index}"
            handler = lookup(node.op_type, node.domain, self.opsets.get(node.domain, self.opset),
                             name)
            for value in node.input:
                if value not in available:
                    raise ValueError(f"node {name!r} ({node.op_type}) reads {value!r}, which no "
                                     f"earlier node, input or initializer provides")
            context = NodeContext(
                op_type=node.op_type, name=name, opset=self.opset,
                attributes={a.name: _attribute(a) for a in node.attribute},
                inputs=list(node.input), outputs=list(node.output), constants=constants)
            function = handler(context)
            available.update(node.output)
            is_recurrent = isinstance(function, recurrent.RecurrentNode)
            if not is_recurrent and all(v == "" or v in constants for v in node.input):
                results = function(*[constants.get(v) for v in node.input])
                for value_name, value in zip(node.output, _as_tuple(results)):
                    if value_name:
                        constants[value_name] = np.asarray(value)
                continue
            for value_name in list(node.input) + list(node.output):
                if value_name not in slots:
                    slots[value_name] = len(slots)
            step = Step(function, tuple(slots[v] for v in node.input),
                        tuple(slots[v] for v in node.output), name, node.op_type)
            self.steps.append(step)
            step_protos.append(node)
            for position, value_name in enumerate(node.output):
                self.producers[value_name] = (node, position)
            if is_recurrent:
                self.recurrent_nodes.append((function, node))
            elif node.op_type in VIEW_OPS and node.input and node.input[0] in may_alias:
                may_alias.update(node.output)
        self.constants = constants
        self._fuse_direction_squeezes(step_protos, slots)
        for value in self.inputs:
            slots.setdefault(value.name, len(slots))
        for value in self.outputs:
            if value.name not in slots:
                if value.name not in constants:
                    raise ValueError(f"graph output {value.name!r} is not produced by any node")
                slots[value.name] = len(slots)
        self.slots = slots
        # The slot table a run starts from: constants that steps read are filled in once.
        self.template = [None] * len(slots)
        for value_name, slot in slots.items():
            if value_name in constants:
                self.template[slot] = constants[value_name]
        self.copy_outputs = {v.name for v in self.outputs if v.name in may_alias}
        # Outputs a recurrent step writes: fresh C-contiguous arrays, handed over as they are.
        recurrent_slots = {slot for step in self.steps
                           if isinstance(step.function, recurrent.RecurrentNode)
                           for slot in step.outputs}
        self.fresh_outputs = {v.name for v in self.outputs
                              if slots[v.name] in recurrent_slots and v.name not in may_alias}

    def _fuse_direction_squeezes(self, step_protos, slots):
        """Fuse the Squeeze of axis 1 that torch puts after every one-direction LSTM/GRU/RNN into
        the recurrent step, which then writes Y (T, 1, B, H) as (T, B, H) into the Squeeze's slot:
        one plan step and one array view fewer a run. Only where nothing else reads that Y."""
        graph = self.model.graph
        readers = collections.Counter(value for node in graph.node for value in node.input)
        readers.update(value.name for value in graph.output)
        recurrent_by_y = {proto.output[0]: step for step, proto in zip(self.steps, step_protos)
                          if isinstance(step.function, recurrent.RecurrentNode)
                          and proto.output and proto.output[0]}
        fused = set()
        for step, proto in zip(self.steps, step_protos):
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

    def _squeeze_axes(self, proto):
        """A Squeeze node's axes if known when loading (attribute, or constant input from 13)."""
        if self.opset < 13:
            return next((list(a.ints) for a in proto.attribute if a.name == "axes"), None)
        if len(proto.input) < 2 or proto.input[1] not in self.constants:
            return None
        return [int(axis) for axis in np.asarray(self.constants[proto.input[1]]).reshape(-1)]


def _with_inferred_shapes(model):
    """The model with ONNX shape inference applied, so outputs show shapes as onnxruntime's do."""
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is a courtesy for get_outputs(); the plan does not need it
        return model


def _attribute(proto):
    value = helper.get_attribute_value(proto)
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value


def _as_tuple(results):
    return results if isinstance(results, tuple) else (results,)
