"""What Model.__call__ and Config accept and refuse (DESIGN.md, "the contract").

Floating inputs are converted to the model's dtype; anything else is a TypeError. Bad shapes,
lengths and states are a ValueError saying what was expected. No bad input reaches a Numba kernel
(a Numba typing error is a bug), valid but unusual arrays (read-only, non-native byte order,
strided, torch tensors) work without compiling new kernel specialisations, and NaN propagates.
"""

import json

import numpy as np
import pytest
import torch

import fastrnn
import reference
from fastrnn import Config, State
from fastrnn.engine.driver import sequence_block
from reference import cast_layers, random_layers

STEPS, BATCH, INPUT, HIDDEN = 6, 3, 4, 5


def make_model(kind="lstm", dtype=np.float32, **options):
    bidirectional = options.pop("bidirectional", False)
    layers = random_layers(kind, INPUT, HIDDEN, num_layers=2, bidirectional=bidirectional)
    return fastrnn.from_numpy(kind, cast_layers(layers, dtype), bidirectional=bidirectional,
                              **options)


@pytest.fixture(scope="module")
def lstm():
    return make_model("lstm")


@pytest.fixture(scope="module")
def gru():
    return make_model("gru", bidirectional=True)


def good_x(dtype=np.float32, shape=(STEPS, BATCH, INPUT)):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


# -- x --------------------------------------------------------------------------------------------

NOT_FLOAT = {
    "int": np.ones((STEPS, BATCH, INPUT), np.int64),
    "bool": np.ones((STEPS, BATCH, INPUT), bool),
    "complex": np.ones((STEPS, BATCH, INPUT), np.complex64),
    "strings": np.full((STEPS, BATCH, INPUT), "0.5"),
    "bytes": np.full((STEPS, BATCH, INPUT), b"1"),
    "objects": np.full((STEPS, BATCH, INPUT), 0.5, dtype=object),
    "str": "0.5",
    "None": None,
    "dict": {"x": 1.0},
    "int_list": [[[1, 2, 3, 4]]],
    "ragged_list": [[[0.5, 0.5], [0.5]]],
    "int_tensor": torch.ones((STEPS, BATCH, INPUT), dtype=torch.int32),
    "complex_tensor": torch.ones((STEPS, BATCH, INPUT), dtype=torch.complex64),
    "datetime": np.zeros((STEPS, BATCH, INPUT), "datetime64[s]"),
}


@pytest.mark.parametrize("name", sorted(NOT_FLOAT))
def test_non_float_input_is_a_type_error(lstm, name):
    with pytest.raises(TypeError, match="input x must be a floating-point array"):
        lstm(NOT_FLOAT[name])


BAD_SHAPES = {
    "scalar": np.float32(1.0),
    "1-D": np.ones(INPUT, np.float32),
    "4-D": np.ones((STEPS, BATCH, 1, INPUT), np.float32),
    "features": np.ones((STEPS, BATCH, INPUT + 1), np.float32),
    "features_2d": np.ones((STEPS, INPUT - 1), np.float32),
    "no_steps": np.ones((0, BATCH, INPUT), np.float32),
    "no_steps_2d": np.ones((0, INPUT), np.float32),
    "no_features": np.ones((STEPS, BATCH, 0), np.float32),
}


@pytest.mark.parametrize("name", sorted(BAD_SHAPES))
def test_bad_input_shape_is_a_value_error(lstm, name):
    with pytest.raises(ValueError, match="input x"):
        lstm(BAD_SHAPES[name])


def test_batch_first_empty_time_axis():
    model = make_model("gru", batch_first=True)
    with pytest.raises(ValueError, match="no time steps"):
        model(np.ones((BATCH, 0, INPUT), np.float32))


def test_empty_batch_gives_empty_results_as_torch_does(lstm):
    y, state = lstm(np.ones((STEPS, 0, INPUT), np.float32))
    assert y.shape == (STEPS, 0, HIDDEN)
    assert state.h.shape == (2, 0, HIDDEN) and state.c.shape == (2, 0, HIDDEN)
    y, state = lstm(np.ones((STEPS, 0, INPUT), np.float32), lengths=np.zeros(0, np.int64))
    assert y.shape == (STEPS, 0, HIDDEN)


def test_floating_inputs_of_any_kind_are_converted(lstm):
    x = good_x(np.float64)
    expected, expected_state = lstm(x.astype(np.float32))
    variants = {
        "float64": x,
        "float16 rounded": x.astype(np.float16).astype(np.float32),
        "list": x.astype(np.float32).tolist(),
        "big-endian": x.astype(">f4"),
        "fortran": np.asfortranarray(x.astype(np.float32)),
        "strided": np.repeat(x.astype(np.float32), 2, axis=0)[::2],
        "torch": torch.from_numpy(x.astype(np.float32)),
        "torch float64 requiring grad": torch.tensor(x, requires_grad=True),
    }
    for name, value in variants.items():
        y, state = lstm(value)
        if isinstance(value, torch.Tensor):  # torch in, torch out, in the model's dtype
            assert type(y) is torch.Tensor and y.dtype == torch.float32, name
            y, state = y.numpy(), State(*(s.numpy() for s in state))
        assert y.dtype == np.float32, name
        tolerance = 1e-2 if "float16" in name else 1e-6
        if "float16" in name:
            y, state = lstm(value)   # float16-rounded inputs: same model, near answer
        np.testing.assert_allclose(y, expected, atol=tolerance, err_msg=name)
        np.testing.assert_allclose(state.c, expected_state.c, atol=tolerance, err_msg=name)
    y, _ = lstm(x.astype(np.float16))
    assert y.dtype == np.float32
    # floating types numpy lacks are floating inputs too
    bfloat = torch.from_numpy(x).to(torch.bfloat16)
    y, _ = lstm(bfloat)
    np.testing.assert_array_equal(y, lstm(bfloat.float().numpy())[0])


def test_read_only_input_is_accepted_and_not_written(lstm):
    x = good_x()
    x.setflags(write=False)
    lengths = np.array([STEPS, 2, 4])
    lengths.setflags(write=False)
    y, _ = lstm(x, lengths=lengths)
    assert y.shape == (STEPS, BATCH, HIDDEN)


# -- lengths ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("lengths, error, words", [
    ([STEPS, STEPS], ValueError, "one entry per batch row"),
    ([STEPS] * (BATCH + 1), ValueError, "one entry per batch row"),
    ([[STEPS] * BATCH], ValueError, "one entry per batch row"),
    (STEPS, ValueError, "one entry per batch row"),
    ([STEPS, 0, 1], ValueError, r"lie in 1\.\.6"),
    ([STEPS, STEPS + 1, 1], ValueError, r"lie in 1\.\.6"),
    ([STEPS, -1, 1], ValueError, r"lie in 1\.\.6"),
    ([6.0, 2.0, 1.0], TypeError, "integers"),
    ([6.5, 2.0, 1.0], TypeError, "integers"),
    ([True, True, True], TypeError, "integers"),
    (["6", "2", "1"], TypeError, "integers"),
    (np.array([6, 2, 1], np.uint8).astype(object), TypeError, "integers"),
], ids=lambda value: None)
def test_bad_lengths(lstm, lengths, error, words):
    with pytest.raises(error, match=words):
        lstm(good_x(), lengths=lengths)


def test_lengths_need_a_batched_input(lstm):
    with pytest.raises(ValueError, match="batched"):
        lstm(good_x(shape=(STEPS, INPUT)), lengths=[STEPS])


def test_lengths_of_any_integer_kind(lstm):
    x = good_x()
    expected, _ = lstm(x, lengths=[STEPS, 2, 4])
    for lengths in (np.array([STEPS, 2, 4], np.uint8), np.array([STEPS, 2, 4], np.int32),
                    torch.tensor([STEPS, 2, 4]), (STEPS, 2, 4), np.array([STEPS, 2, 4])[::-1][::-1]):
        np.testing.assert_array_equal(lstm(x, lengths=lengths)[0], expected)


# -- state -----------------------------------------------------------------------------------------

def lstm_state(batch=BATCH, dtype=np.float32):
    rng = np.random.default_rng(9)
    return (rng.standard_normal((2, batch, HIDDEN)).astype(dtype),
            rng.standard_normal((2, batch, HIDDEN)).astype(dtype))


@pytest.mark.parametrize("make_state, error, words", [
    (lambda h, c: h, ValueError, "needs both h and c"),
    (lambda h, c: (h, None), ValueError, "needs both h and c"),
    (lambda h, c: State(h), ValueError, "needs both h and c"),
    (lambda h, c: (h, c, c), ValueError, "got a sequence of 3"),
    (lambda h, c: (h,), ValueError, "got a sequence of 1"),
    (lambda h, c: (h[:1], c), ValueError, r"state h must have shape \(2, 3, 5\)"),
    (lambda h, c: (h, c[:, :2]), ValueError, r"state c must have shape \(2, 3, 5\)"),
    (lambda h, c: (h[0], c[0]), ValueError, "state h must have shape"),
    (lambda h, c: (h[..., :4], c), ValueError, "state h must have shape"),
    (lambda h, c: (h.astype(np.int32), c), TypeError, "state h must be a floating-point"),
    (lambda h, c: (h, c.astype(complex)), TypeError, "state c must be a floating-point"),
    (lambda h, c: ("h", c), TypeError, "state h must be a floating-point"),
    (lambda h, c: {"h": h, "c": c}, ValueError, "needs both h and c"),
], ids=lambda value: None)
def test_bad_lstm_state(lstm, make_state, error, words):
    with pytest.raises(error, match=words):
        lstm(good_x(), state=make_state(*lstm_state()))


def test_gru_given_h_and_c(gru):
    h = np.zeros((4, BATCH, HIDDEN), np.float32)
    with pytest.raises(ValueError, match="h alone"):
        gru(good_x(), state=(h, h))
    with pytest.raises(ValueError, match="state h must have shape"):
        gru(good_x(), state=h[:2])
    gru(good_x(), state=h)
    gru(good_x(), state=State(h))


def test_unbatched_state_is_two_dimensional(lstm):
    h, c = lstm_state(batch=1)
    x = good_x(shape=(STEPS, INPUT))
    with pytest.raises(ValueError, match=r"state h must have shape \(2, 5\)"):
        lstm(x, state=(h, c))
    y, state = lstm(x, state=(h[:, 0], c[:, 0]))
    assert y.shape == (STEPS, HIDDEN) and state.h.shape == (2, HIDDEN)
    batched_y, batched_state = lstm(x[:, None], state=(h, c))
    np.testing.assert_array_equal(y, batched_y[:, 0])
    np.testing.assert_array_equal(state.c, batched_state.c[:, 0])


def test_state_round_trips_and_is_never_written(lstm):
    """A returned State is a valid initial state (running in two halves equals one run), and the
    caller's arrays are not modified."""
    h, c = lstm_state()
    h_copy, c_copy = h.copy(), c.copy()
    x = good_x()
    y, final = lstm(x, state=(h, c))
    first, middle = lstm(x[:3], state=State(h, c))
    second, end = lstm(x[3:], state=middle)
    np.testing.assert_allclose(np.concatenate([first, second]), y, atol=1e-6)
    np.testing.assert_allclose(end.h, final.h, atol=1e-6)
    np.testing.assert_array_equal(h, h_copy)
    np.testing.assert_array_equal(c, c_copy)
    y_torch, _ = lstm(torch.from_numpy(x), state=(torch.from_numpy(h), torch.from_numpy(c)))
    np.testing.assert_array_equal(y_torch, y)
    y_list, _ = lstm(x, state=[h.astype(np.float64), c.astype(np.float64)])
    np.testing.assert_array_equal(y_list, y)


# -- NaN ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("clip", [0.0, 0.5], ids=["noclip", "clip"])
def test_nan_propagates_and_stays_in_its_row(kind, clip, dtype):
    """NaN at one step of one row: that row's outputs from that step on are NaN (both directions
    see it: the reverse direction's outputs up to it too), every other row is untouched."""
    model = make_model(kind, dtype, bidirectional=True, clip=clip)
    x = good_x(dtype)
    clean_y, clean_state = model(x, lengths=[STEPS, 4, 5])
    x[2, 1, 0] = np.nan
    y, state = model(x, lengths=[STEPS, 4, 5])
    # forward from step 2 on, reverse up to step 2: the top layer's every valid output is NaN;
    # past the row's length (4) outputs stay zero
    assert np.isnan(y[:4, 1]).all() and not y[4:, 1].any()
    h, clean_h = (state.h, clean_state.h) if kind == "lstm" else (state, clean_state)
    assert np.isnan(h[:, 1][2:]).all()     # the top layer's final states
    for row in (0, 2):
        np.testing.assert_array_equal(y[:, row], clean_y[:, row])
        np.testing.assert_array_equal(h[:, row], clean_h[:, row])


def test_nan_in_the_state_propagates(gru):
    h = np.zeros((4, BATCH, HIDDEN), np.float32)
    h[0, 2, 1] = np.nan
    y, _ = gru(good_x(), state=h)
    assert np.isnan(y[:, 2, :HIDDEN]).all() and not np.isnan(y[:, :2]).any()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_infinite_input_saturates(dtype):
    model = make_model("lstm", dtype)
    x = good_x(dtype)
    x[1, 0, :] = [np.inf, -np.inf, np.inf, -np.inf]
    y, state = model(x)
    # gates saturate; the pre-activations only become NaN where +inf and -inf weights meet, so
    # compare with the reference rather than asserting finiteness
    layers = cast_layers(random_layers("lstm", INPUT, HIDDEN, num_layers=2), dtype)
    with np.errstate(invalid="ignore"):
        ref_y = reference.run_model("lstm", layers, x)[0]
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref_y))
    finite = ~np.isnan(ref_y)
    np.testing.assert_allclose(y[finite], ref_y[finite], atol=3e-5)


# -- nothing bad reaches a kernel; nothing odd recompiles one ------------------------------------------

def test_no_input_reaches_numba_untyped_and_nothing_recompiles(lstm, gru):
    """Every bad input above fails in Python with TypeError/ValueError (a Numba TypingError is
    neither), and the odd-but-valid arrays reuse the driver's existing compiled specialisations."""
    lstm(good_x())
    lstm(good_x(np.float64).astype(np.float32))
    compiled = len(sequence_block.signatures)
    for value in list(NOT_FLOAT.values()) + list(BAD_SHAPES.values()):
        try:
            lstm(value)
        except (TypeError, ValueError) as error:
            assert "numba" not in type(error).__module__
    odd = good_x().astype(">f4")
    odd.setflags(write=False)
    lengths = np.array([STEPS, 1, 3], ">i8")
    lengths.setflags(write=False)
    lstm(odd, lengths=lengths, state=tuple(np.asfortranarray(s) for s in lstm_state()))
    gru(torch.from_numpy(good_x()), lengths=torch.tensor([1, 2, 3], dtype=torch.int16))
    assert len(sequence_block.signatures) == compiled


# -- Config ------------------------------------------------------------------------------------------

def config(**changes):
    values = dict(kind="lstm", input_size=3, hidden_size=4)
    values.update(changes)
    return Config(**values)


@pytest.mark.parametrize("changes, words", [
    (dict(kind="transformer"), "kind must be one of"),
    (dict(kind="LSTM"), "kind must be one of"),
    (dict(input_size=0), "input_size must be a positive integer"),
    (dict(input_size=-2), "input_size must be a positive integer"),
    (dict(input_size=3.0), "input_size must be a positive integer"),
    (dict(input_size=True), "input_size must be a positive integer"),
    (dict(input_size="3"), "input_size must be a positive integer"),
    (dict(hidden_size=None), "hidden_size must be a positive integer"),
    (dict(num_layers=0), "num_layers must be a positive integer"),
    (dict(proj_size=-1), "proj_size must be a non-negative integer"),
    (dict(proj_size=2.0), "proj_size must be a non-negative integer"),
    (dict(proj_size=True), "proj_size must be a non-negative integer"),
    (dict(proj_size=4), "smaller than hidden_size"),
    (dict(kind="gru", proj_size=2), "LSTM option"),
    (dict(kind="rnn_tanh", input_forget=True), "LSTM option"),
    (dict(clip=-1.0), "clip must be"),
    (dict(clip=float("nan")), "clip must be"),
    (dict(clip=float("inf")), "clip must be"),
    (dict(clip="1"), "clip must be"),
    (dict(clip=None), "clip must be"),
    (dict(bidirectional="yes"), "bidirectional must be True or False"),
    (dict(batch_first=1.0), "batch_first must be True or False"),
    (dict(input_forget=None), "input_forget must be True or False"),
    (dict(linear_before_reset="no"), "linear_before_reset must be True or False"),
    (dict(activations=(("Sigmoid", 0, 0), ("Tanh", 0, 0))), "takes 3 activations"),
    (dict(activations=(("Sigmoid", 0, 0),) * 3, bidirectional=True), "takes 6 activations"),
    (dict(activations=(("Sigmoid", 0, 0), ("tanh", 0, 0), ("Tanh", 0, 0))), "name among"),
    (dict(activations=(("Sigmoid", 0, 0), ("Tanh", 0), ("Tanh", 0, 0))), "name among"),
    (dict(activations=("Sigmoid", "Tanh", "Tanh")), "name among"),
    (dict(activations=(("Sigmoid", "a", 0), ("Tanh", 0, 0), ("Tanh", 0, 0))), "alpha and beta"),
    (dict(activations=(("Sigmoid", 0, float("nan")), ("Tanh", 0, 0), ("Tanh", 0, 0))),
     "alpha and beta"),
], ids=lambda value: None)
def test_bad_config(changes, words):
    with pytest.raises(ValueError, match=words):
        config(**changes)


def test_config_accepts_numpy_integers_and_round_trips_json():
    made = config(input_size=np.int64(3), num_layers=np.int32(2), clip=np.float32(0.5),
                  activations=(("Sigmoid", 0, 0), ("Elu", np.float64(0.5), 0), ("Tanh", 0, 0)))
    assert made.input_size == 3 and type(made.input_size) is int
    assert Config.from_json(json.loads(json.dumps(made.to_json()))) == made
    assert config(bidirectional=np.bool_(True), input_forget=1).bidirectional is True


def test_model_rejects_what_is_not_a_config():
    with pytest.raises(TypeError, match="fastrnn.Config"):
        fastrnn.Model({"kind": "lstm"}, [])


def test_model_from_bad_layer_weights():
    made = Config(kind="rnn_tanh", input_size=2, hidden_size=3, num_layers=2)
    good = random_layers("rnn_tanh", 2, 3, num_layers=2)
    with pytest.raises(ValueError, match=r"expected 2 layer weight sets \(l0, l1\), got 0"):
        fastrnn.Model(made, [])
    with pytest.raises(ValueError, match=r"expected 2 layer weight sets"):
        fastrnn.Model(made, good[:1])
    with pytest.raises(KeyError, match="unknown weight name"):
        fastrnn.Model(made, [good[0], dict(good[1], bias=np.zeros(3))])
    with pytest.raises(KeyError, match="layer 1: missing weight 'b_hh'"):
        fastrnn.Model(made, [good[0], {k: v for k, v in good[1].items() if k != "b_hh"}])
    with pytest.raises(TypeError, match="layer 0: expected a fastrnn.LayerWeights"):
        fastrnn.Model(made, [np.zeros(3), good[1]])
    with pytest.raises(ValueError, match=r"layer l1: weight 'w_ih' has shape \(3, 2\), "
                                         r"expected \(3, 3\)"):
        fastrnn.Model(made, [good[0], dict(good[1], w_ih=np.zeros((3, 2)))])
    assert fastrnn.Model(made, good).dtype == np.float64


def test_weights_cannot_be_edited_in_place():
    """model.layers are read-only views of the one packed copy every path reads: an edit in place
    is refused, instead of reaching some paths (and not the snapshot fingerprint) and not others."""
    model = make_model("gru")
    x = np.ones((20, 1, INPUT), np.float32)
    before = model(x)[0]
    for weights in model.layers:
        for name, array in weights.arrays().items():
            with pytest.raises(ValueError, match="read-only"):
                array[...] = 0
    assert not model.plan.weights.flags.writeable
    np.testing.assert_array_equal(model(x)[0], before)
