"""The native file: bit-exact round trips for every kind and option, clear errors for bad files,
bounded memory for hostile ones, and saves that stay atomic when processes race."""

import os
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

import fastrnn
import limited
from fastrnn import fileformat

INPUT_SIZE, HIDDEN_SIZE = 3, 4

# Every Config field away from its default in at least one case, peepholes included.
CASES = {
    "lstm-peephole-clip-coupled-bidir-2layer": dict(
        kind="lstm", num_layers=2, bidirectional=True, peephole=True, clip=2.5,
        input_forget=True),
    "lstm-proj-batchfirst-activations": dict(
        kind="lstm", proj_size=2, batch_first=True,
        activations=(("HardSigmoid", 0.2, 0.5), ("ScaledTanh", 1.5, 0.7), ("Softsign", 0, 0))),
    "gru-reset-before-bidir": dict(kind="gru", bidirectional=True, linear_before_reset=False),
    "gru-2layer-activations": dict(kind="gru", num_layers=2,
                                   activations=(("Sigmoid", 0, 0), ("LeakyRelu", 0.1, 0))),
    "rnn-tanh-bidir-batchfirst": dict(kind="rnn_tanh", bidirectional=True, batch_first=True),
    "rnn-relu-2layer": dict(kind="rnn_relu", num_layers=2),
}
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def build(case, dtype, seed=0):
    """A model with random weights for one case, through the public from_numpy builder."""
    options = dict(case)
    kind = options.pop("kind")
    num_layers = options.pop("num_layers", 1)
    peephole = options.pop("peephole", False)
    proj_size = options.pop("proj_size", 0)
    bidirectional = options.get("bidirectional", False)
    directions = 2 if bidirectional else 1
    if options.get("activations") and bidirectional:
        options["activations"] = options["activations"] * 2
    rng = np.random.default_rng(seed)
    rows = GATES[kind] * HIDDEN_SIZE
    out = proj_size or HIDDEN_SIZE
    layers = []
    for layer in range(num_layers):
        layer_input = INPUT_SIZE if layer == 0 else directions * out
        for _ in range(directions):
            weights = {"w_ih": rng.normal(size=(rows, layer_input)) * 0.5,
                       "w_hh": rng.normal(size=(rows, out)) * 0.5,
                       "b_ih": rng.normal(size=rows) * 0.1, "b_hh": rng.normal(size=rows) * 0.1}
            if peephole:
                weights["peephole"] = rng.normal(size=(3, HIDDEN_SIZE)) * 0.3
            if proj_size:
                weights["w_proj"] = rng.normal(size=(proj_size, HIDDEN_SIZE)) * 0.5
            layers.append({k: v.astype(dtype) for k, v in weights.items()})
    return fastrnn.from_numpy(kind, layers, dtype=dtype, **options)


@pytest.fixture
def saved_model(tmp_path):
    model = build(CASES["lstm-peephole-clip-coupled-bidir-2layer"], np.float32)
    path = tmp_path / "model.fastrnn"
    model.save(path)
    return model, path


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_round_trip_is_bit_exact(case, dtype, tmp_path):
    model = build(case, dtype)
    path = tmp_path / "model.fastrnn"
    model.save(path)
    loaded = fastrnn.load(path)
    assert loaded.config == model.config
    assert loaded.dtype == model.dtype == np.dtype(dtype)
    assert len(loaded.layers) == len(model.layers)
    for original, restored in zip(model.layers, loaded.layers):
        assert original.arrays().keys() == restored.arrays().keys()
        for name, array in original.arrays().items():
            assert restored.arrays()[name].dtype == array.dtype
            assert restored.arrays()[name].tobytes() == array.tobytes(), name
    x = np.random.default_rng(1).normal(size=(5, 2, INPUT_SIZE))
    if model.config.batch_first:
        x = x.transpose(1, 0, 2)
    lengths = np.array([5, 3])
    y, state = model(x, lengths=lengths)
    y_loaded, state_loaded = loaded(x, lengths=lengths)
    assert y_loaded.tobytes() == y.tobytes()
    # An LSTM's state is (h, c), a GRU's or RNN's h alone (as torch returns them).
    arrays = tuple(state) if model.kind == "lstm" else (state,)
    arrays_loaded = tuple(state_loaded) if model.kind == "lstm" else (state_loaded,)
    assert [a.tobytes() for a in arrays_loaded] == [a.tobytes() for a in arrays]
    # Saving the loaded model writes the same weights and config again.
    loaded.save(tmp_path / "again.fastrnn")
    assert (tmp_path / "again.fastrnn").read_bytes() == path.read_bytes()


def test_header_records_what_the_file_holds(saved_model):
    model, path = saved_model
    version, header, data = fileformat.read_header(path)
    assert version == fileformat.FORMAT_VERSION
    assert header["dtype"] == "float32"
    assert header["config"]["kind"] == "lstm" and header["config"]["clip"] == 2.5
    assert header["fastrnn_version"] == fastrnn.__version__
    assert len(data) == 4 * model.num_parameters
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind


def test_missing_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no fastrnn model file at"):
        fastrnn.load(tmp_path / "absent.fastrnn")
    with pytest.raises(ValueError, match="is a directory"):
        fastrnn.load(tmp_path)


@pytest.mark.parametrize("keep", [0, 5, 22, 60, -1])
def test_truncated_file_is_refused(saved_model, keep):
    """Cut inside the magic, the preamble, the header, and the last byte of the weights."""
    _, path = saved_model
    blob = path.read_bytes()
    path.write_bytes(blob[:keep] if keep >= 0 else blob[:keep])
    with pytest.raises(ValueError, match="truncated|not a fastrnn model file"):
        fastrnn.load(path)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n" + bytes(64),
                                     b'{"config": {}}', b"PK\x03\x04 a zip archive"])
def test_foreign_file_is_refused(tmp_path, content):
    path = tmp_path / "foreign.fastrnn"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a fastrnn model file"):
        fastrnn.load(path)


def test_flipped_data_byte_is_refused(saved_model):
    _, path = saved_model
    blob = bytearray(path.read_bytes())
    blob[-7] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="damaged: the weights' checksum"):
        fastrnn.load(path)


def test_damaged_header_is_refused(saved_model):
    _, path = saved_model
    blob = bytearray(path.read_bytes())
    start = blob.index(b'"hidden_size": ') + len(b'"hidden_size": ')
    blob[start] = ord("7")  # still valid JSON: only the checksum can tell
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="damaged header"):
        fastrnn.load(path)


def rewrite_header(path, edit):
    """Rewrite the header through `edit(dict)`, with a correct checksum, keeping the data."""
    version, header, data = fileformat.read_header(path)
    edit(header)
    text = fileformat.json.dumps(header).encode()
    preamble = struct.pack("<8sIQI", fileformat.MAGIC, version, len(text), zlib.crc32(text))
    path.write_bytes(preamble + text + data)


@pytest.mark.parametrize("edit, message", [
    (lambda h: h.pop("config"), "malformed header"),
    (lambda h: h.update(dtype="int16"), "dtype must be one of"),
    (lambda h: h["config"].update(hidden_size=-4), "hidden_size must be a positive integer"),
    (lambda h: h["arrays"][0].update(offset=10 ** 9), "runs past the end of the data"),
    (lambda h: h["arrays"][0].update(name="0.weight_ih"), "array name '0.weight_ih'"),
    (lambda h: h["arrays"][0].update(name="9.w_ih"), "array name '9.w_ih'"),
    (lambda h: h["arrays"].pop(), "missing weight"),
    (lambda h: h["arrays"][0].update(shape=[4, 3]), "has shape"),
    (lambda h: h.update(assumptions={"kind": "rnn_sigmoid"}), "'assumptions' must map"),
    (lambda h: h.update(assumptions={"batch_first": 0}), "'assumptions' must map"),
    (lambda h: h.update(assumptions=["kind"]), "'assumptions' must map"),
])
def test_inconsistent_header_is_refused(saved_model, edit, message):
    _, path = saved_model
    rewrite_header(path, edit)
    with pytest.raises(ValueError, match=message):
        fastrnn.load(path)


@pytest.mark.parametrize("version", [0, 3])
def test_other_format_version_is_refused(saved_model, version):
    _, path = saved_model
    blob = bytearray(path.read_bytes())
    blob[8:12] = struct.pack("<I", version)
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=f"format version {version}.*reads versions 1, 2"):
        fastrnn.load(path)


def test_version_2_without_low_bit_weights_is_refused(saved_model):
    """Version 2 is the low-bit weights' (tests/test_low_bits.py): a float file labelled so is
    malformed."""
    _, path = saved_model
    blob = bytearray(path.read_bytes())
    blob[8:12] = struct.pack("<I", 2)
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="format version 2 with weights None"):
        fastrnn.load(path)



# -- hostile files: every size checked against the file before anything is allocated ---------

def test_declared_layer_count_beyond_the_file_is_refused_in_bounded_memory(saved_model, tmp_path):
    """A 1 KB file whose config claims 1e8 or 1e9 layers (valid checksums) once allocated GiBs."""
    _, path = saved_model
    paths = []
    for num_layers in (10 ** 8, 10 ** 9):
        bomb = tmp_path / f"layers-{num_layers}.fastrnn"
        bomb.write_bytes(path.read_bytes())
        rewrite_header(bomb, lambda h: h["config"].update(num_layers=num_layers))
        paths.append(bomb)
    for bomb in paths:
        outcome = limited.worker().call("load", str(bomb), timeout=60)
        assert outcome.kind == "error" and outcome.type == "ValueError", outcome
        assert str(bomb) in outcome.message and "layer" in outcome.message, outcome


@pytest.mark.parametrize("shape", [[2 ** 70], [2 ** 40, 2 ** 40], [2 ** 62, 4]])
def test_shape_too_large_for_the_file_is_a_value_error(saved_model, shape):
    _, path = saved_model
    rewrite_header(path, lambda h: h["arrays"][0].update(shape=shape))
    with pytest.raises(ValueError, match=f"{path}.*runs past the end of the data section"):
        fastrnn.load(path)


def test_deeply_nested_header_is_a_value_error(tmp_path):
    text = b'{"config": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    path = tmp_path / "nested.fastrnn"
    path.write_bytes(struct.pack("<8sIQI", fileformat.MAGIC, 1, len(text), zlib.crc32(text))
                     + text)
    with pytest.raises(ValueError, match=f"{path}.*nested too deeply"):
        fastrnn.load(path)


@pytest.mark.parametrize("claim", ["header", "data"])
def test_declared_sizes_beyond_the_file_are_refused(saved_model, claim):
    _, path = saved_model
    blob = bytearray(path.read_bytes())
    if claim == "header":
        blob[12:20] = struct.pack("<Q", 2 ** 63)
        message = "truncated: its header"
    else:
        rewrite_header(path, lambda h: h.update(data_bytes=2 ** 62))
        blob = path.read_bytes()
        message = "truncated or padded"
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=f"{path}.*{message}"):
        fastrnn.load(path)


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_not_a_regular_file_is_refused_at_once(tmp_path, kind):
    """/dev/zero was read until MemoryError and a FIFO blocked for ever: both must be refused
    before anything is read."""
    if kind == "device":
        path = "/dev/zero"
    else:
        path = str(tmp_path / "pipe.fastrnn")
        os.mkfifo(path)
    outcome = limited.worker().call("load", path, timeout=30)
    assert outcome.kind == "error" and outcome.type == "ValueError", outcome
    assert path in outcome.message and "not a regular file" in outcome.message, outcome
    assert outcome.seconds < 5, outcome


def test_magic_bytes_come_from_a_bounded_read(tmp_path):
    """A 4 GiB file that is not a model is refused from its first bytes, not read whole."""
    path = tmp_path / "big.bin"
    with open(path, "wb") as file:
        file.truncate(4 << 30)  # sparse: no disk used
    outcome = limited.worker().call("load", str(path), timeout=30)
    assert outcome.kind == "error" and "not a fastrnn model file" in outcome.message, outcome
    assert outcome.seconds < 5, outcome


def test_cli_info_sniffs_the_magic_from_the_first_bytes(tmp_path):
    """`fastrnn info` read a whole file to look at its first eight bytes."""
    path = tmp_path / "big.bin"
    with open(path, "wb") as file:
        file.truncate(4 << 30)
    outcome = limited.worker().call("cli", ["info", str(path)], timeout=30)
    assert outcome.kind == "ok", outcome
    status, errors = outcome.value
    assert status == 1 and "unknown checkpoint type '.bin'" in errors, errors


# -- atomic saves ------------------------------------------------------------------------------

def test_save_keeps_permissions_and_leaves_no_temporary_file(saved_model, tmp_path):
    model, path = saved_model
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # as open() would have made it
    path.chmod(0o640)
    model.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # an overwritten file keeps its mode
    assert os.listdir(tmp_path) == [path.name]


def test_save_errors_name_the_users_path(saved_model, tmp_path):
    model, _ = saved_model
    missing = tmp_path / "no such directory" / "model.fastrnn"
    with pytest.raises(FileNotFoundError) as error:
        model.save(missing)
    assert str(missing) in str(error.value) and ".tmp" not in str(error.value)
    directory = tmp_path / "a directory"
    directory.mkdir()
    with pytest.raises(IsADirectoryError) as error:
        model.save(directory)
    assert str(directory) in str(error.value) and ".tmp" not in str(error.value)
    assert os.listdir(tmp_path) == sorted(os.listdir(tmp_path)) and \
        sorted(os.listdir(tmp_path)) == ["a directory", "model.fastrnn"]
    with pytest.raises(TypeError, match="str or os.PathLike"):
        model.save(42)


WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    import fastrnn
    path, seed, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    rng = np.random.default_rng(seed)
    layer = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in
             (("w_ih", (64, 16)), ("w_hh", (64, 16)), ("b_ih", (64,)), ("b_hh", (64,)))}
    model = fastrnn.from_numpy("lstm", [layer] * 8)
    print("ready", flush=True)
    sys.stdin.readline()
    saves = failures = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            model.save(path)
            saves += 1
        except Exception as error:
            failures += 1
            last = error
    print(saves, failures, repr(last) if failures else "", flush=True)
""")


def test_concurrent_saves_from_two_processes_leave_a_model_at_every_moment(tmp_path):
    """Two processes saving to one path once shared a temporary name: saves failed and readers
    found a half-written file at the path."""
    path = tmp_path / "shared.fastrnn"
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(seed), "1.5"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
               for seed in (1, 2)]
    for writer in writers:
        assert writer.stdout.readline().strip() == "ready"
    for writer in writers:
        writer.stdin.write("go\n")
        writer.stdin.flush()
    reads, bad, stop = [0], [], threading.Event()

    def read_while_they_write():
        while not stop.is_set():
            try:
                fileformat.read_header(path)
                reads[0] += 1
            except FileNotFoundError:
                pass  # before the first save lands
            except ValueError as error:
                bad.append(str(error))
    reader = threading.Thread(target=read_while_they_write)
    reader.start()
    results = [writer.communicate(timeout=120)[0].split(maxsplit=2) for writer in writers]
    stop.set()
    reader.join()
    for saves, failures, *last in results:
        assert int(saves) > 0 and int(failures) == 0, (saves, failures, last)
    assert not bad, f"{len(bad)} of {len(bad) + reads[0]} reads found a damaged file: {bad[0]}"
    assert reads[0] > 0
    assert fastrnn.load(path).config.num_layers == 8
    assert os.listdir(tmp_path) == [path.name]


def test_what_a_converter_assumed_is_saved_with_the_model(tmp_path):
    """A state dict's RNN: the nonlinearity and the layout were assumed; the file keeps that."""
    torch = pytest.importorskip("torch")
    from fastrnn.converters.pytorch import AssumptionWarning
    state_dict = torch.nn.RNN(3, 4).state_dict()
    with pytest.warns(AssumptionWarning):
        model = fastrnn.from_torch(state_dict)
    path = tmp_path / "assumed.fastrnn"
    model.save(path)
    assert fastrnn.load(path).assumptions == {"kind": "rnn_tanh", "batch_first": False}
    stated = fastrnn.from_torch(state_dict, kind="rnn_tanh", batch_first=False)
    stated.save(path)
    assert "assumptions" not in fileformat.read_header(path)[1]
    assert fastrnn.load(path).assumptions == {}
