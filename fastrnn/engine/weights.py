"""fastrnn's one weight layout, the model configuration, and the packing the kernels stream.

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


class PackedWeights:
    """The weights as the CPU kernels stream them, built once per model.

    Input and recurrent matrices are stored transposed, (inputs, gate rows), so that a step adds
    scaled contiguous rows; per-layer-direction tensors are stacked so each kernel takes one array.

        w_ih_t[ld]   (I_l, G*H)      list: layer 0's input size differs from the others'
        w_ih_flat    all of w_ih_t, back to back, for the streaming step kernel
        w_ih_offset  (L*D,) start of each block in w_ih_flat
        w_hh_t       (L*D, H_out, G*H)
        b_ih, b_hh   (L*D, G*H); b_sum = b_ih + b_hh
        peephole     (L*D, 3, H), or (L*D, 3, 0) without peepholes
        w_proj_t     (L*D, H, H_out), or (L*D, 0, 0) without projection
        codes        (L*D, 3) int64; alphas, betas (L*D, 3) float64
    """

    def __init__(self, config, layers, dtype):
        count = len(layers)
        hidden = config.hidden_size
        self.w_ih_flat = np.concatenate([w.w_ih.T.ravel() for w in layers]).astype(dtype, copy=False)
        sizes = [w.w_ih.size for w in layers]
        self.w_ih_offset = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.w_ih_t = [self.w_ih_flat[start:start + size].reshape(w.w_ih.shape[1], -1)
                       for start, size, w in zip(self.w_ih_offset, sizes, layers)]
        self.w_hh_t = np.ascontiguousarray(np.stack([w.w_hh.T for w in layers]), dtype=dtype)
        self.b_ih = np.stack([w.b_ih for w in layers]).astype(dtype, copy=False)
        self.b_hh = np.stack([w.b_hh for w in layers]).astype(dtype, copy=False)
        self.b_sum = self.b_ih + self.b_hh  # what an LSTM or RNN adds to its gates
        if layers[0].peephole is not None:
            self.peephole = np.stack([w.peephole for w in layers]).astype(dtype, copy=False)
        else:
            self.peephole = np.zeros((count, 3, 0), dtype)
        if layers[0].w_proj is not None:
            self.w_proj_t = np.ascontiguousarray(np.stack([w.w_proj.T for w in layers]),
                                                 dtype=dtype)
        else:
            self.w_proj_t = np.zeros((count, 0, 0), dtype)
        codes, alphas, betas = config.activation_table()
        directions = config.num_directions
        self.codes = np.ascontiguousarray(np.tile(codes, (config.num_layers, 1)))
        self.alphas = np.ascontiguousarray(np.tile(alphas, (config.num_layers, 1)))
        self.betas = np.ascontiguousarray(np.tile(betas, (config.num_layers, 1)))
        assert self.codes.shape[0] == count == config.num_layers * directions
        # Work space of the kernels: R h of one row (G*H) and the GRU's r * h and R_n (r * h) (2H).
        self.scratch_size = (config.num_gates + 2) * hidden
        # The streaming step's: W x (G*H) before that.
        self.step_scratch_size = config.num_gates * hidden + self.scratch_size
        self.num_gates = config.num_gates
        self._step_tables = None
        self._pair_tables = {}

    def layer_weights(self):
        """The weights in fastrnn's layout, as LayerWeights of views into these packed arrays, so
        that a model holds its weights once."""
        has_peephole = self.peephole.shape[2] > 0
        has_projection = self.w_proj_t.shape[1] > 0
        return [LayerWeights(w_ih=w_ih_t.T, w_hh=self.w_hh_t[ld].T, b_ih=self.b_ih[ld],
                             b_hh=self.b_hh[ld],
                             peephole=self.peephole[ld] if has_peephole else None,
                             w_proj=self.w_proj_t[ld].T if has_projection else None)
                for ld, w_ih_t in enumerate(self.w_ih_t)]

    def pair_tables(self, split):
        """Every layer-direction's weights as the two cores of fastrnn.engine.threads read them.

        Core 0 takes hidden units [0, split), core 1 [split, H). Returns (flat, layout): flat
        holds each core's blocks of every layer-direction, core 0's then core 1's, each block
        starting on a 64-byte boundary; layout (L*D, 2, PAIR_COLUMNS) int64 says where they start
        and their sizes (see the PAIR_* column names), and holds the activation codes. A core's
        blocks: W_ih^T (I, G*U) and W_hh^T (H, G*U) holding its units' columns of every gate side by
        side (gate-major, as a cell of U units reads them), b_ih and b_hh (G*U,) in the same
        order, and its units' peepholes (3, U) (or (3, 0)).

        Built on first use and kept: a model run on two cores holds its weights twice. Each core
        streams its own contiguous blocks from its own cache; windows of the shared layout, read
        at a stride, were slower than one core reading it all.
        """
        if split not in self._pair_tables:
            gates = self.num_gates
            hidden = self.b_ih.shape[1] // gates
            has_peephole = self.peephole.shape[2] > 0
            halves = (slice(0, split), slice(split, hidden))
            blocks, layout, start = [], [[None, None] for _ in self.w_ih_t], 0
            for part, half in enumerate(halves):
                units = half.stop - half.start
                for ld, w_ih_t in enumerate(self.w_ih_t):
                    parts = [w_ih_t.reshape(-1, gates, hidden)[:, :, half],
                             self.w_hh_t[ld].reshape(-1, gates, hidden)[:, :, half],
                             self.b_ih[ld].reshape(gates, hidden)[:, half],
                             self.b_hh[ld].reshape(gates, hidden)[:, half],
                             self.peephole[ld][:, half] if has_peephole else
                             np.zeros((3, 0), self.b_ih.dtype)]
                    row = []
                    for block in parts:
                        row.append(start)
                        blocks.append((start, block))
                        start += -(-block.size // _ALIGN) * _ALIGN
                    row += [w_ih_t.shape[0], half.start, units, units if has_peephole else 0,
                            self.w_hh_t.shape[1], gates * units, *self.codes[ld]]
                    layout[ld][part] = row
            flat = _aligned_zeros(start, self.b_ih.dtype)
            for block_start, block in blocks:
                flat[block_start:block_start + block.size] = block.ravel()
            self._pair_tables[split] = (flat, np.array(layout, np.int64))
        return self._pair_tables[split]

    def pair_blocks(self, ld, split):
        """Layer-direction ld's blocks of pair_tables(split), as four pairs (core 0's, core 1's):
        W_ih^T (I, G*U), W_hh^T (H, G*U), b_ih (G*U,), b_hh (G*U,); views, not copies."""
        flat, layout = self.pair_tables(split)
        pairs = ([], [], [], [])
        for part in range(2):
            table = layout[ld, part]
            inputs, rows, width = table[PAIR_INPUTS], table[PAIR_STATE_WIDTH], table[PAIR_WIDTH]
            pairs[0].append(flat[table[PAIR_W_IH]:][:inputs * width].reshape(inputs, width))
            pairs[1].append(flat[table[PAIR_W_HH]:][:rows * width].reshape(rows, width))
            pairs[2].append(flat[table[PAIR_B_IH]:][:width])
            pairs[3].append(flat[table[PAIR_B_HH]:][:width])
        return tuple(tuple(pair) for pair in pairs)

    def step_tables(self):
        """(weights, layout, activation_parameters): what driver.step_kernel reads, in three arrays.

        A per-call kernel pays ~70 ns for every array argument, so the streaming step takes one
        flat array of every layer's blocks instead of ten stacked ones (built on first use):
            weights      per layer: W_ih^T, W_hh^T, b_ih, b_hh, peephole, W_proj^T, back to back
            layout       (L*D, STEP_COLUMNS) int64: where each block starts, the sizes needed to
                         view them (see the STEP_* column names), the three activation codes
            activation_parameters  (L*D, 6) float64: alphas then betas
        """
        if self._step_tables is None:
            blocks, layout, start = [], [], 0
            for ld, w_ih_t in enumerate(self.w_ih_t):
                parts = (w_ih_t, self.w_hh_t[ld], self.b_ih[ld], self.b_hh[ld], self.peephole[ld],
                         self.w_proj_t[ld])
                row = []
                for part in parts:
                    row.append(start)
                    blocks.append(part.ravel())
                    start += part.size
                row += [w_ih_t.shape[0], w_ih_t.shape[1], self.peephole.shape[2],
                        self.w_proj_t.shape[1], self.w_proj_t.shape[2], *self.codes[ld]]
                layout.append(row)
            self._step_tables = (np.concatenate(blocks), np.array(layout, np.int64),
                                 np.ascontiguousarray(np.hstack([self.alphas, self.betas])))
        return self._step_tables


# Columns of PackedWeights.step_tables()'s layout.
(STEP_W_IH, STEP_W_HH, STEP_B_IH, STEP_B_HH, STEP_PEEPHOLE, STEP_W_PROJ, STEP_INPUTS,
 STEP_GATE_ROWS, STEP_PEEPHOLE_WIDTH, STEP_PROJ_ROWS, STEP_PROJ_COLUMNS, STEP_CODES) = range(12)

# pair_tables() starts every block on a 64-byte boundary: 16 elements, which covers both dtypes.
_ALIGN = 16


def _aligned_zeros(size, dtype):
    """Zeros of `size` elements whose data starts on a 64-byte boundary."""
    dtype = np.dtype(dtype)
    raw = np.zeros(size * dtype.itemsize + 64, np.uint8)
    offset = -raw.ctypes.data % 64
    return raw[offset:offset + size * dtype.itemsize].view(dtype)


# Columns of PackedWeights.pair_tables()'s layout: where each block of a core starts in its flat
# array, then the sizes needed to view them.
(PAIR_W_IH, PAIR_W_HH, PAIR_B_IH, PAIR_B_HH, PAIR_PEEPHOLE, PAIR_INPUTS, PAIR_FIRST_UNIT,
 PAIR_UNITS, PAIR_PEEPHOLE_WIDTH, PAIR_STATE_WIDTH, PAIR_WIDTH, PAIR_CODES) = range(12)
