"""fastrnn.InferenceSession: onnxruntime's InferenceSession interface over a loaded plan."""

import numpy as np

from fastrnn.converters.onnx.graph import Graph


class InferenceSession:
    """Run a whole ONNX graph: recurrent nodes on fastrnn's kernels, the rest in numpy.

        session = fastrnn.InferenceSession("model.onnx")     # path, bytes or onnx.ModelProto
        outputs = session.run(None, {"x": x, "h0": h0})     # a list, in the graph's output order
        session.get_inputs()[0].name, .shape, .type         # as onnxruntime's NodeArg

    Feeds must have the dtype and rank the graph declares (and its fixed sizes); like
    onnxruntime, no dtype is converted. An op fastrnn cannot run is refused here, when the graph
    is loaded, with an error naming the op and the node.
    """

    def __init__(self, path_or_bytes, sess_options=None, providers=None, **kwargs):
        # sess_options/providers are accepted so that onnxruntime call sites work unchanged.
        self._graph = graph = Graph(path_or_bytes)
        slots = graph.slots
        self._template = graph.template
        self._plan = [_bind(step.function, step.inputs, step.outputs) for step in graph.steps]
        self._step_nodes = [step.node for step in graph.steps]
        # (name, slot, dtype, the full shape when every size is fixed, rank, fixed sizes)
        self._feeds = []
        for v in graph.inputs:
            fixed = tuple((axis, size) for axis, size in enumerate(v.shape or ())
                          if isinstance(size, int) and size > 0)
            static = tuple(v.shape) if v.shape is not None and len(fixed) == v.rank else None
            self._feeds.append((v.name, slots[v.name], v.dtype, static, v.rank, fixed))
        self._input_names = frozenset(v.name for v in graph.inputs)
        self._output_slots = {v.name: slots[v.name] for v in graph.outputs}
        self._all_outputs = [(slots[v.name], v.name in graph.copy_outputs) for v in graph.outputs]

    def get_inputs(self):
        return list(self._graph.inputs)

    def get_outputs(self):
        return list(self._graph.outputs)

    def get_providers(self):
        return ["fastrnn"]

    def run(self, output_names, input_feed, run_options=None):
        """The outputs named (None: all, in the graph's order) for the feeds, as numpy arrays."""
        slots = self._template.copy()
        if input_feed.keys() != self._input_names:
            self._bad_feed_names(input_feed)
        for name, slot, dtype, static_shape, rank, fixed_sizes in self._feeds:
            value = input_feed[name]
            if type(value) is not np.ndarray or value.dtype is not dtype:
                value = self._check_feed(name, value, dtype, rank)
            if static_shape is not None:
                if value.shape != static_shape:
                    self._bad_shape(name, value)
            elif rank is not None:
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
        except (TypeError, ValueError, KeyError, IndexError) as error:
            node = self._step_nodes[self._plan.index(step)] if step is not None else "?"
            if str(node) in str(error):
                raise
            raise type(error)(f"node {node!r}: {error}") from error
        if output_names is None:
            wanted = self._all_outputs
        else:
            wanted = [(self._output_slot(name), False) for name in output_names]
        return [np.array(slots[slot]) if copy else np.ascontiguousarray(slots[slot])
                for slot, copy in wanted]

    # -- errors ----------------------------------------------------------------------------------

    def _output_slot(self, name):
        try:
            return self._output_slots[name]
        except KeyError:
            raise ValueError(f"unknown output {name!r}; the graph's outputs are "
                             f"{list(self._output_slots)}") from None

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
