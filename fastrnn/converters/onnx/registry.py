"""The op registry: one handler per ONNX op family, keyed by op type and opset range.

A handler is registered with

    @register("Squeeze", opsets=(1, 22))
    def squeeze(node):          # node: a NodeContext (attributes, constant inputs, opset)
        ...
        return run              # run(*input_values) -> one array or a tuple, one per node output

It is called once, when the graph is loaded, and returns the function the execution plan calls on
every run. Registering the same op type twice over overlapping opsets is an error, and a graph with
an op that has no handler for its opset is refused when it is loaded, naming the op and the node.
"""

from dataclasses import dataclass, field

import numpy as np

# op type -> list of (first opset, last opset, handler)
_HANDLERS = {}


def register(op_type, opsets):
    """Register the decorated handler for `op_type` over the inclusive opset range `opsets`."""
    first, last = opsets

    def decorate(handler):
        entries = _HANDLERS.setdefault(op_type, [])
        for other_first, other_last, other in entries:
            if first <= other_last and other_first <= last:
                raise ValueError(f"duplicate handler for ONNX op {op_type!r}: opsets "
                                 f"{first}-{last} overlap {other.__name__}'s {other_first}-"
                                 f"{other_last}")
        entries.append((first, last, handler))
        return handler

    return decorate


def lookup(op_type, domain, opset, node_name):
    """The handler for `op_type` at `opset`, or a ValueError naming the op and the node."""
    label = f"{op_type!r} (node {node_name!r})"
    if domain not in ("", "ai.onnx"):
        raise ValueError(f"unsupported op {label} from domain {domain!r}: fastrnn runs ops of "
                         f"the default ONNX domain only")
    entries = _HANDLERS.get(op_type)
    if not entries:
        raise ValueError(f"unsupported op {label}: fastrnn has no handler for {op_type!r}; "
                         f"supported ops: {', '.join(supported_ops())}")
    for first, last, handler in entries:
        if first <= opset <= last:
            return handler
    ranges = ", ".join(f"{first}-{last}" for first, last, _ in entries)
    raise ValueError(f"unsupported op {label} at opset {opset}: fastrnn handles {op_type!r} "
                     f"for opsets {ranges}")


def supported_ops():
    """The op types with a handler, sorted."""
    return sorted(_HANDLERS)


@dataclass
class NodeContext:
    """What a handler sees of one node when the graph is loaded."""

    op_type: str
    name: str
    opset: int
    attributes: dict        # name -> python value (get_attribute_value; tensors as numpy)
    inputs: list            # input value names; '' for an omitted optional input
    outputs: list           # output value names; '' for an omitted optional output
    constants: dict         # value name -> numpy array, for every value known when loading
    shapes: dict = field(default_factory=dict)  # value name -> shape (ints, None where unknown),
                                                # for values whose shape the model declares

    def attribute(self, name, default=None):
        return self.attributes.get(name, default)

    def has_input(self, index):
        return index < len(self.inputs) and self.inputs[index] != ""

    def constant_input(self, index):
        """Input `index`'s value if known when loading (initializer, Constant), else None."""
        if not self.has_input(index):
            return None
        return self.constants.get(self.inputs[index])

    def input_shape(self, index):
        """Input `index`'s shape as the model declares it (ints, None where unknown), or None."""
        if not self.has_input(index):
            return None
        return self.shapes.get(self.inputs[index])

    def error(self, message):
        return ValueError(f"{self.op_type} node {self.name!r}: {message}")


def as_ints(value):
    """A 1-D integer tensor (or None) as a tuple of Python ints."""
    if value is None:
        return None
    return tuple(int(v) for v in np.asarray(value).reshape(-1))
