"""fastrnn.engine.threads (the partner thread, the barrier) and the two-core sequence path it serves.

test_cells.py runs every cell and option on two cores against the reference; here: that the
two-core path is taken when it should be and not otherwise, that it gives the one-core answer at
realistic sizes, and that a failure on either side is reported and leaves the partner usable.
"""

import threading
import time

import numpy as np
import pytest

import fastrnn
import fastrnn.engine.driver
import fastrnn.engine.threads
import reference
from fastrnn.engine.jit import kernel
from fastrnn.engine.threads import PARTNER_FAILED, SYNC_STRIDE, barrier, new_sync, run_pair
from reference import cast_layers, random_layers


@kernel
def exchange(part, values, seen, sync):
    """Each side writes its generation's value, meets the other, and records what it wrote."""
    other = 1 - part
    late = 0
    for generation in range(1, values.shape[1] + 1):
        values[part, generation - 1] = generation * (part + 1)
        met = barrier(sync, part, generation)
        if met == PARTNER_FAILED:
            return -1
        late += met
        seen[part, generation - 1] = values[other, generation - 1]
    return late


@pytest.fixture
def two_threads(monkeypatch):
    """Two threads, and no pause for a busy machine (a loaded test machine must not change which
    path the tests take; test_a_busy_machine_pauses_two_core_runs tests the pause)."""
    monkeypatch.setattr(fastrnn.engine.threads, "_num_threads", 2)
    monkeypatch.setattr(fastrnn.engine.threads, "CONTENDED_SECONDS", 0.0)
    monkeypatch.setattr(fastrnn.engine.threads, "_contended_until", 0.0)
    # An earlier test's stream may still hold the partner, for up to 1 ms after its last step.
    fastrnn.engine.threads.wait_until_free(timeout=1.0)


def run_exchange(generations=500):
    values = np.zeros((2, generations), np.int64)
    seen = np.zeros((2, generations), np.int64)
    ran = run_pair(exchange, (values, seen, new_sync()))
    return ran, values, seen


def test_barrier_orders_both_sides_writes(two_threads):
    ran, values, seen = run_exchange()
    assert ran
    generations = np.arange(1, values.shape[1] + 1)
    np.testing.assert_array_equal(seen[0], 2 * generations)  # what part 1 wrote before meeting
    np.testing.assert_array_equal(seen[1], generations)


def test_one_thread_runs_nothing_on_the_partner(monkeypatch):
    fastrnn.set_num_threads(1)
    try:
        assert fastrnn.get_num_threads() == 1
        ran, values, _ = run_exchange()
        assert not ran and not values.any()
    finally:
        fastrnn.set_num_threads(2)
    assert fastrnn.get_num_threads() == 2


@pytest.mark.parametrize("count", [0, -1, 1.5, True, "2"])
def test_set_num_threads_refuses_non_counts(count):
    with pytest.raises(ValueError, match="positive integer"):
        fastrnn.set_num_threads(count)


def test_busy_partner_means_one_core(two_threads):
    partner = fastrnn.engine.threads._get_partner()
    with partner.lock:  # another caller's pair job
        ran, values, _ = run_exchange()
    assert not ran and not values.any()
    assert run_exchange()[0]


def test_a_busy_machine_pauses_two_core_runs(monkeypatch):
    monkeypatch.setattr(fastrnn.engine.threads, "_num_threads", 2)
    monkeypatch.setattr(fastrnn.engine.threads, "CONTENDED_SECONDS", 0.05)
    monkeypatch.setattr(fastrnn.engine.threads, "_contended_until", 0.0)
    fastrnn.engine.threads.wait_until_free(timeout=1.0)
    fastrnn.engine.threads.report_late_waits(fastrnn.engine.threads.LATE_WAITS_LIMIT)  # at the limit: no pause
    assert run_exchange(10)[0]
    fastrnn.engine.threads.report_late_waits(fastrnn.engine.threads.LATE_WAITS_LIMIT + 1)
    ran, values, _ = run_exchange(10)
    assert not ran and not values.any()
    time.sleep(0.06)
    assert run_exchange(10)[0]


def test_partner_failure_is_raised_and_the_partner_recovers(two_threads):
    def failing(part, sync):
        if part == 1:
            raise ValueError("partner side broke")
        return barrier(sync, 0, 1)

    with pytest.raises(RuntimeError, match="partner thread failed") as caught:
        run_pair(failing, (new_sync(),))
    assert isinstance(caught.value.__cause__, ValueError)
    ran, _, seen = run_exchange()
    assert ran and seen.any()


def test_caller_failure_lets_the_partner_go(two_threads):
    def failing(part, sync):
        if part == 0:
            raise KeyError("caller side broke")
        return barrier(sync, 1, 1)  # waits for a caller that never comes, until the abort

    sync = new_sync()
    with pytest.raises(KeyError):
        run_pair(failing, (sync,))
    assert sync[2 * SYNC_STRIDE] == 1
    ran, _, seen = run_exchange()  # the partner is free again
    assert ran and seen.any()


# -- the two-core sequence path ------------------------------------------------------------------

class PairSpy:
    """Counts the sequences fastrnn.engine.driver ran on two cores."""

    def __init__(self, monkeypatch):
        self.count = 0
        monkeypatch.setattr(fastrnn.engine.driver, "run_pair", self)

    def __call__(self, kernel_function, args):
        ran = run_pair(kernel_function, args)
        self.count += ran
        return ran


def make_model(kind, hidden, dtype=np.float32, **options):
    layer_options = {k: options.pop(k) for k in ("proj_size", "num_layers", "bidirectional",
                                                  "peephole") if k in options}
    layers = cast_layers(random_layers(kind, 16, hidden, seed=4, **layer_options), dtype)
    model = fastrnn.from_numpy(kind, layers, bidirectional=layer_options.get("bidirectional",
                                                                              False), **options)
    return model, layers


@pytest.mark.parametrize("kind, options, expected", [
    ("lstm", {}, 64),
    ("lstm", {"peephole": True, "clip": 2.0}, 64),
    ("gru", {}, 64),
    ("rnn_tanh", {"num_layers": 2, "bidirectional": True}, 64),
    ("lstm", {"proj_size": 32}, 0),                      # a projection mixes the units
    ("gru", {"linear_before_reset": False}, 0),          # so does the reset before the product
])
def test_pair_split_says_which_cells_split(kind, options, expected, two_threads):
    model, _ = make_model(kind, 128, **options)
    assert fastrnn.engine.driver.pair_split(model.config, model._packed, 100, 1) == expected


def test_pair_split_leaves_small_work_on_one_core(two_threads):
    model, _ = make_model("lstm", 128)
    config, packed = model.config, model._packed
    assert fastrnn.engine.driver.pair_split(config, packed, 100, 4) == 64
    assert fastrnn.engine.driver.pair_split(config, packed, fastrnn.engine.driver.PAIR_MIN_STEPS - 1, 4) == 0
    assert fastrnn.engine.driver.pair_split(config, packed, 100, fastrnn.engine.driver.BLAS_MIN_BATCH) == 0
    small, _ = make_model("lstm", 16)
    assert fastrnn.engine.driver.pair_split(small.config, small._packed, 100, 1) == 0
    odd, _ = make_model("gru", 100)  # halves on 64-byte boundaries where the size allows
    assert fastrnn.engine.driver.pair_split(odd.config, odd._packed, 100, 1) == 48


@pytest.mark.parametrize("kind, hidden, options", [
    ("lstm", 72, {}), ("lstm", 72, {"peephole": True, "clip": 1.5}), ("gru", 72, {}),
    ("rnn_relu", 100, {"num_layers": 2, "bidirectional": True}),
])
def test_two_cores_match_the_reference_and_one_core(kind, hidden, options, dtype, tolerance,
                                                    monkeypatch):
    """At sizes where the two-core path is chosen by default (unequal halves), with unequal
    lengths and a batch of 3."""
    monkeypatch.setattr(fastrnn.engine.threads, "_num_threads", 2)
    monkeypatch.setattr(fastrnn.engine.threads, "CONTENDED_SECONDS", 0.0)
    fastrnn.engine.threads.wait_until_free(timeout=1.0)
    spy = PairSpy(monkeypatch)
    model, layers = make_model(kind, hidden, dtype, **options)
    bidirectional = model.config.bidirectional
    x = np.random.default_rng(0).standard_normal((40, 3, 16)).astype(dtype)
    lengths = [40, 17, 1]
    y, state = model(x, lengths=lengths)
    assert spy.count == model.config.num_layers * model.config.num_directions, (
        f"{spy.count} of the layer-directions ran on two cores; paused until "
        f"{fastrnn.engine.threads._contended_until - time.monotonic():.3f} s from now")
    ref_y, ref_h, ref_c = reference.run_model(kind, layers, x, lengths=lengths,
                                              bidirectional=bidirectional)
    np.testing.assert_allclose(y, ref_y, rtol=0, atol=tolerance)
    np.testing.assert_allclose(state.h, ref_h, rtol=0, atol=tolerance)
    monkeypatch.setattr(fastrnn.engine.threads, "_num_threads", 1)
    one_y, one_state = model(x, lengths=lengths)
    assert spy.count == model.config.num_layers * model.config.num_directions
    np.testing.assert_allclose(y, one_y, rtol=0, atol=tolerance)
    if ref_c is not None:
        np.testing.assert_allclose(state.c, one_state.c, rtol=0, atol=tolerance)


def test_threads_sharing_the_partner_get_their_own_answers(two_threads):
    """Four threads run sequences at once: one at a time gets the partner, the others run on one
    core; every answer is the one a lone call gives (to float32 rounding: one core and two sum in
    different orders)."""
    model, _ = make_model("lstm", 128)
    inputs = [np.random.default_rng(seed).standard_normal((60, 2, 16)).astype(np.float32)
              for seed in range(4)]
    expected = [model(x)[0] for x in inputs]
    results = [None] * 4

    def work(index):
        for _ in range(5):
            results[index] = model(inputs[index])[0]

    workers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for got, want in zip(results, expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=3e-5)


def test_a_forked_child_gets_a_partner_of_its_own(two_threads):
    """Only the forking thread survives a fork: a child must not queue pair jobs for the parent's
    partner thread (it would wait at the barrier for ever), but start its own."""
    multiprocessing = pytest.importorskip("multiprocessing")
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork here")
    assert run_exchange()[0]  # the parent's partner is running

    def child(queue):
        ran, _, seen = run_exchange(100)
        queue.put((ran, int(seen[0, -1])))

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=child, args=(queue,))
    process.start()
    process.join(timeout=60)
    assert process.exitcode == 0
    assert queue.get(timeout=1) == (True, 200)
