"""Recurrent: an LSTM, GRU or RNN stack inside a chain, run by the engine (a fastrnn.Model).

The equations are the cells' (fastrnn/engine/cells/, one module per cell). On whole sequences the
layer calls model(x) from the zero state, x (T, B, C_in) time-major -> y (T, B, D*H_out); streams
use the model's state table (fastrnn.engine.table): advance() for a step, run_chunk() for a chunk,
read/write/reset for the state, (h (L*D, rows, H_out), c (L*D, rows, H), or (L, rows, 0) for
cells without c). A bidirectional stack needs the whole sequence and is refused for streaming.

The start state is zero unless `initial_state` gives one, (h0 (L*D, H_out), c0 (L*D, H)) with c0
None for cells without c, the same for every row (a model trained with a learned start state, as
Neural Amp Modeler's LSTMs are): whole sequences start from it, a stream starts from it and
reset() returns to it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fastrnn.layers import Layer


class Recurrent(Layer):
    def __init__(self, model, *, initial_state=None):
        from fastrnn.model import Model
        if not isinstance(model, Model):
            raise TypeError(f"Recurrent wraps a fastrnn.Model, got {type(model).__name__}")
        if model.config.batch_first:  # inside a chain every array is time-major
            # as stored: low-bit weights stay low-bit
            model = model._with_config(dataclasses.replace(model.config, batch_first=False))
        self.model = model
        self.dtype = model.dtype
        self.in_features, self.out_features = model.input_size, model.output_size
        self.initial_state = None if initial_state is None else _start_state(model, initial_state)

    def start_state(self, rows):
        """(h, c) for `rows` rows at the start: initial_state repeated, or None for zeros."""
        if self.initial_state is None:
            return None
        h0, c0 = self.initial_state
        h = np.repeat(h0[:, None, :], rows, axis=1)
        return h if c0 is None else (h, np.repeat(c0[:, None, :], rows, axis=1))

    def sequence(self, x):
        y, _ = self.model(x, self.start_state(x.shape[1]))
        return y

    def stream_refusal(self):
        if self.model.config.bidirectional:
            return (f"{self!r} is bidirectional: its reverse direction needs the whole sequence "
                    f"before its first output, so it cannot stream. Run it on whole sequences")
        return None

    def table(self, rows):
        return RecurrentTable(self.model, rows, self.start_state(rows))

    def config(self):
        return {"type": "recurrent", **self.model.config.to_json(),
                **({"initial_state": True} if self.initial_state is not None else {})}

    def weights(self):
        arrays = {f"{index}.{name}": array for index, layer in enumerate(self.model.layers)
                  for name, array in sorted(layer.arrays().items())}
        if self.initial_state is not None:
            h0, c0 = self.initial_state
            arrays["initial_h"] = h0
            if c0 is not None:
                arrays["initial_c"] = c0
        return arrays

    def __repr__(self):
        return f"Recurrent({self.model!r})"


def _start_state(model, initial_state):
    """initial_state as read-only (h0 (L*D, H_out), c0 (L*D, H) or None) of the model's dtype."""
    h_shape, c_shape = model.state_shapes(1)
    if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
        raise ValueError("initial_state must be (h0, c0), with c0 None for a GRU or RNN")
    h0, c0 = initial_state
    if (c0 is None) != (c_shape is None):
        raise ValueError(f"a {model.kind} initial_state " + ("needs a c0" if c_shape else
                                                              "has no c0: pass (h0, None)"))
    checked = []
    for name, value, shape in (("h0", h0, h_shape), ("c0", c0, c_shape)):
        if value is None:
            checked.append(None)
            continue
        array = np.array(value, dtype=model.dtype, copy=True, order="C")
        if array.shape != (shape[0], shape[2]):
            raise ValueError(f"initial_state {name} must have shape {(shape[0], shape[2])} "
                             f"(layers x directions, size), got {array.shape}")
        array.setflags(write=False)
        checked.append(array)
    return tuple(checked)


class RecurrentTable:
    def __init__(self, model, rows, start=None):
        self.table = model.state_table(rows)
        self.rows = slice(0, rows)
        # (h, c) for every row at the start, or None for the zero state.
        self.start = start if start is None or isinstance(start, tuple) else (start, None)
        self._step = self.table.stepper(np.arange(rows, dtype=np.int64))
        self.reset()

    def step(self, x, out):
        self._step(x, out)

    def chunk(self, xs):
        return self.table.run_chunk(xs)

    def state(self):
        return list(self.table.read(self.rows))

    def state_shapes(self):
        return [self.table.h.shape, self.table.c.shape]

    def load(self, arrays):
        h, c = arrays
        self.table.write(self.rows, h, c)

    def reset(self):
        self.table.reset(self.rows)
        if self.start is not None:
            self.table.write(self.rows, *self.start)
