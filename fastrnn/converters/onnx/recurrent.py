"""LSTM, GRU and RNN nodes (opsets 7-22), run by the engine's kernels.

Each node is translated once, when the graph is loaded, into a one-layer fastrnn Config and
the engine's Plan (the gate permutation is in this package's docstring). Every run then calls the
engine's `run_sequence`, or `step_block` for a one-step forward call.

ONNX conventions handled here (X and Y axes for layout 0; layout 1 swaps the first two of X, Y,
initial_h, initial_c, Y_h and Y_c):
    X (T, B, I)  W (D, G*H, I)  R (D, G*H, H)  B (D, 2*G*H)  P (D, 3H)  sequence_lens (B,)
    initial_h, initial_c (D, B, H)  ->  Y (T, D, B, H)  Y_h, Y_c (D, B, H)
- Rows past their sequence_lens are zero in Y. A row whose length is 0 gets zero Y_h and Y_c, as
  onnxruntime gives (not its initial state).
- activation_alpha/activation_beta are consumed in order by the activations that take them
  (alpha: Affine, LeakyRelu, ThresholdedRelu, ScaledTanh, HardSigmoid, Elu; beta: Affine,
  ScaledTanh, HardSigmoid); one left out takes onnxruntime's default: LeakyRelu 0.01,
  HardSigmoid 0.2/0.5, Elu 1.0, 0 for the others.
- W, R, B and P must be known when loading (initializers, Constant nodes, or folded from them);
  weights fed at run time are refused with an error naming the node.
"""

import threading

import numpy as np

from fastrnn.engine.activations import ACTIVATION_CODES, activation_code
from fastrnn.engine.cells import DEFAULT_ACTIVATIONS
from fastrnn.engine.driver import run_sequence, step_block, step_scratch_size
from fastrnn.engine.plan import Plan
from fastrnn.engine.quantise import LOW_BIT_FORMATS, quantise_layers
from fastrnn.converters.onnx.registry import register
from fastrnn.engine.weights import Config, LayerWeights, check_layers

ACTIVATION_NAMES = {code: name for name, code in ACTIVATION_CODES.items()}
USES_ALPHA = {"Affine", "LeakyRelu", "ThresholdedRelu", "ScaledTanh", "HardSigmoid", "Elu"}
USES_BETA = {"Affine", "ScaledTanh", "HardSigmoid"}
# onnxruntime's values for an alpha/beta the node leaves out (checked by the tests).
DEFAULT_ALPHA = {"LeakyRelu": 0.01, "HardSigmoid": 0.2, "Elu": 1.0}
DEFAULT_BETA = {"HardSigmoid": 0.5}

# ONNX gate block -> fastrnn gate block, as indices of ONNX blocks in fastrnn's order.
GATE_ORDER = {
    "lstm": (0, 2, 3, 1),    # ONNX i, o, f, c -> fastrnn i, f, g(=c), o
    "gru": (1, 0, 2),        # ONNX z, r, h    -> fastrnn r, z, n(=h)
    "rnn": (0,),
}
PEEPHOLE_ORDER = (0, 2, 1)   # ONNX P i, o, f -> fastrnn i, f, o
NUM_ACTIVATIONS = {"lstm": 3, "gru": 2, "rnn": 1}
DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}
# Optional inputs by position: X, W, R, B, sequence_lens, initial_h, initial_c, P.
X, W, R, B, SEQUENCE_LENS, INITIAL_H, INITIAL_C, P = range(8)


def _permute_blocks(array, order, hidden):
    """Reorder the gate blocks (of `hidden` rows each) along axis 0."""
    return np.concatenate([array[block * hidden:(block + 1) * hidden] for block in order])


def _activations(node, family, directions):
    """The node's activations as fastrnn's ((name, alpha, beta), ...), forward then reverse."""
    count = NUM_ACTIVATIONS[family]
    names = node.attribute("activations")
    if names is None:
        default = DEFAULT_ACTIVATIONS["rnn_tanh" if family == "rnn" else family]
        names = list(default) * directions
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if len(names) != count * directions:
        raise node.error(f"activations must list {count * directions} functions ({count} per "
                         f"direction), got {names}")
    alphas = list(node.attribute("activation_alpha") or [])
    betas = list(node.attribute("activation_beta") or [])
    table = []
    for name in names:
        try:
            canonical = ACTIVATION_NAMES[activation_code(name)]
        except ValueError as error:
            raise node.error(str(error)) from None
        alpha = alphas.pop(0) if canonical in USES_ALPHA and alphas else \
            DEFAULT_ALPHA.get(canonical, 0.0)
        beta = betas.pop(0) if canonical in USES_BETA and betas else \
            DEFAULT_BETA.get(canonical, 0.0)
        table.append((canonical, float(alpha), float(beta)))
    return tuple(table)


class RecurrentNode:
    """One ONNX LSTM/GRU/RNN node, translated: config, weights in fastrnn's layout, packed."""

    def __init__(self, node, family):
        self.node = node
        self.family = family
        self.name = node.name
        for index, label in ((W, "W"), (R, "R"), (B, "B"), (P, "P")):
            if node.has_input(index) and node.constant_input(index) is None:
                raise node.error(f"weight input {label} ({node.inputs[index]!r}) is not known "
                                 f"when loading; fastrnn needs recurrent weights as initializers "
                                 f"or Constant nodes, not graph inputs")
        if not (node.has_input(W) and node.has_input(R)):
            raise node.error("needs inputs X, W and R")
        w, r = node.constant_input(W), node.constant_input(R)
        if w.dtype not in (np.float32, np.float64):
            raise node.error(f"weights must be float32 or float64, got {w.dtype}")
        direction = node.attribute("direction", "forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        if direction not in DIRECTIONS:
            raise node.error(f"direction must be forward, reverse or bidirectional, got "
                             f"{direction!r}")
        self.direction = direction
        directions = DIRECTIONS[direction]
        gates = len(GATE_ORDER[family])
        hidden = node.attribute("hidden_size") or r.shape[-1]
        if w.ndim != 3 or w.shape[0] != directions or w.shape[1] != gates * hidden:
            raise node.error(f"W must be ({directions}, {gates * hidden}, input_size), got "
                             f"{w.shape}")
        if r.shape != (directions, gates * hidden, hidden):
            raise node.error(f"R must be {(directions, gates * hidden, hidden)}, got {r.shape}")
        self.layout = node.attribute("layout", 0)
        if self.layout not in (0, 1):
            raise node.error(f"layout must be 0 or 1, got {self.layout}")
        self.dtype = w.dtype
        self.hidden_size = hidden
        self.input_size = w.shape[2]
        self.num_directions = directions
        bias = node.constant_input(B)
        if bias is None:
            bias = np.zeros((directions, 2 * gates * hidden), w.dtype)
        elif bias.shape != (directions, 2 * gates * hidden):
            raise node.error(f"B must be {(directions, 2 * gates * hidden)}, got {bias.shape}")
        peephole = node.constant_input(P) if family == "lstm" else None
        if peephole is not None and peephole.shape != (directions, 3 * hidden):
            raise node.error(f"P must be {(directions, 3 * hidden)}, got {peephole.shape}")
        activations = _activations(node, family, directions)
        kind = {"lstm": "lstm", "gru": "gru", "rnn": "rnn_tanh"}[family]
        if family == "rnn" and all(entry == ("Relu", 0.0, 0.0) for entry in activations):
            kind = "rnn_relu"
        defaults = tuple((name, 0.0, 0.0) for name in DEFAULT_ACTIVATIONS[kind]) * directions
        if activations == defaults:
            activations = ()  # the cell's defaults: the Model reads as PyTorch's
        clip = node.attribute("clip")
        self.config = Config(
            kind=kind, input_size=self.input_size, hidden_size=hidden,
            bidirectional=directions == 2, clip=float(clip) if clip else 0.0,
            input_forget=bool(node.attribute("input_forget", 0)) if family == "lstm" else False,
            linear_before_reset=bool(node.attribute("linear_before_reset", 0))
            if family == "gru" else True,
            activations=activations)
        order = GATE_ORDER[family]
        layers = []
        for d in range(directions):
            b_ih, b_hh = bias[d, :gates * hidden], bias[d, gates * hidden:]
            layers.append(LayerWeights(
                w_ih=_permute_blocks(w[d], order, hidden),
                w_hh=_permute_blocks(r[d], order, hidden),
                b_ih=_permute_blocks(b_ih, order, hidden),
                b_hh=_permute_blocks(b_hh, order, hidden),
                peephole=None if peephole is None else
                _permute_blocks(peephole[d], PEEPHOLE_ORDER, hidden).reshape(3, hidden)))
        self.layers = check_layers(self.config, layers, self.dtype)
        reverse = (direction == "reverse",) if directions == 1 else (False, True)
        self.reverse = reverse
        self.plan = Plan(self.config, self.layers, self.dtype, reverse=reverse)
        self.has_c = family == "lstm"
        self.state_width_c = hidden if self.has_c else 0
        outputs = node.outputs + [""] * (3 - len(node.outputs))
        self.wants_y, self.wants_h, self.wants_c = (name != "" for name in outputs[:3])
        self.num_outputs = len(node.outputs)
        # One timestep of a one-direction node at layout 0 runs the streaming step kernel.
        self.step_arguments = _step_arguments(self) if directions == 1 and self.layout == 0 \
            else None

    def use_weights(self, weight_format):
        """Re-pack this node's W and R as `weight_format` (InferenceSession(weights=...)):
        "bfloat16" or "int8" for a float32 node (fastrnn.engine.quantise), or its own dtype."""
        if weight_format == self.dtype.name:
            return
        if weight_format not in LOW_BIT_FORMATS or self.dtype != np.float32:
            raise self.node.error(f"weights={weight_format!r}: a {self.dtype.name} node takes "
                                  f"{self.dtype.name}" + (", 'bfloat16' or 'int8'"
                                                          if self.dtype == np.float32 else ""))
        self.plan = Plan(self.config, self.layers, self.dtype, reverse=self.reverse,
                         encoded=quantise_layers(self.layers, weight_format))
        if self.step_arguments is not None:
            self.step_arguments = _step_arguments(self)

    # -- run time ------------------------------------------------------------------------------

    def _check(self, value, label, shape):
        if not isinstance(value, np.ndarray) or value.dtype != self.dtype:
            dtype = getattr(value, "dtype", type(value).__name__)
            raise TypeError(f"{self.node.op_type} node {self.name!r}: {label} must be a "
                            f"{self.dtype} array, got {dtype}")
        if value.shape != shape:
            raise ValueError(f"{self.node.op_type} node {self.name!r}: {label} must have shape "
                             f"{shape}, got {value.shape}")

    def _state(self, value, label, width, batch):
        directions = self.num_directions
        if value is None:
            return np.zeros((directions, batch, width), self.dtype)
        if self.layout:
            self._check(value, label, (batch, directions, width))
            value = value.transpose(1, 0, 2)
        else:
            self._check(value, label, (directions, batch, width))
        return np.array(value, order="C")  # always a copy: the kernels write the final state in it

    def __call__(self, x, w=None, r=None, b=None, sequence_lens=None, initial_h=None,
                 initial_c=None, p=None):
        """The node's outputs for its inputs (W, R, B and P were taken when loading)."""
        return self._general(x, sequence_lens, initial_h, initial_c)[:self.num_outputs]

    def bind(self, inputs, outputs, squeeze_y=False, known=None, transpose_y=False):
        """This node as a step of the execution plan: step(slots) reads the input slots and writes
        the output slots. squeeze_y: Y is written without its direction axis (the graph's Squeeze
        of it is fused into this step). known: {slot: (dtype, shape)} for slots that hold, on
        every run, an ndarray of that dtype and shape (constants, feeds the session checks).
        transpose_y: Y is written as (T, B, D, H) (the graph's Transpose of it is fused)."""
        if transpose_y:
            return _transposed_step(self, inputs, outputs)
        return _plan_step(self, inputs, outputs, squeeze_y, known or {})

    def _general(self, x, sequence_lens, initial_h, initial_c, transpose_y=False):
        if not isinstance(x, np.ndarray) or x.dtype != self.dtype or x.ndim != 3:
            raise TypeError(f"{self.node.op_type} node {self.name!r}: X must be a 3-D "
                            f"{self.dtype} array, got "
                            f"{getattr(x, 'dtype', type(x).__name__)} {np.shape(x)}")
        if self.layout:
            x = x.transpose(1, 0, 2)
        steps, batch, features = x.shape
        if features != self.input_size:
            raise ValueError(f"{self.node.op_type} node {self.name!r}: X must have "
                             f"{self.input_size} features, got shape {x.shape}")
        hidden = self.hidden_size
        h = self._state(initial_h, "initial_h", hidden, batch)
        c = self._state(initial_c, "initial_c", self.state_width_c, batch)
        lengths = None
        if sequence_lens is not None:
            lengths = np.asarray(sequence_lens)
            if lengths.dtype.kind not in "iu" or lengths.shape != (batch,):
                raise ValueError(f"{self.node.op_type} node {self.name!r}: sequence_lens must "
                                 f"be ({batch},) integers, got {lengths.dtype} {lengths.shape}")
            if batch and (lengths.min() < 0 or lengths.max() > steps):
                raise ValueError(f"{self.node.op_type} node {self.name!r}: sequence_lens must "
                                 f"lie in 0..{steps}, got {lengths.tolist()}")
            lengths = None if not batch or lengths.min() == steps else lengths.astype(np.int64)
        y = self._sequence(x, h, c, batch, lengths)
        return self._outputs(y, h, c, steps, batch, transpose_y)

    def _sequence(self, x, h, c, batch, lengths):
        steps = x.shape[0]
        kernel_lengths = np.full(batch, steps, np.int64) if lengths is None else lengths
        out = run_sequence(self.plan, np.ascontiguousarray(x), h, c, kernel_lengths)
        if lengths is not None:
            empty = lengths == 0
            if empty.any():
                h[:, empty] = 0
                c[:, empty] = 0
        return out

    def _outputs(self, y, h, c, steps, batch, transpose_y=False):
        """(Y, Y_h, Y_c), None for those the node leaves out, from y (T, B, D*H), h, c (D, B, .);
        Y as (T, B, D, H) where transpose_y (layout 0)."""
        results = []
        if self.wants_y:
            y = y.reshape(steps, batch, self.num_directions, self.hidden_size)
            order = (1, 0, 2, 3) if self.layout else (0, 2, 1, 3)
            if transpose_y:
                results.append(np.ascontiguousarray(y))
            else:
                results.append(np.ascontiguousarray(y.transpose(order))
                               if self.num_directions > 1 or self.layout
                               else y.reshape(steps, 1, batch, self.hidden_size))
        else:
            results.append(None)
        if self.layout:
            h = np.ascontiguousarray(h.transpose(1, 0, 2))
            c = np.ascontiguousarray(c.transpose(1, 0, 2))
        results.append(h if self.wants_h else None)
        results.append(c if self.wants_c and self.has_c else None)
        return tuple(results)


def _node_slots(node, inputs, outputs):
    """(x, sequence_lens, initial_h, initial_c) input slots and (Y, Y_h, Y_c) output slots of a
    node: slot 0 holds None for an omitted input and stands for an omitted output (never
    written); a node without c writes no Y_c."""
    inputs = (*inputs, *(0,) * (8 - len(inputs)))
    y_out, h_out, c_out = (*outputs, 0, 0)[:3]
    return (inputs[X], inputs[SEQUENCE_LENS], inputs[INITIAL_H], inputs[INITIAL_C], y_out, h_out,
            c_out if node.has_c else 0)


def _transposed_step(node, inputs, outputs):
    """RecurrentNode.bind for a node whose Y is written as (T, B, D, H) (Step.transpose_y)."""
    x_slot, lens_slot, h_slot, c_slot, y_out, h_out, c_out = _node_slots(node, inputs, outputs)

    def step(slots):
        y, h, c = node._general(slots[x_slot], slots[lens_slot], slots[h_slot], slots[c_slot],
                                transpose_y=True)
        slots[y_out] = y
        if h_out:
            slots[h_out] = h
        if c_out:
            slots[c_out] = c
    return step


def _plan_step(node, inputs, outputs, squeeze_y, known):
    """RecurrentNode.bind, with a lean path for one timestep (one direction, layout 0).

    Everything the step needs is bound here, once; a run checks only what can change between runs
    (the types and shapes of X and the states) and takes the general path for the rest. Where X
    and the states are values whose dtype and shape are known (`known`), a run checks nothing.
    Y, Y_h and Y_c are fresh arrays on every run: the caller keeps them, the session never writes
    them again.
    """
    x_slot, lens_slot, h_slot, c_slot, y_out, h_out, c_out = _node_slots(node, inputs, outputs)

    def general(slots):
        y, h, c = node._general(slots[x_slot], slots[lens_slot], slots[h_slot], slots[c_slot])
        if y_out:
            slots[y_out] = y[:, 0] if squeeze_y else y
        if h_out:
            slots[h_out] = h
        if c_out:
            slots[c_out] = c

    if node.step_arguments is None:
        return general

    weights, layout, parameters = node.step_arguments
    dtype, input_size, hidden, has_c = node.dtype, node.input_size, node.hidden_size, node.has_c
    y_rows_index = (0,) if squeeze_y else (0, 0)   # Y's (B, H) block, where the kernel writes
    by_x_shape = {}
    per_thread = threading.local()   # each thread's kernel scratch: sessions may run in threads
    ndarray, empty = np.ndarray, np.empty

    def shapes_for(x_shape):
        """(state rows, state shape, Y shape, empty c) for an X of one timestep, else None."""
        if len(x_shape) != 3 or x_shape[0] != 1 or x_shape[2] != input_size:
            return None
        batch = x_shape[1]
        shapes = (np.arange(batch, dtype=np.int64), (1, batch, hidden),
                  (1, batch, hidden) if squeeze_y else (1, 1, batch, hidden),
                  empty((1, batch, 0), dtype))   # GRU/RNN: no c; nothing writes it
        if len(by_x_shape) < 64:
            by_x_shape[x_shape] = shapes
        return shapes

    def advance(slots, x, h, c, rows, y_shape):
        """One kernel step from x (1, B, I), into h and c (fresh copies of the initial state)."""
        step_input = x[0]
        if not step_input.flags.carray:  # numba would compile another specialisation for it
            step_input = np.array(step_input, order="C")
        y = empty(y_shape, dtype)
        batch = rows.shape[0]
        scratch = getattr(per_thread, "scratch", None)
        if scratch is None or scratch.shape[0] < step_scratch_size(node.plan, batch):
            scratch = per_thread.scratch = empty(step_scratch_size(node.plan, batch), dtype)
        step_block(weights, layout, parameters, rows, h, c, scratch, 0, batch, step_input,
                   y[y_rows_index])
        if y_out:
            slots[y_out] = y
        if h_out:
            slots[h_out] = h
        if c_out:
            slots[c_out] = c

    def checked_step(slots):
        x = slots[x_slot]
        if type(x) is not ndarray or x.dtype is not dtype or slots[lens_slot] is not None:
            return general(slots)
        shapes = by_x_shape.get(x.shape) or shapes_for(x.shape)
        if shapes is None:
            return general(slots)
        rows, state_shape, y_shape, no_c = shapes
        initial_h = slots[h_slot]
        if (type(initial_h) is ndarray and initial_h.dtype is dtype
                and initial_h.shape == state_shape):
            h = initial_h.copy()  # the kernel writes the final state into it
        else:
            h = node._state(initial_h, "initial_h", hidden, state_shape[1])
        if not has_c:
            c = no_c
        else:
            initial_c = slots[c_slot]
            if (type(initial_c) is ndarray and initial_c.dtype is dtype
                    and initial_c.shape == state_shape):
                c = initial_c.copy()
            else:
                c = node._state(initial_c, "initial_c", hidden, state_shape[1])
        advance(slots, x, h, c, rows, y_shape)

    x_known = known.get(x_slot)
    shapes = shapes_for(x_known[1]) if x_known and x_known[0] == dtype else None
    if shapes is None or lens_slot:
        return checked_step
    rows, state_shape, y_shape, no_c = shapes
    if known.get(h_slot) != (dtype, state_shape) or \
            (has_c and known.get(c_slot) != (dtype, state_shape)):
        return checked_step

    def known_step(slots):
        c = slots[c_slot].copy() if has_c else no_c
        advance(slots, slots[x_slot], slots[h_slot].copy(), c, rows, y_shape)
    return known_step


def _step_arguments(node):
    """step_block's arguments that are fixed for the node: the plan's three arrays.

    A one-direction node's state (1, B, H) is the streaming kernel's state table for one layer.
    The kernel's specialisation for the node's dtype is compiled (or loaded from numba's cache)
    here, when the graph is loaded, not on the first run.
    """
    plan = node.plan
    arguments = (plan.weights, plan.layout, plan.parameters)
    dtype, hidden = node.dtype, node.hidden_size
    step_block(*arguments, np.zeros(1, np.int64), np.zeros((1, 1, hidden), dtype),
               np.zeros((1, 1, node.state_width_c), dtype),
               np.zeros(step_scratch_size(plan, 1), dtype), 0, 0,
               np.zeros((1, node.input_size), dtype), np.zeros((1, hidden), dtype))
    return arguments


def _handler(family):
    def handler(node):
        return RecurrentNode(node, family)
    handler.__name__ = f"{family}_node"
    return handler


RECURRENT_OPS = ("LSTM", "GRU", "RNN")
for _op, _family in zip(RECURRENT_OPS, ("lstm", "gru", "rnn")):
    register(_op, opsets=(7, 22))(_handler(_family))
