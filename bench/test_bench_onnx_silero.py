"""The Silero VAD 16 kHz whole graph (silero_vad.onnx from the silero-vad package), one chunk per
call with its state fed back: fastrnn's InferenceSession.stream beside onnxruntime with the state
carried by hand through the graph's inputs and outputs, timed in interleaved rounds.

Each call feeds one window of 576 samples (a 512-sample chunk after the 64 samples before it, as
silero-vad's own wrapper feeds it) and sr = 16000. Before timing, both engines run the same
CHECKED_CHUNKS windows of synthetic audio (noise and tones) from a zero state; fastrnn is "correct"
when its speech probabilities and states stay within TOLERANCE of onnxruntime's. Recorded only:
no speed is asserted.
"""

import importlib.resources

import numpy as np
import pytest

from registry import Entrant, report_case

ENGINES = ("fastrnn", "onnxruntime")
RATE, CHUNK, CONTEXT = 16000, 512, 64
CHECKED_CHUNKS = 60
TOLERANCE = 1e-4


def model_path():
    silero_vad = pytest.importorskip("silero_vad")
    path = importlib.resources.files(silero_vad) / "data" / "silero_vad.onnx"
    if not path.is_file():
        pytest.skip("silero-vad ships no silero_vad.onnx")
    return str(path)


def windows(count, seed=0):
    """`count` windows of CONTEXT + CHUNK samples over noise with tone bursts."""
    rng = np.random.default_rng(seed)
    t = np.arange(count * CHUNK) / RATE
    audio = ((np.sin(2 * np.pi * 1.3 * t) > 0) * 0.4 * np.sin(2 * np.pi * 220 * t)
             + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
    padded = np.concatenate([np.zeros(CONTEXT, np.float32), audio])
    return [padded[k * CHUNK:k * CHUNK + CONTEXT + CHUNK][None] for k in range(count)]


def entrants(engines):
    import onnxruntime

    import fastrnn
    path = model_path()
    sr = np.array(RATE, np.int64)
    chunks = windows(CHECKED_CHUNKS)
    peer = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 128), np.float32)
    expected = []
    for x in chunks:
        probability, state = peer.run(None, {"input": x, "state": state, "sr": sr})
        expected.append((probability, state))
    built = {}
    info = {"workload": "silero vad 16k chunk", "model": "silero_vad.onnx", "samples": CHUNK,
            "context": CONTEXT}
    if "fastrnn" in engines:
        stream = fastrnn.InferenceSession(path).stream(state={"stateN": "state"})
        error = 0.0
        for x, (probability, state) in zip(chunks, expected):  # also the warm-up (JIT)
            (got,) = stream.run({"input": x, "sr": sr})
            error = max(error, float(np.max(np.abs(got - probability))),
                        float(np.max(np.abs(stream.state["state"] - state))))
        feeds = {"input": chunks[-1], "sr": sr}
        built["fastrnn"] = Entrant(lambda: stream.run(feeds),
                                   {"engine": "fastrnn", "correct": error <= TOLERANCE,
                                    "max_abs_error": error, "api": "InferenceSession.stream",
                                    **info}, [stream])
    if "onnxruntime" in engines:
        carried = {"input": chunks[-1], "state": expected[-1][1], "sr": sr}

        def one_chunk():
            _, carried["state"] = peer.run(None, carried)
        built["onnxruntime"] = Entrant(one_chunk, {"engine": "onnxruntime", "correct": True,
                                                   "max_abs_error": 0.0,
                                                   "api": "InferenceSession.run", **info},
                                       [peer])
    return built


@pytest.mark.parametrize("engine", ENGINES)
def test_silero_vad_chunk(benchmark, engine):
    model_path()  # skip before anything is built if silero-vad is absent
    report_case(benchmark, "onnx silero vad 16k chunk", engine, entrants, ENGINES,
                benchmark.enabled)
