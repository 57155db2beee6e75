"""fastrnn.warmup(), `fastrnn warmup`, the compile log records and FASTRNN_CACHE_DIR.

The in-process tests run on kernels this process compiled (or loaded) already: they check that
warmup's calls leave nothing for a model's calls to compile. The subprocess tests start from
an empty cache directory, as a fresh install does.
"""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np
import pytest

import fastrnn
from fastrnn import cli
from fastrnn.compiles import cache_directory
from fastrnn.engine import driver, flat
from fastrnn import stream as stream_module

ROOT = Path(__file__).resolve().parent.parent
PARALLEL = numba.config.NUMBA_NUM_THREADS > 1   # else the parallel kernels are never used
CALLS_PER_DTYPE = 8
KERNELS = {"sequence_block": driver.sequence_block, "sequence_blocks": driver.sequence_blocks,
           "sequence_flat": flat.sequence_flat, "sequence_flat_blocks": flat.sequence_flat_blocks,
           "sequence_flat_directions": flat.sequence_flat_directions,
           "step_block": driver.step_block, "step_blocks": driver.step_blocks,
           "_first_bad_slot": stream_module._first_bad_slot}


def compiled_counts():
    return {name: len(kernel.overloads) for name, kernel in KERNELS.items()}


def random_model(kind, dtype, *, layers=1, **options):
    rng = np.random.default_rng(1)
    gates = {"lstm": 4, "gru": 3}.get(kind, 1)
    directions = 2 if options.get("bidirectional") else 1
    weights = []
    for layer in range(layers):
        inputs = 3 if layer == 0 else 5 * directions
        weights += [{"w_ih": rng.standard_normal((gates * 5, inputs)),
                     "w_hh": rng.standard_normal((gates * 5, 5))} for _ in range(directions)]
    return fastrnn.from_numpy(kind, weights, dtype=dtype, **options)


def every_kind_of_call(dtype):
    """Calls of every cell, layout and path a user may make, for one dtype."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 9, 3)).astype(dtype)
    gru = random_model("gru", dtype, layers=2, bidirectional=True, batch_first=True)
    gru(x.transpose(1, 0, 2), lengths=[4, 1, 2, 3, 4, 4, 2, 1, 3])
    gru(x[:, 0])                                           # unbatched
    rnn = random_model("rnn_relu", dtype, clip=0.5)
    rnn(x[:, :1])
    rnn(x, state=np.ones((1, 9, 5), dtype))
    lstm = random_model("lstm", dtype, layers=2)
    lstm(x)                                                # full lengths: sequence_flat
    random_model("gru", dtype, bidirectional=True)(x)
    random_model("gru", dtype, bidirectional=True)(rng.standard_normal((600, 1, 3)).astype(dtype))
    stream = lstm.stream(batch=3)
    stream.step(x[0, :3])
    stream.process(x[:, :3])
    random_model("rnn_tanh", dtype).stream().step(x[0, 0])
    pool = fastrnn.StreamPool(random_model("gru", dtype), capacity=16)
    slots = [pool.open() for _ in range(9)]
    pool.step(slots[:1], x[0, :1])
    pool.step(slots[::-1], x[0])                            # 9 slots, out of order: parallel


def test_warmup_leaves_nothing_for_models_to_compile(capsys, caplog):
    steps = fastrnn.warmup(dtypes=("float32", "float64"), progress=True)
    assert [step.dtype for step in steps] == ["float32"] * CALLS_PER_DTYPE + \
        ["float64"] * CALLS_PER_DTYPE
    assert all(step.seconds >= 0 for step in steps)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(f"fastrnn warmup: {2 * CALLS_PER_DTYPE} calls for float32, "
                               f"float64; cache: {cache_directory()}")
    progress = [line for line in lines if line.startswith("  [")]
    assert len(progress) == 2 * CALLS_PER_DTYPE and progress[-1].endswith(" s")
    assert any("stream step (step_block)" in line for line in progress)
    if PARALLEL:
        assert any("pool step, 8 slots (step_blocks, parallel)" in line for line in progress)
    before = compiled_counts()
    previous = fastrnn.get_num_threads()
    fastrnn.set_num_threads(numba.config.NUMBA_NUM_THREADS)   # let calls take the parallel path
    try:
        with caplog.at_level(logging.INFO, logger="fastrnn"):
            for dtype in (np.float32, np.float64):
                every_kind_of_call(dtype)
    finally:
        fastrnn.set_num_threads(previous)
    assert compiled_counts() == before
    assert not [r for r in caplog.records if r.name == "fastrnn" and "compiled" in r.message]


def test_warmup_keeps_the_thread_count_and_refuses_other_dtypes(capsys):
    previous = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(1)
        steps = fastrnn.warmup(dtypes=[np.float32], progress=False)
        assert fastrnn.get_num_threads() == 1
    finally:
        fastrnn.set_num_threads(previous)
    assert len(steps) == CALLS_PER_DTYPE and capsys.readouterr().err == ""
    for bad in ("float16", "int32", "double precision", None):
        with pytest.raises(ValueError, match="dtypes must be among float32, float64"):
            fastrnn.warmup(dtypes=[bad])


def test_warmup_compiles_the_stream_step_in_the_process_even_in_background_mode(monkeypatch):
    """As if the cache were empty: the step kernel is not loadable, so a stream in background
    mode would start a helper process; warmup must compile in the process instead."""
    from fastrnn.engine import table

    def no_helper(dtype):
        raise AssertionError("warmup left the stream step's compile to a helper process")

    monkeypatch.setenv("FASTRNN_COMPILE", "background")
    monkeypatch.setattr(table, "load_cached", lambda dispatcher, arguments: None)
    monkeypatch.setattr(table, "_helper", no_helper)
    steps = fastrnn.warmup(dtypes=["float32"], progress=False)
    assert len(steps) == CALLS_PER_DTYPE
    assert os.environ["FASTRNN_COMPILE"] == "background"


def test_cli_warmup(capsys):
    assert cli.main(["warmup", "--dtype", "float32"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"warmed up {CALLS_PER_DTYPE} calls for float32 in ")
    assert captured.out.rstrip().endswith(f"cache: {cache_directory()}")
    assert captured.err.count("  [") == CALLS_PER_DTYPE
    assert cli.main(["warmup", "--dtype", "float64", "float64", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"warmed up {CALLS_PER_DTYPE} calls for float64 in ")
    assert captured.err == ""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["warmup", "--dtype", "float16"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'float16'" in capsys.readouterr().err


# -- fresh processes, empty caches -----------------------------------------------------------------

def run_python(code, **environment):
    """Run code in a fresh interpreter from the repository, with only the given cache variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "FASTRNN_CACHE_DIR")}
    env.update(environment)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result


LOGGING = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr, "
           "format='%(name)s: %(message)s')\n")

# One small kernel's compile, and where it went: json of its cache path, misses and hits.
SMALL_COMPILE = LOGGING + """
import json
{before}
import fastrnn
import numpy as np
from fastrnn.compiles import cache_directory
from fastrnn.engine.jit import call
from fastrnn.stream import _first_bad_slot
call(_first_bad_slot, np.zeros(0, np.int64), np.zeros(1, np.bool_), np.zeros(1, np.bool_))
stats = _first_bad_slot.stats
print(json.dumps([stats.cache_path, cache_directory(), sum(stats.cache_misses.values()),
                  sum(stats.cache_hits.values())]))
"""


def small_compile(before="", **environment):
    result = run_python(SMALL_COMPILE.format(before=before), **environment)
    return json.loads(result.stdout.splitlines()[-1]), result.stderr


def test_cold_cache_compile_is_logged_and_cached_in_numba_cache_dir(tmp_path):
    (path, _, misses, hits), err = small_compile(NUMBA_CACHE_DIR=str(tmp_path))
    assert "fastrnn: compiled _first_bad_slot in " in err   # fastrnn.engine.jit.call's record
    assert (misses, hits) == (1, 0) and path.startswith(str(tmp_path))
    assert list(Path(path).glob("*_first_bad_slot*.nbi"))
    (_, _, misses, hits), _ = small_compile(NUMBA_CACHE_DIR=str(tmp_path))
    assert (misses, hits) == (0, 1)   # the second process loads it


@pytest.mark.parametrize("before", ["", "import numba"], ids=["numba_after", "numba_before"])
def test_fastrnn_cache_dir_is_where_kernels_go(tmp_path, before):
    """FASTRNN_CACHE_DIR holds every kernel, whether numba was imported before fastrnn or not, and
    wins over NUMBA_CACHE_DIR."""
    chosen, other = tmp_path / "fastrnn-cache", tmp_path / "numba-cache"
    (path, directory, misses, hits), err = small_compile(
        before, FASTRNN_CACHE_DIR=str(chosen), NUMBA_CACHE_DIR=str(other))
    assert path.startswith(str(chosen)) and directory == str(chosen)
    assert (misses, hits) == (1, 0) and "compiled _first_bad_slot" in err
    assert not other.exists()
    (path, _, misses, hits), _ = small_compile(before, FASTRNN_CACHE_DIR=str(chosen))
    assert path.startswith(str(chosen)) and (misses, hits) == (0, 1)


# Every fastrnn kernel dispatcher's cache misses after the calls of an LSTM and a GRU that take
# each path: none when a warmup filled the cache.
AFTER_WARMUP = LOGGING + """
import json
import fastrnn
import numpy as np
from fastrnn.engine import driver, flat
from fastrnn import stream
rng = np.random.default_rng(0)
def layer(gates, inputs):
    return {"w_ih": rng.standard_normal((gates * 7, inputs)), "w_hh": rng.standard_normal((gates * 7, 7))}
lstm = fastrnn.from_numpy("lstm", [layer(4, 5), layer(4, 7)], dtype="float32")
gru = fastrnn.from_numpy("gru", [layer(3, 5), layer(3, 5)], bidirectional=True, dtype="float32")
x = rng.standard_normal((6, 9, 5)).astype(np.float32)
lstm(x[:, :1]); lstm(x); gru(x, lengths=[6, 1, 2, 3, 4, 5, 6, 6, 2]); gru(x[:, 0])
gru(x[:, :2], lengths=[6, 3])
gru(rng.standard_normal((700, 1, 5)).astype(np.float32))   # one row: directions at once
lstm.stream().step(x[0, 0])
pool = fastrnn.StreamPool(lstm, capacity=9)
pool.step([pool.open() for _ in range(9)], x[0])
kernels = {name: value for module in (driver, flat, stream) for name, value in vars(module).items()
           if hasattr(value, "stats") and hasattr(value, "overloads")}
print(json.dumps({name: [sum(k.stats.cache_misses.values()), sum(k.stats.cache_hits.values())]
                  for name, k in kernels.items()}))
"""


def test_cli_warmup_in_an_empty_cache_then_a_fresh_process_compiles_nothing(tmp_path):
    cache = str(tmp_path / "cache")
    warm = run_python(LOGGING + "import fastrnn.cli\nsys.exit(fastrnn.cli.main(['warmup', "
                      "'--dtype', 'float32']))", FASTRNN_CACHE_DIR=cache)
    logged = {name for name in KERNELS if f"fastrnn: compiled {name} in " in warm.stderr}
    parallel = {"sequence_flat_blocks", "sequence_flat_directions", "sequence_blocks",
                "step_blocks"} if PARALLEL else set()
    assert logged == {"sequence_flat", "sequence_block", "step_block", "_first_bad_slot"} | parallel
    assert warm.stderr.count("  [") == CALLS_PER_DTYPE
    assert warm.stdout.rstrip().endswith(f"; cache: {cache}")
    counts = json.loads(run_python(AFTER_WARMUP, FASTRNN_CACHE_DIR=cache).stdout.splitlines()[-1])
    assert {name: misses for name, (misses, _) in counts.items()} == \
        {name: 0 for name in counts}, "a kernel compiled after the warmup"
    used = {"sequence_flat", "sequence_block", "step_block"} | parallel
    assert all(counts[name][1] >= 1 for name in used)



# -- the cache follows every source file -----------------------------------------------------------

# rnn_cell (cells/rnn.py) stores its state through flush_tiny (cells/common.py), which zeroes
# values below DENORMAL_FLUSH: 1e-20 passes today, and is zeroed once common.py says 1e-10.
RNN_CELL = """
import json
import numpy as np
import fastrnn
from fastrnn.engine.jit import call
from fastrnn.engine.cells.rnn import rnn_cell
h = np.zeros(2)
call(rnn_cell, np.array([1e-20, 0.5]), np.ones(3, np.int64), np.zeros(3), np.zeros(3), 0.0, h)
stats = rnn_cell.stats
print(json.dumps([fastrnn.__file__, stats.cache_path, h.tolist(), sum(stats.cache_misses.values()),
                  sum(stats.cache_hits.values())]))
"""


def copy_package(tmp_path):
    """A copy of the fastrnn package under tmp_path/copy, to edit; returns the copy's root."""
    root = tmp_path / "copy"
    shutil.copytree(ROOT / "fastrnn", root / "fastrnn",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return root


def run_copy(root, **environment):
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "FASTRNN_CACHE_DIR")}
    env.update(environment, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run([sys.executable, "-c", RNN_CELL], cwd=root, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    path, cache_path, h, misses, hits = json.loads(result.stdout.splitlines()[-1])
    assert path == str(root / "fastrnn" / "__init__.py")
    return cache_path, h, misses, hits


def edit_flush_threshold(root):
    common = root / "fastrnn" / "engine" / "cells" / "common.py"
    text = common.read_text()
    assert "DENORMAL_FLUSH = np.float32(1e-30)" in text
    common.write_text(text.replace("DENORMAL_FLUSH = np.float32(1e-30)",
                                   "DENORMAL_FLUSH = np.float32(1e-10)"))


def test_an_edit_of_a_callees_file_recompiles_the_kernels_that_call_it(tmp_path):
    """Numba checks a cached kernel against its own file only: rnn.py is unchanged here, and
    the cached rnn_cell must still be dropped when common.py changes."""
    root, cache = copy_package(tmp_path), str(tmp_path / "cache")
    cache_path, h, misses, hits = run_copy(root, FASTRNN_CACHE_DIR=cache)
    assert cache_path.startswith(cache) and (misses, hits) == (1, 0)
    assert h[0] == pytest.approx(1e-20, rel=1e-12) and h[1] == pytest.approx(np.tanh(0.5))
    assert run_copy(root, FASTRNN_CACHE_DIR=cache)[1:] == (h, 0, 1)   # unchanged: loaded
    edit_flush_threshold(root)
    _, h, misses, hits = run_copy(root, FASTRNN_CACHE_DIR=cache)
    assert h[0] == 0.0 and (misses, hits) == (1, 0)


def test_a_package_that_cannot_hold_its_cache_uses_the_user_cache_and_follows_edits(tmp_path):
    """Where no __pycache__ can be made beside the sources (a file stands in its place here, as
    a read-only install does for a non-root user), kernels go to Numba's user cache directory,
    and an edit of a callee's file still recompiles them."""
    root, user_cache = copy_package(tmp_path), tmp_path / "user-cache"
    for folder in (root / "fastrnn").rglob("*"):
        if folder.is_dir():
            (folder / "__pycache__").write_text("not a folder")
    (root / "fastrnn" / "__pycache__").write_text("not a folder")
    cache_path, h, misses, _ = run_copy(root, XDG_CACHE_HOME=str(user_cache))
    assert cache_path.startswith(str(user_cache / "numba")) and misses == 1 and h[0] > 0
    edit_flush_threshold(root)
    cache_path, h, misses, _ = run_copy(root, XDG_CACHE_HOME=str(user_cache))
    assert cache_path.startswith(str(user_cache / "numba")) and misses == 1 and h[0] == 0.0


# -- a new user's first answer ---------------------------------------------------------------------

FIRST_ANSWER = """
import time, logging; t0 = time.perf_counter()
logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s')
import numpy as np, fastrnn
m = fastrnn.from_torch("examples/demo_lstm.safetensors", kind="lstm", prefix="rnn.", batch_first=False)
s = m.stream(); y = s.step(np.zeros((1, m.config.input_size), np.float32))
print(time.perf_counter() - t0)
print(y.tolist())
"""


def wait_for_exit(pid, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    raise AssertionError(f"the helper process {pid} was still running after {timeout} s")


def test_first_answer_from_an_empty_cache_comes_at_once_and_the_helper_fills_the_cache(tmp_path):
    """The first stream step of an LSTM in a fresh process with an empty cache: answered from
    numpy while a helper process compiles step_block (logged), as the kernel answers; the
    helper leaves the kernel in the cache, where the next process finds it."""
    model = fastrnn.from_torch(ROOT / "examples" / "demo_lstm.safetensors", kind="lstm",
                               prefix="rnn.", batch_first=False)
    expected = model.stream().step(np.zeros((1, model.config.input_size), np.float32))
    cache = str(tmp_path / "cache")
    cold = run_python(FIRST_ANSWER, FASTRNN_CACHE_DIR=cache, FASTRNN_COMPILE="background")
    np.testing.assert_allclose(json.loads(cold.stdout.splitlines()[-1]), expected, atol=3e-5)
    started = re.search(r"fastrnn: step_block is not compiled for float32; a helper process "
                        r"\(pid (\d+)\) compiles it into " + re.escape(cache), cold.stderr)
    assert started, cold.stderr
    assert "compiled step_block" not in cold.stderr   # the process itself compiled nothing
    wait_for_exit(int(started.group(1)))
    warm = run_python(FIRST_ANSWER, FASTRNN_CACHE_DIR=cache, FASTRNN_COMPILE="background")
    assert "fastrnn: loaded step_block from the disk cache in " in warm.stderr, warm.stderr
    assert "helper process" not in warm.stderr and "compiled" not in warm.stderr
    np.testing.assert_array_equal(json.loads(warm.stdout.splitlines()[-1]), expected)
