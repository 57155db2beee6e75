"""Shape-only chains of a plan, run once per input shape.

Exported graphs compute sizes at run time: Shape -> Gather -> Unsqueeze -> Concat -> Reshape, or
Shape -> Gather -> Equal -> If. Every step of such a chain reads only constants, the shapes of
runtime values (Shape, Size) and the chain's own values, so its results are a function of those
shapes alone. After planning, each connected chain of two or more such steps becomes one step
that keys its results by the shapes it reads: the first run with given shapes runs the chain's
steps and remembers what they wrote; later runs with the same shapes write the remembered values
into the same slots, one dictionary lookup for the whole chain.

Remembered values persist between runs, like constants: the graph copies a graph output that may
be one (or a view of one) before handing it over, so a caller never holds them.
"""

import numpy as np

from fastrnn.converters.onnx.registry import ControlNode

# Results remembered per chain; past that, a new shape runs the chain's steps (still correct).
CACHE_LIMIT = 64
# Ops whose result depends on the shape of their input, not its values.
SHAPE_OPS = ("Shape", "Size")
# What a failing chain step raises, re-raised with the step's node named.
_RUN_ERRORS = (TypeError, ValueError, KeyError, IndexError, OverflowError, ZeroDivisionError)


def is_shape_only(op_type, inputs, known, shape_values):
    """Whether a node reads only shapes (Shape, Size) or constants and shape-only values (at least
    one): `known` holds the constants' names, `shape_values` the shape-only values' names."""
    if op_type in SHAPE_OPS:
        return bool(inputs) and bool(inputs[0])
    present = [name for name in inputs if name]
    return bool(present) and any(name in shape_values for name in present) and \
        all(name in shape_values or name in known for name in present)


class ShapeChain(ControlNode):
    """One step for a chain of shape-only steps (graph.Step, in plan order), keyed by the shapes
    of the values its Shape and Size steps read."""

    def __init__(self, members, sources):
        self.members, self.sources = members, sources

    def bind(self, inputs, outputs, bind_steps):
        runs = bind_steps(self.members)
        names = [member.node for member in self.members]
        sources = self.sources
        results = {}
        shape = np.shape

        def step(slots):
            key = tuple([shape(slots[source]) for source in sources])
            values = results.get(key)
            if values is not None:
                for slot, value in zip(outputs, values):
                    slots[slot] = value
                return
            position = 0
            try:
                for position, run in enumerate(runs):
                    run(slots)
            except _RUN_ERRORS as error:
                inner = names[position]
                if repr(inner) in str(error) and type(error) in (TypeError, ValueError):
                    raise
                kind = type(error) if type(error) is TypeError else ValueError
                raise kind(f"node {inner!r}: {error}") from error
            if len(results) < CACHE_LIMIT:
                results[key] = tuple(slots[slot] for slot in outputs)
        return step


def step_reads(step):
    """The slots a plan step reads, those its subgraphs' steps read included."""
    reads = set(step.inputs)
    function = step.function
    if isinstance(function, ShapeChain):
        for member in function.members:
            reads |= step_reads(member)
    for branch in (getattr(function, "then_branch", None), getattr(function, "else_branch", None)):
        if branch is not None:
            for inner in branch.steps:
                reads |= step_reads(inner)
            reads.update(slot for slot, _ in branch.outputs if slot is not None)
    return reads


def fuse_shape_chains(steps, make_step, constant_slots):
    """`steps` with every connected chain of two or more shape-only steps (step.shape_only) as one
    ShapeChain step, placed where its last Shape or Size step was. A chain stays as it is if a
    step outside it would read one of its values before that place, or if it reads a value that is
    neither its own, a constant (`constant_slots`) nor what its Shape and Size steps read (an If
    branch's chain reading a shape value of the enclosing graph: the key would not hold it)."""
    members = [index for index, step in enumerate(steps) if step.shape_only]
    if len(members) < 2:
        return steps
    # Connected chains: union-find over members joined by the slots one writes and one reads.
    parent = {index: index for index in members}

    def root(index):
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    writer = {}
    for index in members:
        for slot in steps[index].inputs:
            if slot in writer:
                parent[root(index)] = root(writer[slot])
        for slot in steps[index].outputs:
            writer[slot] = index
    chains = {}
    for index in members:
        chains.setdefault(root(index), []).append(index)
    reads = [step_reads(step) for step in steps]
    replaced, placed = set(), {}
    for chain in chains.values():
        readers_of_shapes = [index for index in chain if steps[index].op_type in SHAPE_OPS]
        if len(chain) < 2 or not readers_of_shapes:
            continue
        place = max(readers_of_shapes)
        chain_set = set(chain)
        written = {slot for index in chain for slot in steps[index].outputs if slot}
        if any(reads[index] & written for index in range(place)
               if index not in chain_set):
            continue
        if any(slot and slot not in written and slot not in constant_slots
               for index in chain if steps[index].op_type not in SHAPE_OPS
               for slot in steps[index].inputs):
            continue
        sources = tuple(dict.fromkeys(steps[index].inputs[0] for index in readers_of_shapes))
        outputs = tuple(dict.fromkeys(slot for index in chain for slot in steps[index].outputs
                                      if slot))
        placed[place] = make_step(ShapeChain([steps[index] for index in chain], sources),
                                  sources, outputs)
        replaced.update(chain)
    fused = []
    for index, step in enumerate(steps):
        if index in placed:
            fused.append(placed[index])
        if index not in replaced:
            fused.append(step)
    return fused
