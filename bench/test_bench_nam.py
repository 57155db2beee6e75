"""Neural Amp Modeler LSTMs streamed as an amp plugin runs them: one sample a step, on one core.

A NAM-style model (nn.LSTM(1, H) of one layer, a Linear head H -> 1, a start state h0, c0) is
written as a .nam file's JSON and read back with fastrnn.from_nam; torch runs the same modules on
the same samples, its (h, c) carried from call to call by hand. Both are single-threaded
(fastrnn.set_num_threads(1), torch.set_num_threads(1)) and checked first against a float64 torch
run of the same weights from the same start state (two calls, the state carried between them).

Workloads (groups), for H = 16 and 24:
    "nam lstm H=<H> process <N>"   stream.process on a chunk of N = 64, 128 and 512 samples (an
                                   audio callback's buffer), (1, N, 1)
    "nam lstm H=<H> step"          stream.step on one sample
Each case records us_per_sample and realtime_factor_48k = (1 / 48000 s) / (seconds per sample):
how many times faster than real time at 48 kHz one core runs it. The goal is >= 100x; it is
recorded, never asserted.

For scale, RTNeural's published figures (C++, one sample a step, on a 2018 Intel Core i7 laptop:
another machine, compiler and language than these runs): LSTM-8 about 0.16 us a sample, LSTM-64
about 3.3 us a sample.
"""

import numpy as np
import pytest

from registry import Entrant, FLOAT32_TOLERANCE, report_case

SAMPLE_RATE = 48000
HIDDEN_SIZES = (16, 24)
CHUNKS = (64, 128, 512)
ENGINES = ["fastrnn", "torch"]
CHECK_SAMPLES = 256   # two calls of 128, the state carried


@pytest.fixture(scope="module", autouse=True)
def one_core():
    import fastrnn
    import torch
    before = fastrnn.get_num_threads(), torch.get_num_threads()
    fastrnn.set_num_threads(1)
    torch.set_num_threads(1)
    yield
    fastrnn.set_num_threads(before[0])
    torch.set_num_threads(before[1])


def nam_model(hidden_size, seed=0):
    """(lstm, head, h0, c0): a seeded NAM-style model with a non-zero start state."""
    import torch
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(1, hidden_size, batch_first=True).eval()
    head = torch.nn.Linear(hidden_size, 1).eval()
    h0, c0 = 0.3 * torch.randn(1, hidden_size), torch.randn(1, hidden_size)
    return lstm, head, h0, c0


def nam_json(lstm, head, h0, c0):
    """The .nam JSON Neural Amp Modeler writes for these modules (fastrnn.converters.nam)."""
    import torch
    flat = [torch.cat([lstm.weight_ih_l0, lstm.weight_hh_l0], dim=1).flatten(),
            lstm.bias_ih_l0 + lstm.bias_hh_l0, h0[0], c0[0], head.weight.flatten(), head.bias]
    return {"version": "0.5.4", "architecture": "LSTM",
            "config": {"input_size": 1, "hidden_size": lstm.hidden_size, "num_layers": 1},
            "weights": torch.cat([t.detach().double() for t in flat]).tolist(),
            "sample_rate": SAMPLE_RATE}


class TorchAmp:
    """torch's LSTM and head on (1, N, 1) chunks, (h, c) carried between calls."""

    def __init__(self, lstm, head, h0, c0):
        import torch
        self.torch, self.lstm, self.head = torch, lstm, head
        self.start = (h0[:, None].clone(), c0[:, None].clone())
        self.reset()

    def reset(self):
        self.state = tuple(t.clone() for t in self.start)

    def process(self, chunk):
        with self.torch.no_grad():
            y, self.state = self.lstm(self.torch.from_numpy(chunk), self.state)
            return self.head(y).numpy()


def reference(lstm, head, h0, c0, samples):
    """The float64 torch answer from the start state: samples (1, T, 1) -> (1, T, 1)."""
    import copy
    import torch
    lstm, head = copy.deepcopy(lstm).double(), copy.deepcopy(head).double()
    with torch.no_grad():
        state = (h0[:, None].double(), c0[:, None].double())
        return head(lstm(torch.from_numpy(samples.astype(np.float64)), state)[0]).numpy()


def entrants(hidden_size, chunk, engines):
    """{engine: Entrant} of one workload; chunk None is the step workload."""
    import fastrnn
    modules = nam_model(hidden_size)
    rng = np.random.default_rng(5)
    check = (0.3 * rng.standard_normal((1, CHECK_SAMPLES, 1))).astype(np.float32)
    expected = reference(*modules, check)
    samples = 1 if chunk is None else chunk
    timed = (0.3 * rng.standard_normal((1, samples, 1))).astype(np.float32)
    built = {}
    for engine in engines:
        if engine == "fastrnn":
            stream = fastrnn.from_nam(nam_json(*modules)).stream()
            halves = [stream.process(check[:, :CHECK_SAMPLES // 2]),
                      stream.process(check[:, CHECK_SAMPLES // 2:])]
            stream.reset()
            if chunk is None:
                x_t, out = np.ascontiguousarray(timed[0]), np.empty((1, 1), np.float32)
                call = lambda stream=stream, x_t=x_t, out=out: stream.step(x_t, out)
            else:
                call = lambda stream=stream: stream.process(timed)
            keep = stream
        else:
            amp = TorchAmp(*modules)
            halves = [amp.process(check[:, :CHECK_SAMPLES // 2]),
                      amp.process(check[:, CHECK_SAMPLES // 2:])]
            amp.reset()
            call = lambda amp=amp: amp.process(timed)
            keep = amp
        error = float(np.abs(np.concatenate(halves, axis=1) - expected).max())
        info = {"engine": engine, "correct": error <= FLOAT32_TOLERANCE, "max_abs_error": error,
                "workload": "step" if chunk is None else "chunk", "samples_per_call": samples,
                "threads": 1, "kind": "lstm", "input_size": 1, "hidden_size": hidden_size,
                "num_layers": 1, "batch": 1}
        built[engine] = Entrant(call, info, [keep])
    return built


def record_rate(benchmark, entrant):
    """us_per_sample and realtime_factor_48k from the interleaved median (make bench only)."""
    metric = entrant.info.get("metric")
    if not metric:
        return
    per_sample = metric["value"] / entrant.info["samples_per_call"]
    benchmark.extra_info["us_per_sample"] = per_sample * 1e6
    benchmark.extra_info["realtime_factor_48k"] = 1.0 / (SAMPLE_RATE * per_sample)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("hidden_size", HIDDEN_SIZES)
def test_process(benchmark, hidden_size, chunk, engine):
    group = f"nam lstm H={hidden_size} process {chunk}"
    entrant = report_case(benchmark, group, engine,
                          lambda engines: entrants(hidden_size, chunk, engines), ENGINES,
                          benchmark.enabled)
    record_rate(benchmark, entrant)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("hidden_size", HIDDEN_SIZES)
def test_step(benchmark, hidden_size, engine):
    group = f"nam lstm H={hidden_size} step"
    entrant = report_case(benchmark, group, engine,
                          lambda engines: entrants(hidden_size, None, engines), ENGINES,
                          benchmark.enabled)
    record_rate(benchmark, entrant)
