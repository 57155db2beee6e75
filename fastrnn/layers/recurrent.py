"""Recurrent: an LSTM, GRU or RNN stack inside a chain, run by the engine (a fastrnn.Model).

The equations are the cells' (fastrnn/engine/cells/, one module per cell). On whole sequences the
layer calls model(x) from the zero state, x (T, B, C_in) time-major -> y (T, B, D*H_out); streams
use the model's state table (fastrnn.engine.table): advance() for a step, run_chunk() for a chunk,
read/write/reset for the state, (h (L*D, rows, H_out), c (L*D, rows, H), or (L, rows, 0) for
cells without c). A bidirectional stack needs the whole sequence and is refused for streaming.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fastrnn.layers import Layer


class Recurrent(Layer):
    def __init__(self, model):
        from fastrnn.model import Model
        if not isinstance(model, Model):
            raise TypeError(f"Recurrent wraps a fastrnn.Model, got {type(model).__name__}")
        if model.config.batch_first:  # inside a chain every array is time-major
            # as stored: low-bit weights stay low-bit
            model = model._with_config(dataclasses.replace(model.config, batch_first=False))
        self.model = model
        self.dtype = model.dtype
        self.in_features, self.out_features = model.input_size, model.output_size

    def sequence(self, x):
        y, _ = self.model(x)
        return y

    def stream_refusal(self):
        if self.model.config.bidirectional:
            return (f"{self!r} is bidirectional: its reverse direction needs the whole sequence "
                    f"before its first output, so it cannot stream. Run it on whole sequences")
        return None

    def table(self, rows):
        return RecurrentTable(self.model, rows)

    def config(self):
        return {"type": "recurrent", **self.model.config.to_json()}

    def weights(self):
        return {f"{index}.{name}": array for index, layer in enumerate(self.model.layers)
                for name, array in sorted(layer.arrays().items())}

    def __repr__(self):
        return f"Recurrent({self.model!r})"


class RecurrentTable:
    def __init__(self, model, rows):
        self.table = model.state_table(rows)
        self.rows = slice(0, rows)
        self._step = self.table.stepper(np.arange(rows, dtype=np.int64))

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
