"""Control flow: If, with both branches planned when the graph is loaded.

Each branch is a subgraph planned into steps over the enclosing plan's slot table (graph.Subgraph):
its nodes read the enclosing graph's values from their slots, as ONNX's outer scope, and write
their own values into slots of their own. A run reads the condition, runs the chosen branch's
steps and copies the branch's outputs into the If node's output slots: no lookup by name, no
subgraph walk.
"""

import numpy as np

from fastrnn.converters.onnx.glue import MAX_OPSET
from fastrnn.converters.onnx.registry import ControlNode, register

# What a failing branch step raises, re-raised with the branch's node named.
_RUN_ERRORS = (TypeError, ValueError, KeyError, IndexError, OverflowError, ZeroDivisionError)


@register("If", opsets=(1, MAX_OPSET))
def if_node(node):
    then_branch = node.plan_subgraph("then_branch")
    else_branch = node.plan_subgraph("else_branch")
    count = len(node.outputs)
    for label, branch in (("then_branch", then_branch), ("else_branch", else_branch)):
        if len(branch.outputs) != count:
            raise node.error(f"its {label} has {len(branch.outputs)} outputs, the node {count}")
    return IfNode(node.name, then_branch, else_branch)


class IfNode(ControlNode):
    """If: cond (a one-element bool tensor) picks then_branch (true) or else_branch (false); the
    node's outputs are the chosen branch's outputs."""

    def __init__(self, name, then_branch, else_branch):
        self.name, self.then_branch, self.else_branch = name, then_branch, else_branch

    def bind(self, inputs, outputs, bind_steps):
        (cond_slot,) = inputs[:1]
        branches = {True: self._bound(self.then_branch, "then_branch", bind_steps),
                    False: self._bound(self.else_branch, "else_branch", bind_steps)}
        name = self.name

        def step(slots):
            cond = slots[cond_slot]
            if type(cond) is not np.ndarray or cond.size != 1:
                cond = np.asarray(cond)
                if cond.size != 1:
                    raise ValueError(f"If node {name!r}: cond must hold one element, got shape "
                                     f"{cond.shape}")
            steps, nodes, label, results = branches[bool(cond.reshape(-1)[0])]
            position = 0
            try:
                for position, run in enumerate(steps):
                    run(slots)
            except _RUN_ERRORS as error:
                inner = nodes[position]
                if repr(inner) in str(error) and type(error) in (TypeError, ValueError):
                    raise
                kind = type(error) if type(error) is TypeError else ValueError
                raise kind(f"node {inner!r} (in If node {name!r}'s {label}): {error}") from error
            for out, (slot, constant) in zip(outputs, results):
                slots[out] = slots[slot] if constant is None else constant
        return step

    @staticmethod
    def _bound(branch, label, bind_steps):
        return bind_steps(branch.steps), [s.node for s in branch.steps], label, branch.outputs
