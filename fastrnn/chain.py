"""fastrnn.Chain: a whole model as a list of layers (fastrnn.layers), run on sequences or streamed.

    chain = fastrnn.from_torch(torch_module)      # or fastrnn.Chain([layer, ...], input_layout=...)
    y = chain(x)                                  # a whole sequence, in the module's own layout
    stream = chain.stream(batch=1)
    y_t = stream.step(x_t)                        # (B, C_in) -> (B, C_out), every layer's state kept
    ys = stream.process(chunk)                    # a chunk, laid out as chain(x) takes it
    blob = stream.snapshot(); stream.restore(blob)
    pool = chain.pool(capacity=1024)              # one slot per user, any set stepped at once
    ys = pool.step(slots, xs)                     # slots (N,), xs (N, C_in) -> (N, C_out)
    chain.save("model.fastrnn"); chain = fastrnn.load("model.fastrnn")

Layouts. Inside, every array is time-major, (T, B, C). `input_layout` and `output_layout` say how
the caller's arrays are laid out, as a permutation of the letters T, B, C: "BCT" is torch's
Conv1d layout (batch, channels, time), so chain(x) with x (B, C, T) is run on x.transpose(2, 0, 1)
= (T, B, C) and a torch model whose forward permutes a conv's (B, C, T) output into a batch_first
GRU's (B, T, C) needs no permute here at all: the converter resolves those at load. "BTC" is
batch_first, "TBC" time-major. A step is always (B, C), whatever the layouts.

One kernel. At its first stream (or call) a chain is compiled into a flat program
(fastrnn.layers.program): an int64 table of ops with offsets into one flat weights array and one
flat state array. ChainStream.process(chunk) and step() run every layer for every sample in one
call of one jitted kernel, which loops samples x ops; chain(x) on a chain that streams is the
same kernel over the whole sequence from a zero state, so whole-sequence, chunked and step-by-step
results agree (to 1e-6, and in practice exactly). A chain that cannot stream (a conv that looks
ahead, a bidirectional stack) runs layer by layer on whole sequences.

Pools. ChainPool (chain.pool(capacity)) holds one slot per user in one state table: step(slots,
xs) and process(slots, chunk) advance any set of distinct slots in one kernel call over their
rows; reset(slots), export(slots) / import_(slots, blob), snapshot(slot) / restore(slot, blob).

Files. chain.save(path) writes every layer and weight into fastrnn's native file
(fastrnn.chainfile); fastrnn.load(path) gives the chain back bit for bit.

Streaming needs every layer causal (see each layer's stream_refusal). A snapshot holds every
layer's state for every row, in a versioned and checksummed format checked against the chain
(its layers, weights, dtype and batch):

    offset  size  field
    0       8     magic b"FRNNCHSN"
    8       4     format version (uint32, little-endian), CHAIN_SNAPSHOT_VERSION
    12      32    chain fingerprint (sha256 of every layer's settings and weights, the dtype)
    44      1     dtype: 0 float32, 1 float64; then 3 bytes of padding (zero)
    48      4     rows (the stream's batch)
    52      4     number of state arrays N
    56      12 N  each array's shape, 3 x uint32
    ...     ...   the arrays, C order, little-endian, in layer order
    end-4   4     crc32 of every byte before it

The envelope (magic, version, crc32, zero padding, fingerprint) is checked by
fastrnn.snapshot.check_envelope, as a stream snapshot's is. A ChainPool slot's snapshot is a
batch-1 stream's, and an export of N slots a batch-N stream's.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fastrnn.layers import LastStep, Layer
from fastrnn.layers.program import Program, ProgramTable, TableChain, supports
from fastrnn.snapshot import check_envelope
from fastrnn.validation import as_float_array, check_shape, is_torch_tensor

if TYPE_CHECKING:  # for type checkers only: numpy.typing costs import time
    import numpy.typing as npt

CHAIN_SNAPSHOT_MAGIC = b"FRNNCHSN"
CHAIN_SNAPSHOT_VERSION = 1
_HEADER = struct.Struct("<8sI32sB3xII")
_SHAPE = struct.Struct("<3I")
_CHECKSUM = struct.Struct("<I")
_DTYPE_CODES = {np.dtype("<f4"): 0, np.dtype("<f8"): 1}
_LAYOUTS = ("TBC", "BTC", "BCT", "TCB", "CTB", "CBT")


def _check_layout(layout, name):
    if layout not in _LAYOUTS:
        raise ValueError(f"{name} must be one of {_LAYOUTS} (T time, B batch, C channels), "
                         f"got {layout!r}")
    return layout


class Chain:
    """Layers run one after the other, with one state table for streams (see the module docstring).

    layers: fastrnn.layers objects of one dtype, each taking the channels the one before gives.
    input_layout, output_layout: how chain(x) and stream.process() lay out their arrays.
    """

    def __init__(self, layers: Sequence[Layer], *, input_layout: str = "TBC",
                 output_layout: str = "TBC") -> None:
        layers = list(layers)
        if not layers:
            raise ValueError("a Chain needs at least one layer")
        for index, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layer {index} must be a fastrnn.layers layer, got "
                                f"{type(layer).__name__}")
            if layer.dtype != layers[0].dtype:
                raise ValueError(f"layer {index} is {layer.dtype}, layer 0 is {layers[0].dtype}: "
                                 f"a chain computes in one dtype")
            if index and layer.in_features != layers[index - 1].out_features:
                raise ValueError(f"layer {index} ({layer!r}) takes {layer.in_features} channels, "
                                 f"layer {index - 1} gives {layers[index - 1].out_features}")
        self.layers = layers
        self.dtype = layers[0].dtype
        self.in_features, self.out_features = layers[0].in_features, layers[-1].out_features
        self.input_layout = _check_layout(input_layout, "input_layout")
        self.output_layout = _check_layout(output_layout, "output_layout")
        self._fingerprint = None
        self._program = None
        # A LastStep (return_sequences=False) with only stateless layers after it: the program
        # runs those on every step and the chain keeps the last (fastrnn.layers.last_step).
        self.keeps_last_step = any(isinstance(layer, LastStep) for layer in layers)

    def __repr__(self) -> str:
        inner = "".join(f"\n  ({index}) {layer!r}" for index, layer in enumerate(self.layers))
        return (f"fastrnn.Chain(input_layout={self.input_layout!r}, output_layout="
                f"{self.output_layout!r}, dtype={self.dtype.name}){inner}")

    # -- layouts --

    def to_time_major(self, x: npt.ArrayLike, name: str = "x", layout: str | None = None
                      ) -> np.ndarray:
        """x in `layout` (the input layout by default) as a contiguous (T, B, C_in) array."""
        layout = layout or self.input_layout
        x = as_float_array(x, self.dtype, name)
        if x.ndim != 3:
            raise ValueError(f"{name} must be 3-D, laid out {layout} (T time, B batch, C "
                             f"channels), got shape {x.shape}")
        x = x.transpose([layout.index(axis) for axis in "TBC"])
        if x.shape[2] != self.in_features:
            raise ValueError(f"{name} must have {self.in_features} channels (axis "
                             f"{layout.index('C')} of its {layout} layout), got shape "
                             f"{tuple(x.shape[layout.index(a)] for a in 'TBC')}"
                             f" as (T, B, C)")
        return np.ascontiguousarray(x)

    def from_time_major(self, y: np.ndarray) -> np.ndarray:
        """y (T, B, C_out) laid out as output_layout, contiguous."""
        return np.ascontiguousarray(y.transpose(["TBC".index(axis) for axis in self.output_layout]))

    # -- running --

    def __call__(self, x: npt.ArrayLike) -> Any:
        """The whole sequence from the zero state: x in input_layout -> y in output_layout
        (torch tensors in, torch tensors out)."""
        as_torch = is_torch_tensor(x)
        x = self.to_time_major(x)
        if x.shape[0] == 0:
            raise ValueError("x has no time steps")
        if self.stream_refusal() is None and supports(self.layers):
            # A chain that streams runs the whole sequence as one chunk through the streaming
            # kernel, from a fresh start state: one call for every layer and step.
            steps, batch = x.shape[0], x.shape[1]
            y = np.empty((steps, batch, self.out_features), self.dtype)
            ProgramTable(self.program(), batch).run(
                np.arange(batch, dtype=np.int64), _writable(x).reshape(steps * batch, -1),
                y.reshape(steps * batch, -1))
            if self.keeps_last_step:
                y = y[-1:]
        else:
            for layer in self.layers:
                x = np.ascontiguousarray(layer.sequence(x))
            y = x
        y = self.from_time_major(y)
        if as_torch:
            import torch
            return torch.from_numpy(y)
        return y

    def stream(self, batch: int = 1) -> ChainStream:
        """A stateful stream of `batch` rows through every layer (ValueError if a layer cannot)."""
        return ChainStream(self, batch)

    def pool(self, capacity: int = 1024) -> ChainPool:
        """`capacity` independent streams, stepped any set at a time (ChainPool)."""
        return ChainPool(self, capacity)

    def stream_refusal(self) -> str | None:
        """Why this chain cannot stream, or None when it can."""
        for index, layer in enumerate(self.layers):
            refusal = layer.stream_refusal()
            if refusal:
                return f"layer {index}, {refusal}"
        return None

    def program(self) -> Program:
        """The chain as one flat program for the streaming kernel (fastrnn.layers.program), built
        on first use; ValueError if a layer cannot stream or has no op there."""
        if self._program is None:
            refusal = self.stream_refusal()
            if refusal:
                raise ValueError(f"this chain cannot stream: {refusal}")
            if not supports(self.layers):
                raise ValueError("this chain has layers the streaming kernel has no op for (a "
                                 "converter's own layer types, or a recurrent stack with "
                                 "low-bit weights): it streams layer by layer in a "
                                 "ChainStream, and has no ChainPool")
            self._program = Program(self.layers, self.dtype)
        return self._program

    def save(self, path: str | os.PathLike) -> None:
        """Write the whole chain, every layer and weight, to `path` in fastrnn's native file
        (fastrnn.chainfile); fastrnn.load(path) gives it back bit for bit."""
        from fastrnn import chainfile
        chainfile.save(self, path)

    def fingerprint(self) -> bytes:
        """sha256 of every layer's settings and weights, the layouts and the dtype."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            digest.update(json.dumps({"layers": [layer.config() for layer in self.layers],
                                      "dtype": self.dtype.str, "layouts": [self.input_layout,
                                      self.output_layout]}, sort_keys=True).encode())
            for index, layer in enumerate(self.layers):
                for name, array in sorted(layer.weights().items()):
                    array = np.ascontiguousarray(array, self.dtype.newbyteorder("<"))
                    digest.update(f"{index}.{name}{array.shape}".encode())
                    digest.update(array.tobytes())
            self._fingerprint = digest.digest()
        return self._fingerprint


class ChainStream:
    """A chain's state for `batch` rows, advanced a step or a chunk per call, in one kernel call.

    step(x_t, out=None): (B, C_in) -> (B, C_out); a batch-1 stream also takes (C_in,) -> (C_out,).
    process(chunk): a chunk of T steps laid out as the chain's input_layout -> output_layout.
    reset(); snapshot() -> bytes; restore(bytes). Threads sharing a stream take turns (a lock).
    """

    def __init__(self, chain: Chain, batch: int = 1) -> None:
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ValueError(f"batch must be a positive integer, got {batch!r}")
        self.chain = chain
        self.batch = int(batch)
        if supports(chain.layers):
            self._table = ProgramTable(chain.program(), self.batch)
        else:
            refusal = chain.stream_refusal()
            if refusal:
                raise ValueError(f"this chain cannot stream: {refusal}")
            self._table = TableChain(chain.layers, chain.dtype, self.batch)
        self._slots = np.arange(self.batch, dtype=np.int64)
        self._x_shape = (self.batch, chain.in_features)
        self._y_shape = (self.batch, chain.out_features)
        self._lock = threading.Lock()
        # Where a chunk laid out as the chain's input layout holds its (step, row) pairs
        # time-major with channels last in memory, as the kernel reads them (its axes other than
        # those of size 1 in TBC's order: TBC; BTC at batch 1; any layout at batch 1 with one
        # channel), and the output layout does the same, process() hands a ready chunk to the
        # kernel as it is and returns the kernel's output as it is. The conversions cost about
        # 3 us a call (a fifth of a 64-sample chunk of a NAM LSTM-16).
        self._direct = None
        sizes = {"B": self.batch, "C": chain.in_features}
        in_order = [axis for axis in chain.input_layout if sizes.get(axis) != 1]
        sizes["C"] = chain.out_features
        out_order = [axis for axis in chain.output_layout if sizes.get(axis) != 1]
        if (isinstance(self._table, ProgramTable) and not chain.keeps_last_step
                and in_order == sorted(in_order, key="TBC".index)
                and out_order == sorted(out_order, key="TBC".index)):
            # the input layout's T, B and C axes; the output's shape with T's size left at 0
            self._direct = tuple(chain.input_layout.index(axis) for axis in "TBC")
            self._direct_shape = [{"B": self.batch, "C": chain.out_features}.get(axis, 0)
                                  for axis in chain.output_layout]
            self._direct_time = chain.output_layout.index("T")

    def __repr__(self) -> str:
        return f"fastrnn.ChainStream(batch={self.batch}, {len(self.chain.layers)} layers)"

    def step(self, x: npt.ArrayLike, out: np.ndarray | None = None) -> np.ndarray:
        """One step: x_t (B, C_in) -> (B, C_out), each layer's state carried on."""
        chain = self.chain
        unbatched = False
        # The kernel takes C-contiguous writable (B, C) arrays of the chain's dtype, as they are
        # (no reshape: at a few us a step, each costs); anything else is converted first.
        ready = type(x) is np.ndarray and x.dtype == chain.dtype and _ready(x.flags)
        if ready and x.shape == self._x_shape:
            pass
        elif ready and self.batch == 1 and x.shape == self._x_shape[1:]:
            x, unbatched = x[None], True
        else:
            x = np.array(as_float_array(x, chain.dtype, "x_t"), chain.dtype, order="C")
            unbatched = x.ndim == 1 and self.batch == 1
            if unbatched:
                x = x.reshape(1, -1)
            check_shape(x, self._x_shape, f"x_t (batch {self.batch}, {chain.in_features} "
                        f"channels)")
        if out is None:
            out = target = np.empty(self._y_shape, chain.dtype)
            if unbatched:
                out = out.reshape(chain.out_features)
        else:
            target = _out_rows(out, self._y_shape, chain.dtype)
        with self._lock:
            self._table.run(self._slots, x, target)
        return out

    def process(self, chunk: npt.ArrayLike) -> np.ndarray:
        """A chunk of steps, laid out as chain(x) takes it -> the outputs, laid out as it gives them."""
        chain = self.chain
        direct = self._direct
        if (direct is not None and type(chunk) is np.ndarray and chunk.dtype == chain.dtype
                and chunk.ndim == 3 and chunk.shape[direct[2]] == chain.in_features
                and chunk.shape[direct[1]] == self.batch and chunk.shape[direct[0]]
                and _ready(chunk.flags)):
            steps = chunk.shape[direct[0]]
            shape = self._direct_shape.copy()
            shape[self._direct_time] = steps
            ys = np.empty(shape, chain.dtype)
            with self._lock:
                self._table.run(self._slots, chunk.reshape(steps * self.batch, -1),
                                ys.reshape(steps * self.batch, -1))
            return ys
        xs = _writable(chain.to_time_major(chunk, "chunk"))
        if xs.shape[1] != self.batch:
            raise ValueError(f"chunk has {xs.shape[1]} rows (axis {chain.input_layout.index('B')} "
                             f"of its {chain.input_layout} layout); this stream has {self.batch}")
        if isinstance(self._table, TableChain):
            if not xs.shape[0]:
                return chain.from_time_major(np.zeros((0, self.batch, chain.out_features),
                                                      chain.dtype))
            with self._lock:
                return chain.from_time_major(self._table.process(xs))
        steps = xs.shape[0]
        ys = np.empty((steps, self.batch, chain.out_features), chain.dtype)
        if steps:
            with self._lock:
                self._table.run(self._slots, xs.reshape(steps * self.batch, -1),
                                ys.reshape(steps * self.batch, -1))
        return chain.from_time_major(ys[-1:] if chain.keeps_last_step else ys)

    def reset(self) -> None:
        """Every layer back to its start state (zero, or a recurrent layer's initial_state)."""
        with self._lock:
            self._table.reset(self._slots)

    def snapshot(self) -> bytes:
        """Every layer's state as bytes (the format is in fastrnn.chain's docstring)."""
        with self._lock:
            arrays = self._table.read(self._slots)
        return _encode(self.chain, arrays, self.batch)

    def restore(self, blob: bytes) -> None:
        """Take every layer's state from `blob`, a snapshot of this chain at this batch (else
        ValueError saying what differs; the stream is left as it was)."""
        arrays = _decode(self.chain, self._table, blob, self.batch)
        with self._lock:
            self._table.write(self._slots, arrays)


class ChainPool:
    """Many independent streams of one chain (one slot per user) in one state table.

        pool = fastrnn.ChainPool(chain, capacity=1024)
        ys = pool.step(slots, xs)          # slots (N,) distinct slots, xs (N, C_in) -> (N, C_out)
        ys = pool.process(slots, chunk)    # chunk (T, N, C_in) time-major -> (T, N, C_out)
        pool.reset(slots)
        blob = pool.export(slots); pool.import_(slots, blob)

    Every slot starts at the start state (zero, or a recurrent layer's initial_state), as reset()
    returns it. `step` and `process` advance any set of distinct slots, in any order, in one
    kernel call over their rows; each row is computed on its own. export()
    of one slot gives the same bytes as a batch-1 ChainStream's snapshot(), and either restores
    into the other. Threads sharing a pool take turns (a lock).
    """

    def __init__(self, chain: Chain, capacity: int = 1024) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) \
                or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        self.chain = chain
        self.capacity = int(capacity)
        self._table = ProgramTable(chain.program(), self.capacity)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"fastrnn.ChainPool(capacity={self.capacity}, {len(self.chain.layers)} layers)"

    def _as_slots(self, slots):
        array = np.asarray(slots)
        if array.ndim == 0:
            array = array.reshape(1)
        if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
            raise ValueError(f"slots must be a 1-D sequence of integers, got {array.dtype} "
                             f"shape {array.shape}")
        array = np.array(array, np.int64)
        if array.size and (array.min() < 0 or array.max() >= self.capacity):
            bad = int(array[(array < 0) | (array >= self.capacity)][0])
            raise ValueError(f"slot {bad} is out of range: this pool has slots "
                             f"0..{self.capacity - 1}")
        if np.unique(array).size != array.size:
            raise ValueError("slots must be distinct: a slot advanced twice in one call would "
                             "see its own state half-updated")
        return array

    def step(self, slots: npt.ArrayLike, xs: npt.ArrayLike, out: np.ndarray | None = None
             ) -> np.ndarray:
        """One step of the streams `slots`: xs (N, C_in), row n for slots[n] -> (N, C_out)."""
        slots = self._as_slots(slots)
        chain = self.chain
        xs = np.array(as_float_array(xs, chain.dtype, "xs"), chain.dtype, order="C")
        check_shape(xs, (slots.shape[0], chain.in_features),
                    f"xs ({slots.shape[0]} slots, {chain.in_features} channels)")
        shape = (slots.shape[0], chain.out_features)
        if out is None:
            out = target = np.empty(shape, chain.dtype)
        else:
            target = _out_rows(out, shape, chain.dtype)
        if slots.shape[0]:
            with self._lock:
                self._table.run(slots, xs, target)
        return out

    def process(self, slots: npt.ArrayLike, chunk: npt.ArrayLike) -> np.ndarray:
        """T steps of the streams `slots`: chunk (T, N, C_in), time-major -> (T, N, C_out)."""
        slots = self._as_slots(slots)
        chain = self.chain
        xs = np.array(chain.to_time_major(chunk, "chunk", "TBC"), chain.dtype, order="C")
        if xs.shape[1] != slots.shape[0]:
            raise ValueError(f"chunk has {xs.shape[1]} rows (axis 1); {slots.shape[0]} slots "
                             f"were given")
        steps, rows = xs.shape[0], slots.shape[0]
        ys = np.empty((steps, rows, chain.out_features), chain.dtype)
        if steps and rows:
            with self._lock:
                self._table.run(slots, xs.reshape(steps * rows, -1), ys.reshape(steps * rows, -1))
        return ys[-1:] if chain.keeps_last_step else ys

    def reset(self, slots: npt.ArrayLike) -> None:
        """The streams `slots` back to the start state."""
        slots = self._as_slots(slots)
        with self._lock:
            self._table.reset(slots)

    def export(self, slots: npt.ArrayLike) -> bytes:
        """The state of `slots` as one chain snapshot of len(slots) rows, in that order (a
        batch-N ChainStream's format: restorable there, or into any N slots by import_)."""
        slots = self._as_slots(slots)
        with self._lock:
            arrays = self._table.read(slots)
        return _encode(self.chain, arrays, slots.shape[0])

    def import_(self, slots: npt.ArrayLike, blob: bytes) -> None:
        """Set the state of `slots` from a snapshot of len(slots) rows of this chain (export()
        or a ChainStream's snapshot()); ValueError, and no slot changed, if it is not one."""
        slots = self._as_slots(slots)
        arrays = _decode(self.chain, self._table, blob, slots.shape[0])
        with self._lock:
            self._table.write(slots, arrays)

    def snapshot(self, slot: int) -> bytes:
        """One slot's state: the same bytes as a batch-1 ChainStream's snapshot()."""
        return self.export([slot])

    def restore(self, slot: int, blob: bytes) -> None:
        """One slot's state from a batch-1 snapshot of this chain."""
        self.import_([slot], blob)


def _writable(array):
    return array if array.flags.writeable else array.copy()


def _ready(flags):
    """Whether an array with these flags goes to the kernel as it is."""
    return flags.c_contiguous and flags.writeable


def _out_rows(out, shape, dtype):
    """`out` as the (rows, C_out) array the kernel writes, a view of it (ValueError unless it is
    a writable C-contiguous array of `dtype` with that many values)."""
    if not (isinstance(out, np.ndarray) and out.dtype == dtype
            and out.size == shape[0] * shape[1] and _ready(out.flags)):
        raise ValueError(f"out must be a writable C-contiguous {dtype} array of "
                         f"{shape[0] * shape[1]} values ({shape})")
    return out if out.shape == shape else out.reshape(shape)


def _encode(chain, arrays, rows):
    dtype = chain.dtype.newbyteorder("<")
    body = _HEADER.pack(CHAIN_SNAPSHOT_MAGIC, CHAIN_SNAPSHOT_VERSION, chain.fingerprint(),
                        _DTYPE_CODES[dtype], rows, len(arrays))
    body += b"".join(_SHAPE.pack(*array.shape) for array in arrays)
    body += b"".join(np.ascontiguousarray(array, dtype).tobytes() for array in arrays)
    return body + _CHECKSUM.pack(zlib.crc32(body))


def _decode(chain, table, blob, rows):
    blob = check_envelope(blob, _HEADER, CHAIN_SNAPSHOT_MAGIC, CHAIN_SNAPSHOT_VERSION,
                          chain.fingerprint(), "chain snapshot", "chain",
                          "layers, weights, layouts or dtype")
    _, _, _, dtype_code, stored_rows, count = _HEADER.unpack_from(blob)
    dtype = chain.dtype.newbyteorder("<")
    if dtype_code != _DTYPE_CODES[dtype]:
        raise ValueError(f"chain snapshot holds state of another dtype than {chain.dtype}")
    if stored_rows != rows:
        raise ValueError(f"chain snapshot holds {stored_rows} row(s); {rows} were asked for")
    expected = [tuple(shape) for shape in table.shapes(rows)]
    offset = _HEADER.size + _SHAPE.size * count
    if count != len(expected) or len(blob) < offset + _CHECKSUM.size:
        raise ValueError("chain snapshot is corrupted: its array count does not match the chain")
    shapes = [_SHAPE.unpack_from(blob, _HEADER.size + _SHAPE.size * i) for i in range(count)]
    if shapes != expected:
        raise ValueError(f"chain snapshot holds state arrays {shapes}; expected {expected}")
    sizes = [int(np.prod(shape)) * dtype.itemsize for shape in shapes]
    if len(blob) != offset + sum(sizes) + _CHECKSUM.size:
        raise ValueError("chain snapshot is corrupted: its length does not match its header")
    arrays = []
    for shape, size in zip(shapes, sizes):
        arrays.append(np.frombuffer(blob, dtype, count=size // dtype.itemsize,
                                    offset=offset).reshape(shape).astype(chain.dtype))
        offset += size
    return arrays
