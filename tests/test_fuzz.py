"""Fuzzing with Hypothesis: damaged and hostile inputs end in a clear error or a correct answer.

Model files, stream snapshots, ONNX protobufs and safetensors files are truncated, bit-flipped,
overwritten and edited field by field (with their checksums made right again, so that the checks
behind the checksums are reached); model calls and stream steps get random shapes, dtypes,
strides, byte orders, NaN and infinities. Every case runs in the child process of limited.py,
under a memory limit (RLIMIT_AS, 1 GiB beyond its size after imports) and a time limit, and must
end in

- a ValueError, TypeError, KeyError or FileNotFoundError with a message (for a model file, one
  that names the file), or
- a correct answer: a loaded model or restored stream runs as tests/reference.py says for the
  weights and state it holds, and an ONNX graph gives what onnxruntime gives where onnxruntime
  runs it, in fresh writable outputs.

`make test` runs a bounded number of examples from a fixed seed (well under two minutes);
`make fuzz` sets FASTRNN_FUZZ=long: many more examples, from random seeds (a failure prints the
seed that reproduces it).
"""

import json
import os
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz_child
import limited

LONG = os.environ.get("FASTRNN_FUZZ") == "long"
EXAMPLES = int(os.environ.get("FASTRNN_FUZZ_EXAMPLES", 2000 if LONG else 100))
FUZZ = settings(max_examples=EXAMPLES, derandomize=not LONG, database=None, deadline=None,
                print_blob=LONG, suppress_health_check=list(HealthCheck))
CASE_TIMEOUT = 30.0      # seconds a case may take, a compile of a new specialisation included
WARM_UP_TIMEOUT = 600.0  # the first calls compile (or load from numba's cache) every kernel
CLEAR_ERRORS = {"ValueError", "TypeError", "KeyError", "FileNotFoundError"}
SPECS = sorted(fuzz_child.SPECS)
STREAMABLE = [spec for spec in SPECS if not fuzz_child.SPECS[spec][1].get("bidirectional")]


def call(case, *args):
    return limited.worker().call(case, *args, timeout=CASE_TIMEOUT)


def assert_clear(outcome, *names):
    """A clear error naming `names`, or an accepted input with a correct answer."""
    assert outcome.kind in ("ok", "error"), str(outcome)
    if outcome.kind == "error":
        assert outcome.type in CLEAR_ERRORS and outcome.message.strip(), str(outcome)
        for name in names:
            assert name in outcome.message, str(outcome)


class Bases:
    """The files and snapshots the mutations start from (a short repr for Hypothesis' reports)."""

    def __init__(self, directory, files, snapshots):
        self.directory, self.files, self.snapshots = directory, files, snapshots

    def __repr__(self):
        return f"Bases({self.directory})"


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """Every spec's model saved, called and streamed once, with the warm-up's long time limit."""
    directory = tmp_path_factory.mktemp("fuzz")
    files, snapshots = {}, {}
    worker = limited.worker()
    for spec in SPECS:
        path = directory / f"{spec}.fastrnn"
        outcome = worker.call("save_spec", spec, str(path), timeout=WARM_UP_TIMEOUT)
        assert outcome.kind == "ok", str(outcome)
        assert worker.call("model_file", str(path), timeout=WARM_UP_TIMEOUT).kind == "ok"
        files[spec] = path.read_bytes()
    for spec in STREAMABLE:
        outcome = worker.call("snapshot_base", spec, 3, timeout=WARM_UP_TIMEOUT)
        assert outcome.kind == "ok", str(outcome)
        snapshots[spec] = outcome.value
        assert worker.call("snapshot", spec, outcome.value, timeout=WARM_UP_TIMEOUT).kind == "ok"
    return Bases(directory, files, snapshots)


# -- generic damage -----------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.sampled_from([0, 1, -1, 2, 3, 4, 5, 2 ** 31, 2 ** 63, 10 ** 9])
    | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=8)
    | st.sampled_from(["lstm", "gru", "rnn_tanh", "float64", "float32", "0.w_ih", "1.w_hh",
                      "Tanh", "Sigmoid"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.text(max_size=6), children, max_size=3),
    max_leaves=8)
SPECIAL_FLOATS = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, 1e30, -3.5])
# For weights, special values but no huge finite ones: float32's rounding times a weight of 1e4
# is no measure of fastrnn (see fuzz_child.check_model).
SPECIAL_WEIGHTS = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, 8.0, -3.5])


@st.composite
def damaged_bytes(draw, blob):
    """`blob` truncated, with a bit flipped, bytes overwritten, or bytes appended."""
    blob = bytearray(blob)
    how = draw(st.sampled_from(["truncate", "flip", "overwrite", "append"]))
    if how == "truncate":
        return bytes(blob[:draw(st.integers(0, len(blob) - 1))])
    if how == "append":
        return bytes(blob + draw(st.binary(min_size=1, max_size=64)))
    position = draw(st.integers(0, len(blob) - 1))
    if how == "flip":
        blob[position] ^= 1 << draw(st.integers(0, 7))
    else:
        data = draw(st.binary(min_size=1, max_size=16))
        blob[position:position + len(data)] = data
    return bytes(blob)


def edit_json(draw, node, depth=0):
    """`node` with one drawn place replaced, deleted or added to (a JSON tree, edited in place)."""
    keys = sorted(node) if isinstance(node, dict) else \
        list(range(len(node))) if isinstance(node, list) else []
    if not keys or depth > 5 or draw(st.integers(0, 4)) == 0:
        return draw(JSON_VALUES)
    key = draw(st.sampled_from(keys))
    action = draw(st.sampled_from(["descend", "descend", "replace", "delete", "add"]))
    if action == "delete":
        del node[key]
    elif action == "replace":
        node[key] = draw(JSON_VALUES)
    elif action == "add":
        if isinstance(node, dict):
            node[draw(st.text(max_size=12))] = draw(JSON_VALUES)
        else:
            node.insert(key, draw(JSON_VALUES))
    else:
        node[key] = edit_json(draw, node[key], depth + 1)
    return node


# -- native model files -------------------------------------------------------------------------

_PREFIX = struct.Struct("<8sIQI")  # magic, format version, header length, header CRC-32


def _split_model_file(blob):
    _, version, size, _ = _PREFIX.unpack_from(blob)
    header = json.loads(blob[_PREFIX.size:_PREFIX.size + size])
    return version, header, bytearray(blob[_PREFIX.size + size:])


def _join_model_file(version, header, data, magic=b"FASTRNN\0"):
    text = json.dumps(header).encode()
    text += b" " * (-(_PREFIX.size + len(text)) % 8)
    return _PREFIX.pack(magic, version, len(text), zlib.crc32(text)) + text + bytes(data)


@st.composite
def damaged_model_files(draw, files):
    blob = files[draw(st.sampled_from(SPECS))]
    how = draw(st.sampled_from(["bytes", "header", "header", "header", "prefix", "weights"]))
    if how == "bytes":
        return draw(damaged_bytes(blob))
    version, header, data = _split_model_file(blob)
    if how == "header":  # a JSON edit behind a right checksum: the header's checks are reached
        return _join_model_file(version, edit_json(draw, header), data)
    if how == "weights":  # a weight made special, the data checksum made right again
        values = np.frombuffer(data, header["dtype"]).copy()
        values[draw(st.integers(0, values.size - 1))] = draw(SPECIAL_WEIGHTS)
        header["crc32"] = zlib.crc32(values.tobytes())
        return _join_model_file(version, header, values.tobytes())
    blob = bytearray(blob)
    offset, field = draw(st.sampled_from([(8, "<I"), (12, "<Q"), (20, "<I")]))
    bits = struct.calcsize(field) * 8
    value = draw(st.integers(0, 2 ** bits - 1) | st.integers(0, 4096))
    struct.pack_into(field, blob, offset, value)
    return bytes(blob)


@FUZZ
@given(data=st.data())
def test_damaged_model_files(warm, data):
    path = warm.directory / "damaged.fastrnn"
    path.write_bytes(data.draw(damaged_model_files(warm.files)))
    assert_clear(call("model_file", str(path)), str(path))


# -- stream snapshots, through the public API ---------------------------------------------------

@st.composite
def damaged_snapshots(draw, snapshots):
    """Damage of any kind; or a field of the (documented) header, a value of the state or the
    length changed with the trailing CRC-32 made right again, so that the checks behind it are
    reached."""
    spec = draw(st.sampled_from(STREAMABLE))
    blob = snapshots[spec]
    how = draw(st.sampled_from(["bytes", "field", "field", "value", "resize"]))
    if how == "bytes":
        return spec, draw(damaged_bytes(blob))
    body = bytearray(blob[:-4])
    if how == "field":
        offset = draw(st.sampled_from([8, 12, 40, 44, 45, 48, 52, 56, 60, 64, 68]))
        width = 1 if offset in (44, 45) else 4
        body[offset:offset + width] = draw(
            st.integers(0, 2 ** (8 * width) - 1) | st.integers(0, 3)).to_bytes(width, "little")
    elif how == "value":
        dtype = fuzz_child.SPECS[spec][2]
        state = np.frombuffer(bytes(body[72:]), np.dtype(dtype).newbyteorder("<")).copy()
        state[draw(st.integers(0, state.size - 1))] = draw(SPECIAL_FLOATS)
        body[72:] = state.tobytes()
    else:
        size = draw(st.integers(0, len(body) + 64))
        body = body[:size] + bytes(max(0, size - len(body)))
    return spec, bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))


@FUZZ
@given(data=st.data())
def test_damaged_snapshots(warm, data):
    spec, blob = data.draw(damaged_snapshots(warm.snapshots))
    assert_clear(call("snapshot", spec, blob))


# -- inputs and states --------------------------------------------------------------------------

DTYPES = st.sampled_from([np.float32, np.float64, np.float16, ">f4", ">f8", np.int32, np.bool_,
                          np.complex64, np.longdouble])


@st.composite
def arrays(draw, shape, dtype=None):
    """An array of `shape` (drawn dtype unless given): normal values with NaN and infinities
    sprinkled, laid out contiguous, transposed, strided or read-only."""
    dtype = np.dtype(dtype or draw(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    values = rng.standard_normal(shape)
    if values.size and draw(st.booleans()):
        flat = values.reshape(-1)
        flat[rng.integers(0, flat.size, draw(st.integers(1, 3)))] = draw(SPECIAL_FLOATS)
    layout = draw(st.sampled_from(["contiguous", "fortran", "strided", "read-only"]))
    if layout == "strided" and values.ndim:
        wide = np.repeat(values, 2, axis=-1)
        values = wide[..., ::2]
    with np.errstate(invalid="ignore", over="ignore"):
        array = values.astype(dtype)
    if layout == "strided" and array.ndim:
        array = np.repeat(array, 2, axis=-1)[..., ::2]
    elif layout == "fortran":
        array = np.asfortranarray(array)
    elif layout == "read-only":
        array.flags.writeable = False
    return array


def near(draw, shape):
    """`shape`, or (one time in three) a shape that differs from it somewhere."""
    shape = list(shape)
    if draw(st.integers(0, 2)) == 0:
        what = draw(st.sampled_from(["size", "drop", "add"]))
        if what == "size" and shape:
            shape[draw(st.integers(0, len(shape) - 1))] = draw(st.integers(0, 5))
        elif what == "drop" and shape:
            shape.pop(draw(st.integers(0, len(shape) - 1)))
        else:
            shape.insert(draw(st.integers(0, len(shape))), draw(st.integers(0, 3)))
    return tuple(shape)


@st.composite
def model_calls(draw):
    spec = draw(st.sampled_from(SPECS))
    kind, options, dtype = fuzz_child.SPECS[spec]
    layers = options.get("num_layers", 1) * (2 if options.get("bidirectional") else 1)
    h_out = options.get("proj_size") or fuzz_child.HIDDEN_SIZE
    steps, batch = draw(st.integers(1, 4)), draw(st.integers(0, 3))
    unbatched = draw(st.integers(0, 5)) == 0
    if unbatched:
        x_shape = (steps, fuzz_child.INPUT_SIZE)
    else:
        x_shape = (batch, steps, fuzz_child.INPUT_SIZE) if options.get("batch_first") else \
            (steps, batch, fuzz_child.INPUT_SIZE)
    likely = st.sampled_from([dtype, dtype]) | DTYPES
    x = draw(arrays(near(draw, x_shape), draw(likely)))
    state = None
    if draw(st.booleans()):
        rows = () if unbatched else (batch,)
        h = draw(arrays(near(draw, (layers, *rows, h_out)), draw(likely)))
        c = draw(arrays(near(draw, (layers, *rows, fuzz_child.HIDDEN_SIZE)), draw(likely)))
        state = (h, c) if kind == "lstm" or draw(st.integers(0, 5)) == 0 else h
    lengths = None
    if not unbatched and draw(st.booleans()):
        count = batch if draw(st.integers(0, 4)) else draw(st.integers(0, 4))
        lengths = draw(st.lists(st.integers(1, steps) | st.integers(-2, steps + 2),
                                min_size=count, max_size=count))
        lengths = np.array(lengths).astype(draw(st.sampled_from([np.int64, np.int32, np.uint8,
                                                                 np.float64])))
    return spec, x, state, lengths


@FUZZ
@given(arguments=model_calls())
def test_model_calls_with_random_inputs_and_states(warm, arguments):
    assert_clear(call("model_call", *arguments))


@st.composite
def stream_steps(draw):
    spec = draw(st.sampled_from(STREAMABLE))
    dtype = fuzz_child.SPECS[spec][2]
    xs = [draw(arrays(near(draw, (1, fuzz_child.INPUT_SIZE)),
                      draw(st.sampled_from([dtype, dtype]) | DTYPES)))
          for _ in range(draw(st.integers(1, 4)))]
    return spec, xs


@FUZZ
@given(arguments=stream_steps())
def test_stream_steps_with_random_inputs(warm, arguments):
    assert_clear(call("stream_step", *arguments))


# -- ONNX protobufs -------------------------------------------------------------------------------

def _onnx_models():
    """Three graphs: a recurrent node with every optional input, a bidirectional GRU (layout 1
    is not compared: onnxruntime does not run it), and torch-style glue around an LSTM (zero
    states from Shape, Gather, Concat and ConstantOfShape; Squeeze; a Gemm head and Softmax)."""
    from onnx import TensorProto, helper, numpy_helper

    from onnx_cases import recurrent_graph
    models = [recurrent_graph("LSTM", sequence_lens=True, initial_state=True, peephole=True),
              recurrent_graph("GRU", direction="bidirectional", initial_state=True,
                              sequence_lens=True, linear_before_reset=1)]
    rng = np.random.default_rng(5)
    hidden, inputs = 4, 3
    weights = {"W": rng.uniform(-0.5, 0.5, (1, 4 * hidden, inputs)),
               "R": rng.uniform(-0.5, 0.5, (1, 4 * hidden, hidden)),
               "B": rng.uniform(-0.5, 0.5, (1, 8 * hidden)),
               "head": rng.uniform(-0.5, 0.5, (hidden, 2)), "bias": rng.uniform(-0.5, 0.5, 2)}
    initializers = [numpy_helper.from_array(value.astype(np.float32), name)
                    for name, value in weights.items()]
    initializers += [numpy_helper.from_array(np.array(value, np.int64), name) for name, value in
                     (("one", [1]), ("batch_index", [1]), ("hidden", [hidden]), ("axis1", [1]),
                      ("flat", [-1, hidden]))]
    nodes = [
        helper.make_node("Shape", ["X"], ["x_shape"], name="shape"),
        helper.make_node("Gather", ["x_shape", "batch_index"], ["batch"], name="gather"),
        helper.make_node("Concat", ["one", "batch", "hidden"], ["state_shape"], axis=0,
                         name="concat"),
        helper.make_node("ConstantOfShape", ["state_shape"], ["zeros"], name="zeros",
                         value=numpy_helper.from_array(np.zeros(1, np.float32))),
        helper.make_node("LSTM", ["X", "W", "R", "B", "", "zeros", "zeros"], ["Y", "Y_h"],
                         hidden_size=hidden, name="lstm"),
        helper.make_node("Squeeze", ["Y", "axis1"], ["y"], name="squeeze"),
        helper.make_node("Reshape", ["y", "flat"], ["rows"], name="reshape"),
        helper.make_node("Gemm", ["rows", "head", "bias"], ["logits"], name="gemm"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes, "glue", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", inputs])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)], initializers)
    models.append(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                    ir_version=10))
    return models


ONNX_ATTRIBUTES = ["hidden_size", "direction", "layout", "axis", "axes", "perm", "to", "clip",
                   "activations", "activation_alpha", "linear_before_reset", "input_forget",
                   "transA", "transB", "alpha", "beta", "value", "starts", "ends", "num_outputs"]


@st.composite
def mutated_onnx(draw, models):
    from onnx import ModelProto, TensorProto, helper, numpy_helper
    model = ModelProto()
    model.CopyFrom(draw(st.sampled_from(models)))
    graph = model.graph
    how = draw(st.sampled_from(["bytes", "attribute", "op_type", "node_input", "initializer",
                                "graph_input", "opset", "output"]))
    if how == "bytes":
        return draw(damaged_bytes(model.SerializeToString()))
    if how == "attribute":
        node = draw(st.sampled_from(list(graph.node)))
        name = draw(st.sampled_from(ONNX_ATTRIBUTES))
        value = draw(st.integers(-3, 70) | st.floats(-10, 10) | st.sampled_from(
            ["forward", "reverse", "bidirectional", "Tanh", "nope", [0, 2, 1], [1], [-1, 5],
             ["Relu", "Tanh", "Elu"], [0.5, 2.0]]))
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(kept)
        if name == "value":
            value = numpy_helper.from_array(np.full(draw(st.integers(0, 3)), 2.0, np.float32))
        node.attribute.append(helper.make_attribute(name, value))
    elif how == "op_type":
        node = draw(st.sampled_from(list(graph.node)))
        node.op_type = draw(st.sampled_from(["LSTM", "GRU", "RNN", "Identity", "Squeeze",
                                             "Concat", "Gemm", "Add", "Transpose", "Erf"]))
    elif how == "node_input":
        node = draw(st.sampled_from(list(graph.node)))
        names = [v.name for v in graph.input] + [t.name for t in graph.initializer] + \
            [out for n in graph.node for out in n.output] + ["", "missing"]
        inputs = list(node.input)
        position = draw(st.integers(0, len(inputs)))
        choice = draw(st.sampled_from(names))
        if position == len(inputs) or draw(st.booleans()):
            inputs.insert(position, choice)
        else:
            inputs[position] = choice
        del node.input[:]
        node.input.extend(inputs)
    elif how == "initializer":
        tensor = draw(st.sampled_from(list(graph.initializer)))
        what = draw(st.sampled_from(["dims", "type", "data", "values"]))
        if what == "dims":
            dims = draw(st.lists(st.integers(0, 6) | st.sampled_from([2 ** 31, 2 ** 40]),
                                 max_size=4))
            del tensor.dims[:]
            tensor.dims.extend(dims)
        elif what == "type":
            tensor.data_type = draw(st.sampled_from([TensorProto.DOUBLE, TensorProto.FLOAT16,
                                                     TensorProto.INT32, TensorProto.BOOL,
                                                     TensorProto.STRING, 0, 99]))
        elif what == "data":
            tensor.raw_data = tensor.raw_data[:draw(st.integers(0, len(tensor.raw_data)))]
        else:
            values = numpy_helper.to_array(tensor).copy()
            if values.size and values.dtype.kind == "f":
                values.reshape(-1)[draw(st.integers(0, values.size - 1))] = draw(
                    SPECIAL_WEIGHTS)
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    elif how == "graph_input":
        value = draw(st.sampled_from(list(graph.input)))
        tensor_type = value.type.tensor_type
        what = draw(st.sampled_from(["dim", "no shape", "type"]))
        if what == "dim" and tensor_type.shape.dim:
            dim = tensor_type.shape.dim[draw(st.integers(0, len(tensor_type.shape.dim) - 1))]
            size = draw(st.integers(0, 5) | st.sampled_from([2 ** 31, -1]) | st.just("named"))
            if size == "named":
                dim.dim_param = "n"
            else:
                dim.dim_value = size
        elif what == "no shape":
            tensor_type.ClearField("shape")
        else:
            tensor_type.elem_type = draw(st.sampled_from([TensorProto.DOUBLE, TensorProto.INT64,
                                                          TensorProto.FLOAT16, 0]))
    elif how == "opset":
        model.opset_import[0].version = draw(st.integers(1, 25))
    else:
        names = [v.name for v in graph.input] + [t.name for t in graph.initializer] + \
            [out for n in graph.node for out in n.output if out]
        graph.output.append(helper.make_tensor_value_info(draw(st.sampled_from(names)),
                                                          TensorProto.FLOAT, None))
    return model.SerializeToString()


@FUZZ
@given(data=st.data())
def test_mutated_onnx_models(warm, data):
    models = _onnx_models_cached()
    outcome = call("onnx", data.draw(mutated_onnx(models)), data.draw(st.integers(0, 99)))
    if outcome.kind == "crash" and outcome.note == "onnxruntime":
        return  # the peer itself died on this graph (it aborts on an empty batch): no answer
    assert_clear(outcome)


_cache = {}


def _onnx_models_cached():
    if "onnx" not in _cache:
        _cache["onnx"] = _onnx_models()
    return _cache["onnx"]


def test_the_onnx_base_models_match_onnxruntime(warm):
    """The unmutated graphs run and agree with onnxruntime: what the mutations start from."""
    for model in _onnx_models_cached():
        outcome = call("onnx", model.SerializeToString(), 0)
        assert outcome.kind == "ok" and outcome.value == "ran; matches onnxruntime", str(outcome)


# -- safetensors files ----------------------------------------------------------------------------

def _safetensors_file():
    """A one-layer LSTM state dict as torch names it, written by safetensors.numpy."""
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(6)
    hidden, inputs = 4, 3
    tensors = {"weight_ih_l0": rng.uniform(-0.5, 0.5, (4 * hidden, inputs)),
               "weight_hh_l0": rng.uniform(-0.5, 0.5, (4 * hidden, hidden)),
               "bias_ih_l0": rng.uniform(-0.5, 0.5, 4 * hidden),
               "bias_hh_l0": rng.uniform(-0.5, 0.5, 4 * hidden)}
    return safetensors_numpy.save({k: v.astype(np.float32) for k, v in tensors.items()})


@st.composite
def damaged_safetensors(draw, blob):
    how = draw(st.sampled_from(["bytes", "header", "header", "length"]))
    if how == "bytes":
        return draw(damaged_bytes(blob))
    size = struct.unpack_from("<Q", blob)[0]
    if how == "length":
        value = draw(st.integers(0, 2 ** 64 - 1) | st.integers(0, len(blob) + 16))
        return struct.pack("<Q", value) + blob[8:]
    header = json.loads(blob[8:8 + size])
    text = json.dumps(edit_json(draw, header)).encode()
    return struct.pack("<Q", len(text)) + text + blob[8 + size:]


@FUZZ
@given(data=st.data())
def test_damaged_safetensors_files(warm, data):
    path = warm.directory / "damaged.safetensors"
    if "safetensors" not in _cache:
        _cache["safetensors"] = _safetensors_file()
    path.write_bytes(data.draw(damaged_safetensors(_cache["safetensors"])))
    assert_clear(call("safetensors", str(path)))
