"""What this machine allows: read bandwidth at a working-set size, and the BLAS GEMM rate.

These give the "limit" beside each benchmark figure (bench/report.py):

- a timestep at small batch must at least read its weights once, so it cannot take less than
  weight bytes / read bandwidth at that working-set size (L1, L2, L3 or DRAM, whichever holds it),
  with every core reading its share at once (each from its own cache: the all-cores curve);
- a large-batch sequence is matrix products, so it cannot take less than its flops / the rate a
  large float32 GEMM reaches on all cores.

    python bench/probes.py          # prints the figures as JSON
"""

import json
import os
import threading
import time

import numba
import numpy as np

# Working sets the bandwidth curve is measured at (bytes); the limit for another size is read off
# the curve at the next size down (see bandwidth_at).
BANDWIDTH_SIZES = tuple(2 ** k for k in range(12, 28))       # 4 KiB .. 128 MiB


@numba.njit(fastmath=True, cache=True, nogil=True)
def _read_all(values, passes):
    """Sum every float32 of `values` `passes` times: the loop vectorises, so reads are the limit."""
    total = np.float32(0.0)
    for _ in range(passes):
        partial = np.float32(0.0)
        for i in range(values.shape[0]):
            partial += values[i]
        total += partial
    return total


def read_bandwidth(nbytes, cores=1, seconds=0.02, repeats=10):
    """Bytes per second `cores` threads read together, each from its own float32 array of
    nbytes / cores (the kernel releases the GIL), best of `repeats`."""
    arrays = [np.ones(max(nbytes // 4 // cores, 1024), np.float32) for _ in range(cores)]
    _read_all(arrays[0], 1)                                   # compile and touch the pages
    passes = 1
    while True:                                               # calibrate to ~`seconds` a run
        start = time.perf_counter()
        _read_all(arrays[0], passes)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds / 4 or passes > 1 << 24:
            break
        passes *= 4
    passes = max(1, int(passes * seconds / max(elapsed, 1e-9)))
    best = float("inf")
    for _ in range(repeats):
        workers = [threading.Thread(target=_read_all, args=(values, passes))
                   for values in arrays[1:]]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        _read_all(arrays[0], passes)
        for worker in workers:
            worker.join()
        best = min(best, time.perf_counter() - start)
    return sum(values.nbytes for values in arrays) * passes / best


def bandwidth_curve(sizes=BANDWIDTH_SIZES, cores=1):
    """{working-set bytes: read bytes per second} for `cores` cores sharing the working set."""
    return {int(size): read_bandwidth(size, cores) for size in sizes}


def cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def gemm_rate(size=1024, repeats=20):
    """Float32 flops per second of a size^3 numpy matmul (BLAS, all its threads), best of `repeats`."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(np.float32)
    b = rng.standard_normal((size, size)).astype(np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best


def measure():
    """Every probe, as JSON-ready data."""
    cores = cpu_count()
    return {"read_bandwidth_bytes_per_s": {str(k): v for k, v in bandwidth_curve().items()},
            "read_bandwidth_all_cores_bytes_per_s": {
                str(k): v for k, v in bandwidth_curve(cores=cores).items()},
            "cores": cores,
            "gemm_flops_per_s": gemm_rate()}


def best_of(*measurements):
    """The higher figure of each probe over several measure() results: other load on a shared
    machine only ever slows a probe down, so the best is the closest to what the machine allows."""
    measurements = [m for m in measurements if m]
    best = {"gemm_flops_per_s": 0.0}
    for m in measurements:
        for key in ("read_bandwidth_bytes_per_s", "read_bandwidth_all_cores_bytes_per_s"):
            curve = best.setdefault(key, {})
            for size, rate in m.get(key, {}).items():
                curve[size] = max(curve.get(size, 0.0), rate)
        best["gemm_flops_per_s"] = max(best["gemm_flops_per_s"], m["gemm_flops_per_s"])
        best["cores"] = m.get("cores", best.get("cores", 1))
    return best


def bandwidth_at(curve, nbytes):
    """Read bandwidth for a working set of `nbytes`, from a curve {bytes: bytes/s}.

    The figure at the largest measured size not above `nbytes` (the smallest size for anything
    smaller): bandwidth only falls as the working set grows, so this never understates it, and
    the limit it gives is a true lower bound on the time.
    """
    rates = {int(size): rate for size, rate in curve.items()}
    sizes = sorted(rates)
    below = [size for size in sizes if size <= nbytes]
    return rates[below[-1] if below else sizes[0]]


if __name__ == "__main__":
    print(json.dumps(measure(), indent=1))
