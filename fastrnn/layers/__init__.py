"""Layers of a whole model (fastrnn.Chain): one module per family, equations in its docstring.

Every layer works on time-major arrays: a whole sequence is x (T, B, C_in) -> (T', B, C_out) and
one step is x_t (B, C_in) -> (B, C_out). Each family has a jitted per-step function and a jitted
whole-sequence function (fastrnn.engine.jit.kernel):

    linear.py      Linear                      y = W x + b
    conv.py        Conv1d                      causal streaming through a ring buffer
    activation.py  ReLU ... Softmax, Hardtanh  one kernel, the function picked by a code
    norm.py        LayerNorm, Affine           Affine: a BatchNorm1d not folded into a neighbour
    recurrent.py   Recurrent                   LSTM / GRU / RNN: a fastrnn.Model and its state table
    residual.py    Residual                    y = x + f(x) around a list of layers
    last_step.py   LastStep                    a sequence's last step (return_sequences=False)
    program.py     Program, run_program        a whole chain as one flat program and its kernel

A layer's streaming state lives in a table made by `layer.table(rows)`:

    step(x, out)     one timestep for every row: x (rows, C_in) -> out (rows, C_out), in place
    chunk(xs)        xs (T, rows, C_in) -> (T, rows, C_out), the state carried on
    state()          the state as a list of host arrays (copies), in a canonical order
    load(arrays)     the inverse of state(); the arrays are checked against state_shapes()
    reset()          back to the zero state

Stateless layers (Linear, activations, norms) get a StatelessTable whose state is empty.

Those tables serve each layer on its own. A whole chain streams through one kernel instead
(program.py): the chain's layers compiled into a flat program of ops (an int64 table of op codes
and offsets into one flat weights array and one flat state array) and one jitted loop over
passes of a few dozen samples x ops, which calls each family's flat step (`linear_flat`, `conv_flat`,
`activation_flat`, `layer_norm_flat`, `affine_flat`, and `cell_flat` for recurrent stacks, or
the engine's step_block for stacks cell_flat does not run). Each flat step computes its family's
equations as the step kernel beside it does, on offsets into flat arrays instead of array views.
"""

from __future__ import annotations

import numpy as np

from fastrnn.engine.jit import call


class Layer:
    """What every layer has: sizes, dtype, a whole-sequence call and a streaming table."""

    in_features: int
    out_features: int
    dtype: np.dtype

    def sequence(self, x: np.ndarray) -> np.ndarray:
        """x (T, B, C_in), C-contiguous of the layer's dtype, from the zero state -> (T', B, C_out)."""
        raise NotImplementedError

    def step_into(self, x: np.ndarray, out: np.ndarray) -> None:
        """A stateless layer's one step: x (B, C_in) -> out (B, C_out)."""
        raise NotImplementedError

    def stepper(self):
        """step_into as a callable step(x, out) with little between the caller and the kernel.
        x and out must be C-contiguous arrays of the layer's dtype (ChainStream makes sure)."""
        return self.step_into

    def output_steps(self, steps: int) -> int:
        """T' for an input of T steps (a convolution without causal padding changes it)."""
        return steps

    def stream_refusal(self) -> str | None:
        """Why this layer cannot stream, or None when it can."""
        return None

    def table(self, rows: int):
        """The streaming state of `rows` rows (see the module docstring)."""
        return StatelessTable(self)

    def config(self) -> dict:
        """The layer's settings as JSON-able values (the chain's fingerprint and repr use them)."""
        raise NotImplementedError

    def weights(self) -> dict[str, np.ndarray]:
        """The layer's arrays by name (the chain's fingerprint hashes them)."""
        return {}

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self.config().items()
                            if key != "type")
        return f"{type(self).__name__}({options})"


class StatelessTable:
    """The table of a layer without state: steps and chunks go straight to its kernels."""

    def __init__(self, layer: Layer) -> None:
        self.layer = layer
        self.step = layer.stepper()

    def chunk(self, xs):
        return self.layer.sequence(xs)

    def state(self):
        return []

    def state_shapes(self):
        return []

    def load(self, arrays):
        if arrays:
            raise ValueError(f"{self.layer!r} has no state; got {len(arrays)} array(s)")

    def reset(self):
        pass


def as_weight(value, dtype, shape, name):
    """`value` as a fresh C-contiguous array of `dtype` and exactly `shape` (ValueError naming it)."""
    array = np.array(value, dtype=dtype, copy=True, order="C")
    if array.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {array.shape}")
    array.setflags(write=False)
    return array


def entry_point(dispatcher, *arguments):
    """The compiled entry point of a step kernel for these arguments' types (x, out: zero-row
    stand-ins), compiled now; Numba's dispatcher spends microseconds a call matching argument
    types, a step's whole budget. The dispatcher itself where Numba lacks those internals."""
    import numba
    call(dispatcher, *arguments)
    try:
        return dispatcher.overloads[tuple(numba.typeof(a) for a in arguments)].entry_point
    except (KeyError, AttributeError):
        return dispatcher


def rows(features, dtype):
    """A zero-row (0, features) array: the type of a step's x or out, for entry_point."""
    return np.zeros((0, features), dtype)


def check_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"a layer computes in float32 or float64, got {dtype}")
    return dtype


from fastrnn.layers.linear import Linear  # noqa: E402 (after Layer, which they subclass)
from fastrnn.layers.conv import Conv1d  # noqa: E402
from fastrnn.layers.activation import Activation, ACTIVATIONS  # noqa: E402
from fastrnn.layers.norm import Affine, LayerNorm  # noqa: E402
from fastrnn.layers.recurrent import Recurrent  # noqa: E402
from fastrnn.layers.residual import Residual  # noqa: E402
from fastrnn.layers.last_step import LastStep  # noqa: E402

__all__ = ["Layer", "StatelessTable", "Linear", "Conv1d", "Activation", "ACTIVATIONS", "Affine",
           "LayerNorm", "Recurrent", "Residual", "LastStep"]
