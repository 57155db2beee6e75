"""The op registry: one handler per ONNX op family, keyed by op type and opset range.

A handler is registered with

    @register("Squeeze", opsets=(1, 22))
    def squeeze(node):          # node: a NodeContext (attributes, constant inputs, opset)
        ...
        return run              # run(*input_values) -> one array or a tuple, one per node output

It is called once, when the graph is loaded, and returns the function the execution plan calls on
every run. Registering the same op type twice over overlapping opsets is an error, and a graph with
ops that have no handler for their opset is refused when it is loaded, with one error naming every
such op type, how many nodes use it and the first of them.

Run-time allocations whose size a graph computes (ConstantOfShape, Expand, Tile, Range, ...) are
checked against MAX_RUN_BYTES with `check_allocation` before anything is allocated, so that a
hostile graph cannot ask for terabytes from a few bytes of input.
"""

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

# The most bytes one op may allocate for a result whose size the graph computes at run time from
# its values (not from the size of its inputs): 1 GiB, far above what a real model asks for.
MAX_RUN_BYTES = 1 << 30

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


def find_handler(op_type: str, domain: str, opset: int) -> tuple[Callable | None, str | None]:
    """(handler, None) for `op_type` at `opset`, or (None, why there is none)."""
    if domain not in ("", "ai.onnx"):
        return None, f"from domain {domain!r}: fastrnn runs ops of the default ONNX domain only"
    entries = _HANDLERS.get(op_type)
    if not entries:
        return None, "no handler"
    for first, last, handler in entries:
        if first <= opset <= last:
            return handler, None
    ranges = ", ".join(f"{first}-{last}" for first, last, _ in entries)
    return None, f"at opset {opset}: fastrnn handles {op_type!r} for opsets {ranges}"


def lookup(op_type, domain, opset, node_name):
    """The handler for `op_type` at `opset`, or a ValueError naming the op and the node."""
    handler, problem = find_handler(op_type, domain, opset)
    if handler is None:
        raise ValueError(f"unsupported op {op_type!r} (node {node_name!r}) {problem}; supported "
                         f"ops: {', '.join(supported_ops())}")
    return handler


def check_allocation(op_type: str, shape, itemsize: int) -> tuple:
    """`shape` as a tuple of ints, or a ValueError if an array of that shape and item size would
    pass MAX_RUN_BYTES (or a size is negative). Counted in Python ints: no overflow."""
    shape = tuple(int(size) for size in shape)
    if any(size < 0 for size in shape):
        raise ValueError(f"{op_type}: negative size in shape {shape}")
    size = math.prod(shape) * int(itemsize)
    if size > MAX_RUN_BYTES:
        raise ValueError(f"{op_type}: a result of shape {shape} would take {size:,} bytes, "
                         f"beyond the {MAX_RUN_BYTES:,} bytes fastrnn lets one op allocate "
                         f"(registry.MAX_RUN_BYTES)")
    return shape


def supported_ops():
    """The op types with a handler, sorted."""
    return sorted(_HANDLERS)


class ControlNode:
    """What a control-flow handler (If) returns: a node that runs planned subgraphs, bound to the
    slot table by the session, never folded when loading."""

    def bind(self, inputs: tuple, outputs: tuple, bind_steps: Callable) -> Callable:
        """step(slots) for this node reading slots `inputs` and writing `outputs`; bind_steps
        (list of graph.Step) -> list of step(slots), for its subgraphs' steps."""
        raise NotImplementedError


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
    # plan_subgraph(attribute name) -> the Subgraph planned from a graph attribute (If branches)
    plan_subgraph: Callable[[str], Any] | None = field(default=None, repr=False)

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
