"""Residual: a skip connection around a list of layers.

    y_t = x_t + f(x)_t        f: the inner layers, run one after the other

f must keep the channel count and the step count (a conv inside must pad to T' = T). The add is
numpy's, into the layer's output buffer (a step allocates nothing); the inner layers keep their
own kernels and state, and a residual streams when every inner layer does.
"""

from __future__ import annotations

import numpy as np

from fastrnn.layers import Layer


class Residual(Layer):
    def __init__(self, layers):
        layers = list(layers)
        if not layers:
            raise ValueError("a Residual needs at least one inner layer")
        for index, layer in enumerate(layers):
            if layer.dtype != layers[0].dtype:
                raise ValueError("a Residual's layers compute in one dtype")
            if index and layer.in_features != layers[index - 1].out_features:
                raise ValueError(f"inner layer {index} takes {layer.in_features} channels, the "
                                 f"one before gives {layers[index - 1].out_features}")
        if layers[0].in_features != layers[-1].out_features:
            raise ValueError(f"a Residual adds its input to its output: the inner layers take "
                             f"{layers[0].in_features} channels and give "
                             f"{layers[-1].out_features}")
        self.layers = layers
        self.dtype = layers[0].dtype
        self.in_features = self.out_features = layers[0].in_features

    def output_steps(self, steps):
        for layer in self.layers:
            if layer.output_steps(steps) != steps:
                raise ValueError(f"a Residual adds its input to its output, but {layer!r} "
                                 f"changes the number of steps")
        return steps

    def sequence(self, x):
        self.output_steps(x.shape[0])
        h = x
        for layer in self.layers:
            h = np.ascontiguousarray(layer.sequence(h))
        return h + x

    def stream_refusal(self):
        for index, layer in enumerate(self.layers):
            refusal = layer.stream_refusal()
            if refusal:
                return f"inner layer {index}, {refusal}"
        return None

    def table(self, rows):
        return ResidualTable(self, rows)

    def config(self):
        return {"type": "residual", "layers": [layer.config() for layer in self.layers]}

    def weights(self):
        return {f"{index}.{name}": array for index, layer in enumerate(self.layers)
                for name, array in layer.weights().items()}

    def __repr__(self):
        return f"Residual({', '.join(repr(layer) for layer in self.layers)})"


class ResidualTable:
    def __init__(self, residual, rows):
        self.tables = [layer.table(rows) for layer in residual.layers]
        self.between = [np.empty((rows, layer.out_features), residual.dtype)
                        for layer in residual.layers[:-1]]

    def step(self, x, out):
        h = x
        for table, destination in zip(self.tables, self.between + [out]):
            table.step(h, destination)
            h = destination
        np.add(out, x, out=out)

    def chunk(self, xs):
        h = xs
        for table in self.tables:
            h = np.ascontiguousarray(table.chunk(h))
        return h + xs

    def state(self):
        return [array for table in self.tables for array in table.state()]

    def state_shapes(self):
        return [shape for table in self.tables for shape in table.state_shapes()]

    def load(self, arrays):
        position = 0
        for table in self.tables:
            count = len(table.state_shapes())
            table.load(arrays[position:position + count])
            position += count

    def reset(self):
        for table in self.tables:
            table.reset()
