"""The CUDA target on a real GPU, beside torch's cuDNN LSTM/GRU on the same GPU.

Skipped where there is no GPU (or where numba.cuda is the simulator, whose times mean nothing).
Both engines take numpy input on the host and give numpy output on the host, state carried on the
device between calls, so each time includes the same bus transfers a service would pay.

Workloads (groups, the same names as the CPU suites' so the report sets them side by side):
- per-call step B=1, (I=64, H=128), LSTM and GRU: fastrnn's device Stream.step vs cuDNN called
  on one timestep with its state passed back.
- sequence T=1000 B=1 I=64 H=128 and T=100 B=64 I=H=256: model(x) vs cuDNN's module(x).
- the persistent launch against a launch per timestep: "fastrnn-cuda-launch-per-step" is the
  same model(x) with steps_per_launch=1 (the recurrence relaunched every step, all data staying
  on the device), "fastrnn-cuda-step-loop" the sequence fed as T Stream.step calls (a launch and
  two transfers per step), on the batch-1 sequences.
Each case checks its answer against the float64 reference (bench/registry.py) before timing.
"""

import numpy as np
import pytest
from numba.core import config as numba_config

from registry import ModelSpec

CHECK_STEPS = 16


def real_gpu():
    if numba_config.ENABLE_CUDASIM:
        return False
    from numba import cuda
    try:
        return cuda.is_available()
    except Exception:
        return False


pytestmark = pytest.mark.skipif(not real_gpu(), reason="no CUDA GPU here (the CUDA target is "
                                "tested in the simulator by tests/test_cuda_simulator.py)")


def torch_cuda_available():
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


ENGINES = ["fastrnn-cuda", "torch-cudnn"]


def record(benchmark, group, engine, spec, correct_error, **extra):
    correct, error = correct_error
    benchmark.group = group
    benchmark.extra_info.update({"engine": engine, "correct": correct, "max_abs_error": error,
                                 "device": device_name(), **spec.info(), **extra})
    assert correct, f"{engine} differs from the float64 reference by {error:.3g} on {group}"


def device_name():
    from numba import cuda
    name = cuda.get_current_device().name
    return name.decode() if isinstance(name, bytes) else str(name)


class CudnnModule:
    """torch's nn.LSTM/GRU on the GPU (cuDNN), numpy in and out, state kept on the GPU."""

    def __init__(self, spec, batch=1):
        import torch
        if not torch_cuda_available():
            pytest.skip("torch has no CUDA here (the CPU build of torch is installed)")
        self.torch = torch
        self.module = spec.torch_module().cuda().eval()
        self.is_lstm = spec.kind == "lstm"
        self.shape = (spec.num_layers * spec.num_directions, batch, spec.hidden_size)
        self.reset()

    def reset(self):
        zeros = self.torch.zeros(self.shape, device="cuda")
        self.state = (zeros, zeros.clone()) if self.is_lstm else zeros

    def step(self, x_t):
        with self.torch.no_grad():
            y, self.state = self.module(self.torch.from_numpy(x_t)[None].cuda(), self.state)
            return y[0].cpu().numpy()

    def run_sequence(self, x):
        with self.torch.no_grad():
            y, _ = self.module(self.torch.from_numpy(x).cuda())
            return y.cpu().numpy()


def fastrnn_cuda(spec):
    import fastrnn
    return fastrnn.from_torch(spec.torch_module()).to("cuda")


def stepped(step, reset):
    def run_steps(xs):
        reset()
        return np.stack([step(x_t) for x_t in xs])
    return run_steps


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cuda_step(benchmark, kind, engine):
    spec = ModelSpec(kind, input_size=64, hidden_size=128)
    if engine == "fastrnn-cuda":
        stream = fastrnn_cuda(spec).stream()
        step, reset = stream.step, stream.reset
    else:
        module = CudnnModule(spec)
        step, reset = module.step, module.reset
    xs = np.random.default_rng(7).standard_normal((CHECK_STEPS, 1, 64)).astype(np.float32)
    outcome = spec.matches(stepped(step, reset)(xs), spec.reference(xs))
    record(benchmark, f"{kind} step B=1 I=64 H=128", engine, spec, outcome, workload="step")
    x_t = xs[0]
    y = benchmark(step, x_t)
    assert y.shape == (1, 128)


SEQUENCES = [ModelSpec("lstm", input_size=64, hidden_size=128, steps=1000, batch=1),
             ModelSpec("lstm", input_size=256, hidden_size=256, steps=100, batch=64),
             ModelSpec("gru", input_size=64, hidden_size=128, steps=1000, batch=1),
             ModelSpec("gru", input_size=256, hidden_size=256, steps=100, batch=64)]


@pytest.mark.parametrize("engine", ENGINES + ["fastrnn-cuda-launch-per-step",
                                              "fastrnn-cuda-step-loop"])
@pytest.mark.parametrize("spec", SEQUENCES, ids=lambda s: s.workload_id().replace(" ", "-"))
def test_cuda_sequence(benchmark, spec, engine):
    x = spec.input()
    if engine == "fastrnn-cuda":
        model = fastrnn_cuda(spec)
        run = lambda x: model(x)[0]  # noqa: E731
    elif engine == "fastrnn-cuda-launch-per-step":
        if spec.batch != 1:
            pytest.skip("launches per step are measured on the batch-1 sequences")
        import fastrnn
        from fastrnn.cuda import to_cuda
        model = to_cuda(fastrnn.from_torch(spec.torch_module()), steps_per_launch=1)
        run = lambda x: model(x)[0]  # noqa: E731
    elif engine == "fastrnn-cuda-step-loop":
        if spec.batch != 1:
            pytest.skip("the step loop is measured on the batch-1 sequences")
        stream = fastrnn_cuda(spec).stream()
        run = stepped(stream.step, stream.reset)
    else:
        run = CudnnModule(spec, spec.batch).run_sequence
    outcome = spec.matches(np.asarray(run(x)).reshape(spec.steps, spec.batch, -1),
                           spec.reference(x))
    record(benchmark, spec.workload_id(), engine, spec, outcome, workload="sequence")
    y = benchmark(run, x)
    assert np.asarray(y).size == spec.steps * spec.batch * spec.hidden_size
