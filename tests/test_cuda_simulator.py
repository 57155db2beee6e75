"""The CUDA target where this process has no GPU: a clear error at model.to("cuda"), and every
CUDA test (tests/cuda/) run in Numba's CUDA simulator in a child pytest.

The simulator must be switched on before numba is first imported, and this process imported numba
long ago (the CPU engine is Numba too), hence the child process; tests/cuda/conftest.py explains
the arrangement. With a real GPU, or with the simulator already on here, tests/cuda runs in this
process instead and the child run is skipped.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastrnn
from fastrnn.cuda import cuda_usable

ROOT = Path(__file__).resolve().parent.parent
needs_no_gpu = pytest.mark.skipif(cuda_usable(),
                                  reason="CUDA is usable in this process: tests/cuda runs here")


@needs_no_gpu
def test_to_cuda_without_a_gpu_is_a_clear_error_at_to():
    from fastrnn.cuda import CudaUnavailableError
    layers = [dict(w_ih=np.ones((4, 2)), w_hh=np.ones((4, 1)))]
    model = fastrnn.from_numpy("lstm", layers)
    with pytest.raises(CudaUnavailableError, match="needs an NVIDIA GPU with a working CUDA driver"):
        model.to("cuda")
    assert isinstance(CudaUnavailableError("x"), RuntimeError)
    with pytest.raises(ValueError, match="device must be"):
        model.to("tpu")


@needs_no_gpu
def test_cuda_tests_pass_in_the_simulator():
    environment = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(ROOT / "tests" / "cuda")],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    assert result.returncode == 0, f"CUDA tests failed in the simulator:\n{output[-6000:]}"
    # Every test ran: none may be skipped (a skip here would mean the simulator did not start).
    assert " passed" in summary and "skipped" not in summary, output[-3000:]
