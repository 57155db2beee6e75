"""fastrnn.StreamPool: slots advanced together equal independent streams; slots are isolated;
refusals; per-slot state, reset and snapshots."""

import numpy as np
import pytest
import torch

import fastrnn

STREAM_TOLERANCE = 1e-6


def make_model(kind="lstm", num_layers=1, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
    return fastrnn.from_torch(cls(3, 5, num_layers).to(dtype))


def sequences(count, steps, seed=0):
    return np.random.default_rng(seed).standard_normal((count, steps, 3)).astype(np.float32)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_pool_steps_equal_independent_whole_sequences(kind):
    """Four users, each stepped at its own times, in shuffled order, in shared calls."""
    model = make_model(kind, num_layers=2)
    pool = fastrnn.StreamPool(model, capacity=6)
    users = 4
    steps = 8
    data = sequences(users, steps)
    slots = [pool.open() for _ in range(users)]
    assert sorted(slots) == [0, 1, 2, 3] and pool.num_open == 4
    taken = [0] * users
    outputs = [[] for _ in range(users)]
    rng = np.random.default_rng(1)
    while min(taken) < steps:
        active = [u for u in range(users) if taken[u] < steps and rng.random() < 0.7]
        rng.shuffle(active)
        xs = np.stack([data[u, taken[u]] for u in active]) if active else np.zeros((0, 3),
                                                                                    np.float32)
        ys = pool.step(np.array([slots[u] for u in active], np.int64), xs)
        assert ys.shape == (len(active), 5)
        for row, u in enumerate(active):
            outputs[u].append(ys[row])
            taken[u] += 1
    for u in range(users):
        expected_y, expected_state = model(data[u][:, None, :])
        expected_h = expected_state.h if kind == "lstm" else expected_state  # a GRU's: h alone
        np.testing.assert_allclose(np.stack(outputs[u]), expected_y[:, 0], atol=STREAM_TOLERANCE)
        np.testing.assert_allclose(pool.get_state(slots[u]).h, expected_h, atol=STREAM_TOLERANCE)


def test_slots_take_lists_and_out():
    model = make_model("gru")
    pool = fastrnn.StreamPool(model, capacity=3)
    a, b = pool.open(), pool.open()
    x = sequences(2, 1)[:, 0]
    out = np.empty((2, 5), np.float32)
    assert pool.step([b, a], x, out=out) is out
    expected_y, _ = model(x[None])
    np.testing.assert_allclose(out, expected_y[0], atol=STREAM_TOLERANCE)


def test_open_close_and_a_full_pool():
    model = make_model()
    pool = fastrnn.StreamPool(model, capacity=2)
    first, second = pool.open(), pool.open()
    with pytest.raises(ValueError, match="pool is full"):
        pool.open()
    pool.step([first, second], np.ones((2, 3), np.float32))
    pool.close(first)
    assert pool.open_slots == [second] and pool.num_open == 1
    again = pool.open()
    assert again == first
    state = pool.get_state(again)
    assert not state.h.any() and not state.c.any()  # a reopened slot starts from zero
    pool.close(again)
    with pytest.raises(ValueError, match="not open"):
        pool.close(again)  # closing twice


@pytest.mark.parametrize("slots, xs_rows, error, words", [
    ([0, 0], 2, ValueError, "more than once"),
    ([2], 1, ValueError, r"slots\[0\] = 2 is not open"),
    ([0, 9], 2, ValueError, "out of range"),
    ([-1], 1, ValueError, "out of range"),
    ([0.0], 1, TypeError, "integers"),
    ([[0, 1]], 2, ValueError, "1-D"),
    ([0, 1], 3, ValueError, "xs"),
])
def test_step_refuses_bad_slots(slots, xs_rows, error, words):
    model = make_model()
    pool = fastrnn.StreamPool(model, capacity=4)
    pool.open(), pool.open()
    before = pool.get_state(0).h
    with pytest.raises(error, match=words):
        pool.step(slots, np.ones((xs_rows, 3), np.float32))
    np.testing.assert_array_equal(pool.get_state(0).h, before)  # a refused call runs nothing
    pool.step([0, 1], np.ones((2, 3), np.float32))  # and leaves the pool usable


def test_step_refuses_wrong_input_width():
    pool = fastrnn.StreamPool(make_model(), capacity=2)
    slot = pool.open()
    with pytest.raises(ValueError, match="3 features"):
        pool.step([slot], np.ones((1, 4), np.float32))
    with pytest.raises(TypeError, match="floating"):
        pool.step([slot], np.ones((1, 3), np.int64))


@pytest.mark.parametrize("slot, error", [(5, ValueError), (1, ValueError), ("0", TypeError),
                                         (True, TypeError)])
def test_per_slot_calls_refuse_bad_slots(slot, error):
    pool = fastrnn.StreamPool(make_model(), capacity=3)
    pool.open()
    for call in (pool.reset, pool.get_state, pool.snapshot, pool.close):
        with pytest.raises(error, match="slot"):
            call(slot)


@pytest.mark.parametrize("capacity, error", [(0, ValueError), (2.0, TypeError)])
def test_bad_capacity_is_refused(capacity, error):
    with pytest.raises(error, match="capacity"):
        fastrnn.StreamPool(make_model(), capacity=capacity)


def test_nan_in_one_slot_never_reaches_another():
    model = make_model("lstm", num_layers=2)
    pool = fastrnn.StreamPool(model, capacity=4)
    slots = [pool.open() for _ in range(3)]
    data = sequences(3, 6)
    data[1, 2, 1] = np.nan
    outputs = np.stack([pool.step(slots, data[:, t]) for t in range(6)], axis=1)
    assert np.all(np.isnan(outputs[1, 2:]))
    for u in (0, 2):
        expected_y, _ = model(data[u][:, None, :])
        np.testing.assert_allclose(outputs[u], expected_y[:, 0], atol=STREAM_TOLERANCE)
    # A reset slot is healthy again.
    pool.reset(slots[1])
    clean = sequences(1, 3, seed=4)[0]
    got = np.stack([pool.step([slots[1]], clean[t:t + 1])[0] for t in range(3)])
    np.testing.assert_allclose(got, model(clean[:, None, :])[0][:, 0], atol=STREAM_TOLERANCE)


def test_per_slot_state_and_reset():
    model = make_model("gru")
    pool = fastrnn.StreamPool(model, capacity=3)
    a, b = pool.open(), pool.open()
    h = np.full((1, 1, 5), 0.25, np.float32)
    pool.set_state(a, h)
    np.testing.assert_array_equal(pool.get_state(a).h, h)
    assert not pool.get_state(b).h.any()
    x = np.ones((1, 3), np.float32)
    expected_y, _ = model(x[None], state=h)
    np.testing.assert_allclose(pool.step([a], x), expected_y[0], atol=STREAM_TOLERANCE)
    with pytest.raises(ValueError, match="state h"):
        pool.set_state(a, np.zeros((1, 2, 5), np.float32))
    pool.reset(a)
    assert not pool.get_state(a).h.any()


def test_slot_snapshots_move_between_slots_pools_and_streams():
    model = make_model("lstm", num_layers=2)
    data = sequences(1, 9)[0]
    pool = fastrnn.StreamPool(model, capacity=3)
    slot = pool.open()
    for t in range(4):
        pool.step([slot], data[t:t + 1])
    blob = pool.snapshot(slot)

    stream = model.stream(batch=1)  # a pool slot's snapshot is a batch-1 stream's
    stream.restore(blob)
    other_pool = fastrnn.StreamPool(model, capacity=2)
    resumed = other_pool.open(snapshot=stream.snapshot())
    same_pool_slot = pool.open()
    pool.restore(same_pool_slot, blob)

    expected_y, _ = model(data[:, None, :])
    for t in range(4, 9):
        want = expected_y[t]
        np.testing.assert_allclose(stream.step(data[t:t + 1]), want, atol=STREAM_TOLERANCE)
        np.testing.assert_allclose(other_pool.step([resumed], data[t:t + 1]), want,
                                   atol=STREAM_TOLERANCE)
        both = pool.step([slot, same_pool_slot], np.stack([data[t], data[t]]))
        np.testing.assert_allclose(both, np.concatenate([want, want]), atol=STREAM_TOLERANCE)


def test_slot_snapshots_of_other_models_or_garbled_are_refused():
    model = make_model()
    pool = fastrnn.StreamPool(model, capacity=2)
    slot = pool.open()
    blob = pool.snapshot(slot)
    other = fastrnn.StreamPool(make_model(seed=3), capacity=2)
    other_slot = other.open()
    with pytest.raises(ValueError, match="different model"):
        other.restore(other_slot, blob)
    with pytest.raises(ValueError, match="different model"):
        other.open(snapshot=blob)
    assert other.num_open == 1  # the refused open took no slot
    with pytest.raises(ValueError, match="corrupted"):
        pool.restore(slot, blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(ValueError, match="batch 1"):
        pool.restore(slot, model.stream(batch=2).snapshot())


def test_a_pool_runs_on_the_state_table_its_model_gives():
    """Stream and StreamPool validate, then call the model's backend (a CUDA model gives a device
    table): the pool asks for one table of its capacity and steps through it."""
    model = fastrnn.from_numpy("gru", [{"w_ih": np.ones((6, 3), np.float32),
                                        "w_hh": np.ones((6, 2), np.float32)}])
    calls = []

    class Backend:
        def __init__(self, rows):
            self.inner = model.state_table(rows)

        def __getattr__(self, name):
            calls.append(name)
            return getattr(self.inner, name)

    class OtherDevice:
        config, dtype, kind = model.config, model.dtype, model.kind

        def state_table(self, rows):
            calls.append(("state_table", rows))
            return Backend(rows)

        def to(self, device):
            return model

    pool = fastrnn.StreamPool(OtherDevice(), capacity=7)
    slot = pool.open()
    y = pool.step([slot], np.ones((1, 3), np.float32))
    assert calls[0] == ("state_table", 7) and "advance" in calls
    np.testing.assert_array_equal(y, model.stream().step(np.ones((1, 3), np.float32)))


@pytest.mark.parametrize("kind", ["lstm-proj", "gru-reset-before"])
def test_batched_steps_of_many_slots_equal_independent_runs(kind):
    """From 2 * MIN_ROWS_PER_THREAD slots on a tick is cut into blocks run on several threads;
    below it, one block. Both must give every slot its own whole-sequence answer."""
    from fastrnn.engine.plan import MIN_ROWS_PER_THREAD
    rng = np.random.default_rng(2)

    def weight(*shape):
        return rng.standard_normal(shape) * 0.5

    if kind == "lstm-proj":  # H = 6, H_out = 4
        layers = [dict(w_ih=weight(24, 3), w_hh=weight(24, 4), w_proj=weight(4, 6)),
                  dict(w_ih=weight(24, 4), w_hh=weight(24, 4), w_proj=weight(4, 6))]
        model = fastrnn.from_numpy("lstm", layers, dtype=np.float32)
    else:  # H = 5, the reset gate applied before the recurrent product
        layers = [dict(w_ih=weight(15, 3), w_hh=weight(15, 5), b_hh=weight(15)),
                  dict(w_ih=weight(15, 5), w_hh=weight(15, 5))]
        model = fastrnn.from_numpy("gru", layers, linear_before_reset=False, dtype=np.float32)
    users = 2 * MIN_ROWS_PER_THREAD + 4
    pool = fastrnn.StreamPool(model, capacity=2 * users)
    for _ in range(2 * users):
        pool.open()
    slots = rng.permutation(2 * users)[:users]
    steps = 5
    data = rng.standard_normal((steps, users, 3)).astype(np.float32)
    outputs = np.zeros((steps, users, model.output_size), np.float32)
    few = np.arange(3)  # users stepped alone, row by row, at step 2
    for t in range(steps):
        if t == 2:
            outputs[t, few] = pool.step(slots[few], data[t, few])
            rest = np.arange(3, users)
            outputs[t, rest] = pool.step(slots[rest], data[t, rest])
        else:
            outputs[t] = pool.step(slots, data[t])
    expected_y, expected_state = model(data)
    expected_h = expected_state.h if model.kind == "lstm" else expected_state  # a GRU's: h alone
    np.testing.assert_allclose(outputs, expected_y, atol=STREAM_TOLERANCE)
    for user in (0, users - 1):
        np.testing.assert_allclose(pool.get_state(int(slots[user])).h[:, 0],
                                   expected_h[:, user], atol=STREAM_TOLERANCE)
    # A stream with as many rows takes the same path.
    stream = model.stream(batch=users)
    np.testing.assert_allclose(np.stack([stream.step(x) for x in data]), expected_y,
                               atol=STREAM_TOLERANCE)


# -- sessions that move between processes -------------------------------------------------------

def test_a_thousand_live_streams_move_to_another_process_mid_sequence(tmp_path):
    """export() in one process, import_() in a fresh one: the streams go on exactly as if they had
    stayed (the same kernels, the same dtype, the same state)."""
    import subprocess
    import sys
    rng = np.random.default_rng(5)
    layers = [dict(w_ih=rng.standard_normal((32, 3)) * 0.4, w_hh=rng.standard_normal((32, 8)) * 0.4),
              dict(w_ih=rng.standard_normal((32, 8)) * 0.4, w_hh=rng.standard_normal((32, 8)) * 0.4)]
    model = fastrnn.from_numpy("lstm", layers, dtype=np.float32)
    model.save(tmp_path / "model.fastrnn")
    pool = fastrnn.StreamPool(model, capacity=1200)
    for _ in range(100):  # slots the moved streams do not start at
        pool.open()
    users = [pool.open() for _ in range(1000)]
    data = rng.standard_normal((12, 1000, 3)).astype(np.float32)
    for t in range(6):
        pool.step(users, data[t])
    np.save(tmp_path / "data.npy", data[6:])
    (tmp_path / "streams.snapshot").write_bytes(pool.export(users))
    code = f"""
import numpy as np, fastrnn
model = fastrnn.load({str(tmp_path / "model.fastrnn")!r})
pool = fastrnn.StreamPool(model, capacity=1000)
slots = pool.import_(open({str(tmp_path / "streams.snapshot")!r}, "rb").read())
data = np.load({str(tmp_path / "data.npy")!r})
np.save({str(tmp_path / "moved.npy")!r}, np.stack([pool.step(slots, x) for x in data]))
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    stayed = np.stack([pool.step(users, x) for x in data[6:]])
    np.testing.assert_array_equal(np.load(tmp_path / "moved.npy"), stayed)


def test_import_refuses_what_does_not_fit():
    model = fastrnn.from_numpy("gru", [{"w_ih": np.ones((6, 3)), "w_hh": np.ones((6, 2))}],
                               dtype=np.float32)
    pool = fastrnn.StreamPool(model, capacity=3)
    slots = [pool.open(), pool.open()]
    blob = pool.export(slots)
    with pytest.raises(ValueError, match="2 streams and the pool has 1 free"):
        pool.import_(blob)
    assert pool.num_open == 2
    other = fastrnn.from_numpy("gru", [{"w_ih": np.zeros((6, 3)), "w_hh": np.ones((6, 2))}],
                               dtype=np.float32)
    with pytest.raises(ValueError, match="different model"):
        fastrnn.StreamPool(other, capacity=3).import_(blob)
    with pytest.raises(ValueError, match="not open"):
        pool.export([slots[0], 2])
    with pytest.raises(ValueError, match="not a fastrnn stream snapshot"):
        pool.import_(b"junk")
    fresh = fastrnn.StreamPool(model, capacity=3)
    assert fresh.import_(pool.snapshot(slots[1])) == [0]  # a one-stream snapshot imports too
