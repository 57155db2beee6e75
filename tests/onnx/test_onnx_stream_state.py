"""InferenceSession.stream: a graph's state outputs fed back into its state inputs, chunk by
chunk, against onnxruntime with the state carried by hand; reset, initial values, snapshots."""

import struct

import numpy as np
import pytest

import fastrnn
from onnx_cases import onnxruntime_session, recurrent_graph

STATE = {"Y_h": "h0", "Y_c": "c0"}


def _chunks(count=5, seed=2):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((4, 3, 3)).astype(np.float32) for _ in range(count)]


@pytest.fixture(scope="module")
def model():
    return recurrent_graph("LSTM", initial_state=True)


@pytest.fixture(scope="module")
def session(model):
    return fastrnn.InferenceSession(model)


def _by_hand(model, chunks, h=None, c=None):
    """onnxruntime over the chunks, Y_h and Y_c fed back by hand: the Y of each chunk."""
    peer = onnxruntime_session(model)
    h = np.zeros((1, 3, 5), np.float32) if h is None else h
    c = np.zeros((1, 3, 5), np.float32) if c is None else c
    ys = []
    for x in chunks:
        y, h, c = peer.run(None, {"X": x, "h0": h, "c0": c})
        ys.append(y)
    return ys, h, c


def test_stream_matches_onnxruntime_with_the_state_carried_by_hand(model, session):
    chunks = _chunks()
    stream = session.stream(state=STATE)
    assert stream.output_names == ["Y"]
    expected, h, c = _by_hand(model, chunks)
    for x, y in zip(chunks, expected):
        (got,) = stream.run({"X": x})
        np.testing.assert_allclose(got, y, atol=2e-5, rtol=0)
    np.testing.assert_allclose(stream.state["h0"], h, atol=2e-5, rtol=0)
    np.testing.assert_allclose(stream.state["c0"], c, atol=2e-5, rtol=0)


def test_reset_and_initial_values(model, session):
    chunks = _chunks(3)
    rng = np.random.default_rng(9)
    h, c = (rng.standard_normal((1, 3, 5)).astype(np.float32) for _ in range(2))
    stream = session.stream(state=STATE, initial={"h0": h, "c0": c})
    h[...] = 0  # the stream holds its own copy
    expected, _, _ = _by_hand(model, chunks, *(np.array(v) for v in stream.state.values()))
    first = [stream.run({"X": x})[0] for x in chunks]
    stream.reset()
    again = [stream.run({"X": x})[0] for x in chunks]
    for a, b, y in zip(first, again, expected):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, y, atol=2e-5, rtol=0)
    zero = session.stream(state=STATE)
    assert all(not value.any() for value in zero.state.values())


def test_snapshot_and_restore_continue_the_stream(session):
    chunks = _chunks(6)
    whole = session.stream(state=STATE)
    straight = [whole.run({"X": x})[0] for x in chunks]
    first = session.stream(state=STATE)
    for x in chunks[:3]:
        first.run({"X": x})
    blob = first.snapshot()
    assert isinstance(blob, bytes)
    second = session.stream(state=STATE)
    second.restore(blob)
    for x, y in zip(chunks[3:], straight[3:]):
        np.testing.assert_array_equal(second.run({"X": x})[0], y)
    # The same bytes restore into a stream of another session of the same graph.
    other = fastrnn.InferenceSession(session._graph.model).stream(state=STATE)
    other.restore(blob)
    np.testing.assert_array_equal(other.run({"X": chunks[3]})[0], straight[3])


def _flip(blob, position):
    data = bytearray(blob)
    data[position] ^= 0x40
    return bytes(data)


def test_bad_snapshots_are_refused_with_a_clear_error(session):
    stream = session.stream(state=STATE)
    stream.run({"X": _chunks(1)[0]})
    blob = stream.snapshot()
    before = stream.state
    cases = [
        (_flip(blob, len(blob) // 2), "corrupted"),
        (blob[:-7], "corrupted or truncated"),
        (blob[:20], "snapshot header"),
        (b"junk" * 30, "snapshot header"),
        (blob[:8] + struct.pack("<I", 2) + blob[12:], "version 2"),
    ]
    other_graph = fastrnn.InferenceSession(recurrent_graph("LSTM", initial_state=True, seed=4))
    cases.append((other_graph.stream(state=STATE).snapshot(), "different graph"))
    cases.append((session.stream(state={"Y_h": "h0"}).snapshot(), "different graph"))
    model = fastrnn.from_onnx(recurrent_graph("LSTM"))
    cases.append((fastrnn.Stream(model).snapshot(), "fastrnn.Stream"))
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            stream.restore(bad)
    with pytest.raises(TypeError, match="a snapshot is bytes"):
        stream.restore("not bytes")
    for name, value in stream.state.items():  # a refused blob leaves the state as it was
        np.testing.assert_array_equal(value, before[name])


def test_stream_without_state_offers_the_pairs_it_finds(session):
    with pytest.raises(ValueError, match=r"output 'Y_h' -> input 'h0', output 'Y_c' -> input "
                                         r"'c0'.*stream\(state=\{'Y_h': 'h0', 'Y_c': 'c0'\}\)"):
        session.stream()


def test_bad_state_mappings_and_feeds(session):
    with pytest.raises(ValueError, match="'Z', which is not a graph output"):
        session.stream(state={"Z": "h0"})
    with pytest.raises(ValueError, match="'h9', which is not a graph input"):
        session.stream(state={"Y_h": "h9"})
    with pytest.raises(ValueError, match="feeds input 'h0' from two outputs"):
        session.stream(state={"Y_h": "h0", "Y_c": "h0"})
    with pytest.raises(ValueError, match="'X', which is not a state input"):
        session.stream(state=STATE, initial={"X": np.zeros((4, 3, 3), np.float32)})
    with pytest.raises(TypeError, match="initial value of 'h0' must be tensor\\(float\\)"):
        session.stream(state=STATE, initial={"h0": np.zeros((1, 3, 5))})
    with pytest.raises(ValueError, match="initial value of 'h0' has shape \\(1, 3, 4\\)"):
        session.stream(state=STATE, initial={"h0": np.zeros((1, 3, 4), np.float32)})
    stream = session.stream(state=STATE)
    with pytest.raises(ValueError, match=r"feeds give state input\(s\) \['h0'\]"):
        stream.run({"X": _chunks(1)[0], "h0": np.zeros((1, 3, 5), np.float32)})
    with pytest.raises(ValueError, match=r"missing input\(s\) \['X'\]"):
        stream.run({})
