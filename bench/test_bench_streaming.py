"""Streaming: one timestep per call with the state carried, as a service runs a recurrent model.

Every engine carries its state between calls: fastrnn in a Stream or a StreamPool, torch by
passing (h, c) back into nn.LSTM/GRU or LSTMCell/GRUCell, onnxruntime and OpenVINO by feeding the
one-step graph's h_n/c_n outputs back as its h0/c0 inputs (they keep no state of their own). Each
engine first steps through a short sequence from the zero state and its answers are checked
against the float64 reference of the same weights (bench/registry.py); then the engines of a
workload are timed in interleaved rounds (registry.measured).

Workloads (groups): per-call step at B=1; `process` on a 128-step chunk; a StreamPool tick, N live
streams advanced one step each (N = 16, 64, 256, 4096: one StreamPool.step; up to 256, N separate
Stream.step calls too; the peers as their users must write it: the N streams' h and c gathered
from a state table by fancy indexing, one batched T=1 step with them as the initial state, the
new h and c scattered back); two threads each driving a stream against one thread driving both.
"""

import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from registry import Entrant, ModelSpec, OpenVinoSession, cpu_count, report_case

CHECK_STEPS = 16          # steps each engine takes from zero before timing, checked
CHUNK = 128               # the `process` workload's chunk length
THREAD_STEPS = 400        # steps per stream in the threads workload
SEPARATE_STEPS_UP_TO = 256  # the pool's "N separate Stream.step calls" variant, up to this N

STEP_SPECS = [ModelSpec(kind, input_size=inputs, hidden_size=hidden)
              for kind in ("lstm", "gru")
              for inputs, hidden in ((64, 128), (1, 32), (64, 512), (256, 1024))]
# (model, live streams N) of the StreamPool tick
POOL_CASES = [(ModelSpec("lstm", input_size=64, hidden_size=128), streams)
              for streams in (16, 64, 256, 4096)] + [
             (ModelSpec("lstm", input_size=1, hidden_size=32), 256)]


def spec_id(spec):
    return f"{spec.kind}-I{spec.input_size}-H{spec.hidden_size}"


def check(spec, steps, batch, run_steps, seed=7):
    """(correct, max_abs_error) of run_steps(xs (T, B, I)) -> ys (T, B, H) from the zero state."""
    xs = np.random.default_rng(seed).standard_normal(
        (steps, batch, spec.input_size)).astype(np.float32)
    return spec.matches(np.asarray(run_steps(xs)), spec.reference(xs))


def record(benchmark, group, engine, spec, correct_error, **extra):
    correct, error = correct_error
    benchmark.group = group
    benchmark.extra_info.update({"engine": engine, "correct": correct, "max_abs_error": error,
                                 **spec.info(), **extra})
    assert correct, f"{engine} differs from the float64 reference by {error:.3g} on {group}"


# -- engines: one step per call, state carried ---------------------------------------------------

def fastrnn_stream(spec, batch=1):
    import fastrnn
    return fastrnn.from_torch(spec.torch_module()).stream(batch=batch)


class TorchStepper:
    """torch's nn.LSTM/GRU (or LSTMCell/GRUCell) called once per step with its state passed back."""

    def __init__(self, spec, batch=1, cell=False):
        import torch
        torch.set_num_threads(cpu_count())
        self.torch = torch
        module = spec.torch_module()
        self.is_lstm = spec.kind == "lstm"
        self.cell = cell
        if cell:
            cls = torch.nn.LSTMCell if self.is_lstm else torch.nn.GRUCell
            self.module = cls(spec.input_size, spec.hidden_size)
            with torch.no_grad():
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(self.module, name).copy_(getattr(module, name + "_l0"))
            shape = (batch, spec.hidden_size)
        else:
            self.module = module
            shape = (1, batch, spec.hidden_size)
        self.module.eval()
        self.shape = shape
        self.reset()

    def reset(self):
        zeros = self.torch.zeros(self.shape)
        self.state = (zeros, zeros.clone()) if self.is_lstm else zeros

    def step(self, x_t):
        """x_t (B, I) numpy -> y_t (B, H) numpy."""
        with self.torch.no_grad():
            x = self.torch.from_numpy(x_t)
            if self.cell:
                self.state = self.module(x, self.state)
                return (self.state[0] if self.is_lstm else self.state).numpy()
            y, self.state = self.module(x[None], self.state)
            return y[0].numpy()

    def process(self, xs):
        with self.torch.no_grad():
            y, self.state = self.module(self.torch.from_numpy(xs), self.state)
            return y.numpy()


def export_step_graph(spec, path, steps=1, dynamic_batch=False):
    """The spec's module as ONNX with its state as inputs (h0, c0) and outputs (h_n, c_n)."""
    import torch

    class WithState(torch.nn.Module):
        def __init__(self, rnn):
            super().__init__()
            self.rnn = rnn

        def forward(self, x, h0, c0=None):
            if c0 is None:
                y, h_n = self.rnn(x, h0)
                return y, h_n
            y, (h_n, c_n) = self.rnn(x, (h0, c0))
            return y, h_n, c_n

    is_lstm = spec.kind == "lstm"
    x = torch.zeros(steps, 1, spec.input_size)
    h0 = torch.zeros(1, 1, spec.hidden_size)
    inputs = (x, h0, torch.zeros_like(h0)) if is_lstm else (x, h0)
    input_names = ["x", "h0"] + (["c0"] if is_lstm else [])
    output_names = ["y", "h_n"] + (["c_n"] if is_lstm else [])
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {1: "batch"} for name in input_names + output_names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(WithState(spec.torch_module()).eval(), inputs, str(path), dynamo=False,
                          input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes)
    return path


def onnx_session(engine, path):
    """onnxruntime's or OpenVINO's session on the ONNX file, all cores, float32."""
    if engine == "openvino":
        return OpenVinoSession(path)
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = cpu_count()
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxStepper:
    """onnxruntime (or OpenVINO) running the one-step (or one-chunk) graph, its state outputs fed
    back in."""

    def __init__(self, spec, path, batch=1, engine="onnxruntime"):
        self.session = onnx_session(engine, path)
        self.is_lstm = spec.kind == "lstm"
        self.shape = (1, batch, spec.hidden_size)
        self.reset()

    def reset(self):
        self.h = np.zeros(self.shape, np.float32)
        self.c = np.zeros(self.shape, np.float32)

    def process(self, xs):
        """xs (T, B, I) -> ys (T, B, H), state carried."""
        if self.is_lstm:
            y, self.h, self.c = self.session.run(None, {"x": xs, "h0": self.h, "c0": self.c})
        else:
            y, self.h = self.session.run(None, {"x": xs, "h0": self.h})
        return y[:, 0] if y.ndim == 4 else y

    def step(self, x_t):
        return self.process(x_t[None])[0]


def stepped(stepper, reset):
    """run_steps for check(): reset, then one step() per timestep."""
    def run_steps(xs):
        reset()
        return np.stack([stepper(x_t) for x_t in xs])
    return run_steps


# -- per-call step, B=1 ----------------------------------------------------------------------------

STEP_ENGINES = ["fastrnn", "torch", "torch-cell", "onnxruntime", "openvino"]


def step_entrants(spec, engines):
    """{engine: Entrant} of one step per call at B=1, each checked over CHECK_STEPS steps."""
    x_t = np.random.default_rng(3).standard_normal((1, spec.input_size)).astype(np.float32)
    built = {}
    with tempfile.TemporaryDirectory(prefix="fastrnn-bench-") as folder:
        path = export_step_graph(spec, Path(folder) / "step.onnx")
        for engine in engines:
            if engine == "fastrnn":
                stepper = fastrnn_stream(spec)
            elif engine.startswith("torch"):
                stepper = TorchStepper(spec, cell=engine == "torch-cell")
            else:
                stepper = OnnxStepper(spec, path, engine=engine)
            correct, error = check(spec, CHECK_STEPS, 1, stepped(stepper.step, stepper.reset))
            info = {"engine": engine, "correct": correct, "max_abs_error": error,
                    "workload": "step", **spec.info()}
            built[engine] = Entrant(lambda step=stepper.step: step(x_t), info, [stepper])
    return built


@pytest.mark.parametrize("engine", STEP_ENGINES)
@pytest.mark.parametrize("spec", STEP_SPECS, ids=spec_id)
def test_step(benchmark, spec, engine):
    group = f"{spec.kind} step B=1 I={spec.input_size} H={spec.hidden_size}"
    report_case(benchmark, group, engine, lambda engines: step_entrants(spec, engines),
                STEP_ENGINES, benchmark.enabled)


# -- process a 128-step chunk, B=1 ---------------------------------------------------------------

CHUNK_ENGINES = ["fastrnn", "torch", "onnxruntime", "openvino"]


def chunk_entrants(spec, engines):
    chunk = np.random.default_rng(3).standard_normal((CHUNK, 1, 1)).astype(np.float32)
    built = {}
    with tempfile.TemporaryDirectory(prefix="fastrnn-bench-") as folder:
        path = export_step_graph(spec, Path(folder) / "chunk.onnx", steps=CHUNK)
        for engine in engines:
            if engine == "fastrnn":
                stepper = fastrnn_stream(spec)
            elif engine == "torch":
                stepper = TorchStepper(spec)
            else:
                stepper = OnnxStepper(spec, path, engine=engine)

            def run_chunks(xs, stepper=stepper):  # two chunks, the second from the first's state
                stepper.reset()
                return np.concatenate([stepper.process(xs[:CHUNK]), stepper.process(xs[CHUNK:])])

            correct, error = check(spec, 2 * CHUNK, 1, run_chunks)
            info = {"engine": engine, "correct": correct, "max_abs_error": error,
                    "workload": "chunk", "samples_per_call": CHUNK, **spec.info()}
            built[engine] = Entrant(lambda process=stepper.process: process(chunk), info,
                                    [stepper])
    return built


@pytest.mark.parametrize("engine", CHUNK_ENGINES)
def test_process_chunk(benchmark, engine):
    spec = ModelSpec("lstm", input_size=1, hidden_size=32, steps=CHUNK)
    report_case(benchmark, f"lstm process chunk T={CHUNK} B=1 I=1 H=32", engine,
                lambda engines: chunk_entrants(spec, engines), CHUNK_ENGINES, benchmark.enabled)


# -- a StreamPool tick: N live streams, one step each ---------------------------------------------

class GatheredBatch:
    """A peer serving many streams: their states kept in tables, gathered into one batch per tick
    and scattered back after one batched call (torch nn.LSTM or onnxruntime)."""

    def __init__(self, spec, streams, run_batch):
        self.run_batch = run_batch
        self.is_lstm = spec.kind == "lstm"
        self.h_table = np.zeros((streams, spec.hidden_size), np.float32)
        self.c_table = np.zeros((streams, spec.hidden_size), np.float32)

    def reset(self):
        self.h_table[...] = 0
        self.c_table[...] = 0

    def step(self, slots, xs):
        h = self.h_table[slots][None]
        c = self.c_table[slots][None]
        y, h_n, c_n = self.run_batch(xs[None], h, c)
        self.h_table[slots] = h_n[0]
        if self.is_lstm:
            self.c_table[slots] = c_n[0]
        return y[0]


def onnx_batch_runner(spec, path, engine="onnxruntime"):
    session = onnx_session(engine, path)

    def run_batch(x, h, c):
        if spec.kind == "lstm":
            return session.run(None, {"x": x, "h0": h, "c0": c})
        y, h_n = session.run(None, {"x": x, "h0": h})
        return y, h_n, None
    return run_batch


def torch_batch_runner(spec):
    import torch
    torch.set_num_threads(cpu_count())
    module = spec.torch_module().eval()

    def run_batch(x, h, c):
        with torch.no_grad():
            if spec.kind == "lstm":
                y, (h_n, c_n) = module(torch.from_numpy(x),
                                       (torch.from_numpy(h), torch.from_numpy(c)))
                return y.numpy(), h_n.numpy(), c_n.numpy()
            y, h_n = module(torch.from_numpy(x), torch.from_numpy(h))
            return y.numpy(), h_n.numpy(), None
    return run_batch


# The report names engines per group: "fastrnn" is the pool here, the peers gather and scatter.
POOL_ENGINES = ["fastrnn", "fastrnn-separate-steps", "onnxruntime", "torch", "openvino"]
POOL_VARIANTS = {"fastrnn": "StreamPool.step", "fastrnn-separate-steps": "Stream.step x streams"}


def pool_stepper(spec, streams, slots, engine, path):
    """(step(xs (N, I)) -> ys (N, H), reset()) of `engine` serving the streams at `slots`."""
    import fastrnn
    capacity = 2 * streams
    if engine == "fastrnn":
        pool = fastrnn.StreamPool(fastrnn.from_torch(spec.torch_module()), capacity=capacity)
        for _ in range(capacity):
            pool.open()

        def reset():
            for slot in slots:
                pool.reset(int(slot))
        return (lambda xs: pool.step(slots, xs)), reset
    if engine == "fastrnn-separate-steps":
        model = fastrnn.from_torch(spec.torch_module())
        separate = [model.stream() for _ in range(streams)]
        outputs = np.empty((streams, spec.hidden_size), np.float32)

        def step(xs):
            for row, stream in enumerate(separate):
                stream.step(xs[row:row + 1], out=outputs[row:row + 1])
            return outputs

        def reset():
            for stream in separate:
                stream.reset()
        return step, reset
    if engine == "torch":
        runner = torch_batch_runner(spec)
    else:
        runner = onnx_batch_runner(spec, path, engine)
    peer = GatheredBatch(spec, capacity, runner)
    return (lambda xs: peer.step(slots, xs)), peer.reset


def pool_entrants(spec, streams, engines):
    # The streams sit at scattered slots of a table twice their number, as in a live service.
    slots = np.random.default_rng(0).permutation(2 * streams)[:streams].astype(np.int64)
    xs = np.random.default_rng(3).standard_normal((streams, spec.input_size)).astype(np.float32)
    built = {}
    with tempfile.TemporaryDirectory(prefix="fastrnn-bench-") as folder:
        path = export_step_graph(spec, Path(folder) / "pool.onnx", dynamic_batch=True)
        for engine in engines:
            step, reset = pool_stepper(spec, streams, slots, engine, path)
            # Copies: the separate-steps case returns one reused output buffer.
            correct, error = check(spec, 4, streams, lambda steps: (
                reset(), np.stack([np.array(step(x)) for x in steps]))[1])
            info = {"engine": engine, "correct": correct, "max_abs_error": error,
                    "workload": "pool", "streams": streams, **spec.info(),
                    "variant": POOL_VARIANTS.get(
                        engine, "states gathered from a table, one batched step, scattered back")}
            built[engine] = Entrant(lambda step=step: step(xs), info, [step, reset])
    return built


@pytest.mark.parametrize("engine", POOL_ENGINES)
@pytest.mark.parametrize("spec, streams", POOL_CASES,
                         ids=[f"{spec_id(spec)}-N{streams}" for spec, streams in POOL_CASES])
def test_many_streams_one_step_each(benchmark, spec, streams, engine):
    engines = [engine for engine in POOL_ENGINES
               if engine != "fastrnn-separate-steps" or streams <= SEPARATE_STEPS_UP_TO]
    if engine not in engines:
        pytest.skip(f"{streams} separate Stream.step calls: the variant is shown up to "
                    f"{SEPARATE_STEPS_UP_TO} streams")
    group = f"{spec.kind} {streams} streams one step I={spec.input_size} H={spec.hidden_size}"
    report_case(benchmark, group, engine,
                lambda engines: pool_entrants(spec, streams, engines), engines,
                benchmark.enabled)


# -- two threads, two streams ----------------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 2])
def test_two_streams_threads(benchmark, threads):
    """The same work, THREAD_STEPS steps on each of two streams, by one thread or by two."""
    spec = ModelSpec("lstm", input_size=64, hidden_size=128)
    import fastrnn
    model = fastrnn.from_torch(spec.torch_module())
    streams = [model.stream(), model.stream()]
    rng = np.random.default_rng(5)
    inputs = [rng.standard_normal((THREAD_STEPS, 1, 64)).astype(np.float32) for _ in streams]
    outputs = [np.empty((THREAD_STEPS, 1, spec.hidden_size), np.float32) for _ in streams]

    failures = []

    def drive(index):
        try:
            stream, xs, ys = streams[index], inputs[index], outputs[index]
            for t in range(THREAD_STEPS):
                stream.step(xs[t], out=ys[t])
        except Exception as error:  # a thread's exception would otherwise vanish
            failures.append(error)

    def one_thread():
        for stream in streams:
            stream.reset()
        for t in range(THREAD_STEPS):
            for stream, xs, ys in zip(streams, inputs, outputs):
                stream.step(xs[t], out=ys[t])

    def two_threads():
        for stream in streams:
            stream.reset()
        workers = [threading.Thread(target=drive, args=(index,)) for index in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if failures:
            raise failures[0]

    run = one_thread if threads == 1 else two_threads
    run()
    # Each stream's answers against the float64 reference of its own inputs.
    errors = [spec.matches(ys, spec.reference(xs)) for xs, ys in zip(inputs, outputs)]
    outcome = (all(ok for ok, _ in errors), max(error for _, error in errors))
    engine = "fastrnn" if threads == 2 else "fastrnn-1-thread"
    record(benchmark, f"lstm two streams x {THREAD_STEPS} steps I=64 H=128", engine, spec,
           outcome, workload="threads", variant=f"{threads} thread(s)", threads=threads,
           steps_per_call=2 * THREAD_STEPS)
    benchmark.pedantic(run, rounds=5 if benchmark.enabled else 1, iterations=1)
