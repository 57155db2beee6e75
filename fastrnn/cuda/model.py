"""CudaModel: a fastrnn.Model whose weights live on an NVIDIA GPU, with the same API.

    model_gpu = model.to("cuda")          # weights uploaded once, here
    y, state = model_gpu(x)               # numpy in, numpy out (torch in, torch CPU tensors out)
    stream = model_gpu.stream(batch=1)    # state kept on the device between calls
    pool = fastrnn.StreamPool(model_gpu, capacity=N)
    model_gpu.to("cpu") is model          # the CPU model it came from

Validation is the CPU Model's own (Model._check_input, Model.check_state, fastrnn.validation):
a CUDA model refuses exactly what its CPU twin refuses, with the same messages.
"""

import contextlib

import numpy as np
from numba import cuda

from fastrnn.cuda import driver
from fastrnn.cuda.stream import DeviceStateTable
from fastrnn.validation import is_torch_tensor

DEFAULT_THREADS_PER_BLOCK = 256
DEFAULT_TILE = 16
# ptxas for sm_90 gives the recurrence kernels 92-122 registers a thread (no spills); a block has
# 65536 registers, so 512 threads fit and 1024 would not launch.
MAX_THREADS_PER_BLOCK = 512


class CudaUnavailableError(RuntimeError):
    """No usable CUDA GPU or driver: raised by model.to("cuda")."""


def parse_device(device):
    """The GPU index named by "cuda" or "cuda:N"."""
    device = str(device)
    if device == "cuda":
        return 0
    prefix, _, index = device.partition(":")
    if prefix != "cuda" or not index.isdigit():
        raise ValueError(f"device must be 'cuda' or 'cuda:N', got {device!r}")
    return int(index)


def cuda_usable():
    """Whether numba.cuda can run kernels in this process: a GPU with its driver, or the simulator."""
    try:
        return bool(cuda.is_available())  # True under NUMBA_ENABLE_CUDASIM
    except Exception:  # a broken driver install can raise instead of answering
        return False


def check_gpu(index):
    """Raise CudaUnavailableError unless GPU `index` can run kernels (or the simulator is on)."""
    if not cuda.is_available():
        # Numba keeps why CUDA could not start (no driver library, a driver too old, ...).
        reason = " ".join(str(cuda.cuda_error() or "no CUDA GPU was found").split()).rstrip(".")
        raise CudaUnavailableError(
            f"model.to('cuda') needs an NVIDIA GPU with a working CUDA driver: {reason}. "
            f"Keep the model on the CPU (model.to('cpu')), or set NUMBA_ENABLE_CUDASIM=1 before "
            f"numba is imported to run the CUDA code in Numba's simulator.")
    count = len(cuda.gpus)
    if index >= count:
        raise CudaUnavailableError(f"there is no GPU cuda:{index}: {count} GPU(s) visible")


class DeviceWeights:
    """A model's stacked plan (fastrnn.engine.plan.Plan.stacked) copied to the device once, and its kernels.

        w_ih_flat    every layer-direction's W_ih^T (I_l, G*H), back to back
        w_ih_offset  (L*D,) start of each block, on the device and as host ints
        w_hh_t       (L*D, H_out, G*H); b_ih, b_hh (L*D, G*H)
        peephole     (L*D, 3, H) or (L*D, 3, 0); w_proj_t (L*D, H, H_out) or (L*D, 0, 0)
        codes        (L*D, 3) int64; alphas, betas (L*D, 3) float64
    """

    def __init__(self, config, packed, dtype, tile):
        self.config = config
        self.tile = tile
        self.kernels = driver.build(np.dtype(dtype), tile)
        self.w_ih_flat = cuda.to_device(packed.w_ih_flat)
        self.w_ih_offset = cuda.to_device(packed.w_ih_offset)
        self._w_ih_blocks = [(int(start), block.shape) for start, block in
                             zip(packed.w_ih_offset, packed.w_ih_t)]
        self.w_hh_t = cuda.to_device(packed.w_hh_t)
        self.b_ih = cuda.to_device(packed.b_ih)
        self.b_hh = cuda.to_device(packed.b_hh)
        self.peephole = cuda.to_device(np.ascontiguousarray(packed.peephole))
        self.w_proj_t = cuda.to_device(np.ascontiguousarray(packed.w_proj_t))
        self.codes = cuda.to_device(packed.codes)
        self.alphas = cuda.to_device(packed.alphas)
        self.betas = cuda.to_device(packed.betas)

    def w_ih_t(self, ld):
        """Layer-direction ld's W_ih^T (I_l, G*H), a view into w_ih_flat."""
        start, shape = self._w_ih_blocks[ld]
        return self.w_ih_flat[start:start + shape[0] * shape[1]].reshape(*shape)


class CudaModel:
    """A fastrnn.Model on a CUDA device: the same calls, the same results (see the module doc).

    threads_per_block bounds the threads of a recurrence block (one per hidden unit up to it);
    tile is the edge of the input projection's matmul tiles. steps_per_launch (None: a layer's
    whole walk in one launch) splits the recurrence into launches of that many steps, 1 being a
    launch per timestep, for measuring the persistent launch against it. All three only change
    speed.
    """

    device = "cuda"

    def __init__(self, model, index=0, threads_per_block=DEFAULT_THREADS_PER_BLOCK,
                 tile=DEFAULT_TILE, steps_per_launch=None):
        window = 1 if steps_per_launch is None else steps_per_launch
        for name, value in (("threads_per_block", threads_per_block), ("tile", tile),
                            ("steps_per_launch", window)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if tile * tile > 1024:
            raise ValueError(f"tile must be at most 32 (tile * tile threads per block), got {tile}")
        if threads_per_block > MAX_THREADS_PER_BLOCK:
            raise ValueError(f"threads_per_block must be at most {MAX_THREADS_PER_BLOCK} (the "
                             f"kernels' registers per thread allow no more), got "
                             f"{threads_per_block}")
        check_gpu(index)
        self._cpu = model
        self.index = index
        self.threads_per_block = int(threads_per_block)
        self.steps_per_launch = None if steps_per_launch is None else int(steps_per_launch)
        with self._on_device():
            self._weights = DeviceWeights(model.config, model.plan.stacked(), model.dtype, int(tile))
            self._warm_up()

    def _warm_up(self):
        """Compile and launch every kernel once, on one zero timestep.

        Numba compiles a CUDA kernel at its first launch; doing it here means a device that
        cannot run them (no CUDA toolkit for the compiler, an unsupported GPU) fails at
        model.to("cuda") with CudaUnavailableError, not at the first call, and that the first
        call is as fast as the others. Kernels are shared by every model of a dtype: later
        models only pay the launches.
        """
        config = self.config
        x = np.zeros((1, 1, config.input_size), self.dtype)
        h, c = self._cpu.check_state(None, 1)
        try:
            driver.run_sequence(self._weights, x, cuda.to_device(h), cuda.to_device(c),
                                cuda.to_device(np.ones(1, np.int64)), self.threads_per_block)
            if not config.bidirectional:
                table = DeviceStateTable(self, 1)
                table.advance(x[0], np.zeros(1, np.int64),
                              np.empty((1, config.output_size), self.dtype))
            cuda.synchronize()
        except Exception as error:
            raise CudaUnavailableError(
                f"model.to('cuda') could not compile or run fastrnn's CUDA kernels on this "
                f"device: {type(error).__name__}: {error}. The CUDA toolkit's compiler comes "
                f"with `pip install fastrnn[cuda]` (numba-cuda[cu12]).") from error

    def _on_device(self):
        """The GPU as the current device; device 0 is Numba's default and needs no switch."""
        return contextlib.nullcontext() if self.index == 0 else cuda.gpus[self.index]

    # -- description: the CPU model's --------------------------------------------------------

    config = property(lambda self: self._cpu.config)
    dtype = property(lambda self: self._cpu.dtype)
    layers = property(lambda self: self._cpu.layers)
    kind = property(lambda self: self._cpu.kind)
    input_size = property(lambda self: self._cpu.input_size)
    hidden_size = property(lambda self: self._cpu.hidden_size)
    output_size = property(lambda self: self._cpu.output_size)
    num_parameters = property(lambda self: self._cpu.num_parameters)

    def __repr__(self):
        return repr(self._cpu)[:-1] + f", device='cuda:{self.index}')"

    def state_shapes(self, batch):
        return self._cpu.state_shapes(batch)

    def initial_state(self, batch):
        return self._cpu.initial_state(batch)

    def check_state(self, state, batch, unbatched=False):
        return self._cpu.check_state(state, batch, unbatched)

    # -- running -----------------------------------------------------------------------------

    def __call__(self, x, state=None, lengths=None):
        """y, state = model(x, state, lengths), as fastrnn.Model: results on the host, torch CPU
        tensors when x is a torch tensor and numpy arrays otherwise."""
        cpu = self._cpu
        as_torch = is_torch_tensor(x)
        x, h, c, row_lengths, unbatched = cpu.check_call(x, state, lengths)
        steps, batch = x.shape[0], x.shape[1]
        if batch == 0:  # nothing to launch: an empty grid is an error on the device
            y = np.zeros((steps, 0, self.output_size), self.dtype)
            return cpu._package(y, h, c, unbatched, as_torch)
        with self._on_device():
            device_h, device_c = cuda.to_device(h), cuda.to_device(c)
            y = driver.run_sequence(self._weights, x, device_h, device_c,
                                    cuda.to_device(row_lengths), self.threads_per_block,
                                    self.steps_per_launch)
            y = y.copy_to_host()
            device_h.copy_to_host(h)
            device_c.copy_to_host(c)
        return cpu._package(y, h, c, unbatched, as_torch)

    def stream(self, batch=1):
        """A fastrnn.Stream whose state stays on the device."""
        from fastrnn.stream import Stream
        return Stream(self, batch)

    def state_table(self, rows):
        """The backend of a Stream or StreamPool of `rows` rows (fastrnn.cuda.stream)."""
        return DeviceStateTable(self, rows)

    # -- devices and files -------------------------------------------------------------------

    def to(self, device):
        """"cpu" gives back the CPU model this one came from; "cuda[:N]" this one or a copy on N."""
        device = str(device)
        if device == "cpu":
            return self._cpu
        index = parse_device(device)
        if index == self.index:
            return self
        return CudaModel(self._cpu, index, self.threads_per_block, self._weights.tile,
                         self.steps_per_launch)

    def save(self, path):
        """Write the model to `path` in fastrnn's native format, as the CPU model would."""
        self._cpu.save(path)


def to_cuda(model, device="cuda", *, threads_per_block=DEFAULT_THREADS_PER_BLOCK,
            tile=DEFAULT_TILE, steps_per_launch=None):
    """`model` (a fastrnn.Model) on a CUDA device; CudaUnavailableError when there is none."""
    if isinstance(model, CudaModel):
        model = model.to("cpu")
    # What a fastrnn.Model has (not an isinstance check: fastrnn.model imports this module).
    if not (hasattr(model, "plan") and hasattr(model, "check_call")):
        raise TypeError(f"model must be a fastrnn.Model, got {type(model).__name__}")
    return CudaModel(model, parse_device(device), threads_per_block, tile, steps_per_launch)
