"""Peak memory of a loaded model: what loading it and its first answer add to a fresh process.

The figure (extra_info "metric") is the process's peak resident memory after the first answer
minus its resident memory once the engine was imported, so each engine's own import footprint is
left out of the model's cost; that footprint is recorded beside it (rss_after_import_MiB), and so
is the process's whole peak (peak_rss_MiB). The timed figure is the whole child process.
"""

import pytest

from registry import ModelSpec, run_fresh_process, write_saved_models

# Large enough (about 50 MiB of float32 weights) that the model, not allocator noise, is measured.
SPEC = ModelSpec("lstm", input_size=256, hidden_size=1024, steps=10, batch=1, num_layers=2)
ENGINES = ("fastrnn", "torch", "onnxruntime")
MIB = 2 ** 20


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    folder = write_saved_models(SPEC, tmp_path_factory.mktemp("memory"))
    return folder, SPEC.reference(SPEC.input())


@pytest.mark.parametrize("engine", ENGINES)
def test_memory(benchmark, saved_models, engine):
    folder, reference = saved_models
    runs = []
    if engine == "fastrnn":
        # The kernels come from the Numba cache, as in a deployed service: fill it first, so that
        # the figure is the model's and not the compiler's.
        run_fresh_process(engine, folder)
    benchmark.group = SPEC.workload_id("memory")
    benchmark.pedantic(lambda: runs.append(run_fresh_process(engine, folder)), rounds=1)
    report, answer = runs[-1]
    correct, error = SPEC.matches(answer, reference)
    model_bytes = report["peak_rss_after_first_answer"] - report["rss_after_import"]
    benchmark.extra_info.update({
        "engine": engine, "correct": correct, "max_abs_error": error, "workload": "memory",
        **SPEC.info(),
        "metric": {"name": "peak RSS added by the model", "value": model_bytes / MIB,
                   "unit": "MiB"},
        "rss_after_import_MiB": report["rss_after_import"] / MIB,
        "load_MiB": (report["rss_after_load"] - report["rss_after_import"]) / MIB,
        "peak_rss_MiB": report["peak_rss_after_first_answer"] / MIB,
        "weights_MiB": SPEC.step_weight_bytes() / MIB,
    })
    assert correct, f"{engine}'s answer differs from the reference by {error:.3g}"
    # A loaded model holds its weights: anything less means the measurement is broken.
    assert model_bytes >= 0.9 * SPEC.step_weight_bytes(), (engine, model_bytes)
