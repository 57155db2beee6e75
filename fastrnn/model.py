"""fastrnn.Model: a recurrent stack with its weights, called like a PyTorch module."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fastrnn import fileformat
from fastrnn.engine.driver import run_sequence
from fastrnn.engine.plan import Plan
from fastrnn.engine.quantise import FLOAT_FORMATS, MATRICES, check_format, quantise_layers
from fastrnn.engine.table import CpuStateTable
from fastrnn.engine.weights import Config, LayerWeights, check_layers
from fastrnn.state import State
from fastrnn.validation import as_float_array, as_lengths, check_shape, is_torch_tensor

if TYPE_CHECKING:  # for type checkers only: numpy.typing and torch cost import time
    from typing import Union

    import numpy.typing as npt
    import torch

    from fastrnn.chain import Chain
    from fastrnn.stream import Stream

    # What model(x) gives back: numpy arrays, or torch tensors when x is one.
    ArrayOrTensor = Union[np.ndarray, torch.Tensor]
    from fastrnn.state import StateLike


def _as_layer_weights(weights, index):
    """A LayerWeights from a LayerWeights or a mapping of its field names (KeyError otherwise)."""
    if isinstance(weights, LayerWeights):
        return weights
    if not isinstance(weights, Mapping):
        raise TypeError(f"layer {index}: expected a fastrnn.LayerWeights or a mapping of weight "
                        f"names to arrays, got {type(weights).__name__}")
    known = set(LayerWeights.__dataclass_fields__)
    unknown = sorted(set(weights) - known)
    if unknown:
        raise KeyError(f"layer {index}: unknown weight name(s) {unknown}; expected among "
                       f"{sorted(known)}")
    for key in ("w_ih", "w_hh", "b_ih", "b_hh"):
        if weights.get(key) is None:
            raise KeyError(f"layer {index}: missing weight {key!r}")
    return LayerWeights(**weights)


class Model:
    """A stacked, optionally bidirectional LSTM, GRU or RNN.

        y, (h, c) = lstm_model(x, state=None, lengths=None)
        y, h = gru_or_rnn_model(x, state=None, lengths=None)

    x is (T, B, I), or (B, T, I) when batch_first, or (T, I) for a single unbatched sequence.
    y is (T, B, D*H_out) (batch_first: (B, T, D*H_out)). The state is what torch returns: for an
    LSTM a fastrnn.State, the named tuple (h, c) laid out as torch's (h_n, c_n) (`state.h`,
    `state.c`); for a GRU or RNN the array h itself, (L*D, B, H_out). When x is a torch tensor,
    y and the state are torch tensors (CPU tensors made with torch.from_numpy: no copy); numpy
    arrays otherwise. Build one with a converter (fastrnn.from_torch, fastrnn.from_onnx),
    fastrnn.load, fastrnn.from_numpy, or directly from a Config and LayerWeights in fastrnn's layout
    (fastrnn.engine.weights).
    """

    device = "cpu"

    def __init__(self, config: Config, layers: Sequence[LayerWeights | Mapping[str, Any]],
                 dtype: npt.DTypeLike | None = None) -> None:
        if not isinstance(config, Config):
            raise TypeError(f"config must be a fastrnn.Config, got {type(config).__name__}")
        layers = [_as_layer_weights(w, index) for index, w in enumerate(layers)]
        if dtype is None:
            first = np.asarray(layers[0].w_ih) if layers else None
            dtype = np.float64 if first is not None and first.dtype == np.float64 else np.float32
        self.config = config
        self.dtype = np.dtype(dtype)
        self.plan = Plan(config, check_layers(config, layers, self.dtype), self.dtype)
        # Read-only views into the plan: the weights are held once, and an edit in place (which
        # would reach some paths and not others, and not the snapshot fingerprint) is refused.
        self.layers = self.plan.layers
        # What a converter had to assume because the weights cannot tell (e.g. {"kind":
        # "rnn_tanh", "batch_first": False}); shown by repr and `fastrnn info`.
        self.assumptions: dict[str, Any] = {}

    # -- description -------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """The cell: "lstm", "gru", "rnn_tanh" or "rnn_relu"."""
        return self.config.kind

    @property
    def input_size(self) -> int:
        """I, the features of each input step."""
        return self.config.input_size

    @property
    def hidden_size(self) -> int:
        """H, the units of each layer (an LSTM with a projection outputs proj_size of them)."""
        return self.config.hidden_size

    @property
    def output_size(self) -> int:
        """Width of y: num_directions * H_out."""
        return self.config.num_directions * self.config.output_size

    @property
    def num_parameters(self) -> int:
        """How many weights and biases the model holds."""
        return sum(array.size for w in self.layers for array in w.arrays().values())

    def __repr__(self) -> str:
        c = self.config
        options = [f"input_size={c.input_size}", f"hidden_size={c.hidden_size}",
                   f"num_layers={c.num_layers}"]
        options += [f"{name}={getattr(c, name)!r}" for name, default in
                    (("bidirectional", False), ("batch_first", False), ("proj_size", 0),
                     ("clip", 0.0), ("input_forget", False), ("linear_before_reset", True),
                     ("activations", ())) if getattr(c, name) != default]
        assumed = "".join(f", assumed {name}={value!r}" for name, value in self.assumptions.items())
        weights = "" if self.plan.encoded is None else f", weights={self.weight_format}"
        return (f"fastrnn.Model({c.kind}, {', '.join(options)}, dtype={self.dtype.name}{weights}"
                f"{assumed})")

    # -- weight formats ----------------------------------------------------------------------

    @property
    def weight_format(self) -> str:
        """How the weight matrices are stored: "float32", "float64", "bfloat16" or "int8"."""
        return self.plan.weight_format

    def with_weights(self, weight_format: str) -> Model:
        """This model with its weight matrices (W_ih, W_hh, the LSTM's W_proj) stored as
        `weight_format`: "bfloat16" or "int8" (see docs/precision.md), or "float32"/"float64".

        bfloat16 rounds each float32 weight to nearest even; int8 stores q = round(w / s) with one
        float32 scale s = max|row| / 127 per output row. Biases, peepholes, the state and all
        arithmetic stay float32: a float64 model is refused for the low-bit formats (take
        .with_weights("float32") first). The formats start from this model's weights as they
        stand: from a low-bit model, "float32" gives the float32 values it computes with.
        Every path runs the result: whole sequences, streams, pools, chains, save/load.
        """
        weight_format = check_format(weight_format)
        if weight_format in FLOAT_FORMATS:
            model = Model(self.config, self.layers, dtype=weight_format)
        elif weight_format == self.weight_format:
            model = self._with_config(self.config)
        else:
            if self.dtype != np.float32:
                raise TypeError(f"{weight_format} weights run with float32 arithmetic; this "
                                f"model is {self.dtype.name}: take "
                                f"model.with_weights('float32') first")
            model = Model._from_encoded(self.config, self.layers,
                                        quantise_layers(self.layers, weight_format))
        model.assumptions = dict(self.assumptions)
        return model

    @classmethod
    def _from_encoded(cls, config: Config, layers: Sequence[LayerWeights],
                      encoded: list[dict[str, Any]]) -> Model:
        """A float32 model whose matrices are `encoded` (per layer-direction {name: Quantised},
        of the shapes `layers` has; `layers` gives the rest)."""
        layers = check_layers(config, list(layers), np.float32)
        formats = {q.format for e in encoded for q in e.values()}
        if len(encoded) != len(layers) or len(formats) != 1:
            raise ValueError("encoded weights must give every layer's matrices in one format")
        for w, e in zip(layers, encoded):
            if {name: getattr(w, name).shape for name in e} != \
                    {name: q.shape for name, q in e.items()} or \
                    set(e) != {name for name in w.arrays() if name in MATRICES}:
                raise ValueError("encoded matrices do not match the layers' shapes")
        model = cls.__new__(cls)
        model.config = config
        model.dtype = np.dtype(np.float32)
        model.plan = Plan(config, layers, model.dtype, encoded=encoded)
        model.layers = model.plan.layers
        model.assumptions = {}
        return model

    def _with_config(self, config: Config) -> Model:
        """This model's weights, as stored, under `config` (of the same shapes; e.g. another
        batch_first)."""
        if self.plan.encoded is None:
            return Model(config, self.layers, self.dtype)
        return Model._from_encoded(config, self.layers, self.plan.encoded)

    # -- state -------------------------------------------------------------------------------

    def state_shapes(self, batch: int) -> tuple[tuple[int, int, int],
                                                tuple[int, int, int] | None]:
        """Shapes of h and c (None for GRU/RNN) for `batch` rows, as torch lays them out."""
        c = self.config
        rows = c.num_layers * c.num_directions
        h_shape = (rows, batch, c.output_size)
        return h_shape, ((rows, batch, c.hidden_size) if c.kind == "lstm" else None)

    def initial_state(self, batch: int) -> State:
        """A zero State (h, c) for `batch` rows; c is None for a GRU or RNN."""
        h_shape, c_shape = self.state_shapes(batch)
        return State(np.zeros(h_shape, self.dtype),
                     None if c_shape is None else np.zeros(c_shape, self.dtype))

    def check_state(self, state: StateLike | None, batch: int,
                    unbatched: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """`state` (None, State, (h, c) or h) as fresh contiguous (h, c) arrays for the kernels.

        c is (L*D, B, 0) for cells without one. The arrays are copies: the caller's are never
        written. With unbatched, h is (L*D, H_out) as torch takes it for a (T, I) input.
        """
        h_shape, c_shape = self.state_shapes(batch)
        kernel_c_shape = c_shape or h_shape[:2] + (0,)
        if state is None:
            return np.zeros(h_shape, self.dtype), np.zeros(kernel_c_shape, self.dtype)
        if isinstance(state, (tuple, list)):
            if len(state) != 2:
                raise ValueError(f"state must be (h, c) or h; got a sequence of {len(state)}")
            h, c = state
        else:
            h, c = state, None
        if self.kind == "lstm" and c is None:
            raise ValueError("an LSTM state needs both h and c: pass (h, c) or a fastrnn.State")
        if self.kind != "lstm" and c is not None:
            raise ValueError(f"a {self.kind} state is h alone; got a c as well")
        shape_of = (lambda s: (s[0], s[2])) if unbatched else (lambda s: s)
        h = as_float_array(h, self.dtype, "state h").copy()
        check_shape(h, shape_of(h_shape), "state h")
        if c is None:
            return h.reshape(h_shape), np.zeros(kernel_c_shape, self.dtype)
        c = as_float_array(c, self.dtype, "state c").copy()
        check_shape(c, shape_of(c_shape), "state c")
        return h.reshape(h_shape), c.reshape(c_shape)

    # -- running -----------------------------------------------------------------------------

    def __call__(self, x: npt.ArrayLike, state: StateLike | None = None,
                 lengths: npt.ArrayLike | None = None
                 ) -> tuple[ArrayOrTensor, State | ArrayOrTensor]:
        """Run the model over whole sequences: y, state = model(x, state=None, lengths=None).

        x: (T, B, I), (B, T, I) for a batch_first model, or (T, I) for one unbatched sequence; any
            floating array-like (numpy, torch, lists), cast to the model's dtype.
        state: the initial state, zero when None: an LSTM's (h0, c0) or State, a GRU's or RNN's
            h0 alone; h0 (L*D, B, H_out), c0 (L*D, B, H), or (L*D, H_out) / (L*D, H) unbatched.
        lengths: (B,) integers in 1..T; row b stops after lengths[b] steps, as a packed sequence
            in torch: its y is zero past it and its final state is the one at its last step.

        Returns (y, state) as torch does: y (T, B, D*H_out) (batch_first: (B, T, D*H_out);
        unbatched: (T, D*H_out)); state a fastrnn.State (h, c) for an LSTM, h alone for a GRU or
        RNN. torch tensors when x is a torch tensor (sharing memory with fastrnn's results, no
        copy), numpy arrays otherwise. The caller's x and state are never written.
        """
        as_torch = is_torch_tensor(x)
        x, h, c, row_lengths, unbatched = self.check_call(x, state, lengths)
        y = run_sequence(self.plan, x, h, c, row_lengths)
        return self._package(y, h, c, unbatched, as_torch)

    def check_call(self, x: npt.ArrayLike, state: StateLike | None, lengths: npt.ArrayLike | None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
        """The arguments of a call, checked: (x (T, B, I), h, c, lengths, unbatched), for kernels."""
        x, unbatched = self._check_input(x)
        steps, batch = x.shape[0], x.shape[1]
        if unbatched and lengths is not None:
            raise ValueError("lengths need a batched input (T, B, I)")
        row_lengths = as_lengths(lengths, batch, steps)
        h, c = self.check_state(state, batch, unbatched)
        return x, h, c, row_lengths, unbatched

    def _check_input(self, x):
        """x as a contiguous time-major (T, B, I) array of the model's dtype, and whether it was 2-D."""
        x = as_float_array(x, self.dtype, "input x")
        c = self.config
        if x.ndim not in (2, 3):
            layout = "(B, T, I)" if c.batch_first else "(T, B, I)"
            raise ValueError(f"input x must be {layout} or (T, I), got shape {x.shape}")
        if x.shape[-1] != c.input_size:
            raise ValueError(f"input x must have {c.input_size} features in its last axis, "
                             f"got shape {x.shape}")
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None, :]
        elif c.batch_first:
            x = np.ascontiguousarray(x.transpose(1, 0, 2))
        if x.shape[0] == 0:
            raise ValueError("input x has no time steps")
        return x, unbatched

    def _package(self, y, h, c, unbatched, as_torch=False):
        """(y, state) laid out as torch returns them for this input: the state a State (h, c)
        for an LSTM and h alone otherwise; torch tensors over the same memory when as_torch."""
        if unbatched:
            y, h, c = y[:, 0, :], h[:, 0, :], c[:, 0, :]
        elif self.config.batch_first:
            y = np.ascontiguousarray(y.transpose(1, 0, 2))
        if as_torch:
            import torch
            y, h, c = torch.from_numpy(y), torch.from_numpy(h), torch.from_numpy(c)
        return y, (State(h, c) if self.kind == "lstm" else h)

    def stream(self, batch: int = 1) -> Stream:
        """A stateful stream of `batch` rows: one call per timestep or chunk (fastrnn.stream)."""
        from fastrnn.stream import Stream
        return Stream(self, batch)

    def state_table(self, rows: int) -> CpuStateTable:
        """The backend of a Stream or StreamPool of `rows` rows (fastrnn.engine.table)."""
        return CpuStateTable(self.plan, rows)

    # -- devices and files -------------------------------------------------------------------

    def to(self, device: str) -> Model:
        """This model on `device` ("cpu" or "cuda[:N]"); a CUDA model's .to("cpu") gives this one back."""
        device = str(device)
        if device == "cpu":
            return self
        if device.startswith("cuda"):
            from fastrnn.cuda import to_cuda
            return to_cuda(self, device)
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")

    def save(self, path: str | os.PathLike) -> None:
        """Write the model to `path` in fastrnn's native format (fastrnn.fileformat)."""
        fileformat.save(self, path)


def load(path: str | os.PathLike) -> Model | Chain:
    """A Model from a file written by Model.save (fastrnn.fileformat), or a Chain from one
    written by Chain.save (fastrnn.chainfile); bit for bit the weights it was saved with."""
    from fastrnn import chainfile
    if chainfile.holds_chain(path):
        return chainfile.load(path)
    config, layers, dtype, encoded = fileformat.read_encoded(path)
    if encoded is not None:
        return Model._from_encoded(config, layers, encoded)
    return Model(config, layers, dtype=dtype)
