"""Fixtures shared by the engine tests. The numba cache location is set by the root conftest.py."""

import os

import numpy as np
import pytest

# Every answer from the kernels, whatever the disk cache holds: no numpy first steps while a
# helper process compiles (fastrnn.engine.table), so that results do not depend on timing.
os.environ.setdefault("FASTRNN_COMPILE", "wait")

# DESIGN.md's tolerances: float32 results within 3e-5, float64 within 1e-9 (absolute).
TOLERANCE = {np.dtype(np.float32): 3e-5, np.dtype(np.float64): 1e-9}


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    """Each test that takes it runs once per model dtype."""
    return np.dtype(request.param)


@pytest.fixture
def tolerance(dtype):
    return TOLERANCE[dtype]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)

