"""Implementations shared by the benchmarks' correctness checks and their timings.

Every engine runs the same seeded weights: a torch module built from a `ModelSpec` is the source,
fastrnn converts it (fastrnn.from_torch), torch runs it as it is, onnxruntime runs its ONNX export.
A float64 torch run of the same weights is the reference answer each engine is checked against.

    spec = ModelSpec("lstm", input_size=64, hidden_size=128, steps=1000, batch=1)
    x = spec.input()
    reference = spec.reference(x)
    implementation = build("fastrnn", spec)
    answer = implementation.run_sequence(x)         # (T, B, D*H) float32 numpy array
    spec.matches(answer, reference)                  # within DESIGN.md's float32 tolerance

Convention for every benchmark in bench/ (bench/report.py relies on it to build the table and
the plots from pytest-benchmark's JSON, whoever wrote the case):

    benchmark.group = "<workload id>"        one group per workload; its cases are the engines,
                                             e.g. "lstm seq T=1000 B=1 I=64 H=128"
    benchmark.extra_info = {
        "engine": "fastrnn" | "torch" | "onnxruntime" | "fastrnn-cuda" | "torch-cudnn" | ...,
        "correct": bool,                     the engine's answer matched the reference, checked
                                             before timing (None where nothing is compared)
        "workload": "step" | "pool" | "threads" | "chunk" | "sequence" | "coldstart" | "memory",
        **spec.info(),                       kind, input_size, hidden_size, num_layers,
                                             bidirectional, batch, steps (whatever applies)
        "max_abs_error": float,              optional: the largest difference from the reference
        "metric": {"name": str, "value": float, "unit": str},   optional: the figure the table
                                             shows instead of the median, lower is better (peak
                                             memory in MiB; unit "s" is shown as a time)
        "steps_per_call" | "samples_per_call": int, "streams": int, "threads": int
                                             optional: timesteps one timed call makes, rows it
                                             advances, threads it may use (for the limit column)
    }

Peers (engines whose name does not start with "fastrnn") are each compared with fastrnn on the
same device: a peer with "cuda" or "cudnn" in its name with "fastrnn-cuda", any other with
"fastrnn". The table gives the speed-up (peer figure / fastrnn figure, > 1: fastrnn is faster);
other fastrnn variants ("fastrnn-coldcache", ...) get a column of their own and no ratio.
"""

import os
import tempfile
import warnings
from dataclasses import dataclass, asdict, field
from pathlib import Path

import numpy as np

# Float32 answers within this of the float64 reference (DESIGN.md: 3e-5 vs torch); onnxruntime's
# own float32 kernels are held to the same bound so that every engine passes the same test.
FLOAT32_TOLERANCE = 3e-5

ENGINES = ("fastrnn", "torch", "onnxruntime")


def cpu_count():
    """Cores this process may use (the peers are given all of them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ModelSpec:
    """A seeded recurrent model and the input it is benchmarked on."""

    kind: str                      # "lstm" or "gru"
    input_size: int
    hidden_size: int
    steps: int = 1                 # T
    batch: int = 1                 # B
    num_layers: int = 1
    bidirectional: bool = False
    seed: int = 0

    def __post_init__(self):
        if self.kind not in ("lstm", "gru"):
            raise ValueError(f"kind must be 'lstm' or 'gru', got {self.kind!r}")
        for name in ("input_size", "hidden_size", "steps", "batch", "num_layers"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def gates(self):
        return 4 if self.kind == "lstm" else 3

    def workload_id(self, workload="seq"):
        """The benchmark group: a readable, unique name of the workload."""
        text = (f"{self.kind} {workload} T={self.steps} B={self.batch} I={self.input_size} "
                f"H={self.hidden_size}")
        if self.num_layers > 1:
            text += f" L={self.num_layers}"
        if self.bidirectional:
            text += " bidir"
        return text

    def info(self):
        """The spec as extra_info fields (the seed left out: it says nothing about speed)."""
        fields = asdict(self)
        del fields["seed"]
        return fields

    # -- the model and its data ------------------------------------------------------------

    def torch_module(self, dtype=None):
        """The seeded torch module every engine runs (float32 unless `dtype` says otherwise)."""
        import torch
        torch.manual_seed(self.seed)
        cls = torch.nn.LSTM if self.kind == "lstm" else torch.nn.GRU
        module = cls(self.input_size, self.hidden_size, num_layers=self.num_layers,
                     bidirectional=self.bidirectional)
        module.eval()
        if dtype is not None:
            module = module.to(dtype)
        return module

    def input(self):
        """x (T, B, I) float32, seeded apart from the weights."""
        rng = np.random.default_rng(self.seed + 1)
        return rng.standard_normal((self.steps, self.batch, self.input_size)).astype(np.float32)

    def reference(self, x):
        """y of the same weights run in float64 by torch: the answer every engine must match."""
        import torch
        module = self.torch_module(torch.float64)
        with torch.no_grad():
            y, _ = module(torch.from_numpy(np.asarray(x, np.float64)))
        return y.numpy()

    def matches(self, answer, reference):
        """(whether `answer` is within FLOAT32_TOLERANCE of `reference`, the largest error)."""
        answer = np.asarray(answer)
        if answer.shape != reference.shape:
            return False, float("inf")
        error = float(np.max(np.abs(answer.astype(np.float64) - reference)))
        return bool(error <= FLOAT32_TOLERANCE), error

    # -- the figures the report puts beside each time ---------------------------------------

    def recurrent_weight_bytes(self, itemsize=4):
        """Bytes of weights one timestep reads per layer-direction in the recurrence (W_hh, b_hh)."""
        rows = self.gates * self.hidden_size
        return rows * (self.hidden_size + 1) * itemsize

    def step_weight_bytes(self, itemsize=4):
        """Bytes of every weight one full timestep of the stack reads (W_ih, W_hh, biases)."""
        total = 0
        rows = self.gates * self.hidden_size
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else self.num_directions * self.hidden_size
            total += self.num_directions * rows * (layer_input + self.hidden_size + 2)
        return total * itemsize

    def flops(self):
        """Multiply-adds x 2 of the whole sequence's matrix products (elementwise work left out)."""
        rows = self.gates * self.hidden_size
        total = 0
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else self.num_directions * self.hidden_size
            total += self.num_directions * 2 * rows * (layer_input + self.hidden_size)
        return total * self.steps * self.batch


@dataclass
class Implementation:
    """One engine's way to run a spec: `run_sequence(x)` maps x (T, B, I) to y (T, B, D*H)."""

    engine: str
    spec: ModelSpec
    run_sequence: object
    keep_alive: list = field(default_factory=list)   # sessions, temp dirs: live as long as this


def build(engine, spec):
    """The Implementation of `spec` on `engine` (one of ENGINES), ready to run and warmed up."""
    builders = {"fastrnn": _build_fastrnn, "torch": _build_torch,
                "onnxruntime": _build_onnxruntime}
    if engine not in builders:
        raise KeyError(f"engine must be one of {tuple(builders)}, got {engine!r}")
    implementation = builders[engine](spec)
    # Warm-up outside any timing: JIT compiles, lazy session init, first-touch allocations.
    implementation.run_sequence(spec.input())
    return implementation


def _build_fastrnn(spec):
    import fastrnn
    model = fastrnn.from_torch(spec.torch_module())

    def run_sequence(x):
        y, _ = model(x)
        return y

    return Implementation("fastrnn", spec, run_sequence, [model])


def _build_torch(spec):
    import torch
    torch.set_num_threads(cpu_count())
    module = spec.torch_module()

    def run_sequence(x):
        with torch.no_grad():
            y, _ = module(torch.from_numpy(x))
        return y.numpy()

    return Implementation("torch", spec, run_sequence, [module])


def export_onnx(spec, path):
    """Write the spec's torch module to `path` as ONNX (TorchScript exporter), at its own shapes."""
    import torch
    module = spec.torch_module()
    x = torch.from_numpy(spec.input())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), dynamo=False, input_names=["x"],
                          output_names=["y", "h_n"] + (["c_n"] if spec.kind == "lstm" else []))
    return Path(path)


def _build_onnxruntime(spec):
    import onnxruntime
    folder = tempfile.TemporaryDirectory(prefix="fastrnn-bench-")
    path = export_onnx(spec, Path(folder.name) / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run_sequence(x):
        return session.run(["y"], {"x": x})[0]

    return Implementation("onnxruntime", spec, run_sequence, [session, folder])


def checked(engine, spec, x=None, reference=None):
    """(Implementation, extra_info) with the engine's answer compared to the reference first."""
    x = spec.input() if x is None else x
    reference = spec.reference(x) if reference is None else reference
    implementation = build(engine, spec)
    correct, error = spec.matches(implementation.run_sequence(x), reference)
    info = {"engine": engine, "correct": correct, "max_abs_error": error,
            "workload": "sequence", **spec.info()}
    return implementation, info


# -- fresh processes (cold start, memory) -------------------------------------------------------

FRESH_PROCESS = Path(__file__).with_name("fresh_process.py")


def write_saved_models(spec, folder):
    """Save the spec's model for every engine into `folder`, with its input, as a user would ship it.

    model.fastrnn (fastrnn's native file), model.pt (torch state dict) with spec.json (the
    constructor's arguments), model.onnx (the ONNX export), x.npy (the input of the first answer).
    """
    import json
    import torch
    import fastrnn
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    module = spec.torch_module()
    fastrnn.from_torch(module).save(folder / "model.fastrnn")
    torch.save(module.state_dict(), folder / "model.pt")
    (folder / "spec.json").write_text(json.dumps(spec.info()))
    export_onnx(spec, folder / "model.onnx")
    np.save(folder / "x.npy", spec.input())
    return folder


def run_fresh_process(engine, folder, env=None):
    """(report, answer): bench/fresh_process.py run for `engine` on the saved models in `folder`.

    report holds the seconds of each stage (import_s, load_s, first_answer_s, total_s), the
    resident memory after each (rss_after_<stage>, peak_rss_after_<stage>, bytes), and
    spawn_to_answer_s: from starting the process (interpreter start included) until it reported
    its first answer, measured here (the process's exit is left out).
    """
    import json
    import subprocess
    import sys
    import time
    output = Path(folder) / f"answer-{engine}.npy"
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, str(FRESH_PROCESS), engine, str(folder),
                              str(output)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=dict(os.environ if env is None else env))
    first_line = child.stdout.readline()
    answered = time.perf_counter()
    rest, errors = child.communicate()
    if child.returncode != 0 or not first_line.strip():
        raise RuntimeError(f"{engine} in a fresh process failed ({child.returncode}):\n"
                           f"{errors[-3000:]}")
    report = json.loads(first_line)
    report["spawn_to_answer_s"] = answered - started
    return report, np.load(output)
