"""The device state table: the backend of a Stream or StreamPool of a CudaModel.

fastrnn.stream's Stream and StreamPool validate every call and then call their model's state
table (the protocol is in fastrnn.engine.table); this one keeps the state on the device between
calls. A step copies x into a device buffer allocated once, makes one kernel launch for every
layer (fastrnn.cuda.driver.step_kernel) and copies y back: only inputs and outputs cross the bus.
Snapshots are the CPU's bytes, so a session moves freely between the CPU and the GPU.
"""

import numpy as np
from numba import cuda

from fastrnn.cuda import driver


class DeviceStateTable:
    """The state of `rows` streams on the device and the step's device buffers.

    h (L, rows, H_out); c (L, rows, H) or (L, rows, 0); x (rows, I) and y (rows, H_out) staging
    inputs and outputs; slots (rows,) the step's slot list; scratch for step_kernel. All
    allocated once.
    """

    def __init__(self, cuda_model, rows):
        self.model = cuda_model
        config, dtype = cuda_model.config, cuda_model.dtype
        layers = config.num_layers
        self.h_shape = (layers, rows, config.output_size)
        self.c_shape = (layers, rows, config.hidden_size if config.kind == "lstm" else 0)
        with cuda_model._on_device():
            self.h = cuda.to_device(np.zeros(self.h_shape, dtype))
            self.c = cuda.to_device(np.zeros(self.c_shape, dtype))
            self.x = cuda.device_array((rows, config.input_size), dtype)
            self.y = cuda.device_array((rows, config.output_size), dtype)
            self.slots = cuda.device_array(rows, np.int64)
            self.buffers = driver.step_buffers(config, rows, dtype)
        self._slots_on_device = None   # the host slot list last copied (a Stream's never changes)

    def advance(self, x, slots, out):
        """One timestep for `slots` (host int64 (N,)): host x (N, I) -> host out (N, H_out)."""
        count = slots.shape[0]
        if count == 0:  # an empty grid is an error on the device
            return out
        model = self.model
        with model._on_device():
            if slots is not self._slots_on_device:
                self.slots[:count].copy_to_device(slots)
                self._slots_on_device = slots if count == self.x.shape[0] else None
            # A full table (every Stream step) needs no slice: each slice is a new device array.
            full = count == self.x.shape[0]
            (self.x if full else self.x[:count]).copy_to_device(x)
            driver.advance_streams(model._weights, model.threads_per_block, count, self.x,
                                   self.slots, self.h, self.c, self.y, self.buffers)
            (self.y if full else self.y[:count]).copy_to_host(out)
        return out

    def stepper(self, slots):
        """advance as a callable step(x, out) for slots fixed once (a Stream's)."""
        return lambda x, out: self.advance(x, slots, out)

    def run_chunk(self, xs):
        """Every row over xs (T, rows, I), time-major, on the device -> host ys (T, rows, H_out)."""
        model = self.model
        lengths = np.full(xs.shape[1], xs.shape[0], np.int64)
        with model._on_device():
            y = driver.run_sequence(model._weights, xs, self.h, self.c, cuda.to_device(lengths),
                                    model.threads_per_block, model.steps_per_launch)
            return y.copy_to_host()

    def read(self, rows):
        """Host copies (h, c) of the state rows `rows` (a slice), each (L, n, ...)."""
        with self.model._on_device():
            # One contiguous (n, ...) piece per layer: a slice across layers is strided there.
            h = np.stack([self.h[layer, rows].copy_to_host() for layer in range(self.h_shape[0])])
            c = np.stack([self.c[layer, rows].copy_to_host() for layer in range(self.c_shape[0])])
        return h, c

    def write(self, rows, h, c):
        """Set the state rows `rows` (a slice) from host h (L, n, H_out) and c (L, n, H) or None."""
        with self.model._on_device():
            for layer in range(self.h_shape[0]):
                self.h[layer, rows].copy_to_device(np.ascontiguousarray(h[layer]))
                if c is not None and self.c_shape[2]:
                    self.c[layer, rows].copy_to_device(np.ascontiguousarray(c[layer]))

    def reset(self, rows):
        count = len(range(*rows.indices(self.h_shape[1])))
        h = np.zeros((self.h_shape[0], count, self.h_shape[2]), self.model.dtype)
        c = np.zeros((self.c_shape[0], count, self.c_shape[2]), self.model.dtype)
        self.write(rows, h, c)
