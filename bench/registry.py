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

Interleaved rounds (`measured`, below): the engines of one workload are built, checked and then
timed together, round by round (round r: each engine in turn for a few calls, the order rotated
from round to round), so that the machine's drift over a run falls on every engine alike. Each
case of such a workload adds to its extra_info:

        "method": "interleaved rounds", "rounds": int, "calls_per_round": int,
        "round_seconds": [seconds per call in each round],
        "metric": the median of round_seconds (what the table shows),
        "fastrnn_speedup": float             peers: the median over rounds of this peer's time /
                                             fastrnn's time in the same round (> 1: fastrnn faster)
        "best_peer": str,                    the fastest peer (median) whose answer was correct at
                                             float32 precision; absent if there is none
        "ratio_to_best_peer": float          the median over rounds of best peer's time / this
                                             engine's time (fastrnn's case: its headline ratio)
        "precision": "fp32" | "bf16" ...     the arithmetic the engine was asked for
"""

import os
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, asdict, field
from pathlib import Path

import numpy as np

# Float32 answers within this of the float64 reference (DESIGN.md: 3e-5 vs torch); onnxruntime's
# own float32 kernels are held to the same bound so that every engine passes the same test.
FLOAT32_TOLERANCE = 3e-5
# bfloat16 keeps 8 bits of mantissa (a rounding step of 2^-8 = 3.9e-3 of a value): an engine asked
# for bf16 arithmetic is checked against this, and its row is never counted as a float32 peer.
BF16_TOLERANCE = 5e-2

ENGINES = ("fastrnn", "torch", "onnxruntime", "openvino", "openvino-bf16")

# OpenVINO compiles the exported ONNX file itself; INFERENCE_PRECISION_HINT f32 holds it to
# float32 arithmetic (its default on CPUs with bf16 units is bf16). LATENCY: one request at a
# time on all cores, as each call here is.
OPENVINO_FP32 = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
OPENVINO_DEFAULT = {"PERFORMANCE_HINT": "LATENCY"}


def cpu_count():
    """Cores this process may use (the peers are given all of them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_flags():
    """The CPU's feature flags as /proc/cpuinfo lists them (an empty set elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_row():
    """(whether the OpenVINO default-precision (bf16) row runs here, why or why not)."""
    flags = cpu_flags() & {"avx512_bf16", "amx_bf16"}
    if not flags:
        return False, ("not run: the CPU has neither avx512_bf16 nor amx_bf16, so OpenVINO's "
                       "default precision here is f32, the same arithmetic as the fp32 row")
    return True, f"run: the CPU has {', '.join(sorted(flags))}"


def unavailable(engine):
    """Why `engine` cannot run in this environment, or None if it can."""
    module = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino",
              "openvino-bf16": "openvino"}.get(engine)
    if module:
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -e \".[bench]\")"
    if engine == "openvino-bf16":
        runs, why = bf16_row()
        if not runs:
            return f"OpenVINO bf16 row {why}"
    return None


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
        # On one thread: the reference is not timed, and torch's OpenMP threads stall at every
        # step's barrier when other processes hold the cores (13x slower, measured on a loaded
        # 2-core machine).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                y, _ = module(torch.from_numpy(np.asarray(x, np.float64)))
        finally:
            torch.set_num_threads(threads)
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
    precision: str = "fp32"                          # the arithmetic the engine runs


def build(engine, spec, warm_up=True):
    """The Implementation of `spec` on `engine` (one of ENGINES), ready to run and warmed up
    (unless the caller's first call, untimed, is the warm-up)."""
    builders = {"fastrnn": _build_fastrnn, "torch": _build_torch,
                "onnxruntime": _build_onnxruntime,
                "openvino": lambda spec: _build_openvino(spec, "openvino", OPENVINO_FP32),
                "openvino-bf16": lambda spec: _build_openvino(spec, "openvino-bf16",
                                                              OPENVINO_DEFAULT)}
    if engine not in builders:
        raise KeyError(f"engine must be one of {tuple(builders)}, got {engine!r}")
    implementation = builders[engine](spec)
    # Warm-up outside any timing: JIT compiles, lazy session init, first-touch allocations.
    if warm_up:
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


_EXPORTS = {}


def exported(spec):
    """The spec's ONNX file, exported once per run: onnxruntime and OpenVINO load the same file."""
    if spec not in _EXPORTS:
        folder = tempfile.TemporaryDirectory(prefix="fastrnn-bench-")
        _EXPORTS[spec] = (export_onnx(spec, Path(folder.name) / "model.onnx"), folder)
    return _EXPORTS[spec][0]


def _build_onnxruntime(spec):
    import onnxruntime
    session = onnxruntime.InferenceSession(str(exported(spec)), providers=["CPUExecutionProvider"])

    def run_sequence(x):
        return session.run(["y"], {"x": x})[0]

    return Implementation("onnxruntime", spec, run_sequence, [session])


class OpenVinoSession:
    """OpenVINO's CPU plugin running an ONNX file, called as onnxruntime is: run(names, feeds)
    gives the named outputs (all of them for None) as numpy arrays."""

    def __init__(self, path, config=OPENVINO_FP32):
        import openvino
        self.compiled = openvino.Core().compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.ports = {port.get_any_name(): port for port in self.compiled.outputs}
        self.all_outputs = [port.get_any_name() for port in self.compiled.outputs]
        name = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.precision = {"f32": "fp32", "f16": "fp16"}.get(name, name)

    def run(self, names, feeds):
        results = self.request.infer(feeds)
        # The results are the request's own buffers, overwritten by its next call (which may
        # take them back as its state inputs): copied.
        return [np.array(results[self.ports[name]]) for name in names or self.all_outputs]


def _build_openvino(spec, engine, config):
    session = OpenVinoSession(exported(spec), config)

    def run_sequence(x):
        return session.run(["y"], {"x": x})[0]

    return Implementation(engine, spec, run_sequence, [session], precision=session.precision)


def answer_check(precision, answer, reference, matches):
    """(correct, error) of an answer: float32's tolerance, or bf16's for an engine running bf16."""
    correct, error = matches(answer, reference)
    if precision == "bf16":
        correct = bool(error <= BF16_TOLERANCE)
    return correct, error


def checked(engine, spec, x=None, reference=None):
    """(Implementation, extra_info) with the engine's answer compared to the reference first."""
    x = spec.input() if x is None else x
    reference = spec.reference(x) if reference is None else reference
    implementation = build(engine, spec, warm_up=False)   # the checked call is the warm-up
    correct, error = answer_check(implementation.precision, implementation.run_sequence(x),
                                  reference, spec.matches)
    info = {"engine": engine, "correct": correct, "max_abs_error": error,
            "workload": "sequence", "precision": implementation.precision, **spec.info()}
    return implementation, info


# -- interleaved rounds ------------------------------------------------------------------------

ROUNDS = 15                 # interleaved rounds under make bench
ROUND_SECONDS = 0.02        # each engine's share of one round (at least one call)
# Idle time before each engine's turn: the worker threads of the engine before it
# (onnxruntime's pool, torch's OpenMP, OpenVINO's, fastrnn's partner) spin for a short while after
# their last call and would take a core from the next engine; a service runs one engine, so each
# turn starts once those short spins are over. (OpenBLAS's longer spin is not waited out.)
TURN_PAUSE = 0.005


@dataclass
class Entrant:
    """One engine on one workload: `call()` is one timed call (state carried where it has one);
    `info` is its extra_info so far (engine, correct, max_abs_error, the spec's sizes)."""

    call: object
    info: dict
    keep_alive: list = field(default_factory=list)


def calls_per_round(call, seconds):
    """How many calls of `call` take about `seconds` (at least one), calibrated on a few calls."""
    calls, elapsed = 1, 0.0
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            call()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds / 4 or calls >= 1 << 20:
            break
        calls *= 4
    return max(1, min(int(calls * seconds / max(elapsed, 1e-9)), 1 << 20))


def interleaved_rounds(calls, rounds, seconds):
    """({engine: [seconds per call, one figure per round]}, {engine: calls per round}).

    Round r times each engine in turn for its calls per round, starting from the r-th engine, so
    that no engine always follows the same one (threads another engine leaves spinning, or the
    caches it leaves cold, fall on each engine alike). With seconds=0: one call per round.
    """
    engines = list(calls)
    counts = {engine: calls_per_round(calls[engine], seconds) if seconds > 0 else 1
              for engine in engines}
    times = {engine: [] for engine in engines}
    for r in range(rounds):
        for engine in engines[r % len(engines):] + engines[:r % len(engines)]:
            call, count = calls[engine], counts[engine]
            if seconds > 0:
                time.sleep(TURN_PAUSE)
            start = time.perf_counter()
            for _ in range(count):
                call()
            times[engine].append((time.perf_counter() - start) / count)
    return times, counts


def compare_rounds(times, infos, base="fastrnn"):
    """{engine: extra_info fields} from interleaved times (the fields are listed at the top)."""
    peers = [engine for engine in times if not engine.startswith("fastrnn")]
    fp32_peers = [engine for engine in peers if infos[engine].get("correct")
                  and infos[engine].get("precision", "fp32") == "fp32"]
    best = min(fp32_peers, key=lambda engine: statistics.median(times[engine]), default=None)

    def ratio(numerator, denominator):
        return statistics.median(a / b for a, b in zip(times[numerator], times[denominator]))

    fields = {}
    for engine, seconds in times.items():
        entry = {"method": "interleaved rounds", "rounds": len(seconds),
                 "round_seconds": list(seconds),
                 "metric": {"name": "median over interleaved rounds, per call",
                            "value": statistics.median(seconds), "unit": "s"}}
        if engine in peers and base in times:
            entry["fastrnn_speedup"] = ratio(engine, base)
        if best is not None:
            entry["best_peer"] = best
            entry["ratio_to_best_peer"] = ratio(best, engine)
        fields[engine] = entry
    return fields


_MEASURED = {}


def measured(group, engines, build_entrants, enabled):
    """{engine: Entrant or the reason it cannot run}, each Entrant's info completed with its
    interleaved timings; built, checked and timed once per group, for the first of its cases.

    build_entrants(engines) gives {engine: Entrant} for the engines that can run here (each
    already warmed up: JIT compiled, sessions initialised, answer checked). Under
    --benchmark-disable (`enabled` false) nothing is timed. The group's entry is let go once
    each of `engines` has asked for it.
    """
    if group not in _MEASURED:
        reasons = {engine: unavailable(engine) for engine in engines}
        runnable = [engine for engine in engines if reasons[engine] is None]
        entrants = build_entrants(runnable)
        if enabled:
            times, counts = interleaved_rounds({e: entrants[e].call for e in runnable},
                                               ROUNDS, ROUND_SECONDS)
            fields = compare_rounds(times, {e: entrants[e].info for e in runnable})
        else:
            # make test: each engine's one call is report_case's (the rounds have tests of
            # their own in test_bench_registry.py).
            counts, fields = {e: 1 for e in runnable}, {e: {} for e in runnable}
        for engine in runnable:
            entrants[engine].info.update(fields[engine], calls_per_round=counts[engine])
        _MEASURED[group] = ({**reasons, **entrants}, set(engines))
    results, waiting = _MEASURED[group]
    return results


def report_case(benchmark, group, engine, build_entrants, engines, enabled):
    """One engine's case of an interleaved workload: its figures into benchmark.extra_info, a
    spot check of one more round of its calls as pytest-benchmark's own timing (the table shows
    the interleaved median, extra_info "metric"), and its correctness asserted under
    --benchmark-disable (under make bench a wrong answer is kept, marked, in the table)."""
    import pytest
    results = measured(group, engines, build_entrants, enabled)
    _, waiting = _MEASURED[group]
    waiting.discard(engine)
    if not waiting:
        del _MEASURED[group]
    entrant = results[engine]
    if isinstance(entrant, str) or entrant is None:
        pytest.skip(entrant or f"{engine} was not built")
    benchmark.group = group
    benchmark.extra_info.update(entrant.info)
    benchmark.pedantic(entrant.call, rounds=1, iterations=entrant.info["calls_per_round"])
    info = entrant.info
    assert info["correct"] or benchmark.enabled, (
        f"{engine} differs from the float64 reference by {info['max_abs_error']:.3g} on {group}")
    return entrant


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
