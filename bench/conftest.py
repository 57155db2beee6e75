"""Shared by every benchmark in bench/: the machine the figures come from, and the probes of
what it allows, written into pytest-benchmark's JSON (machine_info) for bench/report.py.

The cases follow the convention written at the top of bench/registry.py.
"""

import os
import platform
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Every timed step on the kernels: a cold cache must not leave a stream on its numpy first steps
# while the timing runs (fastrnn.engine.table); children of the benchmarks inherit it.
os.environ.setdefault("FASTRNN_COMPILE", "wait")


def cpu_model():
    """The CPU's model name as /proc/cpuinfo gives it (the platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# Variables that steer OpenBLAS's kernel choice; `make bench` unsets them for its run (on some
# machines OPENBLAS_CORETYPE forces AVX2 kernels onto an AVX-512 CPU), tests and CI keep them.
OPENBLAS_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
# The vector extensions worth naming beside the figures.
VECTOR_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def versions():
    """Versions of the engines and the libraries they stand on."""
    found = {"python": platform.python_version()}
    for name in ("fastrnn", "numpy", "numba", "torch", "onnxruntime", "onnx", "openvino",
                 "threadpoolctl"):
        try:
            module = __import__(name)
            found[name] = getattr(module, "__version__", "?")
        except ImportError:
            found[name] = None
    return found


def blas_libraries():
    """The BLAS (and OpenMP) libraries loaded in this process as threadpoolctl sees them, numpy's
    first: which kernel set they run (architecture), with how many threads."""
    try:
        import numpy  # noqa: F401  (loaded, so that its BLAS is listed)
        from threadpoolctl import threadpool_info
    except ImportError as error:
        return {"error": f"threadpoolctl is not installed ({error})"}
    keys = ("user_api", "internal_api", "prefix", "version", "architecture", "num_threads",
            "threading_layer")
    found = []
    for library in threadpool_info():
        entry = {key: library.get(key) for key in keys}
        # numpy's own BLAS is the one shipped in numpy's wheel (numpy.libs).
        entry["numpy"] = "numpy" in Path(library.get("filepath", "")).parent.name
        found.append(entry)
    return sorted(found, key=lambda entry: not entry["numpy"])


def pytest_benchmark_update_machine_info(config, machine_info):
    from registry import bf16_row, cpu_count, cpu_flags
    flags = cpu_flags()
    _, why = bf16_row()
    machine_info["fastrnn_bench"] = {
        "cpu_model": cpu_model(),
        "cores": cpu_count(),
        "cpu_flags": [flag for flag in VECTOR_FLAGS if flag in flags],
        "versions": versions(),
        "blas": blas_libraries(),
        # What the run saw of the variables make bench unsets (None: not set).
        "openblas_environment": {name: os.environ.get(name) for name in OPENBLAS_VARIABLES},
        "openvino_bf16_row": why,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    # Probed at the start and the end of the run that measured the benchmarks, on the same
    # machine; the best of the two (another process's load only slows a probe down).
    if _measuring(config):
        import probes
        machine_info["fastrnn_bench"]["probes"] = probes.best_of(
            getattr(config, "_fastrnn_probes_at_start", None), probes.measure())


def _measuring(config):
    return not config.getoption("benchmark_disable", False) and bool(
        config.getoption("benchmark_json", None) or config.getoption("benchmark_only", False))


def pytest_sessionstart(session):
    if _measuring(session.config):
        import probes
        session.config._fastrnn_probes_at_start = probes.measure()


@pytest.fixture
def benchmark_disabled(request):
    """True under --benchmark-disable (make test): each case then runs once, as a plain test."""
    return bool(request.config.getoption("benchmark_disable", False))
