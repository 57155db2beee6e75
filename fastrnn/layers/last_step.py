"""LastStep: the last step of a sequence (Keras's return_sequences=False).

    whole sequence   x (T, B, C) -> x[T-1:]  (1, B, C)
    a stream's step  x_t -> x_t              (the newest step is the last so far)
    a chunk          its last step           (1, B, C)

Only layers that work step by step without state may follow it (Linear, activations, norms):
then computing them on every step and keeping the last equals computing them on the last, which
is how the chain kernel runs it (fastrnn.layers.program: no op of its own; the chain keeps the
last step of what the kernel gives).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fastrnn.layers import Layer, check_dtype


class LastStep(Layer):
    def __init__(self, features: int, *, dtype: Any = np.float32) -> None:
        self.dtype = check_dtype(dtype)
        self.in_features = self.out_features = int(features)

    def sequence(self, x):
        return np.ascontiguousarray(x[-1:])

    def output_steps(self, steps):
        return 1

    def step_into(self, x, out):
        out[...] = x

    def config(self):
        return {"type": "last_step", "features": self.in_features}
