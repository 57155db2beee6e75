"""Whole models (fastrnn.Chain): a causal conv front end, an LSTM and a head, as a streaming
audio or sensor model is written in torch, streamed chunk by chunk and run on whole sequences.

    Conv1d(1 -> 16, k=3, causal) -> ReLU -> LSTM(16 -> 32) -> Linear(32 -> 1)

Streaming (`process` of a chunk of 64, 256 or 512 samples, batch 1, one core): fastrnn's
ChainStream.process, one kernel call for every layer and sample, against torch running the same
module on the same chunks with its state carried by hand, as its users must write it: the conv's
last (K - 1) inputs kept and put before the next chunk (the conv then run unpadded), the LSTM's
(h, c) passed back in. Whole sequences: fastrnn.from_torch(module)(x) against module(x), T=1000,
batch 16, one thread each. Each engine's answer is first checked against torch's whole-sequence
float64 run of the same weights; the engines of a workload are timed in interleaved rounds
(bench/registry.py).
"""

import numpy as np
import pytest

from registry import Entrant, report_case

CHUNKS = (64, 256, 512)
CHECK_CHUNKS = 3                 # chunks each engine streams from zero before timing, checked
SEQUENCE_STEPS, SEQUENCE_BATCH = 1000, 16
TOLERANCE = 3e-5                 # float32 against the float64 run


def build_module(seed=21):
    import torch
    import torch.nn as nn

    class ConvLstm(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 16, 3, padding=2)
            self.lstm = nn.LSTM(16, 32, batch_first=True)
            self.head = nn.Linear(32, 1)

        def forward(self, x):                          # x (B, 1, T) -> (B, T, 1)
            y = torch.relu(self.conv(x)[..., :-2])     # causal: pad both sides, drop the look-ahead
            y, _ = self.lstm(y.transpose(1, 2))
            return self.head(y)

    torch.manual_seed(seed)
    return ConvLstm().eval()


def reference(module, x):
    """module's float64 answer on x (B, 1, T), from the zero state."""
    import copy
    import torch
    with torch.no_grad():
        return copy.deepcopy(module).double()(torch.from_numpy(x.astype(np.float64))).numpy()


class TorchCarried:
    """The module on chunks, its state carried by hand: conv history and the LSTM's (h, c)."""

    def __init__(self, module, batch=1):
        import torch
        self.torch, self.module = torch, module
        self.history = torch.zeros(batch, 1, 2)
        self.state = None

    def process(self, chunk):                          # chunk (B, 1, T) tensor -> (B, T, 1)
        torch, module = self.torch, self.module
        with torch.no_grad():
            x = torch.cat([self.history, chunk], dim=2)
            self.history = x[:, :, -2:]
            y = torch.relu(torch.nn.functional.conv1d(x, module.conv.weight, module.conv.bias))
            y, self.state = module.lstm(y.transpose(1, 2), self.state)
            return module.head(y)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Both engines on one thread for this file's cases; their thread counts are restored after."""
    import torch
    import fastrnn
    before = fastrnn.get_num_threads(), torch.get_num_threads()
    fastrnn.set_num_threads(1)
    torch.set_num_threads(1)
    yield
    fastrnn.set_num_threads(before[0])
    torch.set_num_threads(before[1])


def chunk_entrants(chunk, engines):
    import torch
    import fastrnn
    module = build_module()
    x = np.random.default_rng(5).standard_normal((1, 1, chunk * CHECK_CHUNKS)).astype(np.float32)
    expected = reference(module, x)
    pieces = [x[:, :, i * chunk:(i + 1) * chunk] for i in range(CHECK_CHUNKS)]
    built = {}
    for engine in engines:
        if engine == "fastrnn":
            stream = fastrnn.from_torch(module).stream()
            answer = np.concatenate([stream.process(p) for p in pieces], axis=1)
            call_chunk = pieces[0]
            call = lambda process=stream.process: process(call_chunk)  # noqa: E731
            keep = [stream]
        else:
            carried = TorchCarried(module)
            answer = np.concatenate([carried.process(torch.from_numpy(p)).numpy()
                                     for p in pieces], axis=1)
            tensor = torch.from_numpy(pieces[0])
            call = lambda process=carried.process: process(tensor)  # noqa: E731
            keep = [carried]
        error = float(np.abs(answer - expected).max())
        info = {"engine": engine, "correct": error <= TOLERANCE, "max_abs_error": error,
                "workload": "chunk", "model": "conv1d-relu-lstm16x32-linear", "batch": 1,
                "samples_per_call": chunk, "threads": 1, "precision": "fp32"}
        built[engine] = Entrant(call, info, keep)
    return built


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("engine", ["fastrnn", "torch"])
def test_chain_process_chunk(benchmark, engine, chunk):
    report_case(benchmark, f"conv-lstm chain process chunk T={chunk} B=1 (1 thread)", engine,
                lambda engines: chunk_entrants(chunk, engines), ["fastrnn", "torch"],
                benchmark.enabled)


def sequence_entrants(engines):
    import torch
    import fastrnn
    module = build_module()
    x = np.random.default_rng(6).standard_normal(
        (SEQUENCE_BATCH, 1, SEQUENCE_STEPS)).astype(np.float32)
    expected = reference(module, x)
    built = {}
    for engine in engines:
        if engine == "fastrnn":
            chain = fastrnn.from_torch(module)
            answer = chain(x)
            call = lambda: chain(x)  # noqa: E731
        else:
            tensor = torch.from_numpy(x)
            with torch.no_grad():
                answer = module(tensor).numpy()

            def call():
                with torch.no_grad():
                    return module(tensor)
        error = float(np.abs(answer - expected).max())
        info = {"engine": engine, "correct": error <= TOLERANCE, "max_abs_error": error,
                "workload": "sequence", "model": "conv1d-relu-lstm16x32-linear",
                "batch": SEQUENCE_BATCH, "steps": SEQUENCE_STEPS, "threads": 1,
                "precision": "fp32"}
        built[engine] = Entrant(call, info, [])
    return built


@pytest.mark.parametrize("engine", ["fastrnn", "torch"])
def test_chain_whole_sequence(benchmark, engine):
    report_case(benchmark, f"conv-lstm chain seq T={SEQUENCE_STEPS} B={SEQUENCE_BATCH} "
                f"(1 thread)", engine, sequence_entrants, ["fastrnn", "torch"],
                benchmark.enabled)
