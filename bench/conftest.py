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


def cpu_model():
    """The CPU's model name as /proc/cpuinfo gives it (the platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions():
    """Versions of the engines and the libraries they stand on."""
    found = {"python": platform.python_version()}
    for name in ("fastrnn", "numpy", "numba", "torch", "onnxruntime", "onnx"):
        try:
            module = __import__(name)
            found[name] = getattr(module, "__version__", "?")
        except ImportError:
            found[name] = None
    return found


def pytest_benchmark_update_machine_info(config, machine_info):
    from registry import cpu_count
    machine_info["fastrnn_bench"] = {
        "cpu_model": cpu_model(),
        "cores": cpu_count(),
        "versions": versions(),
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
