"""fastrnn.InferenceSession: onnxruntime's InferenceSession interface over a loaded plan."""

import operator
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from fastrnn.converters.onnx.graph import Graph
from fastrnn.converters.onnx.registry import ControlNode
from fastrnn.converters.onnx.stateful import SessionStream, suggest_pairs

ndarray = np.ndarray


class InferenceSession:
    """Run a whole ONNX graph: recurrent nodes on fastrnn's kernels, the rest in numpy.

        session = fastrnn.InferenceSession("model.onnx")     # path, bytes or onnx.ModelProto
        outputs = session.run(None, {"x": x, "h0": h0})     # a list, in the graph's output order
        session.get_inputs()[0].name, .shape, .type         # as onnxruntime's NodeArg

    Feeds must have the dtype and rank the graph declares (and its fixed sizes); like
    onnxruntime, no dtype is converted. An op fastrnn cannot run is refused here, when the graph
    is loaded, with an error naming the op and the node.
    """

    def __init__(self, path_or_bytes, sess_options=None, providers=None, *, weights=None,
                 **kwargs):
        """Load a graph and check that fastrnn can run all of it.

        path_or_bytes: a path to an .onnx file, the file's bytes, or an onnx.ModelProto.
        weights: None to run the recurrent nodes' W and R as the graph stores them, or
        "bfloat16" / "int8" to store them in fewer bits (float32 graphs; docs/precision.md).
        sess_options, providers and other keyword arguments are accepted, and ignored, so that
        onnxruntime call sites work unchanged: the graph runs on fastrnn's CPU kernels and numpy.
        An op fastrnn cannot run is an error here, naming the op and its node.
        """
        self._graph = graph = Graph(path_or_bytes)
        if weights is not None:
            for node in _recurrent_nodes(graph.steps):
                node.use_weights(weights)
        slots = graph.slots
        self._template = graph.template
        # Feeds whose dtype and every size are declared: (name, slot, dtype, shape), checked by
        # identity and one comparison; the others: (name, slot, dtype, rank, fixed sizes).
        self._static_feeds, self._other_feeds = [], []
        for v in graph.inputs:
            fixed = tuple((axis, size) for axis, size in enumerate(v.shape or ())
                          if isinstance(size, int) and size > 0)
            if v.dtype is not None and v.shape is not None and len(fixed) == v.rank:
                self._static_feeds.append((v.name, slots[v.name], v.dtype, tuple(v.shape)))
            else:
                self._other_feeds.append((v.name, slots[v.name], v.dtype, v.rank, fixed))
        # Slots that hold an ndarray of one dtype and shape on every run: what a step need not
        # check. A static feed reaches the plan as an ndarray of its declared dtype and shape.
        known = {slot: (value.dtype, value.shape) for slot, value in enumerate(self._template)
                 if type(value) is ndarray}
        known.update((slot, (dtype, shape)) for _, slot, dtype, shape in self._static_feeds)
        self._plan = _bind_steps(graph.steps, known)
        self._step_nodes = [step.node for step in graph.steps]
        self._input_names = frozenset(v.name for v in graph.inputs)
        # output name -> (slot, what is applied to it before it is handed over)
        self._outputs = {v.name: (slots[v.name], _finisher(v.name, graph)) for v in graph.outputs}
        self._all_outputs = _output_taker([self._outputs[v.name] for v in graph.outputs])

    def get_inputs(self):
        return list(self._graph.inputs)

    def get_outputs(self):
        return list(self._graph.outputs)

    def get_providers(self):
        return ["fastrnn"]

    def stream(self, state: Mapping[str, str] | None = None,
               initial: Mapping[str, npt.ArrayLike] | None = None) -> SessionStream:
        """The graph run chunk by chunk with its state kept inside (see stateful.SessionStream).

        state: graph output name -> the graph input it feeds on the next run, e.g.
        {"stateN": "state"}. initial: state input name -> its first value (default zeros of the
        input's declared shape, a symbolic size counting as 1). Without `state`, a ValueError
        names the pairs that look like state by name and shape.
        """
        if state is None:
            pairs = suggest_pairs(self._graph)
            offer = ", ".join(f"output {out!r} -> input {inp!r}" for out, inp in pairs)
            mapping = "{" + ", ".join(f"{out!r}: {inp!r}" for out, inp in pairs) + "}"
            raise ValueError(
                "stream() needs state=, a mapping of graph output name to the graph input it "
                "feeds on the next run; "
                + (f"this graph's look like: {offer}, i.e. stream(state={mapping})" if pairs
                   else f"no output of this graph matches an input by dtype and shape (outputs "
                        f"{[v.name for v in self._graph.outputs]}, inputs "
                        f"{[v.name for v in self._graph.inputs]})"))
        return SessionStream(self, state, initial)

    def run(self, output_names, input_feed, run_options=None):
        """The outputs named (None: all, in the graph's order) for the feeds, as numpy arrays."""
        try:
            names_match = input_feed.keys() == self._input_names
        except AttributeError:
            names_match = False
        if not names_match:
            self._bad_feed_names(input_feed)
        slots = self._template.copy()
        for name, slot, dtype, shape in self._static_feeds:
            value = input_feed[name]
            if type(value) is not ndarray or value.dtype is not dtype or value.shape != shape:
                value = self._checked_feed(name, value)
            slots[slot] = value
        for name, slot, dtype, rank, fixed_sizes in self._other_feeds:
            value = input_feed[name]
            if type(value) is not ndarray or value.dtype is not dtype:
                value = self._check_feed(name, value, dtype, rank)
            if rank is not None:
                if value.ndim != rank:
                    self._bad_shape(name, value)
                for axis, size in fixed_sizes:
                    if value.shape[axis] != size:
                        self._bad_shape(name, value)
            slots[slot] = value
        step = None
        try:
            for step in self._plan:
                step(slots)
        except (TypeError, ValueError, KeyError, IndexError, OverflowError,
                ZeroDivisionError) as error:
            node = self._step_nodes[self._plan.index(step)] if step is not None else "?"
            if str(node) in str(error) and type(error) in (TypeError, ValueError, KeyError):
                raise
            # An index or size out of range in what the graph computes is a bad value: ValueError.
            kind = type(error) if type(error) in (TypeError, KeyError) else ValueError
            raise kind(f"node {node!r}: {error}") from error
        if output_names is None:
            return self._all_outputs(slots)
        if isinstance(output_names, str):
            raise TypeError(f"output_names must be a list of output names or None, got the "
                            f"string {output_names!r}")
        wanted = [self._output(name) for name in output_names]
        # A name asked for twice gets two arrays, as from onnxruntime.
        taken = set()
        for index, (slot, finish) in enumerate(wanted):
            if slot in taken:
                wanted[index] = (slot, np.array)
            taken.add(slot)
        return _output_taker(wanted)(slots)

    # -- errors ----------------------------------------------------------------------------------

    def _output(self, name):
        try:
            return self._outputs[name]
        except KeyError:
            raise ValueError(f"unknown output {name!r}; the graph's outputs are "
                             f"{list(self._outputs)}") from None

    def _bad_feed_names(self, input_feed):
        if not hasattr(input_feed, "keys"):
            raise TypeError(f"feeds must be a dict of input name to array, got "
                            f"{type(input_feed).__name__}")
        given = set(input_feed.keys())
        unknown = sorted(map(str, given - self._input_names))
        missing = [v.name for v in self._graph.inputs if v.name not in given]
        expected = [v.name for v in self._graph.inputs]
        if unknown:
            raise ValueError(f"unknown input name(s) {unknown} in the feeds; the graph's inputs "
                             f"are {expected}")
        raise ValueError(f"missing input(s) {missing} in the feeds; the graph's inputs are "
                         f"{expected}")

    def _checked_feed(self, name, value):
        """A feed that failed the quick check of a fully declared input: accepted (as a plain
        ndarray) if it is a list or the like, an ndarray subclass or of an equal dtype, else a
        clear error."""
        info = next(v for v in self._graph.inputs if v.name == name)
        value = self._check_feed(name, value, info.dtype, info.rank)
        if value.shape != tuple(info.shape):
            self._bad_shape(name, value)
        return np.asarray(value)  # an ndarray subclass as a plain ndarray, as steps expect

    def _check_feed(self, name, value, dtype, rank):
        info = next(v for v in self._graph.inputs if v.name == name)
        if not isinstance(value, np.ndarray):
            if hasattr(value, "__array__") or isinstance(value, (list, tuple, int, float)):
                value = np.asarray(value)
            else:
                raise TypeError(f"input {name!r} must be a numpy array of {info.type}, got "
                                f"{type(value).__name__}")
        if dtype is not None and value.dtype != dtype:
            raise TypeError(f"input {name!r} must be {info.type} (numpy {dtype}), got "
                            f"numpy {value.dtype}")
        return value

    def _bad_shape(self, name, value):
        info = next(v for v in self._graph.inputs if v.name == name)
        if value.ndim != info.rank:
            raise ValueError(f"input {name!r} must have rank {info.rank}, shape {info.shape}, "
                             f"got shape {value.shape}")
        for axis, size in enumerate(info.shape):
            if isinstance(size, int) and size > 0 and value.shape[axis] != size:
                raise ValueError(f"input {name!r} must have size {size} on axis {axis} (shape "
                                 f"{info.shape}), got shape {value.shape}")


def _finisher(name, graph):
    """What a run applies to an output before handing it over: a copy for an output that may be a
    graph input or constant (or a view of one), nothing for one a recurrent step wrote (always a
    fresh C-contiguous array), else np.ascontiguousarray."""
    if name in graph.copy_outputs:
        return np.array
    if name in graph.fresh_outputs:
        return None
    return _contiguous


def _contiguous(value):
    """`value` as a C-contiguous ndarray, a copy only where needed; a 0-d result stays 0-d (a
    numpy scalar becomes a 0-d array), where np.ascontiguousarray would make it 1-d."""
    if type(value) is ndarray and value.flags.c_contiguous:
        return value
    return np.array(value, order="C")


def _output_taker(outputs):
    """take(slots) -> the list of outputs, from (slot, finisher) pairs in the graph's order."""
    if all(finish is None for _, finish in outputs):
        if len(outputs) == 1:
            ((only, _),) = outputs
            return lambda slots: [slots[only]]
        take_all = operator.itemgetter(*(slot for slot, _ in outputs))
        return lambda slots: [*take_all(slots)]
    return lambda slots: [slots[slot] if finish is None else finish(slots[slot])
                          for slot, finish in outputs]


def _empty_batch_lengths(step, run):
    """A recurrent step that runs a batch of 0 rows as if sequence_lens were omitted: an empty
    sequence_lens says nothing about no rows (the node's own checks would reduce over none)."""
    lens_slot = step.inputs[4] if len(step.inputs) > 4 else 0
    if not lens_slot:
        return run
    batch_axis = 0 if step.attributes.get("layout", 0) else 1
    x_slot = step.inputs[0]

    def run_empty_batch_too(slots):
        lengths, x = slots[lens_slot], slots[x_slot]
        if np.shape(lengths) == (0,) and np.ndim(x) == 3 and np.shape(x)[batch_axis] == 0:
            slots[lens_slot] = None
            try:
                run(slots)
            finally:
                slots[lens_slot] = lengths  # other nodes may read the same feed
        else:
            run(slots)
    return run_empty_batch_too


def _bind_steps(steps, known):
    """step(slots) for each of `steps` (graph.Step), If branches' steps bound inside their node."""
    bound = []
    for step in steps:
        function = step.function
        if isinstance(function, ControlNode):
            bound.append(function.bind(step.inputs, step.outputs,
                                       lambda inner: _bind_steps(inner, known)))
        elif hasattr(function, "bind"):
            bound.append(_empty_batch_lengths(step, function.bind(
                step.inputs, step.outputs, step.squeeze_y, known, step.transpose_y)))
        else:
            bound.append(_bind(function, step.inputs, step.outputs))
    return bound


def _bind(function, inputs, outputs):
    """A plan step as one call on the slot table: reads its inputs, writes its outputs."""
    if len(outputs) == 1:
        (out,) = outputs
        if len(inputs) == 1:
            (a,) = inputs

            def step(slots):
                result = function(slots[a])
                slots[out] = result[0] if type(result) is tuple else result
        elif len(inputs) == 2:
            a, b = inputs

            def step(slots):
                result = function(slots[a], slots[b])
                slots[out] = result[0] if type(result) is tuple else result
        else:
            def step(slots):
                result = function(*[slots[i] for i in inputs])
                slots[out] = result[0] if type(result) is tuple else result
        return step

    def step(slots):
        for slot, value in zip(outputs, function(*[slots[i] for i in inputs])):
            slots[slot] = value
    return step


def _recurrent_nodes(steps):
    """The RecurrentNodes of these steps and of the If branches among them, each once."""
    from fastrnn.converters.onnx.recurrent import RecurrentNode
    found = {}
    for step in steps:
        function = step.function
        if isinstance(function, RecurrentNode):
            found[id(function)] = function
        for label in ("then_branch", "else_branch"):
            branch = getattr(function, label, None)
            if branch is not None:
                found.update((id(node), node) for node in _recurrent_nodes(branch.steps))
    return list(found.values())
