"""fastrnn.from_torch against torch itself: outputs and final states, every module and option.

Each case builds a real torch module with a fixed seed, converts it (as a module, a state dict, or
a file), runs both on the same input and compares outputs and final states within fastrnn's
tolerances: float32 3e-5, float64 1e-9. Padded batches are compared with torch's
pack_padded_sequence(enforce_sorted=False) results. What a state dict leaves open (a plain RNN's
nonlinearity, the layout) is assumed with one AssumptionWarning; inputs rounded to the model's
dtype warn with a PrecisionWarning.
"""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import fastrnn  # noqa: E402
from fastrnn import validation  # noqa: E402
from fastrnn.converters.pytorch import AssumptionWarning, from_torch as convert  # noqa: E402
from fastrnn.validation import PrecisionWarning  # noqa: E402

pytestmark = [
    # torch warns that oneDNN has no projection path; it falls back to its reference one.
    pytest.mark.filterwarnings("ignore:LSTM with projections:UserWarning"),
    # Most cases convert state dicts without stating the layout; the tests below assert it.
    pytest.mark.filterwarnings("ignore::fastrnn.converters.pytorch.AssumptionWarning"),
]

TOLERANCE = {torch.float32: 3e-5, torch.float64: 1e-9}
DTYPES = [pytest.param(torch.float32, id="f32"), pytest.param(torch.float64, id="f64")]
INPUT_SIZE, HIDDEN_SIZE, STEPS, BATCH = 3, 5, 12, 4

# Every constructor option of nn.LSTM / nn.GRU / nn.RNN appears in at least one case.
MODULE_CASES = {
    "lstm-2layer-bidir-batchfirst": (nn.LSTM, dict(num_layers=2, bidirectional=True,
                                                   batch_first=True)),
    "lstm-proj-2layer-bidir": (nn.LSTM, dict(num_layers=2, bidirectional=True, proj_size=2)),
    "lstm-nobias-proj": (nn.LSTM, dict(bias=False, proj_size=3)),
    "gru-2layer-bidir-batchfirst": (nn.GRU, dict(num_layers=2, bidirectional=True,
                                                 batch_first=True)),
    "gru-nobias": (nn.GRU, dict(bias=False)),
    "rnn-tanh-2layer-bidir": (nn.RNN, dict(num_layers=2, bidirectional=True)),
    "rnn-relu-nobias-batchfirst": (nn.RNN, dict(nonlinearity="relu", bias=False,
                                                batch_first=True)),
}
MODULES = [pytest.param(*case, id=name) for name, case in MODULE_CASES.items()]


def make_module(module_type, options, dtype, seed=0):
    torch.manual_seed(seed)
    return module_type(INPUT_SIZE, HIDDEN_SIZE, **options).to(dtype).eval()


def random_input(module, dtype, steps=STEPS, batch=BATCH, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, batch, INPUT_SIZE, generator=generator, dtype=dtype)
    return x.transpose(0, 1).contiguous() if module.batch_first else x


def random_state(module, dtype, batch=BATCH, seed=2):
    """An initial state in torch's layout: h0, or (h0, c0) for an LSTM."""
    generator = torch.Generator().manual_seed(seed)
    rows = module.num_layers * (2 if module.bidirectional else 1)
    h_size = getattr(module, "proj_size", 0) or module.hidden_size
    h0 = 0.5 * torch.randn(rows, batch, h_size, generator=generator, dtype=dtype)
    if isinstance(module, nn.LSTM):
        return h0, 0.5 * torch.randn(rows, batch, module.hidden_size, generator=generator,
                                     dtype=dtype)
    return h0


def as_numpy_state(state):
    if isinstance(state, tuple):
        return tuple(s.numpy() for s in state)
    return state.numpy()


def assert_close(actual, expected, dtype, what):
    expected = expected.detach().numpy() if hasattr(expected, "detach") else expected
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    error = np.max(np.abs(actual - expected)) if actual.size else 0.0
    assert error <= TOLERANCE[dtype], f"{what}: max abs error {error:.3g} > {TOLERANCE[dtype]}"


def assert_state_close(state, torch_state, dtype):
    if isinstance(torch_state, tuple):
        h, c = state
        assert_close(h, torch_state[0], dtype, "final h")
        assert_close(c, torch_state[1], dtype, "final c")
    else:
        assert type(state) is np.ndarray  # h alone, as torch returns it
        assert_close(state, torch_state, dtype, "final h")


def assert_matches_module(model, module, x, dtype, state=None, lengths=None):
    """Run both and compare y and the final state."""
    with torch.no_grad():
        if lengths is None:
            expected_y, expected_state = module(x, state)
        else:
            packed = pack_padded_sequence(x, torch.as_tensor(lengths),
                                          batch_first=module.batch_first, enforce_sorted=False)
            packed_y, expected_state = module(packed, state)
            expected_y, _ = pad_packed_sequence(packed_y, batch_first=module.batch_first,
                                                total_length=x.shape[1 if module.batch_first
                                                                     else 0])
    y, final = model(x.numpy(), None if state is None else as_numpy_state(state), lengths)
    assert y.dtype == model.dtype
    assert_close(y, expected_y, dtype, "y")
    assert_state_close(final, expected_state, dtype)


# -- modules -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("module_type, options", MODULES)
def test_module_matches_torch(module_type, options, dtype):
    module = make_module(module_type, options, dtype)
    model = fastrnn.from_torch(module)
    assert model.dtype == {torch.float32: np.float32, torch.float64: np.float64}[dtype]
    assert model.config.batch_first == module.batch_first
    x = random_input(module, dtype)
    assert_matches_module(model, module, x, dtype)
    assert_matches_module(model, module, x, dtype, state=random_state(module, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("module_type, options", MODULES)
def test_lengths_match_packed_sequence(module_type, options, dtype):
    """Unsorted lengths, one row full length, one of length 1: torch's packed results."""
    module = make_module(module_type, options, dtype)
    model = fastrnn.from_torch(module)
    x = random_input(module, dtype)
    lengths = np.array([5, STEPS, 1, 9])
    assert_matches_module(model, module, x, dtype, lengths=lengths)
    assert_matches_module(model, module, x, dtype, state=random_state(module, dtype),
                          lengths=lengths)


@pytest.mark.parametrize("module_type, options", MODULES)
def test_unbatched_input_matches_torch(module_type, options):
    dtype = torch.float64
    module = make_module(module_type, options, dtype)
    model = fastrnn.from_torch(module)
    x = random_input(module, dtype, batch=1)
    x = x[0] if module.batch_first else x[:, 0]  # (T, I) in either layout
    state = random_state(module, dtype, batch=1)
    state = tuple(s[:, 0] for s in state) if isinstance(state, tuple) else state[:, 0]
    assert_matches_module(model, module, x, dtype)
    assert_matches_module(model, module, x, dtype, state=state)


# -- cells -------------------------------------------------------------------------------------

CELLS = [
    pytest.param(nn.LSTMCell, {}, id="lstmcell"),
    pytest.param(nn.LSTMCell, dict(bias=False), id="lstmcell-nobias"),
    pytest.param(nn.GRUCell, {}, id="grucell"),
    pytest.param(nn.RNNCell, {}, id="rnncell-tanh"),
    pytest.param(nn.RNNCell, dict(nonlinearity="relu", bias=False), id="rnncell-relu-nobias"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell_type, options", CELLS)
def test_cell_matches_torch_step_by_step(cell_type, options, dtype):
    """One cell step, then several steps with the state fed back, and the same as one sequence."""
    torch.manual_seed(3)
    cell = cell_type(INPUT_SIZE, HIDDEN_SIZE, **options).to(dtype)
    model = fastrnn.from_torch(cell)
    assert model.config.num_layers == 1 and not model.config.bidirectional
    is_lstm = cell_type is nn.LSTMCell
    generator = torch.Generator().manual_seed(4)
    xs = torch.randn(6, BATCH, INPUT_SIZE, generator=generator, dtype=dtype)
    h = 0.5 * torch.randn(BATCH, HIDDEN_SIZE, generator=generator, dtype=dtype)
    c = 0.5 * torch.randn(BATCH, HIDDEN_SIZE, generator=generator, dtype=dtype)
    torch_state = (h, c) if is_lstm else h
    state = (h[None].numpy(), c[None].numpy()) if is_lstm else h[None].numpy()
    first_state = state
    outputs = []
    with torch.no_grad():
        for x in xs:
            torch_state = cell(x, torch_state)
            y, state = model(x[None].numpy(), state)
            expected_h = torch_state[0] if is_lstm else torch_state
            assert_close(y[0], expected_h, dtype, "cell output")
            assert_close((state.h if is_lstm else state)[0], expected_h, dtype, "cell h")
            if is_lstm:
                assert_close(state.c[0], torch_state[1], dtype, "cell c")
            outputs.append(y[0])
    y, final = model(xs.numpy(), first_state)
    assert_close(y, np.stack(outputs), dtype, "sequence run vs steps fed back")
    assert_close((final.h if is_lstm else final)[0], expected_h, dtype,
                 "sequence run final h")


# -- state dicts, prefixes, kind ---------------------------------------------------------------


def test_state_dict_of_tensors_and_of_numpy_arrays():
    dtype = torch.float32
    module = make_module(nn.LSTM, dict(num_layers=2, proj_size=2), dtype)
    x = random_input(module, dtype)
    tensors = module.state_dict()
    arrays = {name: value.numpy() for name, value in tensors.items()}
    for state_dict in (tensors, arrays):
        model = fastrnn.from_torch(state_dict)
        assert model.kind == "lstm" and model.config.proj_size == 2
        assert model.config.num_layers == 2 and not model.config.batch_first
        assert_matches_module(model, module, x, dtype)


def test_cell_state_dict_converts():
    torch.manual_seed(5)
    cell = nn.GRUCell(INPUT_SIZE, HIDDEN_SIZE)
    x = torch.randn(1, 2, INPUT_SIZE)
    model = fastrnn.from_torch(cell.state_dict())
    y, _ = model(x.numpy())
    assert_close(y[0], cell(x[0]), torch.float32, "GRUCell from its state dict")


@pytest.mark.parametrize("prefix", ["model.rnn", "model.rnn."])
def test_nested_checkpoint_with_prefix(prefix):
    """A training checkpoint: the model's state dict nested beside other entries."""
    dtype = torch.float32
    torch.manual_seed(6)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, batch_first=True)
            self.rnn_head = nn.Linear(HIDDEN_SIZE, 1)  # shares the "rnn" start, not the prefix

    net = Net()
    optimizer = torch.optim.Adam(net.parameters())
    checkpoint = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3}
    model = fastrnn.from_torch(checkpoint, prefix=prefix)
    assert model.kind == "gru" and model.config.num_layers == 2
    x = random_input(net.rnn, dtype).transpose(0, 1).contiguous()  # the file gives time-major
    with torch.no_grad():
        expected_y, expected_h = net.rnn(x.transpose(0, 1))
    y, h = model(x.numpy())
    assert_close(y, expected_y.transpose(0, 1), dtype, "y")
    assert_close(h, expected_h, dtype, "final h")
    # The layout of a state dict is chosen by the caller.
    model = convert(checkpoint, prefix=prefix, batch_first=True)
    y, _ = model(x.transpose(0, 1).numpy())
    assert_close(y, expected_y, dtype, "batch_first y")


def test_kind_picks_relu_for_a_plain_rnn():
    dtype = torch.float64
    module = make_module(nn.RNN, dict(nonlinearity="relu", num_layers=2), dtype)
    x = random_input(module, dtype)
    model = fastrnn.from_torch(module.state_dict(), kind="rnn_relu")
    assert model.kind == "rnn_relu"
    assert_matches_module(model, module, x, dtype)
    # Shapes alone say tanh, which is a different network: the converter says it assumed so.
    with pytest.warns(AssumptionWarning, match=r"nonlinearity: tanh.*needs kind='rnn_relu'"):
        tanh_model = fastrnn.from_torch(module.state_dict())
    assert tanh_model.kind == "rnn_tanh" and tanh_model.assumptions["kind"] == "rnn_tanh"
    assert np.max(np.abs(tanh_model(x.numpy())[0] - model(x.numpy())[0])) > 1e-3


@pytest.mark.parametrize("kind", ["gru", "rnn_tanh"])
def test_kind_that_contradicts_shapes_is_refused(kind):
    state_dict = nn.LSTM(INPUT_SIZE, HIDDEN_SIZE).state_dict()
    with pytest.raises(ValueError, match=rf"kind='{kind}'.*weight_hh_l0"):
        fastrnn.from_torch(state_dict, kind=kind)
    with pytest.raises(ValueError, match="does not match the module"):
        fastrnn.from_torch(nn.GRU(INPUT_SIZE, HIDDEN_SIZE), kind="lstm")
    with pytest.raises(ValueError, match="kind must be one of"):
        fastrnn.from_torch(state_dict, kind="transformer")


# -- files -------------------------------------------------------------------------------------


def test_pt_and_safetensors_files(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    dtype = torch.float32
    module = make_module(nn.LSTM, dict(num_layers=2, bidirectional=True), dtype)
    x = random_input(module, dtype)
    torch.save(module.state_dict(), tmp_path / "lstm.pt")
    torch.save({"state_dict": {"encoder.lstm." + k: v for k, v in module.state_dict().items()},
                "step": 100}, tmp_path / "checkpoint.pth")
    safetensors_torch.save_file(module.state_dict(), str(tmp_path / "lstm.safetensors"))
    for path, prefix in ((tmp_path / "lstm.pt", ""), (str(tmp_path / "lstm.safetensors"), ""),
                         (tmp_path / "checkpoint.pth", "state_dict.encoder.lstm")):
        model = fastrnn.from_torch(path, prefix=prefix)
        assert_matches_module(model, module, x, dtype)


def test_pt_file_holding_a_pickled_module_is_refused(tmp_path):
    """weights_only=True loading refuses arbitrary pickles; the message says what to save."""
    torch.save(nn.GRU(INPUT_SIZE, HIDDEN_SIZE), tmp_path / "module.pt")
    with pytest.raises(ValueError) as error:
        fastrnn.from_torch(tmp_path / "module.pt")
    message = str(error.value)
    assert "holds a pickled torch.nn.modules.rnn.GRU" in message
    assert "weights_only=True" in message and "torch.save(module.state_dict(), path)" in message
    assert "trust_pickle=True" in message
    assert "\x1b" not in message and "\n" not in message  # torch's own text is not passed on


def test_trusted_pickle_converts_the_module_it_holds(tmp_path):
    dtype = torch.float32
    module = make_module(nn.GRU, dict(num_layers=2, batch_first=True), dtype)
    torch.save(module, tmp_path / "module.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the module says its layout: nothing is assumed
        model = fastrnn.from_torch(tmp_path / "module.pt", trust_pickle=True)
    assert model.config.batch_first and model.assumptions == {}
    assert_matches_module(model, module, random_input(module, dtype), dtype)


def test_files_that_are_not_checkpoints_say_what_they_are(tmp_path):
    (tmp_path / "x.pt").mkdir()
    with pytest.raises(IsADirectoryError, match=r"x\.pt is a directory; expected a checkpoint"):
        fastrnn.from_torch(tmp_path / "x.pt")
    (tmp_path / "x.pt" / "weights.safetensors").write_bytes(b"")
    with pytest.raises(IsADirectoryError, match="it holds weights.safetensors: pass one"):
        fastrnn.from_torch(tmp_path / "x.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.pt is empty \(0 bytes\); expected a "
                                         r"checkpoint written by torch\.save"):
        fastrnn.from_torch(tmp_path / "empty.pt")
    (tmp_path / "notes.pt").write_text("these are my notes\n")
    with pytest.raises(ValueError, match=r"notes\.pt is not a PyTorch checkpoint: torch\.save "
                                         r"writes a zip archive, and this file starts with "
                                         r"b'these are my not' \(it looks like text\)"):
        fastrnn.from_torch(tmp_path / "notes.pt")


def test_unreadable_files_are_clear_errors(tmp_path):
    garbage = bytes(range(256)) * 8
    for name in ("garbage.pt", "garbage.pth", "garbage.safetensors"):
        (tmp_path / name).write_bytes(garbage)
        with pytest.raises(ValueError, match="is not a (PyTorch checkpoint|readable safetensors)"):
            fastrnn.from_torch(tmp_path / name)
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(ValueError, match="holds a Tensor, expected a state dict"):
        fastrnn.from_torch(tmp_path / "tensor.pt")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        fastrnn.from_torch(tmp_path / "absent.pt")


# -- bad state dicts ---------------------------------------------------------------------------


def lstm_state_dict():
    return dict(nn.LSTM(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, bidirectional=True).state_dict())


@pytest.mark.parametrize("missing", ["bias_hh_l1_reverse", "weight_ih_l1", "weight_hh_l0"])
def test_missing_key_is_a_key_error_naming_it(missing):
    state_dict = {"rnn." + k: v for k, v in lstm_state_dict().items() if k != missing}
    with pytest.raises(KeyError, match=f"missing key 'rnn.{missing}'"):
        fastrnn.from_torch(state_dict, prefix="rnn")


@pytest.mark.parametrize("extra", ["weight_hr_l0", "bias_ih_l2", "weight_ih_l0_backward",
                                   "num_batches_tracked"])
def test_extra_key_under_prefix_is_a_value_error_naming_it(extra):
    state_dict = {"rnn." + k: v for k, v in lstm_state_dict().items()}
    state_dict["rnn." + extra] = torch.zeros(2, HIDDEN_SIZE)
    state_dict["head.weight"] = torch.zeros(1, 10)  # outside the prefix: ignored
    with pytest.raises(ValueError, match=f"unexpected key 'rnn.{extra}'"):
        fastrnn.from_torch(state_dict, prefix="rnn")


def test_unused_key_of_a_unidirectional_model_is_refused():
    state_dict = dict(nn.GRU(INPUT_SIZE, HIDDEN_SIZE).state_dict())
    state_dict["bias_ih_l0_reverse"] = torch.zeros(3 * HIDDEN_SIZE)
    with pytest.raises(ValueError, match="unexpected key 'bias_ih_l0_reverse'"):
        fastrnn.from_torch(state_dict)
    cell_dict = dict(nn.LSTMCell(INPUT_SIZE, HIDDEN_SIZE).state_dict())
    del cell_dict["bias_hh"]
    with pytest.raises(KeyError, match="missing key 'bias_hh'"):
        fastrnn.from_torch(cell_dict)


@pytest.mark.parametrize("key, shape", [("weight_ih_l1", (20, 9)), ("bias_hh_l0_reverse", (19,)),
                                        ("weight_hh_l1_reverse", (20, 4))])
def test_wrong_shape_is_a_value_error_naming_the_key(key, shape):
    state_dict = lstm_state_dict()
    state_dict[key] = torch.zeros(shape)
    with pytest.raises(ValueError, match=rf"{key} has shape \(.*expected"):
        fastrnn.from_torch(state_dict)


def test_weight_hh_that_fits_no_cell_is_refused():
    state_dict = {"weight_ih_l0": torch.zeros(10, 3), "weight_hh_l0": torch.zeros(10, 5)}
    with pytest.raises(ValueError, match="weight_hh_l0 has 2 gate blocks"):
        fastrnn.from_torch(state_dict)


def test_not_a_state_dict_is_a_clear_error():
    with pytest.raises(TypeError, match="from_torch takes nn.LSTM"):
        fastrnn.from_torch(nn.Linear(3, 4))
    with pytest.raises(TypeError, match="from_torch takes nn.LSTM"):
        fastrnn.from_torch(42)
    with pytest.raises(KeyError, match="no keys under prefix 'decoder'"):
        fastrnn.from_torch(lstm_state_dict(), prefix="decoder")
    with pytest.raises(TypeError, match="prefix must be a string"):
        fastrnn.from_torch(lstm_state_dict(), prefix=3)
    with pytest.raises(TypeError, match="weight_ih_l0 must hold floating-point weights"):
        fastrnn.from_torch({"weight_ih_l0": np.zeros((4, 3), np.int64),
                            "weight_hh_l0": np.zeros((4, 1))})


def test_whole_checkpoint_without_prefix_points_at_the_prefix():
    checkpoint = {"model": {"encoder.rnn." + k: v for k, v in lstm_state_dict().items()},
                  "epoch": 3}
    hint = r"no recurrent weights .* at the top level.*found under prefix 'model\.encoder\.rnn\.'"
    with pytest.raises(KeyError, match=hint):
        fastrnn.from_torch(checkpoint)


@pytest.mark.parametrize("prefix", ["model.encoder", "model.encoder.", "model.encoder.rn"])
def test_partial_prefix_suggests_the_prefix_that_matches(prefix):
    checkpoint = {"model": {"encoder.rnn." + k: v for k, v in lstm_state_dict().items()},
                  "model.encoder.head.weight": torch.zeros(2, 2)}
    with pytest.raises(KeyError, match=rf"no recurrent weights .* directly under prefix "
                                       rf"'{prefix}'; recurrent weights were found under prefix "
                                       rf"'model\.encoder\.rnn\.': pass that as the prefix"):
        fastrnn.from_torch(checkpoint, prefix=prefix)


def test_key_beside_recurrent_weights_names_the_other_prefixes():
    state_dict = {**lstm_state_dict(), "head.weight": torch.zeros(1, 1),
                  "decoder.rnn.weight_hh_l0": torch.zeros(4, 1)}
    with pytest.raises(ValueError, match=r"unexpected key 'head\.weight': not a weight .*found "
                                         r"under prefix 'decoder\.rnn\.'"):
        fastrnn.from_torch(state_dict)


# -- assumptions: what a state dict cannot tell ------------------------------------------------


def only_warning(record, category):
    """The one warning of `category` in a pytest.warns record."""
    found = [w for w in record if issubclass(w.category, category)]
    assert len(found) == 1, [str(w.message) for w in found]
    return found[0]


def test_state_dict_assumptions_are_one_warning_and_recorded():
    """nn.RNN(relu, batch_first=True)'s state dict: both facts are missing, one warning says so."""
    dtype = torch.float32
    module = make_module(nn.RNN, dict(nonlinearity="relu", batch_first=True), dtype)
    with pytest.warns(AssumptionWarning) as record:
        model = fastrnn.from_torch(module.state_dict())
    warning = only_warning(record, AssumptionWarning)
    message = str(warning.message)
    assert "nonlinearity: tanh (kind='rnn_tanh')" in message
    assert "time-major (T, B, I) inputs (batch_first=False)" in message
    assert "Pass kind= and batch_first= to state them" in message
    assert warning.filename == __file__  # attributed to the caller's line, not fastrnn's
    assert model.assumptions == {"kind": "rnn_tanh", "batch_first": False}
    assert repr(model).endswith("assumed kind='rnn_tanh', assumed batch_first=False)")
    # Stated, the same weights give torch's network, without a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = fastrnn.from_torch(module.state_dict(), kind="rnn_relu", batch_first=True)
    assert model.assumptions == {} and "assumed" not in repr(model)
    assert_matches_module(model, module, random_input(module, dtype), dtype)


def test_layout_alone_is_assumed_for_lstm_and_gru_state_dicts(tmp_path):
    module = make_module(nn.LSTM, dict(batch_first=True), torch.float32)
    torch.save(module.state_dict(), tmp_path / "lstm.pt")
    for source in (module.state_dict(), tmp_path / "lstm.pt"):
        with pytest.warns(AssumptionWarning) as record:
            model = fastrnn.from_torch(source)
        message = str(only_warning(record, AssumptionWarning).message)
        assert "time-major" in message and "nonlinearity" not in message
        assert "Pass batch_first= to state it" in message
        assert model.assumptions == {"batch_first": False}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fastrnn.from_torch(tmp_path / "lstm.pt", batch_first=False).assumptions == {}


def test_modules_and_cells_assume_nothing_but_an_rnn_cell_nonlinearity():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for module in (nn.RNN(3, 4, nonlinearity="relu", batch_first=True), nn.RNNCell(3, 4),
                       nn.GRUCell(3, 4)):
            assert fastrnn.from_torch(module).assumptions == {}
        # A cell steps (B, I) rows: its state dict has no sequence layout to guess.
        assert fastrnn.from_torch(nn.LSTMCell(3, 4).state_dict()).assumptions == {}
    with pytest.warns(AssumptionWarning, match="nonlinearity: tanh") as record:
        model = fastrnn.from_torch(nn.RNNCell(3, 4, nonlinearity="relu").state_dict())
    assert "time-major" not in str(only_warning(record, AssumptionWarning).message)
    assert model.assumptions == {"kind": "rnn_tanh"}


def test_module_with_prefix_converts_the_named_layer():
    """A whole network and prefix= its recurrent layer: kind and layout come from the layer."""
    torch.manual_seed(8)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(3, 3))
            self.encoder.add_module("rnn", nn.RNN(INPUT_SIZE, HIDDEN_SIZE, nonlinearity="relu",
                                                  batch_first=True))

    net = Net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = fastrnn.from_torch(net, prefix="encoder.rnn.")
    assert model.kind == "rnn_relu" and model.config.batch_first and model.assumptions == {}
    assert_matches_module(model, net.encoder.rnn, random_input(net.encoder.rnn, torch.float32),
                          torch.float32)
    with pytest.raises(KeyError, match=r"no submodule 'encoder\.gru'.*at prefix 'encoder\.rnn'"):
        fastrnn.from_torch(net, prefix="encoder.gru")
    with pytest.raises(TypeError, match=r"got Net.*recurrent layers are at prefix 'encoder\.rnn'"):
        fastrnn.from_torch(net)


# -- dtypes of inputs --------------------------------------------------------------------------


def test_lossy_input_cast_warns_once_per_dtype_pair(monkeypatch):
    monkeypatch.setattr(validation, "_WARNED_CASTS", set())
    module = make_module(nn.GRU, {}, torch.float32)
    model = fastrnn.from_torch(module)
    x64 = random_input(module, torch.float64)
    with pytest.warns(PrecisionWarning) as record:
        y, _ = model(x64.numpy())
    warning = only_warning(record, PrecisionWarning)
    assert warning.filename == __file__
    assert str(warning.message).startswith("input x is float64 and the model computes in "
                                           "float32: inputs are rounded to float32")
    assert "Pass float32 arrays" in str(warning.message)
    assert y.dtype == np.float32  # the cast is kept: the answer is the float32 model's
    assert_close(y, module(x64.float())[0], torch.float32, "y of a float64 input")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(x64)  # the same pair again (a torch tensor this time): warned already
        model(x64.numpy().astype(np.float16))  # widening is exact
        model(x64.float().numpy())
        fastrnn.from_torch(module.double())(x64.float().numpy())  # float32 into float64
        stream = model.stream(batch=BATCH)
        stream.step(x64[0].numpy())


def test_shipped_demo_model_converts_and_matches_torch():
    """examples/demo_lstm.safetensors, the model `make demo` runs, read as the demo reads it."""
    from pathlib import Path
    safetensors_torch = pytest.importorskip("safetensors.torch")
    path = Path(__file__).parents[1] / "examples" / "demo_lstm.safetensors"
    state_dict = safetensors_torch.load_file(str(path))
    lstm = nn.LSTM(16, 64, num_layers=2)
    lstm.load_state_dict({k[len("rnn."):]: v for k, v in state_dict.items()
                          if k.startswith("rnn.")})
    model = fastrnn.from_torch(path, prefix="rnn")
    x = torch.randn(20, 2, 16, generator=torch.Generator().manual_seed(7))
    assert_matches_module(model, lstm, x, torch.float32)


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_half_precision_checkpoints_are_widened_to_float32(half, tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    module = make_module(nn.GRU, dict(num_layers=2), torch.float32).to(half)
    torch.save(module.state_dict(), tmp_path / "half.pt")
    safetensors_torch.save_file(module.state_dict(), str(tmp_path / "half.safetensors"))
    reference = module.float()  # the same rounded weights, run in float32
    x = random_input(reference, torch.float32)
    for path in (tmp_path / "half.pt", tmp_path / "half.safetensors"):
        model = fastrnn.from_torch(path)
        assert model.dtype == np.float32
        assert_matches_module(model, reference, x, torch.float32)
