"""fastrnn.engine.parallel: blocks of rows on several threads, and the lifecycle around them.

Fork, Ctrl-C, threads sharing one Stream or StreamPool, and an idle process, each under a time
limit: nothing may hang, return a wrong answer, or burn a core while idle.
"""

import importlib.metadata
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import fastrnn
import fastrnn.engine.parallel as parallel
import fastrnn.engine.plan
from reference import cast_layers, random_layers

TIME_LIMIT = 120  # seconds for a child process; each takes a few when it works


def make_model(kind="lstm", input_size=5, hidden_size=12, num_layers=2, **options):
    layers = random_layers(kind, input_size, hidden_size, num_layers=num_layers,
                           bidirectional=options.get("bidirectional", False), seed=3)
    return fastrnn.from_numpy(kind, cast_layers(layers, np.float32), **options)


def inputs(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def run_child(code):
    """Run `code` in a fresh interpreter (with the tests' imports on the path); its stdout. A line
    `MODEL` in it builds `model`, a two-layer LSTM whose calls of two rows or more run in blocks
    on two threads."""
    code = textwrap.dedent(code).replace("MODEL\n", _MODEL_SOURCE)
    environment = dict(os.environ, PYTHONPATH=os.path.dirname(__file__))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, timeout=TIME_LIMIT, env=environment)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def many_blocks(monkeypatch):
    """Every call of two rows or more is cut into blocks on two threads or more."""
    monkeypatch.setattr(parallel, "_num_threads", max(2, parallel.get_num_threads()))
    monkeypatch.setattr(fastrnn.engine.plan, "MIN_ROWS_PER_THREAD", 1)


@pytest.mark.parametrize("kind, options", [("lstm", {}), ("gru", {"bidirectional": True}),
                                           ("rnn_tanh", {})])
def test_blocks_on_several_threads_give_the_one_thread_answer(kind, options, many_blocks,
                                                               monkeypatch):
    model = make_model(kind, **options)
    x = inputs(9, 7, 5)
    lengths = np.array([9, 1, 4, 9, 2, 7, 5])
    y, state = model(x, lengths=lengths)
    monkeypatch.setattr(parallel, "_num_threads", 1)
    y_one, state_one = model(x, lengths=lengths)
    np.testing.assert_allclose(y, y_one, atol=1e-6)
    # An LSTM's state is (h, c), a GRU's or RNN's h alone: compare every array.
    for array, array_one in zip(*(tuple(s) if kind == "lstm" else (s,)
                                  for s in (state, state_one))):
        np.testing.assert_allclose(array, array_one, atol=1e-6)


def test_set_num_threads_is_checked_and_read(monkeypatch):
    monkeypatch.setattr(parallel, "_num_threads", parallel.get_num_threads())
    fastrnn.set_num_threads(1)
    assert fastrnn.get_num_threads() == 1
    for bad in (0, -2, 1.5, "2", True):
        with pytest.raises(ValueError, match="positive integer"):
            fastrnn.set_num_threads(bad)
    fastrnn.set_num_threads(10_000)  # more than the machine: all of its cores
    assert fastrnn.get_num_threads() == parallel.numba.config.NUMBA_NUM_THREADS


def test_a_bad_thread_count_in_the_environment_warns_and_imports():
    out = run_child("""
        import os, warnings
        os.environ["FASTRNN_NUM_THREADS"] = "abc"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import fastrnn
        print(fastrnn.get_num_threads() >= 1, any("FASTRNN_NUM_THREADS" in str(w.message)
                                                  for w in caught))
    """)
    assert out.split() == ["True", "True"]


@pytest.mark.skipif(sys.platform != "linux", reason="the tbb wheel's library path is Linux's")
def test_the_threading_layer_is_tbb_where_the_tbb_package_is_installed():
    try:
        importlib.metadata.version("tbb")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the tbb package is not installed: Numba's workqueue layer is used")
    out = run_child("""
        import numpy as np, fastrnn
        from fastrnn.engine import parallel
        MODEL
        model(np.zeros((3, 8, 5), np.float32))
        print(parallel.threading_layer())
    """)
    assert out.strip() == "tbb"


# A model built in a child process, the same way every time.
_MODEL_SOURCE = ("from reference import cast_layers, random_layers\n"
                 "model = fastrnn.from_numpy('lstm', cast_layers(random_layers('lstm', 5, 12, "
                 "num_layers=2, seed=3), np.float32))\n"
                 "import fastrnn.engine.plan; fastrnn.engine.plan.MIN_ROWS_PER_THREAD = 1\n"
                 "fastrnn.set_num_threads(2)\n")


def test_a_forked_child_runs_right_after_a_parallel_call():
    """A child forked while the threading layer's workers are still warm from a parallel call (a
    sequence and a pool tick cut into blocks) gets the parent's answers."""
    out = run_child("""
        import os, numpy as np, fastrnn
        MODEL
        x = np.random.default_rng(0).standard_normal((6, 8, 5)).astype(np.float32)
        pool = fastrnn.StreamPool(model, capacity=8)
        slots = [pool.open() for _ in range(8)]
        expected = model(x)[0]
        for attempt in range(20):
            model(x)
            pool.step(slots, x[0])
            pid = os.fork()
            if pid == 0:
                ok = np.array_equal(model(x)[0], expected)
                pool.step(slots, x[1])
                os._exit(0 if ok else 3)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, status
        print("ok")
    """)
    assert out.strip() == "ok"


def test_ctrl_c_at_any_point_of_a_call_leaves_later_calls_right():
    """SIGINT lands at random moments of parallel sequence calls and pool ticks (in the Python
    around the kernels or while they run); each KeyboardInterrupt reaches the caller, and every
    later call still gives the right answer: nothing is left half-handed-off."""
    out = run_child("""
        import os, random, signal, threading, time, numpy as np, fastrnn
        MODEL
        x = np.random.default_rng(0).standard_normal((40, 8, 5)).astype(np.float32)
        expected = model(x)[0]
        pool = fastrnn.StreamPool(model, capacity=8)
        slots = [pool.open() for _ in range(8)]
        pool.step(slots, x[0])  # compiled before the interrupts start (fastrnn.engine.jit.call)
        interrupts, go, stop = 0, threading.Event(), threading.Event()

        def interrupter():
            rng = random.Random(1)
            go.wait()  # not while the main thread is still in thread.start(), outside the try
            while not stop.is_set():
                time.sleep(rng.uniform(0, 0.002))
                os.kill(os.getpid(), signal.SIGINT)

        thread = threading.Thread(target=interrupter)
        thread.start()
        deadline = time.monotonic() + 3
        go.set()
        while True:
            try:
                if time.monotonic() > deadline:
                    break
                model(x)
                pool.step(slots, x[0])
            except KeyboardInterrupt:
                interrupts += 1
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop.set()
        thread.join()
        assert np.array_equal(model(x)[0], expected)
        for slot in slots:
            pool.reset(slot)
        ticks = np.stack([pool.step(slots, x[t]) for t in range(40)])
        assert np.allclose(ticks, expected, atol=1e-6)
        print(interrupts)
    """)
    assert int(out) > 10  # the interrupts did land


def test_threads_sharing_a_stream_take_turns():
    """Eight threads step one Stream with the same input: whatever order they come in, the steps
    happen one at a time, so the state is that of all the steps made one after another."""
    model = make_model(hidden_size=24)
    stream = model.stream(batch=3)
    x = inputs(3, 5)
    threads = [threading.Thread(target=lambda: [stream.step(x) for _ in range(50)])
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIME_LIMIT)
        assert not thread.is_alive()
    _, expected = model(np.broadcast_to(x, (400, 3, 5)))
    np.testing.assert_allclose(stream.state.h, expected.h, atol=1e-5)
    np.testing.assert_allclose(stream.state.c, expected.c, atol=1e-5)


def test_threads_sharing_a_pool_on_their_own_slots_get_their_own_answers(many_blocks):
    model = make_model(hidden_size=24)
    pool = fastrnn.StreamPool(model, capacity=64)
    groups = [[pool.open() for _ in range(16)] for _ in range(4)]
    data = [inputs(30, 16, 5, seed=seed) for seed in range(4)]
    results = [None] * 4

    def drive(index):
        results[index] = np.stack([pool.step(groups[index], x) for x in data[index]])

    threads = [threading.Thread(target=drive, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIME_LIMIT)
        assert not thread.is_alive()
    for index in range(4):
        expected, state = model(data[index])
        np.testing.assert_allclose(results[index], expected, atol=1e-6)
        for row, slot in enumerate(groups[index]):
            np.testing.assert_allclose(pool.get_state(slot).c[:, 0], state.c[:, row], atol=1e-6)


def test_an_idle_process_burns_no_core():
    """After parallel calls the threading layer's workers sleep: a process that waits uses
    (almost) no CPU time."""
    out = run_child("""
        import time, numpy as np, fastrnn
        MODEL
        x = np.zeros((20, 8, 5), np.float32)
        for _ in range(20):
            model(x)
        time.sleep(0.2)  # past any spin-before-sleep of the workers
        start = time.process_time()
        time.sleep(1.0)
        print(time.process_time() - start)
    """)
    assert float(out) < 0.1
