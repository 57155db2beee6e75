"""Compiling ahead of the first answer: fastrnn.warmup() and `fastrnn warmup`, and where the
compiled kernels are cached.

fastrnn's CPU kernels are compiled by Numba on their first call for each dtype and cached on
disk (fastrnn.engine.jit), so only a process that finds the cache empty pays the compile.
warmup() fills the cache in advance, for a container build or a deployment step: it builds one
tiny model per dtype and runs every path a model's calls can take. The kernels take the cell
(LSTM, GRU, RNN), the sizes, the layers and the directions as runtime values, so these few calls
compile every kernel any model of that dtype uses:

    sequence, batch 1    sequence_flat, on the calling thread (model(x), Stream.process;
                         fastrnn.engine.flat: torch's cells, every row of full length)
    sequence, batch 8    sequence_flat_blocks, the rows cut into blocks run on several cores
    bidirectional, 1     sequence_flat_directions, a layer's two directions at once
    lengths, batch 2     sequence_block, the general path (rows of their own lengths; cells
                         with peepholes, projections, clips, other activations; low-bit weights)
    lengths, batch 8     sequence_blocks, its rows cut into blocks
    stream step          step_block (Stream.step, StreamPool ticks of few slots)
    pool step, 8 slots   step_blocks, a pool tick cut into blocks run on several cores
    chain stream         run_program, the whole-model chains' kernel (fastrnn.layers.program)

It compiles the stream step in the process whatever FASTRNN_COMPILE says, so that the cache is
full when it returns.

Each compile (or load from the cache) is logged on the "fastrnn" logger with its duration.

The cache goes where Numba puts it: the directory FASTRNN_CACHE_DIR names when it is set
(fastrnn sets NUMBA_CACHE_DIR from it at import), otherwise the __pycache__ folders next to the
installed package's sources, or, when those are read-only, Numba's user cache directory
(~/.cache/numba on Linux). Wherever it is, a cached kernel is used only while every source file
of the package is as it was compiled from (fastrnn.engine.jit): an upgrade or an edit recompiles.

Without a warmup, a stream's first steps need not wait: with an empty cache they are answered
from numpy while a helper process compiles the step kernel (fastrnn.engine.table;
FASTRNN_COMPILE=wait compiles in the process instead). The other kernels compile on first use.
"""

from __future__ import annotations

import os
import sys
import time
from typing import NamedTuple

import numba
import numpy as np

DTYPES = ("float32", "float64")

# Slots of the pool tick and rows of the batched sequence: at least two blocks of
# MIN_ROWS_PER_THREAD rows (fastrnn.engine.plan), so that the call takes the parallel kernel.
PARALLEL_ROWS = 8


class WarmupStep(NamedTuple):
    """One call warmup() made: the dtype, what it ran, and how long it took in seconds."""

    dtype: str
    step: str
    seconds: float


def warmup(dtypes: tuple[str, ...] | list[str] = DTYPES, progress: bool = True
           ) -> list[WarmupStep]:
    """Compile (or load from the disk cache) every CPU kernel a model of these dtypes can use.

    dtypes: among "float32" and "float64" (numpy dtypes are accepted too). progress: a line on
    stderr as each call starts and ends. Returns the calls made, with their durations. On a
    machine where Numba has one thread only, the parallel kernels are never used: the batched
    calls run on the calling thread and the parallel kernels are not compiled (a machine with
    more cores that reads the same cache compiles them on first use). While it runs, the cap of
    set_num_threads is lifted, so that the batched calls take the parallel kernels.
    """
    from fastrnn.builders import from_numpy
    from fastrnn.engine import parallel
    from fastrnn.stream import StreamPool

    names = [_dtype_name(dtype) for dtype in dtypes]
    can_parallel = numba.config.NUMBA_NUM_THREADS > 1
    flats, directions, sequences, ticks = (
        ("sequence_flat_blocks, parallel", "sequence_flat_directions, parallel",
         "sequence_blocks, parallel", "step_blocks, parallel")
        if can_parallel else ("sequence_flat: one thread here", "sequence_flat: one thread here",
                              "sequence_block: one thread here", "step_block: one thread here"))
    plan = [("sequence, batch 1 (sequence_flat)", _sequence, 1),
            (f"sequence, batch {PARALLEL_ROWS} ({flats})", _sequence, PARALLEL_ROWS),
            (f"bidirectional sequence, batch 1 ({directions})", _bidirectional_sequence,
             from_numpy),
            ("sequence with lengths, batch 2 (sequence_block)", _sequence_with_lengths, 2),
            (f"sequence with lengths, batch {PARALLEL_ROWS} ({sequences})",
             _sequence_with_lengths, PARALLEL_ROWS),
            ("stream step (step_block)", _stream_step, None),
            (f"pool step, {PARALLEL_ROWS} slots ({ticks})", _pool_step, StreamPool),
            ("whole-model chain stream (run_program)", _chain_stream, None)]
    total = len(plan) * len(names)
    say = _printer(progress)
    location = cache_directory()
    say(f"fastrnn warmup: {total} calls for {', '.join(names)}; cache: "
        f"{location or 'none (Numba found no writable cache directory)'}\n")
    if not can_parallel:
        say("fastrnn warmup: Numba has one thread here, so the parallel kernels are never "
            "used and not compiled\n")
    steps: list[WarmupStep] = []
    previous_threads = parallel.get_num_threads()
    # The parallel kernels run only when a call may use two threads or more: allow every core
    # for the duration, whatever set_num_threads or FASTRNN_NUM_THREADS said.
    parallel.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    # A cold stream step would otherwise answer from numpy and leave the step kernel's compile
    # to a helper process that may outlive a container build: compile it here.
    previous_mode = os.environ.get("FASTRNN_COMPILE")
    os.environ["FASTRNN_COMPILE"] = "wait"
    try:
        for name in names:
            model = _tiny_model(from_numpy, name)
            for label, run, argument in plan:
                say(f"  [{len(steps) + 1}/{total}] {name}: {label} ...")
                start = time.perf_counter()
                run(model, argument)
                seconds = time.perf_counter() - start
                say(f" {seconds:.2f} s\n")
                steps.append(WarmupStep(name, label, seconds))
    finally:
        parallel.set_num_threads(previous_threads)
        if previous_mode is None:
            os.environ.pop("FASTRNN_COMPILE", None)
        else:
            os.environ["FASTRNN_COMPILE"] = previous_mode
    return steps


def cache_directory() -> str | None:
    """Where fastrnn's compiled kernels are cached: FASTRNN_CACHE_DIR (Numba's CACHE_DIR) when
    it is set and writable, with a folder per source folder inside; else the cache folder Numba
    chose for the driver's kernels (the __pycache__ beside them, or one in Numba's user cache
    directory). None when Numba found no writable place."""
    from fastrnn.engine import driver
    try:
        path = driver.sequence_block.stats.cache_path
    except AttributeError:  # no cache: Numba found no writable location
        return None
    root = numba.config.CACHE_DIR
    return root if root and path.startswith(os.path.join(root, "")) else path


def _dtype_name(dtype):
    try:  # np.dtype(None) is float64: a missing dtype is refused rather than read as one
        name = None if dtype is None else np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ValueError(f"dtypes must be among {', '.join(DTYPES)}; got {dtype!r}")
    return name


def _printer(progress):
    def say(text):
        if progress:
            sys.stderr.write(text)
            sys.stderr.flush()
    return say


def _tiny_model(from_numpy, dtype, directions=1):
    """A one-layer LSTM of 2 inputs and 3 units: sizes are runtime values to the kernels."""
    rng = np.random.default_rng(0)
    inputs, hidden = 2, 3
    layer = {"w_ih": rng.standard_normal((4 * hidden, inputs)),
             "w_hh": rng.standard_normal((4 * hidden, hidden)),
             "b_ih": np.zeros(4 * hidden), "b_hh": np.zeros(4 * hidden)}
    return from_numpy("lstm", [layer] * directions, dtype=dtype, bidirectional=directions == 2)


def _sequence(model, batch):
    model(np.ones((2, batch, model.input_size), model.dtype))


def _bidirectional_sequence(model, from_numpy):
    """The tiny model's bidirectional twin on one row, over enough steps that the driver runs its
    directions at once (fastrnn.engine.driver.PARALLEL_DIRECTIONS)."""
    from fastrnn.engine.driver import PARALLEL_DIRECTIONS
    twin = _tiny_model(from_numpy, model.dtype, directions=2)
    steps = PARALLEL_DIRECTIONS // (4 * 3 * (2 + 3)) + 1
    twin(np.ones((steps, 1, twin.input_size), twin.dtype))


def _sequence_with_lengths(model, batch):
    """A row shorter than the rest takes the general path (fastrnn.engine.driver)."""
    model(np.ones((2, batch, model.input_size), model.dtype), lengths=[1] + [2] * (batch - 1))


def _stream_step(model, _):
    model.stream(batch=1).step(np.ones(model.input_size, model.dtype))


def _chain_stream(model, _):
    """A Linear before the LSTM, streamed: the chains' kernel (fastrnn.layers.program)."""
    from fastrnn.chain import Chain
    from fastrnn.layers import Linear, Recurrent
    front = Linear(np.eye(model.input_size), np.zeros(model.input_size), dtype=model.dtype)
    Chain([front, Recurrent(model)]).stream(batch=1).step(np.ones((1, model.input_size),
                                                                  model.dtype))


def _pool_step(model, pool_class):
    pool = pool_class(model, capacity=PARALLEL_ROWS)
    slots = [pool.open() for _ in range(PARALLEL_ROWS)]
    pool.step(slots, np.ones((PARALLEL_ROWS, model.input_size), model.dtype))
