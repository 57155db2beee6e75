"""fastrnn.dask on a distributed.LocalCluster of two worker processes (one thread each).

"Exact" is bit for bit: every result is compared with np.array_equal against the same Model
called locally in this process on the whole input (or on each sequence alone for bags and
dataframes), with the same kernels and dtype.
"""

import inspect
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("distributed")
xarray = pytest.importorskip("xarray")
pytest.importorskip("pandas")

import dask  # noqa: E402
import dask.array as da  # noqa: E402
import dask.bag as db  # noqa: E402
import dask.dataframe as dd  # noqa: E402
import pandas as pd  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

import fastrnn  # noqa: E402
import fastrnn.dask as fdask  # noqa: E402

INPUTS, HIDDEN = 6, 12
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1}


def make_model(kind, *, seed=0, dtype=np.float32, layers=1, batch_first=False,
               bidirectional=False, inputs=INPUTS, hidden=HIDDEN):
    rng = np.random.default_rng(seed)
    g = GATES[kind] * hidden
    weights = []
    for layer in range(layers):
        for _ in range(2 if bidirectional else 1):
            width = inputs if layer == 0 else hidden * (2 if bidirectional else 1)
            weights.append({"w_ih": rng.standard_normal((g, width)) * 0.3,
                            "w_hh": rng.standard_normal((g, hidden)) * 0.3,
                            "b_ih": rng.standard_normal(g) * 0.1,
                            "b_hh": rng.standard_normal(g) * 0.1})
    weights = [{k: v.astype(dtype) for k, v in w.items()} for w in weights]
    model = fastrnn.from_numpy(kind, weights, batch_first=batch_first,
                               bidirectional=bidirectional)
    # Compiled here first, so that with a cold Numba cache the workers load what this process
    # compiled instead of all three processes compiling the same kernels at once.
    fdask._warm(model)
    return model


def local(model, x, lengths=None):
    """(y, h, c) of the model called here, c None for GRU/RNN."""
    y, state = model(x, lengths=lengths)
    return (y,) + fdask._state_arrays(state)


@pytest.fixture(scope="module")
def client():
    # The workers must import this module to run its functions (the kill below).
    sys.path.insert(0, os.path.dirname(__file__))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


def assert_exact(actual, expected):
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    assert np.array_equal(actual, expected), f"largest difference {np.abs(actual - expected).max()}"


# -- padded batches ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_array_with_lengths_equals_local_model(client, kind):
    model = make_model(kind, layers=2)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((15, 40, INPUTS)).astype(np.float32)
    lengths = rng.integers(1, 16, 40)
    # Time chunked as well: run() merges it into whole sequences.
    dx = da.from_array(x, chunks=(5, 16, INPUTS))
    y, state = fdask.run(model, dx, da.from_array(lengths, chunks=7))
    assert y.chunks[1] == (16, 16, 8) and state.h.chunks[1] == (16, 16, 8)
    y, h, c = dask.compute(y, state.h, state.c)
    y_ref, h_ref, c_ref = local(model, x, lengths)
    assert_exact(y, y_ref)
    assert_exact(h, h_ref)
    if kind == "lstm":
        assert_exact(c, c_ref)
    else:
        assert c is None


def test_float64_bidirectional_gru(client):
    model = make_model("gru", dtype=np.float64, bidirectional=True)
    x = np.random.default_rng(2).standard_normal((9, 12, INPUTS))
    y, state = fdask.run(model, da.from_array(x, chunks=(9, 5, INPUTS)))
    y, h = dask.compute(y, state.h)
    y_ref, h_ref, _ = local(model, x)
    assert y.shape == (9, 12, 2 * HIDDEN) and h.shape == (2, 12, HIDDEN)
    assert_exact(y, y_ref)
    assert_exact(h, h_ref)


def test_batch_first_with_lengths(client):
    model = make_model("lstm", batch_first=True, seed=3)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((30, 11, INPUTS)).astype(np.float32)   # (B, T, I)
    lengths = rng.integers(1, 12, 30)
    y, (h, c) = fdask.run(model, da.from_array(x, chunks=(10, 11, INPUTS)), lengths)
    y, h, c = dask.compute(y, h, c)
    y_ref, h_ref, c_ref = local(model, x, lengths)
    assert y.shape == (30, 11, HIDDEN)
    assert_exact(y, y_ref)
    assert_exact(h, h_ref)
    assert_exact(c, c_ref)
    # Past its length a row's output is zero, as Model gives it.
    assert (lengths < 11).any() and not y[lengths < 11][:, -1].any()


def test_xarray_with_named_dims(client):
    model = make_model("lstm", seed=4)
    rng = np.random.default_rng(4)
    # Stored (series, time, feature); the model is time-major: run() transposes by name.
    values = rng.standard_normal((20, 8, INPUTS)).astype(np.float32)
    series = [f"s{i}" for i in range(20)]
    x = xarray.DataArray(values, dims=("series", "time", "feature"),
                         coords={"series": series, "time": np.arange(8) * 10,
                                 "feature": list("abcdef")}).chunk({"series": 8})
    lengths = xarray.DataArray(rng.integers(1, 9, 20), dims=("series",))
    y, state = fdask.run(model, x, lengths, dims=("time", "series", "feature"))
    assert isinstance(y, xarray.DataArray) and y.dims == ("series", "time", "output")
    assert state.h.dims == ("layer_direction", "series", "hidden")
    assert state.c.dims == ("layer_direction", "series", "cell")
    y, h, c = dask.compute(y, state.h, state.c)
    assert list(y.series.values) == series and list(y.time.values) == list(np.arange(8) * 10)
    assert list(h.series.values) == series
    y_ref, h_ref, c_ref = local(model, np.ascontiguousarray(values.transpose(1, 0, 2)),
                                lengths.values)
    assert_exact(y.values, y_ref.transpose(1, 0, 2))
    assert_exact(h.values, h_ref)
    assert_exact(c.values, c_ref)


# -- variable lengths: bags and dataframes ---------------------------------------------------------

@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_bag_of_variable_length_sequences(client, kind):
    model = make_model(kind, seed=5)
    rng = np.random.default_rng(5)
    sequences = [rng.standard_normal((int(n), INPUTS)).astype(np.float32)
                 for n in rng.integers(1, 25, 50)]
    bag = db.from_sequence(sequences, partition_size=20)   # partitions of 20, 20, 10
    results = fdask.run_bag(model, bag, batch_size=6).compute()
    assert len(results) == 50
    for (y, state), sequence in zip(results, sequences):
        y_ref, h_ref, c_ref = local(model, sequence)   # the sequence alone, unbatched
        assert y.shape == (len(sequence), HIDDEN)
        assert_exact(y, y_ref)
        assert_exact(state.h, h_ref)
        if kind == "lstm":
            assert_exact(state.c, c_ref)


def sequences_frame(rng, keys, inputs=INPUTS):
    """A pandas frame of one sequence per key, its rows in a shuffled order."""
    frames = []
    for key in keys:
        steps = int(rng.integers(1, 15))
        frame = pd.DataFrame(rng.standard_normal((steps, inputs)).astype(np.float32),
                             columns=[f"f{j}" for j in range(inputs)])
        frame.insert(0, "t", rng.permutation(steps) * 0.5)
        frame.insert(0, "user", key)
        frames.append(frame)
    return pd.concat(frames).sample(frac=1.0, random_state=0).reset_index(drop=True)


FEATURES = [f"f{j}" for j in range(INPUTS)]
OUTPUTS = [f"y{j}" for j in range(HIDDEN)]


def check_frame_results(model, frame, y_frame, state_frame):
    """Each key's rows: sorted by time, their index kept, outputs and final state exact."""
    assert len(y_frame) == len(frame)
    assert sorted(state_frame.index) == sorted(frame.user.unique())
    for key, group in frame.groupby("user"):
        group = group.sort_values("t")
        rows = y_frame[y_frame.user == key]
        assert list(rows.t) == list(group.t)
        assert list(rows.index) == list(group.index)
        y_ref, h_ref, c_ref = local(model, group[FEATURES].to_numpy())
        assert_exact(rows[OUTPUTS].to_numpy(), y_ref)
        state_ref = h_ref.ravel() if c_ref is None else np.concatenate([h_ref.ravel(),
                                                                        c_ref.ravel()])
        assert_exact(state_frame.loc[key].to_numpy(), state_ref)


def test_dataframe_shuffled_by_key(client):
    model = make_model("gru", seed=7)
    frame = sequences_frame(np.random.default_rng(7), [f"k{i}" for i in range(12)])
    df = dd.from_pandas(frame, npartitions=3)   # a key's rows spread over partitions
    y_df, state_df = fdask.run_dataframe(model, df, by="user", time="t", batch_size=3)
    y_frame, state_frame = dask.compute(y_df, state_df)
    assert list(y_frame.columns) == ["user", "t"] + OUTPUTS
    check_frame_results(model, frame, y_frame, state_frame)


def test_dataframe_already_partitioned_by_key(client):
    model = make_model("lstm", seed=6)
    rng = np.random.default_rng(6)
    parts = [sequences_frame(rng, [f"u{i:02d}" for i in range(0, 9)]),
             sequences_frame(rng, [f"u{i:02d}" for i in range(9, 14)])]
    df = dd.concat([dd.from_pandas(p, npartitions=1) for p in parts])
    y_df, state_df = fdask.run_dataframe(model, df, by="user", time="t", batch_size=4,
                                         shuffle=False)   # each part holds whole keys
    y_frame, state_frame = dask.compute(y_df, state_df)
    frame = pd.concat(parts)
    assert list(state_frame.columns[:2]) == ["h0_0", "h0_1"] and "c0_0" in state_frame.columns
    check_frame_results(model, frame, y_frame, state_frame)


# -- how the model travels ---------------------------------------------------------------------

def model_bytes(model, tmp_path):
    path = tmp_path / "model.fastrnn"
    model.save(path)
    return path.read_bytes()


def test_tasks_carry_the_hash_and_workers_hold_the_model(client, tmp_path):
    model = make_model("lstm", seed=8, hidden=48)   # 48 KB of weights
    blob = model_bytes(model, tmp_path)
    x = da.zeros((4, 32, INPUTS), chunks=(4, 8, INPUTS), dtype=np.float32)

    def tasks_holding_blob(array):
        graph = dict(array.__dask_graph__())
        return sum(blob in pickle.dumps(task) for task in graph.values())

    y, _ = fdask.run(model, x)
    assert tasks_holding_blob(y) == 0
    y2, _ = fdask.run(model, x + 1.0)       # a second run: registered once (idempotent)
    dask.compute(y, y2)
    key = fdask._model_bytes(model)[0]
    installed = client.run(lambda: key in fdask._INSTALLED)
    assert len(installed) == 2 and all(installed.values())
    # The workers' own threads take the cores: fastrnn runs each call on one (unless the
    # environment the workers inherit says otherwise).
    if "FASTRNN_NUM_THREADS" not in os.environ:
        assert set(client.run(fastrnn.get_num_threads).values()) == {1}
    plugins = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.worker_plugins))
    assert plugins.count(fdask.PLUGIN_PREFIX + key) == 1
    # Without a client the tasks carry the bytes (this is what the plugin saves).
    y_local, _ = fdask.run(model, x, client=False)
    assert tasks_holding_blob(y_local) == 4

    fdask.release(model)
    assert not any(client.run(lambda: key in fdask._INSTALLED).values())


def compiled_kernels():
    """How many of fastrnn's Numba kernels have a compiled signature in this process."""
    from numba.core.dispatcher import Dispatcher
    return sum(1 for name, module in list(sys.modules.items()) if name.startswith("fastrnn")
               for value in list(vars(module).values())
               if isinstance(value, Dispatcher) and value.signatures)


def test_worker_plugin_warms_a_fresh_worker(client, tmp_path):
    model = make_model("gru", seed=9)
    fdask.run(model, da.zeros((2, 4, INPUTS), chunks=(2, 2, INPUTS), dtype=np.float32))
    # A fresh process in place of one worker; the plugin is installed on it as it starts.
    before = set(client.scheduler_info()["workers"])
    client.restart_workers([sorted(before)[0]])
    client.wait_for_workers(2)
    assert len(set(client.scheduler_info()["workers"]) - before) == 1   # one new process
    # A worker answers client.run while its plugins are still being set up (it takes tasks
    # only after), so wait for the warm-up; no task runs meanwhile.
    deadline = time.monotonic() + 60
    counts = client.run(compiled_kernels)
    while not all(counts.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
        counts = client.run(compiled_kernels)
    # A fresh process that only imports fastrnn and loads the model has compiled nothing.
    path = tmp_path / "model.fastrnn"
    model.save(path)
    probe = (f"import sys, fastrnn\nfastrnn.load({str(path)!r})\n"
             f"{inspect.getsource(compiled_kernels)}\nprint(compiled_kernels())")
    cold = int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              check=True).stdout.split()[-1])
    assert cold == 0
    assert len(counts) == 2 and all(count > cold for count in counts.values()), counts


def kill_worker_once(block, marker):
    """Kills the worker process that runs it the first time (a marker file says it happened)."""
    if block.size and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return block


def test_worker_killed_mid_run_is_retried(client, tmp_path):
    model = make_model("lstm", seed=10)
    rng = np.random.default_rng(10)
    x = rng.standard_normal((10, 48, INPUTS)).astype(np.float32)
    lengths = rng.integers(1, 11, 48)
    marker = str(tmp_path / "killed")
    before = set(client.scheduler_info()["workers"])
    # meta given: map_blocks would otherwise call the function here to find it.
    dx = da.from_array(x, chunks=(10, 8, INPUTS)).map_blocks(
        kill_worker_once, marker, meta=np.empty((0, 0, 0), np.float32))
    y, (h, c) = fdask.run(model, dx, lengths)
    y, h, c = dask.compute(y, h, c)
    assert os.path.exists(marker)
    client.wait_for_workers(2)
    assert set(client.scheduler_info()["workers"]) != before   # a worker did die and come back
    y_ref, h_ref, c_ref = local(model, x, lengths)
    assert_exact(y, y_ref)
    assert_exact(h, h_ref)
    assert_exact(c, c_ref)


# -- without a cluster ---------------------------------------------------------------------

def test_local_process_scheduler_and_progress_bar(client, capsys):
    from dask.diagnostics import ProgressBar
    model = make_model("gru", seed=11)
    x = np.random.default_rng(11).standard_normal((7, 12, INPUTS)).astype(np.float32)
    y, state = fdask.run(model, da.from_array(x, chunks=(7, 4, INPUTS)), client=False)
    with ProgressBar():
        y, h = dask.compute(y, state.h, scheduler="processes", num_workers=1)
    assert "100%" in capsys.readouterr().out
    y_ref, h_ref, _ = local(model, x)
    assert_exact(y, y_ref)
    assert_exact(h, h_ref)


def test_import_fastrnn_does_not_import_dask():
    code = "import fastrnn, sys; print('dask' in sys.modules, 'fastrnn.dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


# -- bad inputs --------------------------------------------------------------------------------

def test_bad_inputs_are_clear_errors(client):
    model = make_model("lstm", seed=12)
    x = np.zeros((5, 8, INPUTS), np.float32)
    with pytest.raises(TypeError, match="dask array"):
        fdask.run(model, x)
    with pytest.raises(TypeError, match="run_bag"):
        fdask.run(model, db.from_sequence([x[:, 0]]))
    with pytest.raises(ValueError, match="features"):
        fdask.run(model, da.zeros((5, 8, INPUTS + 1), chunks=(5, 4, INPUTS + 1)))
    with pytest.raises(ValueError, match=r"\(T, B, I\)"):
        fdask.run(model, da.zeros((5, 8), chunks=(5, 4)))
    with pytest.raises(TypeError, match="floating-point"):
        fdask.run(model, da.zeros((5, 8, INPUTS), chunks=(5, 4, INPUTS), dtype=np.int32))
    # A (B, T, I) array chunked along B, given to a time-major model: chunked along "time".
    with pytest.raises(ValueError, match="not along the batch axis"):
        fdask.run(model, da.zeros((64, 5, INPUTS), chunks=(16, 5, INPUTS)))
    unknown = da.zeros((10, 8, INPUTS), chunks=(10, 4, INPUTS))
    unknown = unknown[unknown[:, 0, 0] > -1]   # unknown chunk sizes along time
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        fdask.run(model, unknown)
    good = da.from_array(x, chunks=(5, 4, INPUTS))
    with pytest.raises(ValueError, match="one entry per batch row"):
        fdask.run(model, good, np.ones(7, np.int64))
    with pytest.raises(TypeError, match="integers"):
        fdask.run(model, good, np.ones(8))
    # Lengths are checked by the model where it runs; the error reaches the caller.
    y, _ = fdask.run(model, good, np.full(8, 6))
    with pytest.raises(ValueError, match=r"lengths must lie in 1\.\.5"):
        y.compute()
    named = xarray.DataArray(x, dims=("time", "series", "feature"))
    with pytest.raises(ValueError, match="dims="):
        fdask.run(model, named.chunk({"series": 4}))
    with pytest.raises(ValueError, match="must be x's three dimensions"):
        fdask.run(model, named.chunk({"series": 4}), dims=("t", "series", "feature"))
    with pytest.raises(TypeError, match="chunk it"):
        fdask.run(model, named, dims=("time", "series", "feature"))
    with pytest.raises(ValueError, match=r"sequence 1 must be \(T, 6\)"):
        fdask.run_bag(model, db.from_sequence([x[:, 0], x[0, 0]], npartitions=1)).compute()
    with pytest.raises(ValueError, match="batch_size"):
        fdask.run_bag(model, db.from_sequence([x[:, 0]]), batch_size=0)
    frame = dd.from_pandas(pd.DataFrame({"user": [1, 1], "t": [0, 1],
                                         **{f"f{j}": [0.0, 1.0] for j in range(INPUTS)}}),
                           npartitions=1)
    with pytest.raises(ValueError, match="not a column"):
        fdask.run_dataframe(model, frame, by="key", time="t")
    with pytest.raises(ValueError, match="takes 6 features"):
        fdask.run_dataframe(model, frame, by="user", time="t", features=["f0", "f1"])
