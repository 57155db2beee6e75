"""Streams: a model run one timestep (or one chunk) per call, with its state kept between calls.

    stream = model.stream(batch=1)      # a Stream: B rows advanced together
    y_t = stream.step(x_t)              # (B, I) -> (B, H_out); (I,) -> (H_out,) when B == 1
    ys = stream.process(xs)             # (T, B, I) -> (T, B, H_out); batch_first: (B, T, ...)
    blob = stream.snapshot(); other.restore(blob)

    pool = fastrnn.StreamPool(model, capacity=1024)   # many independent streams in one table
    slot = pool.open(); ys = pool.step([slot, ...], xs); pool.close(slot)

A stream's state lives in a table (L, rows, H_out) for h and (L, rows, H) for c, allocated once;
`fastrnn.engine.driver.step_kernel` advances every layer of the chosen rows in one jitted call that
releases the GIL and allocates nothing. `process` runs a chunk through the same driver as a
whole-sequence call, so step-by-step, chunked and whole-sequence results agree (to 1e-6).

Snapshots are bytes in a versioned format (`encode_snapshot`, `decode_snapshot`) that carries a
fingerprint of the model (configuration, dtype and every weight), so a snapshot is only ever
restored into the model it was taken from. A Stream of batch 1 and a StreamPool slot share the
format: a session can move between them.
"""

import hashlib
import json
import statistics
import struct
import time
import weakref
import zlib

import numba
import numpy as np

from fastrnn.engine.driver import (BLAS_MIN_BATCH, PAIR_DONE, PAIR_FAILED, PAIR_LATE, batched_step,
                            pair_step, pair_step_server, pair_work_size, run_sequence, step_kernel,
                            stream_pair_split)
from fastrnn.engine.jit import kernel
from fastrnn.model import Model
from fastrnn.state import State
from fastrnn.engine.threads import (CLOSED, SYNC_CHANNEL, close_server, cycles_per_second, new_sync,
                             pause_pairs, start_server, wait_until_free)
from fastrnn.validation import as_float_array, check_shape

# -- snapshot format --------------------------------------------------------------------------
#
#   offset  size  field
#   0       8     magic b"FRNNSNAP"
#   8       4     format version (uint32, little-endian), SNAPSHOT_VERSION
#   12      32    model fingerprint (sha256, see model_fingerprint)
#   44      1     dtype: 0 float32, 1 float64; then 3 bytes of padding
#   48      12    h shape (L, B, H_out) as uint32
#   60      12    c shape (L, B, H) as uint32, (0, 0, 0) for a cell without c
#   72      ...   h then c, C order, little-endian
#   end-4   4     crc32 of every byte before it
#
# The version is read before the checksum, so a blob of a later format is refused for its version,
# not called corrupted.

SNAPSHOT_MAGIC = b"FRNNSNAP"
SNAPSHOT_VERSION = 1
_HEADER = struct.Struct("<8sI32sB3x3I3I")
_CHECKSUM = struct.Struct("<I")
_DTYPE_CODES = {np.dtype("<f4"): 0, np.dtype("<f8"): 1}
_CODE_DTYPES = {code: dtype for dtype, code in _DTYPE_CODES.items()}

_fingerprints = weakref.WeakKeyDictionary()
_INT64 = np.dtype(np.int64)


def model_fingerprint(model):
    """sha256 (32 bytes) of the model's configuration, dtype and every weight; computed once per model.

    Works for any object with `.config`, `.dtype` and `.layers` (fastrnn's LayerWeights), so a model
    on another device that keeps these gives the same fingerprint as its CPU twin.
    """
    try:
        return _fingerprints[model]
    except (KeyError, TypeError):
        pass
    digest = hashlib.sha256()
    digest.update(json.dumps(model.config.to_json(), sort_keys=True).encode())
    digest.update(np.dtype(model.dtype).str.encode())
    for index, weights in enumerate(model.layers):
        for name, array in sorted(weights.arrays().items()):
            array = np.ascontiguousarray(array, dtype=np.dtype(model.dtype).newbyteorder("<"))
            digest.update(f"{index}.{name}{array.shape}".encode())
            digest.update(array.tobytes())
    fingerprint = digest.digest()
    try:
        _fingerprints[model] = fingerprint
    except TypeError:  # not weak-referenceable: recomputed next time
        pass
    return fingerprint


def encode_snapshot(fingerprint, h, c=None):
    """Bytes holding the state (h, c) of the model whose fingerprint is given.

    h (L, B, H_out) and c (L, B, H) or None are host arrays of the model's dtype (float32/float64).
    """
    h = np.asarray(h)
    dtype = h.dtype.newbyteorder("<")
    if dtype not in _DTYPE_CODES or h.ndim != 3:
        raise ValueError(f"h must be a float32/float64 array (L, B, H_out), got {h.dtype} {h.shape}")
    if len(fingerprint) != 32:
        raise ValueError(f"fingerprint must be 32 bytes, got {len(fingerprint)}")
    if c is None:
        c_shape, c_bytes = (0, 0, 0), b""
    else:
        c = np.asarray(c)
        if c.ndim != 3:
            raise ValueError(f"c must be (L, B, H), got shape {c.shape}")
        c_shape, c_bytes = c.shape, np.ascontiguousarray(c, dtype=dtype).tobytes()
    body = (_HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, bytes(fingerprint), _DTYPE_CODES[dtype],
                         *h.shape, *c_shape)
            + np.ascontiguousarray(h, dtype=dtype).tobytes() + c_bytes)
    return body + _CHECKSUM.pack(zlib.crc32(body))


def decode_snapshot(blob, fingerprint, dtype, h_shape, c_shape=None):
    """(h, c) as fresh arrays from a snapshot, checked against the model and the expected shapes.

    c_shape None means the cell has no c (c comes back None). Anything that is not a snapshot of
    this model with these shapes in this format version is a ValueError saying which.
    """
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"a snapshot is bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < _HEADER.size + _CHECKSUM.size or blob[:8] != SNAPSHOT_MAGIC:
        raise ValueError("not a fastrnn stream snapshot (it does not start with the snapshot header)")
    magic, version, blob_fingerprint, dtype_code, *shapes = _HEADER.unpack_from(blob)
    if version != SNAPSHOT_VERSION:
        raise ValueError(f"snapshot format version {version} cannot be read: this fastrnn reads "
                         f"version {SNAPSHOT_VERSION}")
    (stored_checksum,) = _CHECKSUM.unpack_from(blob, len(blob) - _CHECKSUM.size)
    if zlib.crc32(blob[:-_CHECKSUM.size]) != stored_checksum:
        raise ValueError("snapshot is corrupted: its checksum does not match its contents")
    if blob_fingerprint != bytes(fingerprint):
        raise ValueError("snapshot was taken from a different model (its configuration, dtype or "
                         "weights differ from this one's)")
    dtype = np.dtype(dtype)
    stored_dtype = _CODE_DTYPES.get(dtype_code)
    if stored_dtype is None or stored_dtype != dtype.newbyteorder("<"):
        raise ValueError(f"snapshot holds {stored_dtype} state; this model is {dtype}")
    stored_h, stored_c = tuple(shapes[:3]), tuple(shapes[3:])
    expected_c = (0, 0, 0) if c_shape is None else tuple(c_shape)
    if stored_h != tuple(h_shape) or stored_c != expected_c:
        raise ValueError(f"snapshot holds state for {stored_h[1]} row(s) of shape h {stored_h}; "
                         f"expected h {tuple(h_shape)} (batch {h_shape[1]})")
    h_size = int(np.prod(stored_h)) * dtype.itemsize
    c_size = int(np.prod(stored_c)) * dtype.itemsize
    if len(blob) != _HEADER.size + h_size + c_size + _CHECKSUM.size:
        raise ValueError("snapshot is corrupted: its length does not match its header")
    data = blob[_HEADER.size:_HEADER.size + h_size + c_size]
    h = np.frombuffer(data, stored_dtype, count=h_size // dtype.itemsize).reshape(stored_h)
    h = h.astype(dtype)  # a fresh, writable, native-order copy
    if c_shape is None:
        return h, None
    c = np.frombuffer(data, stored_dtype, offset=h_size).reshape(stored_c).astype(dtype)
    return h, c


# -- shared by Stream and StreamPool ----------------------------------------------------------

def _check_streamable(model):
    if not isinstance(model, Model):
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


class _StateTable:
    """The state of `rows` streams of one model, the step kernels' buffers, and their arguments.

    h (L, rows, H_out); c (L, rows, H), or (L, rows, 0) for cells without one. Fewer than
    BLAS_MIN_BATCH rows step through `kernel` (step_kernel, row by row), more through
    `batched_kernel` (batched_step, BLAS products), when the table is that large:

        kernel(cell, x, rows, *middle, y, *tail)
        batched_kernel(cell, x, rows, *middle, y, *batched_tail)

    every argument but x, rows and y fixed.
    """

    def __init__(self, model, rows):
        config, packed = model.config, model._packed
        dtype = model.dtype
        layers = config.num_layers
        self.h = np.zeros((layers, rows, config.output_size), dtype)
        self.c = np.zeros((layers, rows, config.hidden_size if config.kind == "lstm" else 0),
                          dtype)
        flag = config.input_forget if config.kind == "lstm" else config.linear_before_reset
        gate_rows = config.num_gates * config.hidden_size
        scratch = np.empty(packed.step_scratch_size, dtype)
        # step_kernel(cell, x, rows, <weights...>, clip, flag, h, c, y, scratch)
        self.weights = (*packed.step_tables(), float(config.clip), bool(flag))
        self.cell = config.cell
        self.middle = (*self.weights, self.h, self.c)
        self.tail = (scratch,)
        self.kernel = self._compiled(step_kernel, model, self.tail)
        self.batched_kernel = None
        if rows >= BLAS_MIN_BATCH:
            self.batched_tail = (np.empty((rows, config.output_size), dtype),
                                 np.empty((rows, config.output_size), dtype),
                                 np.empty((rows, gate_rows), dtype),
                                 np.empty((rows, gate_rows), dtype), scratch)
            self.batched_kernel = batched_step

    def _compiled(self, step_kernel, model, tail):
        """The kernel's compiled entry point for this table's argument types, ready now.

        Numba's dispatcher spends a few hundred ns per call matching the 12 arguments' types to a
        compiled version; the entry point skips that (it still converts each argument and refuses a wrong
        dtype). Callers pass x, rows and y of exactly the types used here: C-contiguous, aligned
        arrays of the model's dtype (int64 rows). A call with no rows compiles, or loads from the
        cache, now rather than at the first step, and touches no state.
        """
        input_size, output_size = model.config.input_size, model.config.output_size
        return _entry_point(step_kernel, (
            self.cell, np.zeros((0, input_size), model.dtype), np.zeros(0, np.int64),
            *self.middle, np.zeros((0, output_size), model.dtype), *tail))


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


# Steps in a row whose halves met late (fastrnn.engine.driver.PAIR_LATE) before a stream lets the partner
# go (and two-core runs pause: fastrnn.engine.threads.report_late_waits).
LATE_STEPS_LIMIT = 3


class _PairSteps:
    """A Stream's steps on two cores (fastrnn.engine.driver.pair_step), for models and batches where
    fastrnn.engine.driver.stream_pair_split says two cores can pay.

    The partner thread serves this stream's steps (pair_step_server) while they come at least
    every IDLE_SECONDS; it is asked for the next step through a compare-and-swap on a shared slot,
    which costs far less than waking a thread. When the steps stop it closes its channel and is
    free again; the next step then runs on one core, and the one after, if it follows within
    IDLE_SECONDS, starts the server again. So a stream stepped in bursts spins the second core
    for at most IDLE_SECONDS after each burst, and a stream stepped rarely never wakes it.

    Whether two cores are faster for this model and batch depends on the machine (two cores with
    their own caches, or two hardware threads of one core sharing them) and on its load, so the
    stream measures: TRIAL_STEPS steady steps on one core, then as many on two, and keeps the
    faster way for REVIEW_SECONDS before measuring again. (On the development VM the pair was
    1.4x faster at H = 128 in one run and 1.4x slower in another.) TRIAL_STEPS = 0: always two.
    """

    IDLE_SECONDS = 0.001
    TRIAL_STEPS = 128
    TRIAL_WARMUP = 8       # steps on two cores before their timing starts (the partner wakes)
    REVIEW_SECONDS = 2.0

    def __init__(self, model, table, split):
        config, packed = model.config, model._packed
        dtype = model.dtype
        batch = table.h.shape[1]
        pair_weights, pair_layout = packed.pair_tables(split)
        _, _, activation_parameters, clip, flag = table.weights
        self.work = np.empty(pair_work_size(pair_layout, table.h.shape, config.input_size), dtype)
        self.after_x = (clip, flag, pair_weights, pair_layout, activation_parameters, table.h,
                        table.c, self.work)
        self.cell = table.cell
        self.x_template = np.zeros((batch, config.input_size), dtype)
        self.sync = None       # the open server's, or None
        self.requested = 0     # steps asked of it
        self.failures = None
        self.last_step = -1.0
        self.late_steps = 0
        self.pairing = True      # the choice the last trial made
        self.review_at = 0.0     # when the next trial starts
        self.trial = None        # during a trial: what it has timed so far
        # Compile (or load from the cache) both kernels now, on a closed channel: nothing runs.
        closed = new_sync()
        closed[SYNC_CHANNEL] = CLOSED
        y = np.zeros((batch, config.output_size), dtype)
        pair_step_server(1, self.cell, self.x_template, *self.after_x, 0, closed)
        self.kernel = _entry_point(pair_step, (0, self.cell, self.x_template, *self.after_x, y,
                                               closed, 1))

    def step(self, x, y):
        """Advance one step on two cores if that is the way chosen and the server is open; False
        (nothing done: the caller steps on one core) if not."""
        now = time.perf_counter()
        if self.TRIAL_STEPS and now >= self.review_at:
            return self._trial_step(now, x, y)
        if self.pairing:
            return self._pair_step(now, x, y)
        return False

    def _trial_step(self, now, x, y):
        """A step of the trial: TRIAL_STEPS on one core, then TRIAL_WARMUP and TRIAL_STEPS on
        two, each step timed from its call to the next (the caller's own work between steps
        counts in both); the medians decide, so that a hiccup of the machine does not. A pause in
        the steps starts the trial again."""
        trial = self.trial
        if trial is None or now - self.last_step >= self.IDLE_SECONDS:
            self.close()
            trial = self.trial = {"previous": None, "one": [], "two": [],
                                  "warmup": self.TRIAL_WARMUP}
        elif trial["previous"] == "one":
            trial["one"].append(now - self.last_step)
        elif trial["warmup"] > 0:
            trial["warmup"] -= 1
        else:
            trial["two"].append(now - self.last_step)
        self.last_step = now
        if len(trial["one"]) < self.TRIAL_STEPS:
            trial["previous"] = "one"
            return False
        if len(trial["two"]) >= self.TRIAL_STEPS:
            self._decide(statistics.median(trial["two"]) < statistics.median(trial["one"]), now)
            return self._pair_step(now, x, y) if self.pairing else False
        if self.sync is None:
            self._start()
            if self.sync is None:  # the partner is not to be had now: one core, ask later
                self._decide(False, now)
                return False
        trial["previous"] = "two"
        done = self._pair_step(now, x, y)
        if not done:  # the server closed (a pause, another thread): no fair timing now
            self._decide(False, now)
        return done

    def _decide(self, pairing, now):
        self.pairing, self.trial, self.review_at = pairing, None, now + self.REVIEW_SECONDS
        if not pairing:
            self.close()

    def _pair_step(self, now, x, y):
        if self.sync is not None:
            self.requested += 1
            status = self.kernel(0, self.cell, x, *self.after_x, y, self.sync, self.requested)
            if status == PAIR_DONE:
                self.late_steps = 0
                return True
            if status == PAIR_LATE:  # the machine is busy: a few of these in a row, let go
                self.late_steps += 1
                if self.late_steps >= LATE_STEPS_LIMIT:
                    pause_pairs()
                    self.close()
                return True
            self.sync = None
            if status == PAIR_FAILED:
                raise RuntimeError("fastrnn's partner thread failed") from (
                    self.failures[0] if self.failures else None)
            self.last_step = now  # it closed: the steps had paused
            return False
        if now - self.last_step < self.IDLE_SECONDS:
            self._start()
        self.last_step = now
        return False

    def _start(self):
        sync = new_sync()
        idle_cycles = int(self.IDLE_SECONDS * cycles_per_second())
        failures = start_server(pair_step_server, (self.cell, self.x_template, *self.after_x,
                                                   idle_cycles, sync))
        if failures is not None:
            self.sync, self.requested, self.failures = sync, 0, failures

    def close(self, wait=False):
        """Let the partner go now; with wait, until it is free (before a chunk, which wants it
        for itself)."""
        if self.sync is not None:
            close_server(self.sync, self.requested)
            self.sync = None
            if wait:
                wait_until_free()


def _entry_point(kernel_function, args):
    """kernel_function's compiled entry point for these arguments' types, compiled now by calling
    it with them (see _StateTable._compiled), or the dispatcher where Numba lacks those
    internals."""
    kernel_function(*args)
    try:
        return kernel_function.overloads[tuple(numba.typeof(arg) for arg in args)].entry_point
    except (KeyError, AttributeError):
        return kernel_function


# -- Stream -----------------------------------------------------------------------------------

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

    A Stream is driven by one thread at a time; threads each driving their own Stream run in
    parallel (the kernel releases the GIL).
    """

    def __init__(self, model, batch=1):
        _check_streamable(model)
        self.model = model
        self.batch = _check_count(batch, "batch")
        self._table = _StateTable(model, self.batch)
        self._rows = np.arange(self.batch, dtype=np.int64)
        self._dtype = model.dtype
        self._x_shape = (self.batch, model.config.input_size)
        self._y_shape = (self.batch, model.config.output_size)
        self._cell = self._table.cell
        self._middle = (self._rows, *self._table.middle)
        if self._table.batched_kernel is None:
            self._kernel, self._tail = self._table.kernel, self._table.tail
        else:
            self._kernel, self._tail = self._table.batched_kernel, self._table.batched_tail
        split = stream_pair_split(model.config, model._packed, self.batch)
        self._pair = _PairSteps(model, self._table, split) if split else None

    def __repr__(self):
        return f"fastrnn.Stream({self.model!r}, batch={self.batch})"

    # -- running --

    def step(self, x, out=None):
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
        if self._pair is not None and self._pair.step(x, out):
            return out
        self._kernel(self._cell, x, *self._middle, out, *self._tail)
        return out

    def _check_step_input(self, x):
        x = _aligned(as_float_array(x, self._dtype, "x_t"))
        if x.ndim == 1 and self.batch == 1:
            check_shape(x, self._x_shape[1:], "x_t of a batch-1 stream")
            return x.reshape(self._x_shape), True
        check_shape(x, self._x_shape, f"x_t (batch {self.batch}, {self._x_shape[1]} features)")
        return x, False

    def process(self, xs):
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
            if self._pair is not None:
                self._pair.close(wait=True)
            lengths = np.full(self.batch, steps, np.int64)
            ys = run_sequence(config, self.model._packed, np.ascontiguousarray(xs),
                              self._table.h, self._table.c, lengths)
        if unbatched:
            return ys[:, 0, :]
        if config.batch_first:
            return np.ascontiguousarray(ys.transpose(1, 0, 2))
        return ys

    # -- state --

    def reset(self):
        """Back to the zero state."""
        self._table.h.fill(0)
        self._table.c.fill(0)

    @property
    def state(self):
        """A copy of the state: fastrnn.State(h (L, B, H_out), c (L, B, H) or None)."""
        has_c = self.model.kind == "lstm"
        return State(self._table.h.copy(), self._table.c.copy() if has_c else None)

    @state.setter
    def state(self, value):
        if value is None:
            raise ValueError("state must be a fastrnn.State, (h, c) or h; use reset() for zeros")
        h, c = self.model.check_state(value, self.batch)
        self._table.h[...] = h
        self._table.c[...] = c

    def snapshot(self):
        """The state as bytes (see the module docstring), for restore() on a stream of this model."""
        has_c = self.model.kind == "lstm"
        return encode_snapshot(model_fingerprint(self.model), self._table.h,
                               self._table.c if has_c else None)

    def restore(self, blob):
        """Take the state held by `blob`, a snapshot of this model with this batch; ValueError if not."""
        h_shape, c_shape = self.model.state_shapes(self.batch)
        h, c = decode_snapshot(blob, model_fingerprint(self.model), self._dtype, h_shape, c_shape)
        self._table.h[...] = h
        if c is not None:
            self._table.c[...] = c


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
    batch-1 Stream's). A pool is driven by one thread at a time.
    """

    def __new__(cls, model, capacity=1024):
        if getattr(model, "device", "cpu") != "cpu":
            return model.stream_pool(capacity)
        return super().__new__(cls)

    def __init__(self, model, capacity=1024):
        _check_streamable(model)
        self.model = model
        self.capacity = _check_count(capacity, "capacity")
        self._table = _StateTable(model, self.capacity)
        self._dtype = model.dtype
        self._input_size = model.config.input_size
        self._output_size = model.config.output_size
        self._is_open = np.zeros(self.capacity, np.bool_)
        self._seen = np.zeros(self.capacity, np.bool_)
        self._free = list(range(self.capacity - 1, -1, -1))  # popped from the end: lowest first
        self._cell = self._table.cell
        self._middle = self._table.middle

    def __repr__(self):
        return (f"fastrnn.StreamPool({self.model!r}, capacity={self.capacity}, "
                f"open={self.num_open})")

    # -- slots --

    @property
    def num_open(self):
        return self.capacity - len(self._free)

    @property
    def open_slots(self):
        """The open slots, in increasing order."""
        return [int(slot) for slot in np.flatnonzero(self._is_open)]

    def open(self, snapshot=None):
        """A free slot, its state zero or restored from `snapshot`; ValueError when the pool is full."""
        if not self._free:
            raise ValueError(f"the pool is full: all {self.capacity} slots are open; close one "
                             f"or make a larger pool")
        if snapshot is not None:
            h, c = self._decode(snapshot)  # before taking the slot, so a bad blob takes none
        slot = self._free.pop()
        self._is_open[slot] = True
        if snapshot is None:
            self.reset(slot)
        else:
            self._write(slot, h, c)
        return slot

    def close(self, slot):
        """Free an open slot; its state is cleared."""
        slot = self._check_slot(slot)
        self.reset(slot)
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

    def step(self, slots, xs, out=None):
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
        bad = _first_bad_slot(slots, self._is_open, self._seen)
        if bad >= 0:
            self._explain_bad_slot(slots, bad)
        table = self._table
        if count >= BLAS_MIN_BATCH:
            table.batched_kernel(self._cell, xs, slots, *self._middle, out, *table.batched_tail)
        else:
            table.kernel(self._cell, xs, slots, *self._middle, out, *table.tail)
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

    def reset(self, slot):
        """Back to the zero state for one slot."""
        slot = self._check_slot(slot)
        self._table.h[:, slot] = 0
        self._table.c[:, slot] = 0

    def get_state(self, slot):
        """A copy of one slot's state, shaped as a batch-1 Stream's: h (L, 1, H_out), c or None."""
        slot = self._check_slot(slot)
        has_c = self.model.kind == "lstm"
        return State(self._table.h[:, slot:slot + 1].copy(),
                     self._table.c[:, slot:slot + 1].copy() if has_c else None)

    def set_state(self, slot, state):
        """Set one slot's state from a State, (h, c) or h shaped as a batch-1 Stream's."""
        slot = self._check_slot(slot)
        if state is None:
            raise ValueError("state must be a fastrnn.State, (h, c) or h; use reset(slot) for zeros")
        h, c = self.model.check_state(state, 1)
        self._write(slot, h, c)

    def snapshot(self, slot):
        """One slot's state as bytes, restorable into any slot of a pool of this model or a batch-1 Stream."""
        slot = self._check_slot(slot)
        has_c = self.model.kind == "lstm"
        return encode_snapshot(model_fingerprint(self.model), self._table.h[:, slot:slot + 1],
                               self._table.c[:, slot:slot + 1] if has_c else None)

    def restore(self, slot, blob):
        """Set one slot's state from a batch-1 snapshot of this model; ValueError if it is not one."""
        slot = self._check_slot(slot)
        h, c = self._decode(blob)
        self._write(slot, h, c)

    def _decode(self, blob):
        h_shape, c_shape = self.model.state_shapes(1)
        return decode_snapshot(blob, model_fingerprint(self.model), self._dtype, h_shape, c_shape)

    def _write(self, slot, h, c):
        self._table.h[:, slot] = h[:, 0]
        if c is not None and c.shape[2]:
            self._table.c[:, slot] = c[:, 0]
