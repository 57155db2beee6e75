"""The CUDA activation device function on tests/test_activations.py's grid: every code with its
alpha/beta on finite values, +-inf and NaN, float32 and float64, against the float64 reference and
against the CPU kernel on the same values."""

import functools
import sys

import numpy as np
import pytest
from numba import cuda
from numba.core import config as numba_config

from fastrnn.cuda import activations
from fastrnn.engine.activations import ACTIVATION_CODES
from test_activations import GRID_CASES, grid_bound, grid_failures, grid_values, run_cpu_grid


@functools.lru_cache(maxsize=None)
def grid_kernel(dtype):
    """One kernel per dtype that runs every case: one compilation, a loop over the codes inside."""
    activate = activations.build(dtype)

    @cuda.jit
    def run(values, codes, alphas, betas, out):
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for case in range(codes.shape[0]):
            for j in range(start, values.shape[0], stride):
                out[case, j] = activate(values[j], codes[case], alphas[case], betas[case])

    return run


def run_cuda_grid(values):
    codes = np.array([ACTIVATION_CODES[name] for name, _, _ in GRID_CASES], np.int64)
    alphas = np.array([alpha for _, alpha, _ in GRID_CASES], np.float64)
    betas = np.array([beta for _, _, beta in GRID_CASES], np.float64)
    out = cuda.device_array((len(GRID_CASES), values.size), values.dtype)
    # One thread in the simulator: its threads are Python threads, and the first numpy overflow
    # warning inside the device function adds __warningregistry__ to the module's globals while
    # another thread's call iterates over them (RuntimeError: dictionary changed size). That one
    # thread has no barrier to reach, so a long GIL switch interval (tests/cuda/conftest.py sets a
    # short one) just spares it the main thread's polling, which halves the time.
    blocks, threads = (1, 1) if numba_config.ENABLE_CUDASIM else (8, 128)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.05)
    try:
        grid_kernel(values.dtype)[blocks, threads](cuda.to_device(values), cuda.to_device(codes),
                                                   cuda.to_device(alphas), cuda.to_device(betas),
                                                   out)
    finally:
        sys.setswitchinterval(interval)
    return out.copy_to_host()


def disagreements(values, cpu, gpu):
    """Where CPU and CUDA differ: a different NaN/infinity outcome, or finite results further
    apart than the two sides' bounds together."""
    x = values.astype(np.float64)
    lines = []
    for case, (name, alpha, beta) in enumerate(GRID_CASES):
        a, b = cpu[case].astype(np.float64), gpu[case].astype(np.float64)
        exact = np.abs(a)  # the bounds scale with the result; CPU's stands in for the reference
        allowed = (grid_bound("cpu", values.dtype, name, alpha, beta, x, exact)
                   + grid_bound("cuda", values.dtype, name, alpha, beta, x, exact))
        with np.errstate(invalid="ignore"):
            same = np.where(np.isfinite(a) & np.isfinite(b), np.abs(a - b) <= allowed,
                            (a == b) | (np.isnan(a) & np.isnan(b)))
        for j in np.flatnonzero(~same)[:4]:
            lines.append(f"{name}(alpha={alpha}, beta={beta}) of {values[j]!r}:"
                         f" CPU {cpu[case][j]!r}, CUDA {gpu[case][j]!r}")
    return lines


# In the simulator the device function computes with numpy scalars, which warn where a GPU
# silently gives inf or NaN (float max * 1.7, 0 * inf).
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_activation_grid_on_cuda_matches_reference_and_cpu(dtype):
    values = grid_values(dtype)
    gpu = run_cuda_grid(values)
    assert gpu.dtype == dtype
    differ = disagreements(values, run_cpu_grid(values), gpu)
    failures = grid_failures("cuda", values, gpu)
    assert not differ and not failures, "\n".join(["CPU and CUDA differ:", *differ, *failures])
