"""Cold start: a fresh process imports the engine, loads a saved model and gives its first answer.

fastrnn runs twice: with a warm Numba cache (what a deployed service sees after its first start)
and with a cold one (a fresh NUMBA_CACHE_DIR each round: every kernel compiles). torch and
onnxruntime beside it load the same weights from their own files. The figure (extra_info
"metric") is the time from starting the child process to its first answer, interpreter start
included, exit left out; extra_info gives its stages (import, load, first answer) as the child
measured them, in its last round.
"""

import os
import tempfile

import pytest

from registry import ModelSpec, run_fresh_process, write_saved_models

SPEC = ModelSpec("lstm", input_size=64, hidden_size=128, steps=100, batch=1)

# (case, engine run in the child, Numba cache, rounds under make bench)
CASES = [
    ("fastrnn", "fastrnn", "warm", 5),
    ("fastrnn-coldcache", "fastrnn", "cold", 3),
    ("torch", "torch", None, 3),
    ("onnxruntime", "onnxruntime", None, 5),
]


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    folder = write_saved_models(SPEC, tmp_path_factory.mktemp("coldstart"))
    return folder, SPEC.reference(SPEC.input())


@pytest.mark.parametrize("case, engine, numba_cache, rounds", CASES, ids=[c[0] for c in CASES])
def test_coldstart(benchmark, saved_models, tmp_path, case, engine, numba_cache, rounds):
    folder, reference = saved_models
    runs = []
    base_env = dict(os.environ)
    if numba_cache == "warm":
        # The cache this session's kernels were compiled into (the root conftest.py names it by
        # a hash of fastrnn's sources); one run makes sure it holds everything the child needs.
        base_env.setdefault("NUMBA_CACHE_DIR", str(tmp_path / "numba-warm"))
        run_fresh_process(engine, folder, base_env)

    def fresh_environment():
        env = dict(base_env)
        if numba_cache == "cold":
            env["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="numba-cold-", dir=tmp_path)
        return (env,), {}

    def first_answer(env):
        runs.append(run_fresh_process(engine, folder, env))

    benchmark.group = SPEC.workload_id("coldstart")
    benchmark.pedantic(first_answer, setup=fresh_environment, rounds=rounds)
    report, answer = runs[-1]
    correct, error = SPEC.matches(answer, reference)
    # The figure: process start to first answer, the median over the rounds (the benchmark's own
    # time also holds the process's exit, which a service does not wait for).
    to_answer = sorted(run[0]["spawn_to_answer_s"] for run in runs)[len(runs) // 2]
    benchmark.extra_info.update({"engine": case, "correct": correct, "max_abs_error": error,
                                 "workload": "coldstart", "numba_cache": numba_cache,
                                 **SPEC.info(),
                                 "metric": {"name": "process start to first answer",
                                            "value": to_answer, "unit": "s"},
                                 **{key: value for key, value in report.items()
                                    if key.endswith("_s")}})
    assert correct, f"{case}'s first answer differs from the reference by {error:.3g}"
