"""fastrnn.dask: a batch of 4096 padded sequences on a 2-worker LocalCluster against one worker
of it, and against a plain local run of the same chunks in this process.

LSTM 64 -> 128, T=200 (T=8 under --benchmark-disable, so that make test stays quick), chunks of
256 sequences (16 tasks). The input is generated on the workers and persisted there before the
timing (on the one worker for the one-worker case); a timed call builds the graph, runs it and
waits for y and the final state to be held on the workers, as a pipeline writing its results
out would. Every case's answer is checked, bit for bit, against the model called locally on the
same chunk before it is timed. Figures are recorded, never asserted (the machine is shared):
extra_info "sequences_per_s" for the whole call, and for the Dask cases "task_s_median", the
model tasks' median duration on the workers, and "worker_sequences_per_s", one worker's rate
from it; "load_average" before and after the case.

Worker processes run OpenBLAS on one thread (distributed's default environment); the local run
is a plain call in this process, which may use every core.
"""

import os
import statistics
import time

import numpy as np
import pytest

pytest.importorskip("distributed")

import dask.array as da  # noqa: E402
from distributed import Client, LocalCluster, get_task_stream, wait  # noqa: E402

import fastrnn  # noqa: E402
import fastrnn.dask as fdask  # noqa: E402

SEQUENCES, INPUTS, HIDDEN, CHUNK = 4096, 64, 128, 256


def steps(benchmark_disabled):
    return 8 if benchmark_disabled else 200


def lstm():
    rng = np.random.default_rng(0)
    scale = 1 / np.sqrt(HIDDEN)
    weights = {"w_ih": rng.uniform(-scale, scale, (4 * HIDDEN, INPUTS)),
               "w_hh": rng.uniform(-scale, scale, (4 * HIDDEN, HIDDEN)),
               "b_ih": rng.uniform(-scale, scale, 4 * HIDDEN),
               "b_hh": rng.uniform(-scale, scale, 4 * HIDDEN)}
    return fastrnn.from_numpy("lstm", [{k: v.astype(np.float32) for k, v in weights.items()}])


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client, lstm()


def inputs(client, workers, T):
    """x (T, SEQUENCES, INPUTS) generated and held on `workers`, balanced over them."""
    x = da.random.default_rng(1).standard_normal((T, SEQUENCES, INPUTS), dtype=np.float32,
                                                  chunks=(T, CHUNK, INPUTS))
    x = client.persist(x, workers=workers, allow_other_workers=False)
    wait(x)
    if len(workers) > 1:
        client.rebalance(x, workers=workers)
    return x


CASES = [("fastrnn", 0), ("fastrnn-dask-1-worker", 1), ("fastrnn-dask-2-workers", 2)]


@pytest.mark.parametrize("engine, workers", CASES, ids=[case[0] for case in CASES])
def test_dask_throughput(benchmark, benchmark_disabled, cluster, engine, workers):
    client, model = cluster
    T = steps(benchmark_disabled)
    addresses = sorted(client.scheduler_info()["workers"])[:max(workers, 1)]
    x = inputs(client, addresses, T)
    if workers == 0:
        x_local = x.compute()
        chunks = [x_local[:, start:start + CHUNK] for start in range(0, SEQUENCES, CHUNK)]

        def one_call():
            return [model(chunk) for chunk in chunks]
    else:
        def one_call():
            y, state = fdask.run(model, x)
            held = client.persist([y, state.h, state.c], workers=addresses,
                                  allow_other_workers=False)
            wait(held)
            return held

    # The check: the first and last chunks' outputs, against the model called here on them.
    held = one_call()
    for index in (0, SEQUENCES // CHUNK - 1):
        rows = slice(index * CHUNK, (index + 1) * CHUNK)
        expected_y, expected_state = model(x[:, rows].compute())
        if workers == 0:
            got_y = held[index][0]
        else:
            got_y = held[0][:, rows].compute()
        correct = bool(np.array_equal(got_y, expected_y))
        if not correct:
            break
    del held

    seconds, task_seconds = [], []

    def timed():
        start = time.perf_counter()
        if workers:
            # The model tasks' own durations on the workers: the per-worker rate, apart from
            # the scheduler and from the waits a loaded machine adds between tasks.
            with get_task_stream(client) as stream:
                one_call()
            task_seconds.extend(
                part["stop"] - part["start"] for task in stream.data
                if str(task["key"]).lstrip("('").startswith("fastrnn-run")
                for part in task["startstops"] if part["action"] == "compute")
        else:
            one_call()
        seconds.append(time.perf_counter() - start)

    load_before = os.getloadavg()[0]
    benchmark.group = f"lstm dask T={T} B={SEQUENCES} I={INPUTS} H={HIDDEN} chunk={CHUNK}"
    benchmark.pedantic(timed, rounds=1 if benchmark_disabled else 3, iterations=1)
    median = statistics.median(seconds)
    if task_seconds:
        task = statistics.median(task_seconds)
        benchmark.extra_info.update({"task_s_median": task, "worker_sequences_per_s": CHUNK / task})
    benchmark.extra_info.update({
        "engine": engine, "correct": correct, "workload": "dask", "kind": "lstm",
        "input_size": INPUTS, "hidden_size": HIDDEN, "num_layers": 1, "steps": T,
        "batch": SEQUENCES, "chunk": CHUNK, "workers": workers,
        "samples_per_call": SEQUENCES, "sequences_per_s": SEQUENCES / median,
        "seconds": seconds, "load_average": [load_before, os.getloadavg()[0]]})
    print(f"\n{engine}: {median * 1e3:.1f} ms for {SEQUENCES} sequences of T={T}, "
          f"{SEQUENCES / median:.0f} sequences/s; model task median "
          f"{statistics.median(task_seconds) * 1e3 if task_seconds else float('nan'):.1f} ms; "
          f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    assert correct, f"{engine}: the first or last chunk's output differs from a local call"
