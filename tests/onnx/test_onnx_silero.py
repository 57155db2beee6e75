"""The Silero VAD ONNX files shipped in the silero-vad package, each whole graph run chunk by chunk
through InferenceSession.stream, against onnxruntime with the state carried by hand.

Each chunk is what silero-vad's own wrapper feeds: 512 samples at 16 kHz (256 at 8 kHz) after the
64 (32) samples before them as context, where the graph's input takes that context (576 or 288
samples a window). Skipped when silero-vad is not installed.
"""

import importlib.resources

import numpy as np
import pytest

import fastrnn
from onnx_cases import onnxruntime_session

silero_vad = pytest.importorskip("silero_vad")

SECONDS = 2.0
TOLERANCE = 1e-4
CHUNK = {16000: 512, 8000: 256}
CONTEXT = {16000: 64, 8000: 32}


def _data_file(name):
    path = importlib.resources.files(silero_vad) / "data" / name
    if not path.is_file():
        pytest.skip(f"silero-vad ships no {name}")
    return str(path)


# (file, sample rates it takes, state pairs, windows per run)
FILES = [
    ("silero_vad.onnx", (16000, 8000), {"stateN": "state"}, 1),
    ("silero_vad_16k_op15.onnx", (16000,), {"stateN": "state"}, 1),
    ("silero_vad_half.onnx", (16000,), {"stateN": "state"}, 1),
    ("silero_vad_op18_ifless.onnx", (16000, 8000), {"stateN": "state"}, 1),
    ("silero_vad_openvino_16k.onnx", (16000,), {"stateN": "state"}, 1),
    ("silero_vad_16k_sequence.onnx", (16000,), {"hn": "h", "cn": "c"}, 4),
]
CASES = [(name, rate, state, windows) for name, rates, state, windows in FILES
         for rate in rates]


def _audio(rate, seed=0):
    """Noise with tones switched on and off: speech-like bursts and silence for the VAD."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(SECONDS * rate)) / rate
    bursts = (np.sin(2 * np.pi * 1.3 * t) > 0).astype(np.float64)
    tones = 0.4 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t + 1.0)
    return (bursts * tones + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def _windows(audio, rate, width):
    """Each chunk with the samples before it as context, as silero-vad's wrapper feeds them."""
    chunk = CHUNK[rate]
    context = width - chunk
    padded = np.concatenate([np.zeros(context, np.float32), audio])
    count = audio.size // chunk
    return [padded[k * chunk:k * chunk + width] for k in range(count)]


def _feeds_per_run(session, rate, windows_per_run, state):
    inputs = {v.name: v for v in session.get_inputs()}
    width = inputs["input"].shape[1]
    width = width if isinstance(width, int) else CHUNK[rate] + CONTEXT[rate]
    windows = _windows(_audio(rate), rate, width)
    runs = []
    for start in range(0, len(windows) - windows_per_run + 1, windows_per_run):
        feed = {"input": np.stack(windows[start:start + windows_per_run])}
        if "sr" in inputs:
            feed["sr"] = np.array(rate, np.int64)
        runs.append(feed)
    return runs


@pytest.mark.parametrize("name, rate, state, windows_per_run", CASES,
                         ids=[f"{case[0]}-{case[1] // 1000}k" for case in CASES])
def test_silero_graph_streams_as_onnxruntime(name, rate, state, windows_per_run):
    path = _data_file(name)
    session = fastrnn.InferenceSession(path)
    peer = onnxruntime_session(open(path, "rb").read())
    stream = session.stream(state=state)
    runs = _feeds_per_run(session, rate, windows_per_run, state)
    # onnxruntime with the state fed back by hand, from the zeros the stream starts from
    carried = stream.state
    output_names = [o.name for o in peer.get_outputs()]
    worst_output = worst_state = 0.0
    probabilities = []
    for feeds in runs:
        expected = dict(zip(output_names, peer.run(None, {**feeds, **carried})))
        got = dict(zip(stream.output_names, stream.run(feeds)))
        for out_name, value in got.items():
            assert value.shape == expected[out_name].shape and value.dtype == np.float32
            worst_output = max(worst_output, float(np.max(np.abs(value - expected[out_name]))))
        for out_name, in_name in state.items():
            carried[in_name] = expected[out_name]
            worst_state = max(worst_state, float(np.max(np.abs(stream.state[in_name] -
                                                               expected[out_name]))))
            # each side carries its own state, as a caller of either would
        probabilities.append(float(np.max(next(iter(got.values())))))
    assert worst_output <= TOLERANCE, worst_output
    assert worst_state <= TOLERANCE, worst_state
    assert len(runs) >= 10 and max(probabilities) > 0.1  # the audio is not silence to the VAD
