"""The `fastrnn` command: convert and info in-process through main(), once as the installed script."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastrnn  # noqa: E402
from fastrnn.cli import main  # noqa: E402

TOLERANCE_F32 = 3e-5


def run(argv, capsys):
    """(exit status, stdout, stderr) of main(argv)."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exit:  # argparse's usage errors and --version
        status = exit.code
    out, err = capsys.readouterr()
    return status, out, err


def assert_user_error(argv, capsys, message):
    status, out, err = run(argv, capsys)
    assert status == 1, (status, out, err)
    assert err.startswith("fastrnn: error: ") and message in err, err
    assert "Traceback" not in err and out == ""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A training checkpoint holding a 2-layer GRU under model.rnn, and the GRU itself."""
    torch.manual_seed(0)
    gru = torch.nn.GRU(3, 6, num_layers=2)
    path = tmp_path_factory.mktemp("checkpoints") / "run.pt"
    torch.save({"model": {"rnn." + k: v for k, v in gru.state_dict().items()}, "epoch": 7}, path)
    return path, gru


def assert_matches(model, module, x):
    with torch.no_grad():
        expected_y, expected_h = module(torch.as_tensor(x))
    y, h = model(x)
    assert np.max(np.abs(y - expected_y.numpy())) < TOLERANCE_F32
    assert np.max(np.abs(h - expected_h.numpy())) < TOLERANCE_F32


def test_convert_then_load_matches_torch(checkpoint, tmp_path, capsys):
    path, gru = checkpoint
    output = tmp_path / "gru.fastrnn"
    status, out, err = run(["convert", path, "-o", output, "--prefix", "model.rnn",
                            "--no-batch-first"], capsys)
    assert status == 0, err
    assert out.startswith(f"wrote {output}: gru, 2 layer(s)") and err == ""
    model = fastrnn.load(output)
    assert model.kind == "gru" and not model.config.batch_first
    assert_matches(model, gru, np.random.default_rng(1).normal(size=(7, 2, 3)).astype(np.float32))


def test_convert_options_and_default_output(tmp_path, capsys):
    """--kind sets a plain RNN's nonlinearity, --batch-first the layout; -o defaults to .fastrnn."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    torch.manual_seed(2)
    rnn = torch.nn.RNN(3, 5, nonlinearity="relu", batch_first=True)
    path = tmp_path / "relu.safetensors"
    safetensors_torch.save_file(rnn.state_dict(), str(path))
    status, _, err = run(["convert", path, "--kind", "rnn_relu", "--batch-first"], capsys)
    assert status == 0 and err == "", err
    model = fastrnn.load(tmp_path / "relu.fastrnn")
    assert model.kind == "rnn_relu" and model.config.batch_first
    assert_matches(model, rnn, np.random.default_rng(3).normal(size=(2, 6, 3)).astype(np.float32))


def test_info_describes_a_model_file(tmp_path, capsys):
    torch.manual_seed(4)
    lstm = torch.nn.LSTM(4, 8, num_layers=2, bidirectional=True, proj_size=3).double()
    model = fastrnn.from_torch(lstm)
    model.save(tmp_path / "lstm.fastrnn")
    status, out, err = run(["info", tmp_path / "lstm.fastrnn"], capsys)
    assert status == 0, err
    fields = dict(line.split(":", 1) for line in out.strip().splitlines())
    fields = {name: value.strip() for name, value in fields.items()}
    assert fields["architecture"] == "LSTM, 2 layer(s), bidirectional"
    assert fields["input_size"] == "4" and fields["hidden_size"] == "8"
    assert fields["output_size"].startswith("6 ")
    assert fields["dtype"] == "float64"
    assert fields["layout"].startswith("time-major")
    expected_count = sum(p.numel() for p in lstm.parameters())
    assert fields["parameters"].startswith(f"{expected_count:,} ")
    assert "format version 1" in fields["source"]
    assert fields["options"] == "proj_size=3"
    assert fields["assumed"] == "none recorded"


def test_info_converts_a_checkpoint_in_memory(checkpoint, capsys):
    path, _ = checkpoint
    status, out, err = run(["info", path, "--prefix", "model.rnn"], capsys)
    assert status == 0, err
    assert "GRU, 2 layer(s), unidirectional" in out and "converted in memory" in out
    assert "reset after the matmul" in out
    assert ("assumed:      time-major (T, B, I) inputs (the checkpoint cannot tell; "
            "--batch-first or --no-batch-first states it)") in out.splitlines()
    assert err == ""  # info shows the assumption in its description, not as a warning
    status, out, err = run(["info", path, "--prefix", "model.rnn", "--batch-first"], capsys)
    assert status == 0, err
    assert "layout:       batch-first (B, T, I)" in out and "assumed:      none" in out


def test_convert_warns_what_a_state_dict_cannot_tell(tmp_path, capsys):
    """nn.RNN(relu, batch_first=True) saved as a state dict: both facts are missing."""
    torch.manual_seed(9)
    rnn = torch.nn.RNN(3, 5, nonlinearity="relu", batch_first=True)
    path = tmp_path / "rnn.pt"
    torch.save(rnn.state_dict(), path)
    status, out, err = run(["convert", path], capsys)
    assert status == 0 and out.startswith("wrote ")
    assert err == (
        "fastrnn: warning: the checkpoint cannot tell, so fastrnn assumed a plain RNN's "
        "nonlinearity: tanh, and time-major (T, B, I) inputs; nn.RNN(nonlinearity='relu') needs "
        "--kind rnn_relu, and a module built with batch_first=True needs --batch-first. State "
        "them with --kind and --batch-first or --no-batch-first to silence this warning\n")
    status, out, err = run(["info", path], capsys)
    assert status == 0 and err == ""
    assert ("assumed:      a plain RNN's nonlinearity: tanh, and time-major (T, B, I) inputs (the "
            "checkpoint cannot tell; --kind and --batch-first or --no-batch-first state them)"
            ) in out.splitlines()
    # Stated, there is nothing to warn about, and the model is torch's.
    status, out, err = run(["convert", path, "--kind", "rnn_tanh", "--no-batch-first"], capsys)
    assert status == 0 and err == ""
    status, out, err = run(["convert", path, "--kind", "rnn_relu", "--batch-first"], capsys)
    assert status == 0 and err == ""
    assert_matches(fastrnn.load(tmp_path / "rnn.fastrnn"), rnn,
                   np.random.default_rng(10).normal(size=(2, 4, 3)).astype(np.float32))


def test_user_mistakes_are_one_line_on_stderr(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    out = tmp_path / "x.fastrnn"
    assert_user_error(["convert", tmp_path / "absent.pt", "-o", out], capsys, "no such file")
    assert_user_error(["convert", path, "-o", out], capsys,
                      "recurrent weights were found under prefix 'model.rnn.'")
    assert_user_error(["convert", path, "-o", out, "--prefix", "model.cnn"], capsys,
                      "no keys under prefix 'model.cnn'")
    assert_user_error(["convert", path, "-o", out, "--prefix", "model.rnn", "--kind", "lstm"],
                      capsys, "kind='lstm' needs 4 gate blocks")
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage" * 100)
    assert_user_error(["convert", tmp_path / "junk.pth", "-o", out], capsys,
                      "is not a PyTorch checkpoint")
    (tmp_path / "weights.h5").write_bytes(b"\x89HDF")
    assert_user_error(["convert", tmp_path / "weights.h5"], capsys,
                      "unknown checkpoint type '.h5'")
    assert_user_error(["convert", path, "-o", path, "--prefix", "model.rnn"], capsys,
                      "would overwrite the checkpoint")
    assert_user_error(["info", tmp_path / "junk.pth"], capsys, "is not a PyTorch checkpoint")
    (tmp_path / "notes.fastrnn").write_text("not a model")
    assert_user_error(["info", tmp_path / "notes.fastrnn"], capsys, "not a fastrnn model file")
    assert not out.exists()


def test_files_that_are_not_checkpoints(checkpoint, tmp_path, capsys):
    """Each says what the file is and what was expected, in the user's terms."""
    path, _ = checkpoint
    (tmp_path / "x.pt").mkdir()
    assert_user_error(["convert", tmp_path / "x.pt"], capsys,
                      f"{tmp_path / 'x.pt'} is a directory; expected a checkpoint file (.pt, ")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"")
    assert_user_error(["convert", tmp_path / "run"], capsys,
                      f"{tmp_path / 'run'} is a directory; expected a checkpoint file; it holds "
                      f"last.pt: pass one of those")
    assert_user_error(["info", tmp_path / "run"], capsys, "is a directory; expected a model file")
    (tmp_path / "notes.pt").write_text("step 1: train\n")
    assert_user_error(["convert", tmp_path / "notes.pt"], capsys,
                      "notes.pt is not a PyTorch checkpoint: torch.save writes a zip archive, "
                      "and this file starts with b'step 1: train\\n' (it looks like text)")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert_user_error(["info", tmp_path / "empty.pt"], capsys,
                      "empty.pt is empty (0 bytes); expected a checkpoint written by torch.save")
    (tmp_path / "weights").write_bytes(b"PK\x03\x04")
    assert_user_error(["convert", tmp_path / "weights"], capsys,
                      "unknown checkpoint type '(no suffix)'; expected a file ending in one of "
                      ".pt, .pth, .safetensors, .onnx")


def test_output_in_a_missing_directory_is_named(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    output = tmp_path / "models" / "gru.fastrnn"
    status, out, err = run(["convert", path, "-o", output, "--prefix", "model.rnn"], capsys)
    assert status == 1 and out == ""
    assert err == (f"fastrnn: error: the output directory {output.parent} does not exist; create "
                   f"it (mkdir -p {output.parent}) or give -o a file in an existing directory\n")
    assert ".partial" not in err and not output.parent.exists()


def test_partial_prefix_suggests_the_matching_one(checkpoint, capsys):
    path, _ = checkpoint
    for prefix in ("model", "model.", "model.rn"):
        assert_user_error(["convert", path, "--prefix", prefix], capsys,
                          f"no recurrent weights (weight_ih_l0, weight_hh_l0, ...) directly under "
                          f"prefix '{prefix}'; recurrent weights were found under prefix "
                          f"'model.rnn.': pass that as the prefix")


def test_pickled_module_is_refused_unless_trusted(tmp_path, capsys):
    torch.manual_seed(11)
    gru = torch.nn.GRU(3, 4, batch_first=True)
    path = tmp_path / "module.pt"
    torch.save(gru, path)
    status, out, err = run(["convert", path], capsys)
    assert status == 1 and out == "" and len(err.splitlines()) == 1 and "\x1b" not in err
    assert err.startswith(f"fastrnn: error: {path} holds a pickled torch.nn.modules.rnn.GRU (a "
                          f"whole object saved with torch.save(module)), not a state dict;")
    assert "Save the weights instead: torch.save(module.state_dict(), path)" in err
    assert "for a file you trust, allow unpickling it (fastrnn convert --trust-pickle" in err
    status, out, err = run(["convert", path, "--trust-pickle"], capsys)
    assert status == 0 and err == "", err  # the module knows its layout: nothing assumed
    model = fastrnn.load(tmp_path / "module.fastrnn")
    assert model.config.batch_first
    assert_matches(model, gru, np.random.default_rng(12).normal(size=(2, 5, 3)).astype(np.float32))
    status, out, _ = run(["info", path, "--trust-pickle"], capsys)
    assert status == 0 and "layout:       batch-first (B, T, I)" in out


def test_damaged_model_file_is_reported(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    model_path = tmp_path / "gru.fastrnn"
    assert run(["convert", path, "-o", model_path, "--prefix", "model.rnn"], capsys)[0] == 0
    model_path.write_bytes(model_path.read_bytes()[:-10])
    assert_user_error(["info", model_path], capsys, "is truncated")


def test_usage_errors_exit_2(capsys):
    status, _, err = run([], capsys)
    assert status == 2 and "usage: fastrnn" in err
    status, _, err = run(["convert", "x.pt", "--kind", "transformer"], capsys)
    assert status == 2 and "invalid choice" in err
    status, _, err = run(["convert", "x.pt", "--batch-first=yes"], capsys)
    assert status == 2 and "ignored explicit argument" in err
    status, out, _ = run(["--version"], capsys)
    assert status == 0 and out.strip() == f"fastrnn {fastrnn.__version__}"


def onnx_lstm(path):
    """A one-layer ONNX LSTM written with onnx.helper, and its random weights."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(5)
    hidden, inputs = 4, 3
    weights = {"W": rng.normal(size=(1, 4 * hidden, inputs)),
               "R": rng.normal(size=(1, 4 * hidden, hidden)),
               "B": rng.normal(size=(1, 8 * hidden)) * 0.1}
    node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y", "Y_h"], hidden_size=hidden)
    graph = helper.make_graph(
        [node], "lstm", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [5, 2, inputs])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [5, 1, 2, hidden]),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, 2, hidden])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.save(model, path)


def test_onnx_files_route_to_from_onnx(tmp_path, capsys):
    onnxruntime = pytest.importorskip("onnxruntime")
    onnx_lstm(tmp_path / "lstm.onnx")
    assert_user_error(["convert", tmp_path / "lstm.onnx", "--prefix", "rnn"], capsys,
                      "--prefix apply to torch checkpoints")
    assert_user_error(["convert", tmp_path / "lstm.onnx", "--no-batch-first", "--trust-pickle"],
                      capsys, "--batch-first, --trust-pickle apply to torch checkpoints")
    status, out, err = run(["convert", tmp_path / "lstm.onnx"], capsys)
    assert status == 0, err
    model = fastrnn.load(tmp_path / "lstm.fastrnn")
    x = np.random.default_rng(6).normal(size=(5, 2, 3)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(tmp_path / "lstm.onnx"),
                                           providers=["CPUExecutionProvider"])
    expected_y, expected_h = session.run(None, {"X": x})
    y, state = model(x)
    assert np.max(np.abs(y - expected_y[:, 0])) < 2e-5
    assert np.max(np.abs(state.h - expected_h)) < 2e-5
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07garbage")
    status, _, err = run(["convert", tmp_path / "broken.onnx"], capsys)
    assert status == 1 and err.startswith("fastrnn: error: ") and "Traceback" not in err


def test_installed_script_and_python_m(checkpoint, tmp_path):
    """The console script pip installed, and `python -m fastrnn`, in fresh processes."""
    path, _ = checkpoint
    script = Path(sys.executable).with_name("fastrnn")
    if not script.exists():
        pytest.skip("the fastrnn console script is not installed in this environment")
    output = tmp_path / "gru.fastrnn"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    done = subprocess.run([str(script), "convert", str(path), "-o", str(output), "--prefix",
                           "model.rnn"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert output.exists() and "wrote" in done.stdout
    done = subprocess.run([sys.executable, "-m", "fastrnn", "info", str(tmp_path / "none")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip() == f"fastrnn: error: no such file: {tmp_path / 'none'}"


# -- whole models: .nam and .keras files convert to a fastrnn.Chain, written with Chain.save --

def info_rows(argv, capsys):
    """`fastrnn info`'s rows as {name: value}, a value's continuation lines kept with it."""
    status, out, err = run(["info", *argv], capsys)
    assert status == 0 and err == "", err
    rows, name = {}, None
    for line in out.rstrip("\n").splitlines():
        if line.startswith(" "):
            rows[name] += "\n" + line
        else:
            name, value = line.split(":", 1)
            rows[name] = value.strip()
    return rows


@pytest.fixture(scope="module")
def nam_amp(tmp_path_factory):
    """A 2-layer LSTM .nam file made from torch modules, and the torch modules (test_nam_converter)."""
    import json

    from test_nam_converter import nam_file, torch_model
    modules = torch_model(2, hidden_size=8, seed=21)
    path = tmp_path_factory.mktemp("nam") / "amp.nam"
    path.write_text(json.dumps(nam_file(*modules)))
    return path, modules


def test_nam_file_converts_to_a_chain_file(nam_amp, tmp_path, capsys):
    from test_nam_converter import run_torch
    path, modules = nam_amp
    output = tmp_path / "amp.fastrnn"
    status, out, err = run(["convert", path, "-o", output], capsys)
    assert status == 0, err
    assert out == (f"wrote {output}: chain of 2 layer(s) (Recurrent, Linear), 1 -> 1 channels, "
                   f"BTC in, BTC out, float32, 969 parameters\n")
    # The chain file has no place for the .nam file's sample rate and metadata: said, once.
    assert err == (f"fastrnn: warning: the .fastrnn file holds the chain, not the sample rate or "
                   f"metadata of {path} (fastrnn.from_nam(path).nam has them); fastrnn does not "
                   f"resample: feed the model 48000 Hz audio\n")
    loaded, direct = fastrnn.load(output), fastrnn.from_nam(path)
    assert isinstance(loaded, fastrnn.Chain) and loaded.fingerprint() == direct.fingerprint()
    x = (0.3 * np.random.default_rng(22).standard_normal((2, 40, 1))).astype(np.float32)
    y = loaded(x)
    np.testing.assert_array_equal(y, direct(x))
    expected = run_torch(*modules, x)
    assert np.max(np.abs(y - expected)) < TOLERANCE_F32
    # The file keeps the start state the .nam file exports: a stream of the loaded chain starts
    # from it, and from zeros the first outputs would differ by far more than the tolerance.
    stream = loaded.stream(batch=2)
    steps = np.stack([stream.step(x[:, t]) for t in range(x.shape[1])], axis=1)
    assert np.max(np.abs(steps - expected)) < TOLERANCE_F32
    lstm, head, h0, c0 = modules
    zero_start = run_torch(lstm, head, torch.zeros_like(h0), torch.zeros_like(c0), x)
    assert np.max(np.abs(zero_start[:, :5] - expected[:, :5])) > 100 * TOLERANCE_F32

    # info describes the written chain as it describes the .nam file converted in memory.
    from_file, in_memory = info_rows([output], capsys), info_rows([path], capsys)
    assert from_file.keys() == in_memory.keys() == {"file", "source", "chain", "parameters",
                                                    "streams"}
    for name in ("chain", "parameters", "streams"):
        assert from_file[name] == in_memory[name], name
    assert from_file["source"].startswith("fastrnn model file, format version 1 (written by "
                                          "fastrnn ") and from_file["source"].endswith(
                                              "a whole chain")
    assert in_memory["source"].startswith("Neural Amp Modeler model, version 0.5.4, sample rate "
                                          "48000, converted in memory")
    assert in_memory["chain"].splitlines()[1:] == [
        "    (0) Recurrent(fastrnn.Model(lstm, input_size=1, hidden_size=8, num_layers=2, "
        "dtype=float32))", "    (1) Linear(in_features=8, out_features=1)"]
    assert from_file["parameters"].startswith("969 ") and from_file["streams"] == "yes"

    # -o defaults to the .nam file's name with the suffix .fastrnn.
    status, _, _ = run(["convert", path], capsys)
    assert status == 0 and fastrnn.load(path.with_suffix(".fastrnn")).fingerprint() == \
        direct.fingerprint()


def test_chain_files_refuse_torch_options_and_bad_input(nam_amp, tmp_path, capsys):
    path, _ = nam_amp
    out = tmp_path / "x.fastrnn"
    for command in ("convert", "info"):
        assert_user_error([command, path, "--prefix", "model.rnn"], capsys,
                          "--prefix apply to torch checkpoints; a .nam file's layers and layout "
                          "come from the file")
        assert_user_error([command, path, "--kind", "lstm", "--batch-first", "--trust-pickle"],
                          capsys, "--kind, --batch-first, --trust-pickle apply to torch "
                                  "checkpoints; a .nam file's")
        assert_user_error([command, path, "--no-batch-first"], capsys, "--batch-first apply to")
    (tmp_path / "model.keras").write_bytes(b"PK\x03\x04")   # options are refused before Keras runs
    assert_user_error(["convert", tmp_path / "model.keras", "--prefix", "rnn", "-o", out], capsys,
                      "--prefix apply to torch checkpoints; a Keras model's layers and layout "
                      "come from the file")
    (tmp_path / "notes.keras").write_text("not a model")
    assert_user_error(["convert", tmp_path / "notes.keras", "-o", out], capsys,
                      f"{tmp_path / 'notes.keras'} is not a Keras 3 .keras file: model.save "
                      f"writes a zip archive")
    (tmp_path / "wavenet.nam").write_text('{"version": "0.5.4", "architecture": "WaveNet", '
                                          '"config": {}, "weights": []}')
    assert_user_error(["convert", tmp_path / "wavenet.nam", "-o", out], capsys,
                      "the .nam file's architecture is 'WaveNet'")
    (tmp_path / "broken.nam").write_text('{"version": "0.5.4", "architecture": "LSTM"')
    assert_user_error(["convert", tmp_path / "broken.nam", "-o", out], capsys,
                      "is not a .nam file: not JSON")
    assert_user_error(["convert", tmp_path / "absent.nam", "-o", out], capsys,
                      f"no such file: {tmp_path / 'absent.nam'}")
    assert_user_error(["convert", path, "-o", path], capsys, "would overwrite the checkpoint")
    assert_user_error(["convert", path, "-o", tmp_path / "missing" / "amp.fastrnn"], capsys,
                      "the output directory")
    assert not out.exists() and path.read_text().startswith("{")
    # Other files (here TorchScript) are not read; the list of what is names the chain files.
    (tmp_path / "model.ts").write_bytes(b"PK\x03\x04")
    assert_user_error(["convert", tmp_path / "model.ts"], capsys,
                      "unknown checkpoint type '.ts'; expected a file ending in one of .pt, .pth, "
                      ".safetensors, .onnx, .keras, .nam")


def keras_model(keras, *stack, seed):
    """A Sequential of (None, 3) inputs with every weight drawn at random (test_keras_converter)."""
    from test_keras_converter import randomised
    return randomised(keras.Sequential([keras.Input((None, 3)), *stack]), seed)


@pytest.mark.filterwarnings(  # Keras's own saving, under numpy 2 (as in test_keras_converter)
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
def test_keras_file_converts_to_a_chain_file(tmp_path, capsys):
    os.environ.setdefault("KERAS_BACKEND", "torch")   # as fastrnn.from_keras does
    keras = pytest.importorskip("keras")
    layers = keras.layers
    model = keras_model(keras, layers.Conv1D(6, 3, padding="causal", activation="tanh"),
                        layers.LSTM(8, return_sequences=True), layers.LayerNormalization(),
                        layers.Dense(2), seed=23)
    path = tmp_path / "model.keras"
    model.save(path)
    output = tmp_path / "model.fastrnn"
    status, out, err = run(["convert", path, "-o", output], capsys)
    assert status == 0 and err == "", err
    assert out.startswith(f"wrote {output}: chain of ") and "3 -> 2 channels, BTC in, BTC out, " \
        "float32, " in out
    loaded, direct = fastrnn.load(output), fastrnn.from_keras(path)
    assert loaded.fingerprint() == direct.fingerprint()
    x = np.random.default_rng(24).standard_normal((3, 20, 3)).astype(np.float32)
    y = loaded(x)
    np.testing.assert_array_equal(y, direct(x))
    expected = keras.saving.load_model(path, compile=False)(x, training=False).detach().numpy()
    assert np.max(np.abs(y - expected)) < TOLERANCE_F32
    from_file, in_memory = info_rows([output], capsys), info_rows([path], capsys)
    for name in ("chain", "parameters", "streams"):
        assert from_file[name] == in_memory[name], name
    assert in_memory["source"].startswith("Keras 3 model, converted in memory")
    assert from_file["streams"] == "yes"
    assert "(2) Recurrent(fastrnn.Model(lstm, input_size=6, hidden_size=8" in from_file["chain"]


@pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
def test_keras_last_step_chain_converts(tmp_path, capsys, rng):
    """return_sequences=False becomes the Keras converter's own LastStep layer, which the chain
    file holds: the written file loads to the same chain, bit for bit, and answers as Keras."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    layers = keras.layers
    model = keras_model(keras, layers.GRU(4, return_sequences=False), layers.Dense(2), seed=25)
    path = tmp_path / "last.keras"
    model.save(path)
    output = tmp_path / "last.fastrnn"
    status, out, err = run(["convert", path, "-o", output], capsys)
    assert status == 0, err
    loaded, direct = fastrnn.load(output), fastrnn.from_keras(path)
    assert loaded.fingerprint() == direct.fingerprint()
    x = rng.standard_normal((2, 7, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded(x), direct(x))
    expected = np.asarray(model(x).detach().cpu().numpy())
    np.testing.assert_allclose(loaded(x)[:, 0], expected, rtol=0, atol=3e-5)


def test_pickled_whole_torch_model_converts_to_a_chain_file(tmp_path, capsys):
    """torch.save(nn.Sequential(...)) holds the architecture, which a state dict does not: with
    --trust-pickle it converts to a chain as fastrnn.from_torch(module) does."""
    torch.manual_seed(26)
    net = torch.nn.Sequential(torch.nn.Conv1d(3, 5, 3, padding=2), torch.nn.Tanh(),
                              torch.nn.Conv1d(5, 2, 1))
    path = tmp_path / "net.pt"
    torch.save(net, path)
    assert_user_error(["convert", path], capsys, "holds a pickled torch.nn.modules.container."
                                                 "Sequential")
    status, out, err = run(["convert", path, "--trust-pickle"], capsys)
    assert status == 0 and err == "", err
    assert out.startswith(f"wrote {tmp_path / 'net.fastrnn'}: chain of 3 layer(s) (Conv1d, "
                          f"Activation, Conv1d), 3 -> 2 channels, BCT in, BCT out, float32, ")
    loaded = fastrnn.load(tmp_path / "net.fastrnn")
    x = np.random.default_rng(27).standard_normal((2, 3, 9)).astype(np.float32)   # (B, C, T)
    y = loaded(x)
    np.testing.assert_array_equal(y, fastrnn.from_torch(net)(x))
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    assert y.shape == expected.shape and np.max(np.abs(y - expected)) < TOLERANCE_F32
    from_file = info_rows([tmp_path / "net.fastrnn"], capsys)
    in_memory = info_rows([path, "--trust-pickle"], capsys)
    for name in ("chain", "parameters", "streams"):
        assert from_file[name] == in_memory[name], name
    assert in_memory["source"].startswith("pickled torch module (a whole model), converted in "
                                          "memory")
