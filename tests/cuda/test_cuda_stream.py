"""Streams and StreamPools of a CudaModel: state kept on the device, results equal to the CPU
engine's whole-sequence run, snapshots interchangeable with the CPU's, the CPU's refusals."""

import numpy as np
import pytest

import fastrnn
import reference
from fastrnn.cuda.stream import DeviceStateTable
from fastrnn.cuda import to_cuda

SMALL = dict(threads_per_block=2, tile=4)
I, H = 3, 5


def tolerance(dtype):
    return 1e-5 if np.dtype(dtype) == np.float32 else 1e-9  # float64 includes DESIGN's 1e-6


def build(kind, *, num_layers=1, proj_size=0, dtype=np.float32, seed=0, **options):
    layers = reference.random_layers(kind, I, H, num_layers=num_layers, proj_size=proj_size,
                                     scale=1.5, seed=seed)
    model = fastrnn.from_numpy(kind, reference.cast_layers(layers, dtype), dtype=dtype, **options)
    return model, to_cuda(model, **SMALL)


STREAMS = {
    "lstm-2layers-proj-batch2": dict(build=dict(kind="lstm", num_layers=2, proj_size=3), batch=2),
    "gru-reset-before-2layers-f64": dict(build=dict(kind="gru", num_layers=2,
                                                    linear_before_reset=False, dtype=np.float64),
                                         batch=1),
    "rnn_relu-batch_first-batch2": dict(build=dict(kind="rnn_relu", batch_first=True), batch=2),
}


@pytest.mark.parametrize("name", list(STREAMS))
def test_steps_then_chunk_equal_the_whole_sequence(name):
    case = STREAMS[name]
    model, gpu = build(**case["build"])
    batch = case["batch"]
    stream = gpu.stream(batch)
    assert isinstance(stream, fastrnn.Stream) and isinstance(stream._table, DeviceStateTable)
    x = np.random.default_rng(5).normal(size=(5, batch, I)).astype(model.dtype)  # (T, B, I)
    outputs = [stream.step(x[t, 0] if batch == 1 else x[t]) for t in range(3)]  # (I,) for B == 1
    chunk = x[3:].transpose(1, 0, 2) if model.config.batch_first else x[3:]
    tail = stream.process(chunk)
    if model.config.batch_first:
        tail = tail.transpose(1, 0, 2)
    got = np.concatenate([np.stack(outputs).reshape(3, batch, -1), tail])
    expected, final = model(x.transpose(1, 0, 2) if model.config.batch_first else x)
    if model.config.batch_first:
        expected = expected.transpose(1, 0, 2)
    tol = tolerance(model.dtype)
    np.testing.assert_allclose(got, expected, rtol=0, atol=tol)
    state = stream.state   # a Stream's state is a fastrnn.State for every cell
    if model.kind == "lstm":
        np.testing.assert_allclose(state.h, final.h, rtol=0, atol=tol)
        np.testing.assert_allclose(state.c, final.c, rtol=0, atol=tol)
    else:
        np.testing.assert_allclose(state.h, final, rtol=0, atol=tol)   # model(x): h alone
        assert state.c is None


def test_state_reset_and_snapshots_cross_devices():
    model, gpu = build("lstm", num_layers=2)
    rng = np.random.default_rng(2)
    xs = rng.normal(size=(4, 1, I)).astype(np.float32)
    gpu_stream, cpu_stream = gpu.stream(), model.stream()
    gpu_stream.process(xs[:2])
    blob = gpu_stream.snapshot()
    cpu_stream.restore(blob)  # a GPU snapshot resumes on the CPU ...
    np.testing.assert_allclose(cpu_stream.step(xs[2]), gpu_stream.step(xs[2]), atol=1e-5)
    gpu_stream.restore(cpu_stream.snapshot())  # ... and a CPU snapshot on the GPU
    np.testing.assert_allclose(gpu_stream.step(xs[3]), cpu_stream.step(xs[3]), atol=1e-5)
    # state setter, getter, reset
    h = rng.normal(size=(2, 1, H)).astype(np.float32)
    c = rng.normal(size=(2, 1, H)).astype(np.float32)
    gpu_stream.state = fastrnn.State(h, c)
    np.testing.assert_array_equal(gpu_stream.state.h, h)
    np.testing.assert_array_equal(gpu_stream.state.c, c)
    gpu_stream.reset()
    assert not gpu_stream.state.h.any() and not gpu_stream.state.c.any()
    out = np.empty((1, H), np.float32)
    assert gpu_stream.step(xs[0], out=out) is out
    np.testing.assert_allclose(out, model(xs[:1])[0][0], atol=1e-5)
    # refusals: as the CPU stream's
    with pytest.raises(ValueError, match="corrupted"):
        gpu_stream.restore(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(ValueError, match="different model"):
        build("lstm", num_layers=2, seed=9)[1].stream().restore(blob)
    with pytest.raises(ValueError, match="state h must have shape"):
        gpu_stream.state = (np.zeros((2, 2, H)), np.zeros((2, 2, H)))
    with pytest.raises(ValueError):
        gpu_stream.step(np.zeros((1, I + 1)))
    with pytest.raises(ValueError):
        gpu_stream.process(np.zeros((2, 2, I)))  # batch 2 into a batch-1 stream
    assert gpu_stream.process(np.zeros((0, 1, I), np.float32)).shape == (0, 1, H)


def test_bidirectional_cannot_stream():
    layers = reference.random_layers("gru", I, H, bidirectional=True)
    gpu = to_cuda(fastrnn.from_numpy("gru", layers, bidirectional=True), **SMALL)
    with pytest.raises(ValueError, match="bidirectional"):
        gpu.stream()
    with pytest.raises(ValueError, match="bidirectional"):
        fastrnn.StreamPool(gpu, capacity=2)


def test_pool_matches_the_cpu_pool_and_isolates_slots():
    model, gpu = build("lstm", num_layers=2, proj_size=3)
    pool = fastrnn.StreamPool(gpu, capacity=4)
    cpu_pool = fastrnn.StreamPool(model, capacity=4)
    assert isinstance(pool._table, DeviceStateTable) and pool.capacity == 4
    slots = [pool.open() for _ in range(3)]
    assert slots == [cpu_pool.open() for _ in range(3)] == [0, 1, 2]
    rng = np.random.default_rng(4)
    for order in ([2, 0], [0, 1, 2], [1]):
        xs = rng.normal(size=(len(order), I)).astype(np.float32)
        np.testing.assert_allclose(pool.step(order, xs), cpu_pool.step(order, xs), atol=1e-5)
    for slot in slots:
        for got, want in zip(pool.get_state(slot), cpu_pool.get_state(slot)):
            np.testing.assert_allclose(got, want, atol=1e-5)
    # NaN in one slot stays in that slot
    before = pool.get_state(1)
    xs = np.full((2, I), np.nan, np.float32)
    xs[1] = 0.5
    ys = pool.step([0, 1], xs)
    assert np.isnan(ys[0]).all() and np.isfinite(ys[1]).all()
    assert np.isfinite(pool.get_state(2).h).all()
    # a slot's snapshot resumes in a CPU stream; a slot can be reset, closed, reopened from bytes
    blob = pool.snapshot(1)
    cpu_stream = model.stream()
    cpu_stream.restore(blob)
    x = np.ones((1, I), np.float32)
    np.testing.assert_allclose(cpu_stream.step(x), pool.step([1], x), atol=1e-5)
    pool.reset(0)
    assert not pool.get_state(0).h.any()
    pool.close(2)
    reopened = pool.open(blob)
    assert reopened == 2
    np.testing.assert_array_equal(pool.get_state(2).c, decode_c(blob, model))
    pool.set_state(0, fastrnn.State(before.h, before.c))
    np.testing.assert_array_equal(pool.get_state(0).h, before.h)
    # the CPU pool's refusals
    with pytest.raises(ValueError, match="more than once"):
        pool.step([0, 0], np.zeros((2, I), np.float32))
    with pytest.raises(ValueError, match="out of range"):
        pool.step([7], np.zeros((1, I), np.float32))
    pool.close(1)
    with pytest.raises(ValueError, match="not open"):
        pool.step([1], np.zeros((1, I), np.float32))
    with pytest.raises(ValueError, match="xs"):
        pool.step([0], np.zeros((1, I + 1), np.float32))
    assert pool.step([], np.zeros((0, I), np.float32)).shape == (0, 3)


def decode_c(blob, model):
    from fastrnn.snapshot import decode_snapshot, model_fingerprint
    h_shape, c_shape = model.state_shapes(1)
    return decode_snapshot(blob, model_fingerprint(model), model.dtype, h_shape, c_shape)[1]
