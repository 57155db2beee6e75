"""Streams and StreamPools of a CudaModel, their state kept on the device between calls.

They are fastrnn.stream's Stream and StreamPool (same API, same validation, same snapshot bytes:
a snapshot moves freely between the CPU and the GPU), with the state table on the device. A step
copies x into a device buffer allocated once, makes one kernel launch for every layer
(fastrnn.cuda.driver.step_kernel) and copies y back: only inputs and outputs cross the bus.
"""

import numpy as np
from numba import cuda

from fastrnn.cuda import driver
from fastrnn.state import State
from fastrnn.stream import (Stream, StreamPool, _check_count, _check_out, _check_streamable,
                            _first_bad_slot, decode_snapshot, encode_snapshot, model_fingerprint)


class _DeviceStateTable:
    """The state of `rows` streams on the device and the step's device buffers.

    h (L, rows, H_out); c (L, rows, H) or (L, rows, 0); x (rows, I) and y (rows, H_out) staging
    inputs and outputs; rows = 0..rows-1, the row list of a Stream's step; scratch for
    step_kernel. All allocated once.
    """

    def __init__(self, cuda_model, rows):
        config, dtype = cuda_model.config, cuda_model.dtype
        layers = config.num_layers
        self.h_shape = (layers, rows, config.output_size)
        self.c_shape = (layers, rows, config.hidden_size if config.kind == "lstm" else 0)
        self.h = cuda.to_device(np.zeros(self.h_shape, dtype))
        self.c = cuda.to_device(np.zeros(self.c_shape, dtype))
        self.x = cuda.device_array((rows, config.input_size), dtype)
        self.y = cuda.device_array((rows, config.output_size), dtype)
        self.rows = cuda.to_device(np.arange(rows, dtype=np.int64))
        self.buffers = driver.step_buffers(config, rows, dtype)

    def advance(self, cuda_model, x, count, rows, out):
        """Step rows `rows` (device, >= count) with host x (count, I) into host out (count, H_out)."""
        # A full table (every Stream step) needs no slice: each slice is a new device-array object.
        full = count == self.x.shape[0]
        (self.x if full else self.x[:count]).copy_to_device(x)
        driver.advance_streams(cuda_model._weights, cuda_model.threads_per_block, count, self.x,
                               rows, self.h, self.c, self.y, self.buffers)
        (self.y if full else self.y[:count]).copy_to_host(out)
        return out

    def read(self, rows):
        """Host copies (h, c) of the state rows `rows` (a slice), each (L, rows, ...)."""
        # One contiguous (n, ...) piece per layer: a slice across layers is strided on the device.
        h = np.stack([self.h[layer, rows].copy_to_host() for layer in range(self.h_shape[0])])
        c = np.stack([self.c[layer, rows].copy_to_host() for layer in range(self.c_shape[0])])
        return h, c

    def write(self, rows, h, c):
        """Set the state rows `rows` (a slice) from host h (L, n, H_out) and c (L, n, H) or None."""
        for layer in range(self.h_shape[0]):
            self.h[layer, rows].copy_to_device(np.ascontiguousarray(h[layer]))
            if c is not None and self.c_shape[2]:
                self.c[layer, rows].copy_to_device(np.ascontiguousarray(c[layer]))


class CudaStream(Stream):
    """fastrnn.Stream on the device: step, process, reset, state, snapshot, restore (see Stream)."""

    def __init__(self, cuda_model, batch=1):
        _check_streamable(cuda_model.to("cpu"))
        self.model = cuda_model
        self.batch = _check_count(batch, "batch")
        self._dtype = cuda_model.dtype
        self._x_shape = (self.batch, cuda_model.config.input_size)
        self._y_shape = (self.batch, cuda_model.config.output_size)
        with cuda_model._on_device():
            self._table = _DeviceStateTable(cuda_model, self.batch)
        self._all_rows = slice(0, self.batch)

    def __repr__(self):
        return f"fastrnn.cuda.CudaStream({self.model!r}, batch={self.batch})"

    def step(self, x, out=None):
        """Advance one timestep: x (B, I) -> y (B, H_out), as Stream.step."""
        if not (type(x) is np.ndarray and x.dtype is self._dtype and x.shape == self._x_shape
                and x.flags.c_contiguous):
            x, unbatched = self._check_step_input(x)
            if unbatched:
                if out is not None:
                    out = _check_out(out, self._y_shape[1:], self._dtype).reshape(self._y_shape)
                return self.step(x, out).reshape(self._y_shape[1:])
        out = np.empty(self._y_shape, self._dtype) if out is None else \
            _check_out(out, self._y_shape, self._dtype)
        with self.model._on_device():
            return self._table.advance(self.model, x, self.batch, self._table.rows, out)

    def process(self, xs):
        """Advance over a chunk: (T, B, I) -> (T, B, H_out), batch_first (B, T, ...), as Stream."""
        cpu = self.model.to("cpu")
        xs_array = np.asarray(xs) if not hasattr(xs, "detach") else xs
        time_axis = 1 if cpu.config.batch_first and getattr(xs_array, "ndim", 0) == 3 else 0
        if getattr(xs_array, "ndim", 0) in (2, 3) and xs_array.shape[time_axis] == 0:
            return Stream.process(self._empty_twin(), xs)  # zero steps: shapes checked, no work
        x, unbatched = cpu._check_input(xs)
        if unbatched and self.batch != 1:
            raise ValueError(f"xs must be (T, {self.batch}, {cpu.input_size}) for this stream, "
                             f"got shape {np.shape(xs_array)}")
        if x.shape[1] != self.batch:
            layout = "(B, T, I)" if cpu.config.batch_first else "(T, B, I)"
            raise ValueError(f"xs must be {layout} with B = {self.batch} for this stream, got "
                             f"shape {np.shape(xs_array)}")
        lengths = np.full(self.batch, x.shape[0], np.int64)
        with self.model._on_device():
            y = driver.run_sequence(self.model._weights, x, self._table.h, self._table.c,
                                    cuda.to_device(lengths), self.model.threads_per_block,
                                    self.model.steps_per_launch)
            y = y.copy_to_host()
        if unbatched:
            return y[:, 0, :]
        if cpu.config.batch_first:
            return np.ascontiguousarray(y.transpose(1, 0, 2))
        return y

    def _empty_twin(self):
        """A CPU stream of the same model and batch, for the checks of a zero-length chunk."""
        return Stream(self.model.to("cpu"), self.batch)

    # -- state --

    def reset(self):
        """Back to the zero state."""
        with self.model._on_device():
            self._table.write(self._all_rows, np.zeros(self._table.h_shape, self._dtype),
                              np.zeros(self._table.c_shape, self._dtype))

    @property
    def state(self):
        """A copy of the state: fastrnn.State(h (L, B, H_out), c (L, B, H) or None)."""
        with self.model._on_device():
            h, c = self._table.read(self._all_rows)
        return State(h, c if self.model.kind == "lstm" else None)

    @state.setter
    def state(self, value):
        if value is None:
            raise ValueError("state must be a fastrnn.State, (h, c) or h; use reset() for zeros")
        h, c = self.model.check_state(value, self.batch)
        with self.model._on_device():
            self._table.write(self._all_rows, h, c)

    def snapshot(self):
        """The state as bytes, the CPU Stream's format (restorable on either device)."""
        state = self.state
        return encode_snapshot(model_fingerprint(self.model.to("cpu")), state.h, state.c)

    def restore(self, blob):
        """Take the state held by `blob`, a snapshot of this model with this batch."""
        h_shape, c_shape = self.model.state_shapes(self.batch)
        h, c = decode_snapshot(blob, model_fingerprint(self.model.to("cpu")), self._dtype,
                               h_shape, c_shape)
        with self.model._on_device():
            self._table.write(self._all_rows, h, c)


class CudaStreamPool(StreamPool):
    """fastrnn.StreamPool on the device: open, close, step, reset, get_state / set_state,
    snapshot / restore per slot (see StreamPool). Slot bookkeeping stays on the host."""

    def __new__(cls, cuda_model, capacity=1024):
        return object.__new__(cls)  # StreamPool.__new__ would hand a device model back to us

    def __init__(self, cuda_model, capacity=1024):
        _check_streamable(cuda_model.to("cpu"))
        self.model = cuda_model
        self.capacity = _check_count(capacity, "capacity")
        self._dtype = cuda_model.dtype
        self._input_size = cuda_model.config.input_size
        self._output_size = cuda_model.config.output_size
        self._is_open = np.zeros(self.capacity, np.bool_)
        self._seen = np.zeros(self.capacity, np.bool_)
        self._free = list(range(self.capacity - 1, -1, -1))  # popped from the end: lowest first
        with cuda_model._on_device():
            self._table = _DeviceStateTable(cuda_model, self.capacity)
            self._slots = cuda.device_array(self.capacity, np.int64)

    def __repr__(self):
        return (f"fastrnn.cuda.CudaStreamPool({self.model!r}, capacity={self.capacity}, "
                f"open={self.num_open})")

    def step(self, slots, xs, out=None):
        """Advance the streams in `slots` (N,) by one timestep: xs (N, I) -> y (N, H_out)."""
        if not (type(slots) is np.ndarray and slots.dtype == np.int64 and slots.ndim == 1
                and slots.flags.c_contiguous):
            slots = self._as_slots(slots)
        count = slots.shape[0]
        x_shape = (count, self._input_size)
        if not (type(xs) is np.ndarray and xs.dtype is self._dtype and xs.shape == x_shape
                and xs.flags.c_contiguous):
            from fastrnn.validation import as_float_array, check_shape
            xs = as_float_array(xs, self._dtype, "xs")
            check_shape(xs, x_shape, f"xs (one row of {self._input_size} features per slot)")
        y_shape = (count, self._output_size)
        out = np.empty(y_shape, self._dtype) if out is None else \
            _check_out(out, y_shape, self._dtype)
        bad = _first_bad_slot(slots, self._is_open, self._seen)
        if bad >= 0:
            self._explain_bad_slot(slots, bad)
        if count == 0:
            return out
        with self.model._on_device():
            self._slots[:count].copy_to_device(slots)
            return self._table.advance(self.model, xs, count, self._slots, out)

    # -- per-slot state --

    def reset(self, slot):
        """Back to the zero state for one slot."""
        slot = self._check_slot(slot)
        h_shape, c_shape = self.model.state_shapes(1)
        with self.model._on_device():
            self._table.write(slice(slot, slot + 1), np.zeros(h_shape, self._dtype),
                              None if c_shape is None else np.zeros(c_shape, self._dtype))

    def get_state(self, slot):
        """A copy of one slot's state, shaped as a batch-1 Stream's: h (L, 1, H_out), c or None."""
        slot = self._check_slot(slot)
        with self.model._on_device():
            h, c = self._table.read(slice(slot, slot + 1))
        return State(h, c if self.model.kind == "lstm" else None)

    def snapshot(self, slot):
        """One slot's state as bytes, restorable into a pool slot or a batch-1 Stream, CPU or GPU."""
        state = self.get_state(slot)
        return encode_snapshot(model_fingerprint(self.model.to("cpu")), state.h, state.c)

    def _decode(self, blob):
        h_shape, c_shape = self.model.state_shapes(1)
        return decode_snapshot(blob, model_fingerprint(self.model.to("cpu")), self._dtype,
                               h_shape, c_shape)

    def _write(self, slot, h, c):
        with self.model._on_device():
            self._table.write(slice(slot, slot + 1), h, c)
