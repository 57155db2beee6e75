"""fastrnn.Stream: step-by-step and chunked runs against the whole-sequence run, state, snapshots,
refusals, real-time hygiene (no allocation, no denormals) and threads."""

import threading
import time
import tracemalloc

import numpy as np
import pytest
import torch

import fastrnn
import fastrnn.engine.driver
import fastrnn.stream
from cores import use_cores
from fastrnn.snapshot import SNAPSHOT_VERSION, decode_snapshot, encode_snapshot, model_fingerprint

STREAM_TOLERANCE = 1e-6  # streaming equals the whole-sequence run to 1e-6


@pytest.fixture(autouse=True, params=["one_core", "all_cores"])
def cores(request, monkeypatch):
    """Every test here runs on one core and on all: with all, every call of two rows or more is
    cut into blocks run at once (tests/cores.py)."""
    use_cores(monkeypatch, request.param)
    return request.param


def make_model(kind="lstm", input_size=3, hidden_size=5, num_layers=1, proj_size=0,
               batch_first=False, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    if kind == "lstm":
        module = torch.nn.LSTM(input_size, hidden_size, num_layers, proj_size=proj_size,
                               batch_first=batch_first)
    elif kind == "gru":
        module = torch.nn.GRU(input_size, hidden_size, num_layers, batch_first=batch_first)
    else:
        module = torch.nn.RNN(input_size, hidden_size, num_layers, batch_first=batch_first,
                              nonlinearity=kind.split("_")[1])
    return fastrnn.from_torch(module.to(dtype), kind=kind if kind.startswith("rnn") else None)


CONFIGS = {
    "lstm": dict(kind="lstm"),
    "lstm-2layers-proj": dict(kind="lstm", num_layers=2, hidden_size=6, proj_size=4),
    "gru-2layers": dict(kind="gru", num_layers=2),
    "rnn_tanh": dict(kind="rnn_tanh"),
    "rnn_relu": dict(kind="rnn_relu", num_layers=2),
}


def inputs(steps, batch, input_size, dtype=np.float32, seed=1):
    return np.random.default_rng(seed).standard_normal((steps, batch, input_size)).astype(dtype)


def assert_close(actual, expected, tolerance=STREAM_TOLERANCE):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_steps_and_chunks_equal_the_whole_sequence(name, dtype):
    model = make_model(**CONFIGS[name], dtype=dtype)
    batch, steps = 3, 12
    xs = inputs(steps, batch, model.input_size, model.dtype)
    expected_y, expected_state = model(xs)
    # model(x) returns an LSTM's (h, c) and a GRU's or RNN's h alone; a Stream's state is a State.
    expected_h = expected_state.h if model.kind == "lstm" else expected_state

    stream = model.stream(batch=batch)
    stepped = np.stack([stream.step(xs[t]) for t in range(steps)])
    assert stepped.shape == (steps, batch, model.output_size)
    assert_close(stepped, expected_y)
    assert_close(stream.state.h, expected_h)
    if model.kind == "lstm":
        assert_close(stream.state.c, expected_state.c)

    stream.reset()
    chunks = [stream.process(xs[start:stop]) for start, stop in ((0, 1), (1, 1), (1, 6), (6, 12))]
    assert_close(np.concatenate(chunks), expected_y)
    assert_close(stream.state.h, expected_h)

    # Steps and chunks interleaved carry one state.
    stream.reset()
    mixed = [stream.process(xs[:4]), stream.step(xs[4])[None], stream.process(xs[5:])]
    assert_close(np.concatenate(mixed), expected_y)


def test_a_stream_continues_from_a_given_state_as_the_model_does():
    model = make_model(num_layers=2)
    xs = inputs(6, 2, model.input_size)
    rng = np.random.default_rng(5)
    h0 = rng.standard_normal((2, 2, 5)).astype(np.float32)
    c0 = rng.standard_normal((2, 2, 5)).astype(np.float32)
    expected_y, expected_state = model(xs, state=(h0, c0))
    stream = model.stream(batch=2)
    stream.state = fastrnn.State(h0, c0)
    assert_close(np.stack([stream.step(x) for x in xs]), expected_y)
    stream.state = (h0, c0)
    assert_close(stream.process(xs), expected_y)
    assert_close(stream.state.c, expected_state.c)


def test_state_is_copied_in_and_out():
    model = make_model(kind="gru")
    stream = model.stream(batch=1)
    h0 = np.full((1, 1, 5), 0.5, np.float32)
    stream.state = h0
    h0[...] = 9.0  # the caller's array is not the stream's
    state = stream.state
    assert state.c is None and state.h.shape == (1, 1, 5)
    np.testing.assert_array_equal(state.h, 0.5)
    state.h[...] = 7.0
    np.testing.assert_array_equal(stream.state.h, 0.5)
    stream.reset()
    np.testing.assert_array_equal(stream.state.h, 0.0)


def test_reset_gives_the_fresh_answers_again():
    model = make_model()
    xs = inputs(5, 2, model.input_size)
    stream = model.stream(batch=2)
    first = stream.process(xs)
    stream.reset()
    np.testing.assert_array_equal(stream.process(xs), first)


def test_batch_first_model_streams_batch_major_chunks():
    model = make_model(kind="gru", batch_first=True)
    xs = inputs(2, 7, model.input_size)  # (B, T, I)
    expected_y, _ = model(xs)
    stream = model.stream(batch=2)
    ys = np.concatenate([stream.process(xs[:, :3]), stream.process(xs[:, 3:])], axis=1)
    assert ys.shape == (2, 7, 5)
    assert_close(ys, expected_y)
    stream.reset()
    assert_close(np.stack([stream.step(xs[:, t]) for t in range(7)], axis=1), expected_y)


def test_batch_one_stream_takes_unbatched_vectors():
    model = make_model()
    xs = inputs(6, 1, model.input_size)
    expected_y, _ = model(xs)
    stream = model.stream()
    y0 = stream.step(xs[0, 0])
    assert y0.shape == (5,)
    rest = stream.process(xs[1:, 0])
    assert rest.shape == (5, 5)
    assert_close(np.concatenate([y0[None], rest]), expected_y[:, 0])


def test_inputs_of_other_types_are_converted():
    model = make_model()
    xs = inputs(4, 2, model.input_size, np.float64)
    expected_y, _ = model(xs)
    stream = model.stream(batch=2)
    ys = [stream.step(torch.from_numpy(xs[0])), stream.step(xs[1].tolist()),
          stream.step(np.asfortranarray(xs[2])), stream.step(xs[3])]
    assert all(y.dtype == np.float32 for y in ys)
    assert_close(np.stack(ys), expected_y)


def test_out_receives_the_result():
    model = make_model(kind="gru")
    xs = inputs(3, 2, model.input_size)
    expected_y, _ = model(xs)
    stream = model.stream(batch=2)
    out = np.empty((2, 5), np.float32)
    for t in range(3):
        assert stream.step(xs[t], out=out) is out
        assert_close(out, expected_y[t])
    single = model.stream()
    out1 = np.empty(5, np.float32)
    single.step(xs[0, 0], out=out1)
    assert_close(out1, expected_y[0, 0])


@pytest.mark.parametrize("bad_out, error", [
    (np.empty((2, 4), np.float32), ValueError),
    (np.empty((2, 5), np.float64), ValueError),
    (np.empty((5, 2), np.float32).T, ValueError),
    ([[0.0] * 5] * 2, TypeError),
])
def test_bad_out_is_refused(bad_out, error):
    stream = make_model(kind="gru").stream(batch=2)
    with pytest.raises(error, match="out must be"):
        stream.step(np.zeros((2, 3), np.float32), out=bad_out)


@pytest.mark.parametrize("x, error, words", [
    (np.zeros((3, 3), np.float32), ValueError, r"x_t .*batch 2"),
    (np.zeros((2, 4), np.float32), ValueError, "3 features"),
    (np.zeros(3, np.float32), ValueError, "x_t"),
    (np.zeros((1, 2, 3), np.float32), ValueError, "x_t"),
    (np.array([["a", "b", "c"]] * 2), TypeError, "floating"),
    (np.zeros((2, 3), np.int64), TypeError, "floating"),
    (np.zeros((2, 3), np.complex64), TypeError, "floating"),
])
def test_step_refuses_wrong_batch_width_or_type(x, error, words):
    stream = make_model().stream(batch=2)
    with pytest.raises(error, match=words):
        stream.step(x)


@pytest.mark.parametrize("xs, error, words", [
    (np.zeros((4, 3, 3), np.float32), ValueError, r"\(T, 2, 3\)"),
    (np.zeros((4, 2, 2), np.float32), ValueError, r"\(T, 2, 3\)"),
    (np.zeros((4, 3), np.float32), ValueError, r"\(T, B, I\)"),
    (np.zeros((4, 2, 3), np.int32), TypeError, "floating"),
])
def test_process_refuses_wrong_shapes(xs, error, words):
    stream = make_model().stream(batch=2)
    with pytest.raises(error, match=words):
        stream.process(xs)


def test_empty_chunk_leaves_the_state_alone():
    model = make_model()
    stream = model.stream(batch=2)
    stream.process(inputs(3, 2, 3))
    before = stream.state
    ys = stream.process(np.zeros((0, 2, 3), np.float32))
    assert ys.shape == (0, 2, 5)
    np.testing.assert_array_equal(stream.state.h, before.h)


@pytest.mark.parametrize("batch, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError),
                                          (True, TypeError), ("2", TypeError)])
def test_bad_batch_is_refused(batch, error):
    with pytest.raises(error, match="batch"):
        make_model().stream(batch=batch)


def test_bidirectional_model_cannot_stream():
    torch.manual_seed(0)
    model = fastrnn.from_torch(torch.nn.GRU(3, 4, bidirectional=True))
    with pytest.raises(ValueError, match="bidirectional model cannot stream"):
        model.stream()
    with pytest.raises(ValueError, match="bidirectional"):
        fastrnn.StreamPool(model, capacity=2)


def test_stream_refuses_what_is_not_a_model():
    with pytest.raises(TypeError, match="fastrnn.Model"):
        fastrnn.Stream(object(), 1)


def test_state_setter_refuses_wrong_shapes():
    stream = make_model(num_layers=2).stream(batch=2)
    good_h = np.zeros((2, 2, 5), np.float32)
    with pytest.raises(ValueError, match="state h"):
        stream.state = (np.zeros((2, 3, 5), np.float32), good_h)
    with pytest.raises(ValueError, match="state c"):
        stream.state = (good_h, np.zeros((1, 2, 5), np.float32))
    with pytest.raises(ValueError, match="needs both h and c"):
        stream.state = good_h
    with pytest.raises(ValueError, match="reset"):
        stream.state = None


# -- snapshots ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_snapshot_round_trip_across_two_streams(kind):
    model = make_model(kind=kind, num_layers=2)
    xs = inputs(10, 2, model.input_size)
    first = model.stream(batch=2)
    first.process(xs[:4])
    blob = first.snapshot()
    assert isinstance(blob, bytes)
    second = model.stream(batch=2)
    second.restore(blob)
    np.testing.assert_array_equal(second.state.h, first.state.h)
    rest_first = np.stack([first.step(x) for x in xs[4:]])
    rest_second = np.stack([second.step(x) for x in xs[4:]])
    np.testing.assert_array_equal(rest_second, rest_first)
    expected_y, _ = model(xs)
    assert_close(rest_second, expected_y[4:])


def test_snapshot_is_restorable_into_a_model_with_the_same_weights_only():
    model = make_model()
    same = fastrnn.from_numpy("lstm", [w.arrays() for w in model.layers])
    stream = model.stream()
    stream.process(inputs(3, 1, 3))
    twin = same.stream()
    twin.restore(stream.snapshot())  # the fingerprint is of the weights, not of the object
    np.testing.assert_array_equal(twin.state.c, stream.state.c)
    other = make_model(seed=1).stream()
    with pytest.raises(ValueError, match="different model"):
        other.restore(stream.snapshot())
    float64 = make_model(dtype=torch.float64).stream()
    with pytest.raises(ValueError, match="different model"):
        float64.restore(stream.snapshot())


def test_garbled_snapshots_are_refused():
    model = make_model(kind="gru")
    stream = model.stream(batch=2)
    stream.process(inputs(3, 2, 3))
    blob = stream.snapshot()
    before = stream.state.h

    flipped = bytearray(blob)
    flipped[len(blob) // 2 + 10] ^= 0x40
    with pytest.raises(ValueError, match="corrupted"):
        stream.restore(bytes(flipped))
    with pytest.raises(ValueError, match="corrupted|not a fastrnn"):
        stream.restore(blob[:-3])
    with pytest.raises(ValueError, match="not a fastrnn stream snapshot"):
        stream.restore(b"PK\x03\x04" + blob[4:])
    with pytest.raises(ValueError, match="not a fastrnn stream snapshot"):
        stream.restore(b"")
    with pytest.raises(TypeError, match="bytes"):
        stream.restore("not bytes")
    later = bytearray(blob)
    later[8:12] = (SNAPSHOT_VERSION + 1).to_bytes(4, "little")
    with pytest.raises(ValueError, match=f"version {SNAPSHOT_VERSION + 1}"):
        stream.restore(bytes(later))
    with pytest.raises(ValueError, match="batch 3"):
        model.stream(batch=3).restore(blob)
    np.testing.assert_array_equal(stream.state.h, before)  # a refused blob changes nothing


def test_snapshot_codec_round_trips_host_arrays():
    model = make_model(dtype=torch.float64)
    fingerprint = model_fingerprint(model)
    assert fingerprint == model_fingerprint(model) and len(fingerprint) == 32
    rng = np.random.default_rng(0)
    h, c = rng.standard_normal((1, 3, 5)), rng.standard_normal((1, 3, 5))
    blob = encode_snapshot(fingerprint, h, c)
    h2, c2 = decode_snapshot(blob, fingerprint, np.float64, h.shape, c.shape)
    np.testing.assert_array_equal(h2, h)
    np.testing.assert_array_equal(c2, c)
    assert h2.flags.writeable
    with pytest.raises(ValueError, match="expected h"):
        decode_snapshot(blob, fingerprint, np.float64, h.shape, None)


# -- real-time hygiene -------------------------------------------------------------------------

def test_step_with_out_allocates_nothing():
    """Measured with tracemalloc, which sees numpy's buffers: an output array here is 64 KiB."""
    model = make_model(input_size=4, hidden_size=256)
    stream = model.stream(batch=64)
    x = np.ones((64, 4), np.float32)
    out = np.empty((64, 256), np.float32)
    stream.step(x, out=out)

    def peak_growth(call):
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            for _ in range(5):
                call()
            return tracemalloc.get_traced_memory()[1] - baseline
        finally:
            tracemalloc.stop()

    assert peak_growth(lambda: stream.step(x, out=out)) < 8 * 1024
    # The measurement sees an allocation when there is one: a step without out makes the result.
    assert peak_growth(lambda: stream.step(x)) >= 64 * 1024


@pytest.mark.parametrize("kind, dtype", [("lstm", np.float32), ("gru", np.float32),
                                         ("rnn_tanh", np.float64)])
def test_silence_for_100k_steps_leaves_no_denormal_state(kind, dtype):
    """A decaying state must reach exact zero, never linger in the slow denormal range."""
    gates = {"lstm": 4, "gru": 3, "rnn_tanh": 1}[kind]
    hidden = 4
    rng = np.random.default_rng(0)
    layer = dict(w_ih=rng.standard_normal((gates * hidden, 2)) * 0.5,
                 w_hh=rng.standard_normal((gates * hidden, hidden)) * 0.2)
    model = fastrnn.from_numpy(kind, [layer], dtype=dtype)
    stream = model.stream()
    stream.step(np.ones(2, dtype) * 3)  # a loud first sample, then silence
    silence = np.zeros((1, 2), dtype)
    out = np.empty((1, hidden), dtype)
    tiny = np.finfo(dtype).tiny

    def assert_normal_or_zero(values):
        values = np.abs(values)
        assert np.all((values == 0) | (values >= tiny)), values[(values != 0) & (values < tiny)]

    for step in range(100_000):
        stream.step(silence, out=out)
        if step < 5000 or step % 1000 == 0:
            assert_normal_or_zero(out)
            state = stream.state
            assert_normal_or_zero(state.h)
            if state.c is not None:
                assert_normal_or_zero(state.c)
    assert np.all(stream.state.h == 0)


def test_nan_in_one_row_stays_in_that_row():
    model = make_model(kind="gru")
    stream = model.stream(batch=3)
    xs = inputs(4, 3, 3)
    expected_y, _ = model(xs)
    poisoned = xs.copy()
    poisoned[1, 1, 0] = np.nan
    ys = np.stack([stream.step(x) for x in poisoned])
    assert np.all(np.isnan(ys[1:, 1]))
    assert_close(ys[:, [0, 2]], expected_y[:, [0, 2]])


def test_threads_each_driving_a_stream_give_the_one_thread_answers(cores):
    model = make_model(kind="lstm", hidden_size=16, num_layers=2)
    streams_inputs = [inputs(200, 1, 3, seed=seed) for seed in range(4)]

    def run(xs):
        stream = model.stream()
        return np.stack([stream.step(x) for x in xs])

    expected = [run(xs) for xs in streams_inputs]
    results = [None] * len(streams_inputs)

    def worker(index):
        results[index] = run(streams_inputs[index])

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)


def test_readonly_and_unaligned_inputs_are_read_correctly():
    """The fast path hands arrays straight to the compiled kernel; these must still be right."""
    model = make_model()
    xs = inputs(3, 2, model.input_size)
    expected_y, _ = model(xs)
    stream = model.stream(batch=2)
    readonly = xs[0].copy()
    readonly.flags.writeable = False
    raw = bytearray(1 + xs[1].nbytes)
    unaligned = np.frombuffer(raw, np.float32, count=6, offset=1).reshape(2, 3)
    assert not unaligned.flags.aligned
    unaligned[...] = xs[1]
    ys = [stream.step(readonly), stream.step(unaligned), stream.step(xs[2])]
    assert_close(np.stack(ys), expected_y)
    unaligned_out = np.frombuffer(bytearray(1 + 40), np.float32, count=10, offset=1).reshape(2, 5)
    with pytest.raises(ValueError, match="aligned"):
        stream.step(xs[0], out=unaligned_out)
