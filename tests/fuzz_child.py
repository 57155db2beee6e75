"""The child process of tests/limited.py: runs the cases below under a memory limit.

Started as `python fuzz_child.py MEMORY_LIMIT`. It imports fastrnn and its peers, sets RLIMIT_AS
to its size at that point plus MEMORY_LIMIT, answers "ready", then reads (case, args) frames on
stdin and answers each with a limited.Outcome. Anything printed goes to stderr: stdout carries the
frames only. A case returns what it found, raises the exception fastrnn raised, or raises Wrong
when fastrnn accepted its input and gave a wrong answer (checked against tests/reference.py or
onnxruntime).
"""

import io
import os
import pickle
import resource
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "onnx")]

import reference  # noqa: E402
from limited import Outcome  # noqa: E402

_FRAME = struct.Struct("<Q")
TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-9}
ACTIVATION_ERROR = {np.dtype(np.float32): 5e-7}  # the fast float32 sigmoid's and tanh's, summed
WELL_CONDITIONED = 16.0  # the largest weight for which float32 results are held to the reference
MAX_FEED_ELEMENTS = 1 << 20   # a mutated graph may declare huge inputs: not fed
_out = None                   # the frame channel (the original stdout)


class Wrong(AssertionError):
    """fastrnn accepted the input and its answer is wrong."""


def note(text):
    """Tell the parent what runs now, so that a crash can be put down to it (e.g. the peer)."""
    _send(("note", text))


# -- models the cases share -------------------------------------------------------------------

# name -> (kind, from_numpy options, reference options, dtype)
SPECS = {
    "lstm-peephole-proj-2layer-f32": ("lstm", dict(num_layers=2, peephole=True, proj_size=3),
                                      np.float32),
    "lstm-bidir-clip-f32": ("lstm", dict(bidirectional=True, clip=1.5), np.float32),
    "gru-f64": ("gru", dict(linear_before_reset=False), np.float64),
    "rnn_relu-2layer-batchfirst-f32": ("rnn_relu", dict(num_layers=2, batch_first=True),
                                       np.float32),
}
INPUT_SIZE, HIDDEN_SIZE = 3, 4
_models = {}


def build_model(spec):
    """The spec's model, the same in every process (fixed seed)."""
    import fastrnn
    if spec not in _models:
        kind, options, dtype = SPECS[spec]
        options = dict(options)
        layers = reference.random_layers(
            kind, INPUT_SIZE, HIDDEN_SIZE, num_layers=options.pop("num_layers", 1),
            bidirectional=options.get("bidirectional", False),
            proj_size=options.pop("proj_size", 0), peephole=options.pop("peephole", False),
            seed=sorted(SPECS).index(spec) + 7)
        _models[spec] = fastrnn.from_numpy(kind, reference.cast_layers(layers, dtype),
                                           dtype=dtype, **options)
    return _models[spec]


def run_reference(model, x, state=None, lengths=None):
    """(y, h, c) of the float64 reference for `model`'s own weights and options."""
    c = model.config
    h0 = c0 = None
    if state is not None:
        h0, c0 = (state if isinstance(state, tuple) else (state, None))
    return reference.run_model(
        c.kind, [w.arrays() for w in model.layers], np.asarray(x, np.float64),
        bidirectional=c.bidirectional, batch_first=c.batch_first, lengths=lengths, h0=h0, c0=c0,
        clip=c.clip, input_forget=c.input_forget, linear_before_reset=c.linear_before_reset,
        activations=c.activations)


def assert_matches(ours, expected, tolerance, what, magnitude=0.0, saturates=False,
                   nan_kept=False):
    """Wrong unless `ours` is `expected` within tolerance * (1 + |expected|); NaN where it is NaN,
    the same infinity where it is infinite. Options, for what fastrnn documents:

    magnitude: the largest finite value of the inputs and states. float32's fast sigmoid and tanh
        are off by up to 1.7e-7 and 2.9e-7 (README): a gate's error times a cell state of that
        size reaches the results, so float32 allows ACTIVATION_ERROR * magnitude more.
    saturates: the inputs hold infinities (and no NaN). The fast sigmoid's floor is 1.2e-7, not
        0, so the reference's 0 * inf (NaN) may be a number in fastrnn.
    nan_kept: a NaN was fed or stored. fastrnn keeps NaN (README), where a peer may not
        (onnxruntime's sigmoid clamps NaN to a number): NaN against a number is no disagreement.
    """
    ours, expected = np.asarray(ours), np.asarray(expected, np.float64)
    if ours.shape != expected.shape:
        raise Wrong(f"{what}: shape {ours.shape}, expected {expected.shape}")
    ours64 = ours.astype(np.float64)
    nan = np.isnan(expected)
    infinite = np.isinf(expected)
    finite = ~(nan | infinite)
    bad = infinite & (ours64 != expected)
    if not saturates:
        bad |= nan & ~np.isnan(ours64)
    allowed = tolerance * (1 + np.abs(expected)) + \
        ACTIVATION_ERROR.get(ours.dtype, 0.0) * magnitude
    with np.errstate(invalid="ignore"):
        wrong = finite & ~(np.abs(ours64 - expected) <= allowed)
    if nan_kept:
        wrong &= ~np.isnan(ours64)
    bad |= wrong
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise Wrong(f"{what}: {int(bad.sum())} of {bad.size} values differ, first at {index}: "
                    f"{ours64[index]!r}, expected {expected[index]!r}")


def leniency(model, *arrays):
    """assert_matches' magnitude and saturates for a run of `model` on `arrays` (inputs, states)."""
    values = [np.asarray(a, np.float64) for a in arrays if a is not None]
    weights = [np.asarray(w, np.float64) for layer in model.layers
               for w in layer.arrays().values()]
    finite = [np.abs(v[np.isfinite(v)]) for v in values]
    magnitude = max((float(v.max()) for v in finite if v.size), default=0.0)
    has_inf = any(np.isinf(v).any() for v in values + weights)
    has_nan = any(np.isnan(v).any() for v in values + weights)
    return {"magnitude": magnitude,
            "saturates": model.dtype == np.float32 and has_inf and not has_nan}


def check_model(model, seed=0):
    """Run `model` on a small batch with lengths; Wrong unless it matches the reference.

    Values are compared where float32 can agree with float64: for weights up to WELL_CONDITIONED
    in size. A damaged file may hold larger ones (a flipped exponent bit in a safetensors file,
    which has no checksum, makes 0.5 into 8e6), and then float32's rounding, times such weights,
    is no measure of fastrnn: such a model is held to the reference's shapes only."""
    c = model.config
    rng = np.random.default_rng(seed)
    steps, batch = 3, 2
    shape = (batch, steps, c.input_size) if c.batch_first else (steps, batch, c.input_size)
    x = rng.standard_normal(shape).astype(model.dtype)
    lengths = np.array([steps, 2])
    y, state = model(x, lengths=lengths)
    y_ref, h_ref, c_ref = run_reference(model, x, lengths=lengths)
    largest = max(float(np.abs(w[np.isfinite(w)]).max(initial=0)) for layer in model.layers
                  for w in layer.arrays().values())
    if model.dtype == np.float32 and largest > WELL_CONDITIONED:
        h_n = state.h if model.kind == "lstm" else state
        if np.shape(y) != y_ref.shape or np.shape(h_n) != h_ref.shape:
            raise Wrong(f"shapes {np.shape(y)}, {np.shape(h_n)}; expected {y_ref.shape}, "
                        f"{h_ref.shape}")
        return
    tolerance, lenient = TOLERANCE[model.dtype], leniency(model, x)
    assert_matches(y, y_ref, tolerance, "y", **lenient)
    h_n, c_n = state if model.kind == "lstm" else (state, None)  # as torch: a GRU's is h alone
    assert_matches(h_n, h_ref, tolerance, "h_n", **lenient)
    if c_ref is not None:
        assert_matches(c_n, c_ref, tolerance, "c_n", **lenient)


# -- cases ------------------------------------------------------------------------------------

def case_load(path):
    """fastrnn.load alone; the loaded model's repr."""
    import fastrnn
    return repr(fastrnn.load(path))


def case_read_header(path):
    from fastrnn import fileformat
    version, header, data = fileformat.read_header(path)
    return version, len(data)


def case_session(source):
    """fastrnn.InferenceSession alone; the graph's input names."""
    import fastrnn
    return [v.name for v in fastrnn.InferenceSession(source).get_inputs()]


def case_cli(argv):
    """The fastrnn command: (exit status, what it wrote to stderr)."""
    import contextlib
    from fastrnn import cli
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
        status = cli.main(argv)
    return status, errors.getvalue()


def case_save_spec(spec, path):
    build_model(spec).save(path)
    return path


def case_model_file(path):
    """Load a (possibly damaged) model file. Accepted: it must run as the reference says for the
    weights and options it holds, and save again to a file that loads to the same weights."""
    import fastrnn
    model = fastrnn.load(path)
    check_model(model)
    with tempfile.TemporaryDirectory() as directory:
        again = os.path.join(directory, "again.fastrnn")
        model.save(again)
        reloaded = fastrnn.load(again)
    if reloaded.config != model.config:
        raise Wrong(f"a saved and reloaded model has config {reloaded.config}, not "
                    f"{model.config}")
    for index, (a, b) in enumerate(zip(model.layers, reloaded.layers)):
        for name, array in a.arrays().items():
            if b.arrays()[name].tobytes() != array.tobytes():
                raise Wrong(f"layer {index} {name} changed in a save/load round trip")
    return "loaded"


def case_snapshot_base(spec, steps):
    """A stream snapshot of the spec's model after `steps` steps of a fixed input."""
    model = build_model(spec)
    stream = model.stream(batch=1)
    rng = np.random.default_rng(3)
    for _ in range(steps):
        stream.step(rng.standard_normal((1, model.input_size)).astype(model.dtype))
    return stream.snapshot()


def case_snapshot(spec, blob):
    """Restore a (possibly damaged) snapshot into a Stream, a StreamPool slot and (import_) a
    pool. Accepted by one restore, it must be accepted by all with the same state, and that state
    must step as the reference says and snapshot again to a blob that restores to it."""
    import fastrnn
    model = build_model(spec)
    stream = model.stream(batch=1)
    pool = fastrnn.StreamPool(model, capacity=2)
    slot = pool.open()
    failures = []
    for restore in (stream.restore, lambda b: pool.restore(slot, b)):
        try:
            restore(blob)
            failures.append(None)
        except Exception as error:  # noqa: BLE001 - compared below, re-raised
            failures.append(error)
    if (failures[0] is None) != (failures[1] is None):
        raise Wrong(f"Stream.restore and StreamPool.restore disagree: {failures}")
    # StreamPool.import_ takes snapshots of any number of rows: it may accept what restore
    # refuses, never the other way round, and then opens one slot per row.
    importer = fastrnn.StreamPool(model, capacity=4)
    try:
        imported = importer.import_(blob)
    except ValueError as error:
        if failures[0] is None:
            raise Wrong(f"StreamPool.import_ refused ({error}) a snapshot restore took") from None
        imported = None
    if imported is not None and importer.num_open != len(imported):
        raise Wrong(f"import_ returned {len(imported)} slots and opened {importer.num_open}")
    if failures[0] is not None:
        raise failures[0]
    imported_state = importer.get_state(imported[0])
    state = stream.state
    pool_state = pool.get_state(slot)
    for name in ("h", "c"):
        for other in (pool_state, imported_state):
            a, b = getattr(state, name), getattr(other, name)
            if (a is None) != (b is None) or (a is not None and a.tobytes() != b.tobytes()):
                raise Wrong(f"Stream.restore, StreamPool.restore and import_ gave different "
                            f"{name}")
    x = np.random.default_rng(4).standard_normal((1, model.input_size)).astype(model.dtype)
    h0 = state.h.copy()
    c0 = None if state.c is None else state.c.copy()
    y = stream.step(x)
    y_ref, _, _ = run_reference(model, x[None], state=(h0, c0))
    assert_matches(y, y_ref[0], TOLERANCE[model.dtype], "a restored stream's step",
                   **leniency(model, x, h0, c0))
    again = model.stream(batch=1)
    again.restore(blob)
    second = model.stream(batch=1)
    second.restore(again.snapshot())
    if second.state.h.tobytes() != h0.tobytes():
        raise Wrong("a restored stream's own snapshot restores to another state")
    return "restored"


def case_model_call(spec, x, state, lengths):
    """model(x, state, lengths) with fuzzed arguments: a clear error, or the reference's answer
    (for the arguments as fastrnn documents it takes them: cast to the model's dtype)."""
    model = build_model(spec)
    y, final = model(x, state=state, lengths=lengths)
    c = model.config
    x64 = np.asarray(x, model.dtype)
    unbatched = x64.ndim == 2
    if unbatched:
        x64 = x64[:, None, :]
    ref_state = None
    if state is not None:
        h, c_state = state if isinstance(state, tuple) else (state, None)
        h = np.asarray(h, model.dtype)
        c_state = None if c_state is None else np.asarray(c_state, model.dtype)
        if unbatched:
            h = h[:, None, :]
            c_state = None if c_state is None else c_state[:, None, :]
        ref_state = (h, c_state)
    if unbatched and c.batch_first:
        x64 = x64.transpose(1, 0, 2)
    y_ref, h_ref, c_ref = run_reference(model, x64, ref_state, lengths)
    if unbatched:
        y_ref = y_ref[:, 0] if not c.batch_first else y_ref[0]
        h_ref = h_ref[:, 0]
        c_ref = None if c_ref is None else c_ref[:, 0]
    tolerance = TOLERANCE[model.dtype]
    lenient = leniency(model, x64, *(ref_state or ()))
    assert_matches(y, y_ref, tolerance, "y", **lenient)
    h_n, c_n = final if model.kind == "lstm" else (final, None)  # as torch: a GRU's is h alone
    assert_matches(h_n, h_ref, tolerance, "h_n", **lenient)
    if c_ref is not None:
        assert_matches(c_n, c_ref, tolerance, "c_n", **lenient)
    if not y.flags.writeable or np.shares_memory(y, np.asarray(x)):
        raise Wrong("y is read-only or shares memory with x")
    return y.shape


def case_stream_step(spec, xs):
    """stream.step over fuzzed per-step inputs: each a clear error or the reference's step."""
    model = build_model(spec)
    stream = model.stream(batch=1)
    results = []
    for x in xs:
        h0 = stream.state.h.copy()
        c0 = None if stream.state.c is None else stream.state.c.copy()
        try:
            y = stream.step(x)
        except (TypeError, ValueError) as error:
            if stream.state.h.tobytes() != h0.tobytes():
                raise Wrong(f"a refused step ({error}) changed the state") from None
            results.append(type(error).__name__)
            continue
        x_ref = np.asarray(x, model.dtype).reshape(1, 1, model.input_size)
        y_ref, _, _ = run_reference(model, x_ref, state=(h0, c0))
        y_ref = y_ref[0, 0] if np.ndim(x) == 1 else y_ref[0]  # (I,) -> (H_out,), documented
        assert_matches(y, y_ref, TOLERANCE[model.dtype], "a step",
                       **leniency(model, x_ref, h0, c0))
        results.append("ok")
    return results


def case_onnx(model_bytes, seed):
    """A (possibly mutated) ONNX model: fastrnn.InferenceSession must refuse it clearly or run it;
    where onnxruntime runs it too, the outputs must agree. Outputs must be writable arrays that
    no later run changes."""
    import fastrnn
    session = fastrnn.InferenceSession(model_bytes)
    feeds = onnx_feeds(session.get_inputs(), seed)
    if feeds is None:
        return "loaded, not fed"
    outputs = session.run(None, feeds)
    kept = [np.array(output, copy=True) for output in outputs]
    for output in outputs:
        if not isinstance(output, np.ndarray) or not output.flags.writeable:
            raise Wrong(f"an output is not a writable ndarray: {type(output)}")
    for output in outputs:
        if output.size and output.dtype.kind in "fiu":
            output[...] = 7
    again = session.run(None, feeds)
    for index, (first, second) in enumerate(zip(kept, again)):
        if first.tobytes() != second.tobytes() and not (
                first.dtype.kind == "f" and np.array_equal(first, second, equal_nan=True)):
            raise Wrong(f"output {index} of a second run differs after the first run's outputs "
                        f"were overwritten: the session handed over its own memory")
    for index, output in enumerate(outputs):
        for other in outputs[index + 1:]:
            if output.size and np.shares_memory(output, other):
                raise Wrong(f"output {index} shares memory with a later output")
    note("onnxruntime")
    expected = onnxruntime_outputs(model_bytes, feeds)
    note("")
    if expected is None:
        return "ran; onnxruntime refused"
    nan_fed = any(np.isnan(v).any() for v in feeds.values() if v.dtype.kind == "f") or \
        stores_nan(model_bytes)
    if len(expected) != len(kept):
        raise Wrong(f"{len(kept)} outputs, onnxruntime gives {len(expected)}")
    for index, (ours, theirs) in enumerate(zip(kept, expected)):
        if ours.dtype != theirs.dtype:
            raise Wrong(f"output {index}: dtype {ours.dtype}, onnxruntime {theirs.dtype}")
        if theirs.dtype.kind == "f":
            assert_matches(ours, theirs, 1e-4, f"output {index} against onnxruntime",
                           nan_kept=nan_fed)
        elif ours.shape != theirs.shape or not np.array_equal(ours, theirs):
            raise Wrong(f"output {index}: {ours!r}, onnxruntime {theirs!r}")
    return "ran; matches onnxruntime"


def stores_nan(model_bytes):
    """Whether a graph's initializers or Constant nodes hold a NaN."""
    import onnx
    from onnx import numpy_helper
    model = onnx.ModelProto()
    model.ParseFromString(model_bytes)
    tensors = list(model.graph.initializer) + [a.t for node in model.graph.node
                                               for a in node.attribute if a.type == a.TENSOR]
    for tensor in tensors:
        try:
            values = numpy_helper.to_array(tensor)
        except Exception:  # noqa: BLE001 - a tensor the session read somehow; not a NaN
            continue
        if values.dtype.kind == "f" and np.isnan(values).any():
            return True
    return False


def onnx_feeds(inputs, seed):
    """Feeds for a graph's declared inputs (2 for every size not fixed); None if one cannot be
    made (no shape or element type declared, or too large)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for info in inputs:
        if info.shape is None or info.dtype is None:
            return None
        shape = [size if isinstance(size, int) and size >= 0 else 2 for size in info.shape]
        if np.prod(shape, dtype=np.float64) > MAX_FEED_ELEMENTS:
            return None
        if info.dtype.kind == "f":
            feeds[info.name] = rng.standard_normal(shape).astype(info.dtype)
        elif info.dtype.kind in "iu":
            feeds[info.name] = rng.integers(0, 3, shape).astype(info.dtype)
        elif info.dtype.kind == "b":
            feeds[info.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            return None
    return feeds


def onnxruntime_outputs(model_bytes, feeds):
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 4
    try:
        session = onnxruntime.InferenceSession(model_bytes, options,
                                               providers=["CPUExecutionProvider"])
        return session.run(None, feeds)
    except Exception:  # noqa: BLE001 - a graph onnxruntime refuses gives nothing to compare
        return None


def case_safetensors(path):
    """fastrnn.from_torch on a (possibly damaged) .safetensors file: a clear error or a model that
    runs as the reference says for the weights it holds."""
    import fastrnn
    model = fastrnn.from_torch(path)
    check_model(model)
    return repr(model)


CASES = {name[len("case_"):]: value for name, value in globals().items()
         if name.startswith("case_")}


# -- the serving loop -------------------------------------------------------------------------

def _send(message):
    data = pickle.dumps(message)
    _out.write(_FRAME.pack(len(data)) + data)
    _out.flush()


def _receive(stream):
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    return pickle.loads(stream.read(_FRAME.unpack(head)[0]))


def _virtual_size():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _run(case, args):
    started = time.perf_counter()
    try:
        value = CASES[case](*args)
        outcome = Outcome("ok", value=value)
    except MemoryError as error:
        outcome = Outcome("memory", type=type(error).__name__, message=str(error),
                          traceback=traceback.format_exc(limit=-8))
    except Wrong as error:
        outcome = Outcome("wrong", message=str(error), traceback=traceback.format_exc(limit=-4))
    except Exception as error:  # noqa: BLE001 - every error is reported for the test to judge
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        outcome = Outcome("error", type=type(error).__name__, message=str(message),
                          traceback=traceback.format_exc(limit=-8))
    outcome.seconds = time.perf_counter() - started
    return outcome


def main():
    global _out
    limit = int(sys.argv[1])
    _out = io.FileIO(os.dup(1), "wb")
    os.dup2(2, 1)  # prints from anything below go to stderr, not into the frames
    commands = io.FileIO(os.dup(0), "rb")
    import fastrnn  # noqa: F401 - everything a case may need, imported before the limit
    import fastrnn.converters.onnx  # noqa: F401
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import fastrnn.converters.pytorch  # noqa: F401
    try:
        import torch  # noqa: F401 - the safetensors fallback reads with torch
        import safetensors.numpy  # noqa: F401
        import safetensors.torch  # noqa: F401
    except ImportError:
        pass
    size = _virtual_size()
    resource.setrlimit(resource.RLIMIT_AS, (size + limit, resource.getrlimit(
        resource.RLIMIT_AS)[1]))
    _send("ready")
    reader = io.BufferedReader(commands)
    while True:
        message = _receive(reader)
        if message is None:
            return
        case, args = message
        _send(_run(case, args))


if __name__ == "__main__":
    main()
