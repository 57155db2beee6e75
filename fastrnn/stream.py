"""Streams: a model run one timestep (or one chunk) per call, with its state kept between calls.

    stream = model.stream(batch=1)      # a Stream: B rows advanced together
    y_t = stream.step(x_t)              # (B, I) -> (B, H_out); (I,) -> (H_out,) when B == 1
    ys = stream.process(xs)             # (T, B, I) -> (T, B, H_out); batch_first: (B, T, ...)
    blob = stream.snapshot(); other.restore(blob)

    pool = fastrnn.StreamPool(model, capacity=1024)   # many independent streams in one table
    slot = pool.open(); ys = pool.step([slot, ...], xs); pool.close(slot)

Both validate their arguments and then call the model's state table, the backend that holds the
state and runs the kernels: fastrnn.engine.table.CpuStateTable on the CPU, fastrnn.cuda's on a
GPU (`model.state_table(rows)` gives it). `process` runs a chunk through the same driver as a
whole-sequence call, so step-by-step, chunked and whole-sequence results agree (to 1e-6).
Snapshots are fastrnn.snapshot's versioned bytes, checked against the model.

Threads may share a Stream or a StreamPool: its calls take turns (a lock each), so no call sees
another's half-made state; threads that each drive their own stream run in parallel (the kernels
release the GIL).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Protocol

import numpy as np

from fastrnn.engine.jit import call, kernel
from fastrnn.snapshot import decode_snapshot, encode_snapshot, model_fingerprint, snapshot_rows
from fastrnn.state import State
from fastrnn.validation import as_float_array, check_shape

if TYPE_CHECKING:  # for type checkers only: numpy.typing costs import time
    import numpy.typing as npt

    from fastrnn.state import StateLike


class _AnyModel(Protocol):
    """What a Stream or StreamPool needs of its model (a fastrnn.Model or its CUDA twin): its
    config, dtype and kind, its state checks, and `state_table(rows)`, the backend it runs on."""

    config: object
    dtype: np.dtype
    kind: str

    def state_table(self, rows: int) -> object: ...

    def state_shapes(self, batch: int) -> tuple: ...

    def check_state(self, state: object, batch: int) -> tuple: ...

    def to(self, device: str) -> object: ...

_INT64 = np.dtype(np.int64)


def _check_streamable(model):
    if not hasattr(model, "state_table"):
        raise TypeError(f"model must be a fastrnn.Model, got {type(model).__name__}")
    if model.config.bidirectional:
        raise ValueError("a bidirectional model cannot stream: its reverse direction needs the whole "
                         "sequence before its first output; call model(x) on whole sequences")


def _check_count(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def _check_out(out, shape, dtype):
    """`out` if it is a C-contiguous array of `dtype` and `shape` the kernel can write into."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
    if out.dtype != dtype or out.shape != shape or not out.flags.c_contiguous \
            or not out.flags.writeable or not out.flags.aligned:
        raise ValueError(f"out must be a writable, aligned, C-contiguous {dtype} array of shape "
                         f"{shape}, got {out.dtype} {out.shape}")
    return out.view(np.ndarray) if type(out) is not np.ndarray else out


def _aligned(array):
    """`array`, copied when its data is not aligned to its itemsize (the kernels assume it is)."""
    return array if array.flags.aligned else array.copy()


def _one(slot):
    return slice(slot, slot + 1)


class Stream:
    """One model's state for `batch` rows, advanced one timestep or one chunk per call.

    step(x_t, out=None): x_t (B, I) -> (B, H_out); a batch-1 stream also takes (I,) -> (H_out,).
        With `out` (a C-contiguous array of the result's shape and the model's dtype) the call
        allocates nothing: the kernel writes the result there. The fast path is an input that is
        already a C-contiguous array of the model's dtype and shape; anything else floating
        (lists, other dtypes, torch tensors) is converted first.
    process(xs): a chunk of any length, (T, B, I) -> (T, B, H_out); batch_first models take
        (B, T, I) -> (B, T, H_out); a batch-1 stream also takes (T, I) -> (T, H_out).
    reset(): back to the zero state.
    state: a fastrnn.State (h (L, B, H_out), c (L, B, H) or None), as Model's; getting copies it
        out, setting copies it in (a State, (h, c) or h).
    snapshot() -> bytes; restore(bytes): the state, checked against this model and batch.
    """

    def __init__(self, model: _AnyModel, batch: int = 1) -> None:
        _check_streamable(model)
        self.model = model
        self.batch = _check_count(batch, "batch")
        self._table = model.state_table(self.batch)
        self._rows = np.arange(self.batch, dtype=np.int64)
        self._all = slice(0, self.batch)
        self._dtype = model.dtype
        self._x_shape = (self.batch, model.config.input_size)
        self._y_shape = (self.batch, model.config.output_size)
        self._lock = threading.Lock()
        self._step = self._table.stepper(self._rows)

    def __repr__(self) -> str:
        return f"fastrnn.Stream({self.model!r}, batch={self.batch})"

    # -- running --

    def step(self, x: npt.ArrayLike, out: np.ndarray | None = None) -> np.ndarray:
        """Advance one timestep: x (B, I) -> y (B, H_out) (see the class docstring)."""
        # flags.carray: C-contiguous, aligned and writable, in one look (each flags look costs).
        if not (type(x) is np.ndarray and x.dtype is self._dtype and x.shape == self._x_shape
                and x.flags.carray):
            x, unbatched = self._check_step_input(x)
            if unbatched:
                if out is not None:
                    out = _check_out(out, self._y_shape[1:], self._dtype).reshape(self._y_shape)
                return self.step(x, out).reshape(self._y_shape[1:])
        if out is None:
            out = np.empty(self._y_shape, self._dtype)
        elif not (type(out) is np.ndarray and out.dtype is self._dtype
                  and out.shape == self._y_shape and out.flags.carray):
            out = _check_out(out, self._y_shape, self._dtype)
        with self._lock:
            self._step(x, out)
        return out

    def _check_step_input(self, x):
        x = _aligned(as_float_array(x, self._dtype, "x_t"))
        if x.ndim == 1 and self.batch == 1:
            check_shape(x, self._x_shape[1:], "x_t of a batch-1 stream")
            return x.reshape(self._x_shape), True
        check_shape(x, self._x_shape, f"x_t (batch {self.batch}, {self._x_shape[1]} features)")
        return x, False

    def process(self, xs: npt.ArrayLike) -> np.ndarray:
        """Advance over a chunk: (T, B, I) -> (T, B, H_out), batch_first (B, T, ...) (see the class)."""
        config = self.model.config
        xs = as_float_array(xs, self._dtype, "xs")
        unbatched = xs.ndim == 2 and self.batch == 1
        if unbatched:
            xs = xs[:, None, :]
        layout = "(B, T, I)" if config.batch_first else "(T, B, I)"
        if xs.ndim != 3:
            raise ValueError(f"xs must be {layout}" + (" or (T, I)" if self.batch == 1 else "")
                             + f", got shape {xs.shape}")
        given_shape = xs.shape
        if config.batch_first and not unbatched:
            xs = xs.transpose(1, 0, 2)
        steps = xs.shape[0]
        if xs.shape[1:] != self._x_shape:
            expected = (self.batch, "T") if config.batch_first else ("T", self.batch)
            raise ValueError(f"xs must be {layout} = ({expected[0]}, {expected[1]}, "
                             f"{self._x_shape[1]}) for this stream, got shape {given_shape}")
        if steps == 0:
            ys = np.zeros((0, self.batch, config.output_size), self._dtype)
        else:
            with self._lock:
                ys = self._table.run_chunk(np.ascontiguousarray(xs))
        if unbatched:
            return ys[:, 0, :]
        if config.batch_first:
            return np.ascontiguousarray(ys.transpose(1, 0, 2))
        return ys

    # -- state --

    def reset(self) -> None:
        """Back to the zero state."""
        with self._lock:
            self._table.reset(self._all)

    @property
    def state(self) -> State:
        """A copy of the state: fastrnn.State(h (L, B, H_out), c (L, B, H) or None)."""
        with self._lock:
            h, c = self._table.read(self._all)
        return State(h, c if self.model.kind == "lstm" else None)

    @state.setter
    def state(self, value: StateLike) -> None:
        if value is None:
            raise ValueError("state must be a fastrnn.State, (h, c) or h; use reset() for zeros")
        h, c = self.model.check_state(value, self.batch)
        with self._lock:
            self._table.write(self._all, h, c)

    def snapshot(self) -> bytes:
        """The state as bytes (fastrnn.snapshot), for restore() on a stream of this model."""
        state = self.state
        return encode_snapshot(model_fingerprint(self.model.to("cpu")), state.h, state.c)

    def restore(self, blob: bytes) -> None:
        """Take the state held by `blob`, a snapshot of this model with this batch; ValueError if not."""
        h_shape, c_shape = self.model.state_shapes(self.batch)
        h, c = decode_snapshot(blob, model_fingerprint(self.model.to("cpu")), self._dtype, h_shape, c_shape)
        with self._lock:
            self._table.write(self._all, h, c)


# -- StreamPool -------------------------------------------------------------------------------

@kernel
def _first_bad_slot(slots, is_open, seen):
    """The position in `slots` of the first slot that is out of range, closed or repeated; -1 if none.

    seen (capacity,) is all False on entry and is left so.
    """
    bad = -1
    marked = 0
    for n in range(slots.shape[0]):
        slot = slots[n]
        if slot < 0 or slot >= is_open.shape[0] or not is_open[slot] or seen[slot]:
            bad = n
            break
        seen[slot] = True
        marked = n + 1
    for n in range(marked):
        seen[slots[n]] = False
    return bad


class StreamPool:
    """Many independent batch-1 streams of one model in one state table, stepped together.

        pool = fastrnn.StreamPool(model, capacity=1024)
        slot = pool.open()                 # a zero state (or open(snapshot) to resume one)
        ys = pool.step(slots, xs)          # slots (N,) distinct open slots, xs (N, I) -> (N, H_out)
        pool.close(slot)

    `step` advances any subset of the open slots, in any order, in one kernel call; each row is
    computed on its own, so NaN in one slot never reaches another. Per slot: reset, get_state /
    set_state (a State shaped as a batch-1 Stream's), snapshot / restore (the same bytes as a
    batch-1 Stream's). Threads may share a pool: its calls take turns (a lock), and one tick of
    many streams runs on all cores (fastrnn.engine.parallel).
    """

    def __init__(self, model: _AnyModel, capacity: int = 1024) -> None:
        _check_streamable(model)
        self.model = model
        self.capacity = _check_count(capacity, "capacity")
        self._table = model.state_table(self.capacity)
        self._dtype = model.dtype
        self._input_size = model.config.input_size
        self._output_size = model.config.output_size
        self._is_open = np.zeros(self.capacity, np.bool_)
        self._seen = np.zeros(self.capacity, np.bool_)
        self._free = list(range(self.capacity - 1, -1, -1))  # popped from the end: lowest first
        self._lock = threading.RLock()
        call(_first_bad_slot, np.zeros(0, np.int64), self._is_open, self._seen)  # compiled now

    def __repr__(self) -> str:
        return (f"fastrnn.StreamPool({self.model!r}, capacity={self.capacity}, "
                f"open={self.num_open})")

    # -- slots --

    @property
    def num_open(self) -> int:
        """How many slots are open."""
        return self.capacity - len(self._free)

    @property
    def open_slots(self) -> list[int]:
        """The open slots, in increasing order."""
        return [int(slot) for slot in np.flatnonzero(self._is_open)]

    def open(self, snapshot: bytes | None = None) -> int:
        """A free slot, its state zero or restored from `snapshot`; ValueError when the pool is full."""
        with self._lock:
            return self._open(snapshot)

    def _open(self, snapshot):
        if not self._free:
            raise ValueError(f"the pool is full: all {self.capacity} slots are open; close one "
                             f"or make a larger pool")
        if snapshot is not None:
            h, c = self._decode(snapshot)  # before taking the slot, so a bad blob takes none
        slot = self._free.pop()
        self._is_open[slot] = True
        if snapshot is None:
            self._table.reset(slice(slot, slot + 1))
        else:
            self._write(slot, h, c)
        return slot

    def close(self, slot: int) -> None:
        """Free an open slot; its state is cleared."""
        with self._lock:
            slot = self._check_slot(slot)
            self._table.reset(slice(slot, slot + 1))
            self._is_open[slot] = False
            self._free.append(slot)

    def _check_slot(self, slot):
        if isinstance(slot, bool) or not isinstance(slot, (int, np.integer)):
            raise TypeError(f"slot must be an integer, got {slot!r}")
        if not 0 <= slot < self.capacity:
            raise ValueError(f"slot {slot} is out of range for a pool of capacity {self.capacity}")
        if not self._is_open[slot]:
            raise ValueError(f"slot {slot} is not open")
        return int(slot)

    # -- running --

    def step(self, slots: npt.ArrayLike, xs: npt.ArrayLike, out: np.ndarray | None = None
             ) -> np.ndarray:
        """Advance the streams in `slots` (N,) by one timestep: xs (N, I) -> y (N, H_out).

        Slots must be open and distinct; row n of xs and of y belongs to slots[n]. With `out`
        (a C-contiguous (N, H_out) array of the model's dtype) nothing is allocated.
        """
        if not (type(slots) is np.ndarray and slots.dtype is _INT64 and slots.ndim == 1
                and slots.flags.carray):
            slots = self._as_slots(slots)
        count = slots.shape[0]
        x_shape = (count, self._input_size)
        if not (type(xs) is np.ndarray and xs.dtype is self._dtype and xs.shape == x_shape
                and xs.flags.carray):
            xs = _aligned(as_float_array(xs, self._dtype, "xs"))
            check_shape(xs, x_shape, f"xs (one row of {self._input_size} features per slot)")
        y_shape = (count, self._output_size)
        out = np.empty(y_shape, self._dtype) if out is None else \
            _check_out(out, y_shape, self._dtype)
        with self._lock:
            bad = _first_bad_slot(slots, self._is_open, self._seen)
            if bad >= 0:
                self._explain_bad_slot(slots, bad)
            if count:
                self._table.advance(xs, slots, out)
        return out

    def _as_slots(self, slots):
        if hasattr(slots, "detach") and hasattr(slots, "cpu"):
            slots = slots.detach().cpu().numpy()
        array = np.asarray(slots)
        if array.dtype.kind not in "iu" and not (array.size == 0 and array.dtype.kind == "f"):
            raise TypeError(f"slots must be integers, got dtype {array.dtype}")
        if array.ndim != 1:
            raise ValueError(f"slots must be a 1-D sequence of slot numbers, got shape "
                             f"{array.shape}")
        if array.dtype.kind == "u" and array.size and array.max() > np.iinfo(np.int64).max:
            raise ValueError(f"slot {array.max()} is out of range for a pool of capacity "
                             f"{self.capacity}")
        return _aligned(np.ascontiguousarray(array, dtype=np.int64))

    def _explain_bad_slot(self, slots, position):
        slot = int(slots[position])
        if not 0 <= slot < self.capacity:
            raise ValueError(f"slots[{position}] = {slot} is out of range for a pool of capacity "
                             f"{self.capacity}")
        if not self._is_open[slot]:
            raise ValueError(f"slots[{position}] = {slot} is not open")
        raise ValueError(f"slot {slot} appears more than once in slots (again at position "
                         f"{position}); each stream advances once per step")

    # -- per-slot state --

    def reset(self, slot: int) -> None:
        """Back to the zero state for one slot."""
        with self._lock:
            self._table.reset(_one(self._check_slot(slot)))

    def get_state(self, slot: int) -> State:
        """A copy of one slot's state, shaped as a batch-1 Stream's: h (L, 1, H_out), c or None."""
        with self._lock:
            h, c = self._table.read(_one(self._check_slot(slot)))
        return State(h, c if self.model.kind == "lstm" else None)

    def set_state(self, slot: int, state: StateLike) -> None:
        """Set one slot's state from a State, (h, c) or h shaped as a batch-1 Stream's."""
        slot = self._check_slot(slot)
        if state is None:
            raise ValueError("state must be a fastrnn.State, (h, c) or h; use reset(slot) for zeros")
        h, c = self.model.check_state(state, 1)
        self._write(slot, h, c)

    def snapshot(self, slot: int) -> bytes:
        """One slot's state as bytes, restorable into any slot of a pool of this model or a batch-1 Stream."""
        state = self.get_state(slot)
        return encode_snapshot(model_fingerprint(self.model.to("cpu")), state.h, state.c)

    def restore(self, slot: int, blob: bytes) -> None:
        """Set one slot's state from a batch-1 snapshot of this model; ValueError if it is not one."""
        slot = self._check_slot(slot)
        h, c = self._decode(blob)
        self._write(slot, h, c)

    # -- many slots at once: sessions that move between processes --

    def export(self, slots: npt.ArrayLike) -> bytes:
        """The state of the open `slots` as one snapshot (bytes), their rows in that order, for
        import_() into a pool of this model in any process (slots stay open here)."""
        slots = self._as_slots(slots)
        with self._lock:
            bad = _first_bad_slot(slots, self._is_open, self._seen)
            if bad >= 0:
                self._explain_bad_slot(slots, bad)
            parts = [self._table.read(_one(int(slot))) for slot in slots]
        layers = self.model.config.num_layers
        h = np.concatenate([h for h, _ in parts], axis=1) if parts else \
            np.zeros((layers, 0, self._output_size), self._dtype)
        c = None
        if self.model.kind == "lstm":
            c = np.concatenate([c for _, c in parts], axis=1) if parts else \
                np.zeros((layers, 0, self.model.config.hidden_size), self._dtype)
        return encode_snapshot(model_fingerprint(self.model.to("cpu")), h, c)

    def import_(self, blob: bytes) -> list[int]:
        """Open one slot for every stream an export() (or a snapshot()) holds, with its state;
        returns the new slots in the blob's row order. ValueError if the blob is not of this
        model or the pool has too few free slots (then none is opened)."""
        rows = snapshot_rows(blob)
        h_shape, c_shape = self.model.state_shapes(rows)
        h, c = decode_snapshot(blob, model_fingerprint(self.model.to("cpu")), self._dtype,
                               h_shape, c_shape)
        with self._lock:
            if rows > len(self._free):
                raise ValueError(f"the snapshot holds {rows} streams and the pool has "
                                 f"{len(self._free)} free slots; close some or make a larger pool")
            slots = [self._free.pop() for _ in range(rows)]
            for row, slot in enumerate(slots):
                self._is_open[slot] = True
                self._table.write(_one(slot), h[:, row:row + 1],
                                  None if c is None else c[:, row:row + 1])
        return slots

    def _decode(self, blob):
        h_shape, c_shape = self.model.state_shapes(1)
        return decode_snapshot(blob, model_fingerprint(self.model.to("cpu")), self._dtype, h_shape, c_shape)

    def _write(self, slot, h, c):
        with self._lock:
            self._table.write(_one(slot), h, c)
