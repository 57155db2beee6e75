"""fastrnn's one weight layout and the model configuration (the kernels' packing: fastrnn.engine.plan).

Every converter produces `LayerWeights` in this layout and says what it permuted to get there.

Layout of one layer and one direction (G gates: LSTM 4, GRU 3, RNN 1; H = hidden_size; H_out =
proj_size or H; I_l = input_size for layer 0, num_directions * H_out above it):

    w_ih      (G*H, I_l)    gate blocks in PyTorch's order: LSTM i, f, g, o; GRU r, z, n
    w_hh      (G*H, H_out)
    b_ih      (G*H,)
    b_hh      (G*H,)        kept apart from b_ih: the GRU's b_hn sits inside r * (...)
    peephole  (3, H)        LSTM only, optional; rows i, f, o (ONNX's P is i, o, f)
    w_proj    (H_out, H)    LSTM only, optional; PyTorch's weight_hr

Layers are listed layer by layer, forward direction before reverse, as PyTorch names them
(`weight_ih_l0`, `weight_ih_l0_reverse`, `weight_ih_l1`, ...).
"""

from dataclasses import dataclass, field, asdict

import numpy as np

from fastrnn.engine.activations import ACTIVATION_CODES, DEFAULT_ALPHA_BETA
from fastrnn.engine.cells import CELL_CODES, DEFAULT_ACTIVATIONS, NUM_ACTIVATIONS, NUM_GATES

KINDS = tuple(CELL_CODES)
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class Config:
    """What a model is, apart from its weights. Stored as JSON in the native file."""

    kind: str                    # "lstm" | "gru" | "rnn_tanh" | "rnn_relu"
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    proj_size: int = 0           # LSTM only: 0 for none
    clip: float = 0.0            # bound on every gate pre-activation; 0 for none (ONNX `clip`)
    input_forget: bool = False   # LSTM only: f = 1 - i (ONNX `input_forget`)
    linear_before_reset: bool = True  # GRU only: True is PyTorch's n = g(... + r * (R_n h + b_hn))
    # (name, alpha, beta) for each activation of the cell, forward direction then reverse; empty
    # means the cell's defaults (see fastrnn.engine.cells.DEFAULT_ACTIVATIONS).
    activations: tuple = field(default=())

    def __post_init__(self):
        check = _ConfigError
        # Values are normalised to plain Python types (numpy scalars are accepted), so that the
        # config compares, hashes and serialises to JSON the same whichever way it was built.
        normalise = lambda name, value: object.__setattr__(self, name, value)
        if not isinstance(self.kind, str) or self.kind not in CELL_CODES:
            raise check(f"kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("input_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if not _is_integer(value) or value < 1:
                raise check(f"{name} must be a positive integer, got {value!r}")
            normalise(name, int(value))
        if not _is_integer(self.proj_size) or self.proj_size < 0:
            raise check(f"proj_size must be a non-negative integer, got {self.proj_size!r}")
        normalise("proj_size", int(self.proj_size))
        for name in ("bidirectional", "batch_first", "input_forget", "linear_before_reset"):
            value = getattr(self, name)
            # ints 0/1 are accepted: ONNX attributes and JSON from other tools spell flags so
            if not isinstance(value, (bool, np.bool_, int, np.integer)) or value not in (0, 1):
                raise check(f"{name} must be True or False, got {value!r}")
            normalise(name, bool(value))
        if not isinstance(self.clip, (int, float, np.integer, np.floating)) \
                or isinstance(self.clip, bool):
            raise check(f"clip must be a finite number >= 0 (0 for none), got {self.clip!r}")
        normalise("clip", float(self.clip))
        if self.proj_size and self.kind != "lstm":
            raise check("proj_size is an LSTM option")
        if self.proj_size >= self.hidden_size:
            raise check(f"proj_size ({self.proj_size}) must be smaller than hidden_size "
                        f"({self.hidden_size})")
        if self.input_forget and self.kind != "lstm":
            raise check("input_forget is an LSTM option")
        if not (np.isfinite(self.clip) and self.clip >= 0):
            raise check(f"clip must be a finite number >= 0 (0 for none), got {self.clip!r}")
        if self.activations:
            expected = NUM_ACTIVATIONS[CELL_CODES[self.kind]] * self.num_directions
            if len(self.activations) != expected:
                raise check(f"{self.kind} with {self.num_directions} direction(s) takes {expected} "
                            f"activations, got {len(self.activations)}")
            entries = []
            for entry in self.activations:
                if (isinstance(entry, str) or len(entry) != 3
                        or entry[0] not in ACTIVATION_CODES):
                    raise check(f"each activation is (name, alpha, beta) with a name among "
                                f"{sorted(ACTIVATION_CODES)}, got {entry!r}")
                name, alpha, beta = entry
                for value in (alpha, beta):
                    if not isinstance(value, (int, float, np.integer, np.floating)) \
                            or isinstance(value, bool) or not np.isfinite(value):
                        raise check(f"activation {name}: alpha and beta must be finite numbers, "
                                    f"got {entry!r}")
                entries.append((str(name), float(alpha), float(beta)))
            normalise("activations", tuple(entries))

    @property
    def cell(self):
        return CELL_CODES[self.kind]

    @property
    def num_gates(self):
        return NUM_GATES[self.cell]

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def output_size(self):
        """H_out: the size of h (and of each direction's output)."""
        return self.proj_size or self.hidden_size

    def layer_input_size(self, layer):
        return self.input_size if layer == 0 else self.num_directions * self.output_size

    def activation_table(self):
        """(codes, alphas, betas), each shaped (num_directions, 3), for the kernels."""
        count = NUM_ACTIVATIONS[self.cell]
        entries = list(self.activations)
        if not entries:
            entries = [(name, *DEFAULT_ALPHA_BETA.get(name, (0.0, 0.0)))
                       for name in DEFAULT_ACTIVATIONS[self.kind]] * self.num_directions
        codes = np.zeros((self.num_directions, 3), np.int64)
        alphas = np.zeros((self.num_directions, 3), np.float64)
        betas = np.zeros((self.num_directions, 3), np.float64)
        for index, (name, alpha, beta) in enumerate(entries):
            direction, slot = divmod(index, count)
            codes[direction, slot] = ACTIVATION_CODES[name]
            alphas[direction, slot] = alpha
            betas[direction, slot] = beta
        return codes, alphas, betas

    def to_json(self):
        data = asdict(self)
        data["activations"] = [list(entry) for entry in self.activations]
        return data

    @classmethod
    def from_json(cls, data):
        data = dict(data)
        data["activations"] = tuple((str(n), float(a), float(b)) for n, a, b in
                                    data.get("activations", ()))
        return cls(**data)


class _ConfigError(ValueError):
    pass


def _is_integer(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass
class LayerWeights:
    """One layer, one direction, in fastrnn's layout (see the module docstring)."""

    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray
    peephole: np.ndarray = None
    w_proj: np.ndarray = None

    def arrays(self):
        """The weights present, by name."""
        return {name: value for name, value in vars(self).items() if value is not None}


def layer_names(config):
    """Names of the layers, as PyTorch suffixes them: l0, l0_reverse, l1, ..."""
    return [f"l{layer}" + ("_reverse" if direction else "")
            for layer in range(config.num_layers) for direction in range(config.num_directions)]


def expected_shapes(config, layer, has_peephole=False):
    """The shape of every array of one layer, by name."""
    gates_rows = config.num_gates * config.hidden_size
    shapes = {
        "w_ih": (gates_rows, config.layer_input_size(layer)),
        "w_hh": (gates_rows, config.output_size),
        "b_ih": (gates_rows,),
        "b_hh": (gates_rows,),
    }
    if has_peephole:
        shapes["peephole"] = (3, config.hidden_size)
    if config.proj_size:
        shapes["w_proj"] = (config.proj_size, config.hidden_size)
    return shapes


def check_layers(config, layers, dtype):
    """Assert that `layers` fit `config`, every shape, and return them as contiguous `dtype` arrays."""
    dtype = np.dtype(dtype)
    if dtype not in DTYPES:
        raise TypeError(f"model dtype must be float32 or float64, got {dtype}")
    names = layer_names(config)
    if len(layers) != len(names):
        raise ValueError(f"expected {len(names)} layer weight sets ({', '.join(names)}), "
                         f"got {len(layers)}")
    has_peephole = layers[0].peephole is not None
    if has_peephole and config.kind != "lstm":
        raise ValueError("peepholes are an LSTM option")
    checked = []
    for index, (name, weights) in enumerate(zip(names, layers)):
        layer = index // config.num_directions
        shapes = expected_shapes(config, layer, has_peephole)
        present = weights.arrays()
        for key in set(present) - set(shapes):
            raise ValueError(f"layer {name}: unexpected weight {key!r} for this configuration")
        converted = {}
        for key, shape in shapes.items():
            if key not in present:
                raise ValueError(f"layer {name}: missing weight {key!r} of shape {shape}")
            value = np.asarray(present[key])
            if value.dtype.kind != "f":
                raise TypeError(f"layer {name}: weight {key!r} must be floating point, "
                                f"got {value.dtype}")
            if value.shape != shape:
                raise ValueError(f"layer {name}: weight {key!r} has shape {value.shape}, "
                                 f"expected {shape}")
            converted[key] = np.ascontiguousarray(value, dtype=dtype)
        checked.append(LayerWeights(**converted))
    return checked
