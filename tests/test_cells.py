"""Every cell and option of the engine against the float64 numpy reference (tests/reference.py).

Weights are random and go in through fastrnn.from_numpy or fastrnn.Model directly. float32 models
are compared with the reference run on the same float32-rounded weights and inputs, so the figure
is the engine's own error: within 3e-5 (float32) and 1e-9 (float64), DESIGN.md's tolerances.
"""

import numpy as np
import pytest

import fastrnn
import reference
from cores import use_cores
from fastrnn import Config, LayerWeights
from reference import cast_layers, random_layers

STEPS, BATCH, INPUT, HIDDEN = 7, 3, 5, 6


@pytest.fixture(autouse=True, params=["one_core", "all_cores"])
def cores(request, monkeypatch):
    """Every test here runs on one core and on all: with all, every call of two rows or more is
    cut into blocks run at once (tests/cores.py)."""
    use_cores(monkeypatch, request.param)
    return request.param


def run_both(kind, layers, x, dtype, *, lengths=None, h0=None, c0=None, **options):
    """(fastrnn's y, State) and the reference's (y, h_n, c_n) for the same weights and inputs."""
    layers = cast_layers(layers, dtype)
    x = np.asarray(x, dtype)
    model = fastrnn.from_numpy(kind, layers, **options)
    assert model.dtype == dtype
    state = None
    if h0 is not None:
        h0 = np.asarray(h0, dtype)
        state = h0 if c0 is None else (h0, np.asarray(c0, dtype))
        c0 = None if c0 is None else state[1]
    y, final = model(x, state=state, lengths=lengths)
    expected = reference.run_model(kind, layers, x, lengths=lengths, h0=h0, c0=c0, **options)
    return (y, final), expected


def final_h(state):
    """h of a returned state: an LSTM's State (h, c), or a GRU's or RNN's h itself (as torch)."""
    return state.h if isinstance(state, fastrnn.State) else state


def assert_matches(got, expected, tolerance):
    (y, state), (ref_y, ref_h, ref_c) = got, expected
    if ref_c is None:
        h = state
        assert type(h) is np.ndarray   # a GRU's or RNN's state is h alone
    else:
        h, c = state
        assert c.shape == ref_c.shape
        np.testing.assert_allclose(c, ref_c, rtol=0, atol=tolerance)
    assert y.shape == ref_y.shape and h.shape == ref_h.shape
    np.testing.assert_allclose(y, ref_y, rtol=0, atol=tolerance)
    np.testing.assert_allclose(h, ref_h, rtol=0, atol=tolerance)


def random_input(shape, seed=3):
    return np.random.default_rng(seed).standard_normal(shape)


def random_state(kind, layers, batch, seed=5, bidirectional=False):
    """Random initial (h0, c0) in torch's layout for these weights (c0 None unless LSTM)."""
    rng = np.random.default_rng(seed)
    count = len(layers)
    h_out = reference.output_size(kind, layers[0])
    hidden = reference.hidden_size(kind, layers[0])
    h0 = rng.standard_normal((count, batch, h_out)) * 0.5
    c0 = rng.standard_normal((count, batch, hidden)) * 0.5 if kind == "lstm" else None
    return h0, c0


# -- LSTM ---------------------------------------------------------------------------------------

LSTM_CASES = {
    "plain": dict(),
    "no_bias": dict(bias=False),
    "peephole": dict(peephole=True),
    "clip": dict(clip=0.6, scale=4.0),
    "input_forget": dict(input_forget=True),
    "peephole_clip_input_forget": dict(peephole=True, clip=0.8, input_forget=True, scale=3.0),
    "projection": dict(proj_size=4),
    "projection_peephole_clip": dict(proj_size=2, peephole=True, clip=0.7, scale=3.0),
    "two_layers_bidirectional_projection": dict(proj_size=3, num_layers=2, bidirectional=True),
    "three_layers_bidirectional_peephole": dict(num_layers=3, bidirectional=True, peephole=True),
}


@pytest.mark.parametrize("case", sorted(LSTM_CASES))
def test_lstm(case, dtype, tolerance):
    options = dict(LSTM_CASES[case])
    model_options = {k: options.pop(k) for k in ("clip", "input_forget") if k in options}
    layers = random_layers("lstm", INPUT, HIDDEN, **options, seed=len(case))
    bidirectional = options.get("bidirectional", False)
    x = random_input((STEPS, BATCH, INPUT))
    h0, c0 = random_state("lstm", layers, BATCH)
    lengths = np.array([4, STEPS, 1])
    got, expected = run_both("lstm", layers, x, dtype, lengths=lengths, h0=h0, c0=c0,
                             bidirectional=bidirectional, **model_options)
    assert_matches(got, expected, tolerance)


def test_lstm_options_change_the_answer():
    """The option cases above only prove something if each option changes the result."""
    layers = random_layers("lstm", INPUT, HIDDEN, peephole=True, scale=4.0)
    x = random_input((STEPS, BATCH, INPUT))
    plain_layers = [{k: v for k, v in w.items() if k != "peephole"} for w in layers]
    base = reference.run_model("lstm", plain_layers, x)[0]
    for other in (reference.run_model("lstm", layers, x)[0],
                  reference.run_model("lstm", plain_layers, x, clip=0.6)[0],
                  reference.run_model("lstm", plain_layers, x, input_forget=True)[0]):
        assert np.abs(other - base).max() > 1e-2


# -- GRU ----------------------------------------------------------------------------------------

GRU_CASES = {
    "plain": dict(),
    "no_bias": dict(bias=False),
    "clip": dict(clip=0.5, scale=4.0),
    "two_layers_bidirectional": dict(num_layers=2, bidirectional=True),
}


@pytest.mark.parametrize("linear_before_reset", [True, False], ids=["reset_after", "reset_before"])
@pytest.mark.parametrize("case", sorted(GRU_CASES))
def test_gru(case, linear_before_reset, dtype, tolerance):
    options = dict(GRU_CASES[case])
    model_options = {k: options.pop(k) for k in ("clip",) if k in options}
    layers = random_layers("gru", INPUT, HIDDEN, **options, seed=len(case))
    x = random_input((STEPS, BATCH, INPUT))
    h0, _ = random_state("gru", layers, BATCH)
    got, expected = run_both("gru", layers, x, dtype, lengths=[STEPS, 2, 5], h0=h0,
                             bidirectional=options.get("bidirectional", False),
                             linear_before_reset=linear_before_reset, **model_options)
    assert_matches(got, expected, tolerance)


def test_gru_conventions_differ():
    layers = random_layers("gru", INPUT, HIDDEN, scale=3.0)
    x = random_input((STEPS, BATCH, INPUT))
    after = reference.run_model("gru", layers, x, linear_before_reset=True)[0]
    before = reference.run_model("gru", layers, x, linear_before_reset=False)[0]
    assert np.abs(after - before).max() > 1e-2


# -- RNN ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("case", ["plain", "clip", "two_layers_bidirectional"])
def test_rnn(kind, case, dtype, tolerance):
    bidirectional = case == "two_layers_bidirectional"
    layers = random_layers(kind, INPUT, HIDDEN, num_layers=2 if bidirectional else 1,
                           bidirectional=bidirectional, scale=3.0 if case == "clip" else 1.0)
    x = random_input((STEPS, BATCH, INPUT))
    h0, _ = random_state(kind, layers, BATCH)
    got, expected = run_both(kind, layers, x, dtype, lengths=[3, STEPS, 6], h0=h0,
                             bidirectional=bidirectional, clip=0.9 if case == "clip" else 0.0)
    assert_matches(got, expected, tolerance)


# -- activations in every position ---------------------------------------------------------------

ALPHA_BETA = {
    "Relu": (0.0, 0.0), "Tanh": (0.0, 0.0), "Sigmoid": (0.0, 0.0), "Affine": (0.6, 0.1),
    "LeakyRelu": (0.05, 0.0), "ThresholdedRelu": (0.15, 0.0), "ScaledTanh": (1.3, 0.8),
    "HardSigmoid": (0.25, 0.45), "Elu": (0.7, 0.0), "Softsign": (0.0, 0.0), "Softplus": (0.0, 0.0),
}
SLOTS = [("lstm", 0), ("lstm", 1), ("lstm", 2), ("gru", 0), ("gru", 1), ("rnn_tanh", 0)]


@pytest.mark.parametrize("name", sorted(ALPHA_BETA))
@pytest.mark.parametrize("kind, slot", SLOTS, ids=[f"{k}-{s}" for k, s in SLOTS])
def test_activation_in_each_position(kind, slot, name, dtype, tolerance):
    """Each ONNX activation, with its alpha/beta, as each of a cell's activations (the rest at
    their defaults). Weights are scaled down so that unbounded activations stay of order one."""
    defaults = reference.DEFAULT_ACTIVATIONS[kind]
    activations = list(defaults)
    activations[slot] = (name, *ALPHA_BETA[name])
    layers = random_layers(kind, INPUT, HIDDEN, scale=0.8, seed=slot)
    x = random_input((STEPS, 2, INPUT)) * 0.5
    got, expected = run_both(kind, layers, x, dtype, lengths=[STEPS, 4],
                             activations=tuple(activations))
    assert_matches(got, expected, tolerance)
    if name != defaults[slot][0]:
        default_y = reference.run_model(kind, cast_layers(layers, dtype), x.astype(dtype),
                                        lengths=[STEPS, 4])[0]
        assert np.abs(default_y - expected[0]).max() > 10 * tolerance


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_each_direction_has_its_own_activations(kind, dtype, tolerance):
    count = len(reference.DEFAULT_ACTIVATIONS[kind])
    forward = [("HardSigmoid", 0.3, 0.5), ("Softsign", 0.0, 0.0), ("Elu", 0.9, 0.0)][:count]
    backward = [("Sigmoid", 0.0, 0.0), ("ScaledTanh", 1.2, 0.7), ("Softplus", 0.0, 0.0)][:count]
    if kind == "rnn_tanh":
        forward, backward = [("Softsign", 0.0, 0.0)], [("LeakyRelu", 0.1, 0.0)]
    layers = random_layers(kind, INPUT, HIDDEN, num_layers=2, bidirectional=True, scale=0.8)
    x = random_input((STEPS, BATCH, INPUT)) * 0.5
    activations = tuple(forward + backward)
    got, expected = run_both(kind, layers, x, dtype, lengths=[STEPS, 2, 5], bidirectional=True,
                             activations=activations)
    assert_matches(got, expected, tolerance)
    swapped = reference.run_model(kind, cast_layers(layers, dtype), x.astype(dtype),
                                  lengths=[STEPS, 2, 5], bidirectional=True,
                                  activations=tuple(backward + forward))[0]
    assert np.abs(swapped - expected[0]).max() > 1e-3


# -- the driver: lengths, layouts, states --------------------------------------------------------

@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
def test_lengths_bidirectional_stack_batch_first(kind, dtype, tolerance):
    """Unsorted lengths (full length included), two bidirectional layers, batch_first, initial
    state: outputs past each row's length are exactly zero, and each row's answer is the one it
    gets when run alone, cut to its length (packed-sequence semantics)."""
    layers = random_layers(kind, INPUT, HIDDEN, num_layers=2, bidirectional=True, seed=11)
    lengths = np.array([3, STEPS, 1, 5])
    x = random_input((len(lengths), STEPS, INPUT))   # (B, T, I)
    h0, c0 = random_state(kind, layers, len(lengths))
    got, expected = run_both(kind, layers, x, dtype, lengths=lengths, h0=h0, c0=c0,
                             bidirectional=True, batch_first=True)
    assert_matches(got, expected, tolerance)
    y, state = got
    assert y.shape == (len(lengths), STEPS, 2 * HIDDEN)
    for row, length in enumerate(lengths):
        assert not y[row, length:].any()
        # the padding's content must not matter
        alone_x = x[row:row + 1, :length]
        alone_state = h0[:, row:row + 1] if c0 is None else (h0[:, row:row + 1],
                                                             c0[:, row:row + 1])
        model = fastrnn.from_numpy(kind, cast_layers(layers, dtype), bidirectional=True,
                                   batch_first=True)
        alone_y, alone_final = model(alone_x.astype(dtype), state=_cast_state(alone_state, dtype))
        np.testing.assert_allclose(y[row:row + 1, :length], alone_y, rtol=0, atol=tolerance)
        np.testing.assert_allclose(final_h(state)[:, row:row + 1], final_h(alone_final), rtol=0,
                                   atol=tolerance)


def _cast_state(state, dtype):
    if isinstance(state, tuple):
        return tuple(np.asarray(s, dtype) for s in state)
    return np.asarray(state, dtype)


def test_lengths_do_not_read_the_padding(dtype):
    layers = cast_layers(random_layers("lstm", INPUT, HIDDEN, bidirectional=True), dtype)
    model = fastrnn.from_numpy("lstm", layers, bidirectional=True)
    x = random_input((STEPS, 2, INPUT)).astype(dtype)
    lengths = [4, 2]
    y1, s1 = model(x, lengths=lengths)
    noisy = x.copy()
    noisy[4:, 0] = np.nan
    noisy[2:, 1] = 1e6
    y2, s2 = model(noisy, lengths=lengths)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(s1.h, s2.h)
    np.testing.assert_array_equal(s1.c, s2.c)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_unbatched_input(kind, dtype, tolerance):
    """(T, I) in, (T, D*H_out) out, state (L*D, H_out), as torch does for unbatched input."""
    layers = random_layers(kind, INPUT, HIDDEN, num_layers=2, bidirectional=True,
                           proj_size=4 if kind == "lstm" else 0)
    x = random_input((STEPS, INPUT))
    h0, c0 = random_state(kind, layers, 1)
    model = fastrnn.from_numpy(kind, cast_layers(layers, dtype), bidirectional=True)
    state = (h0[:, 0], c0[:, 0]) if kind == "lstm" else h0[:, 0]
    y, final = model(x.astype(dtype), state=_cast_state(state, dtype))
    ref_y, ref_h, ref_c = reference.run_model(kind, cast_layers(layers, dtype),
                                              x[:, None].astype(dtype), bidirectional=True,
                                              h0=h0.astype(dtype),
                                              c0=None if c0 is None else c0.astype(dtype))
    h_out = 4 if kind == "lstm" else HIDDEN
    assert y.shape == (STEPS, 2 * h_out) and final_h(final).shape == (4, h_out)
    np.testing.assert_allclose(y, ref_y[:, 0], rtol=0, atol=tolerance)
    np.testing.assert_allclose(final_h(final), ref_h[:, 0], rtol=0, atol=tolerance)
    if kind == "lstm":
        assert final.c.shape == (4, HIDDEN)
        np.testing.assert_allclose(final.c, ref_c[:, 0], rtol=0, atol=tolerance)


def test_model_from_config_and_layer_weights(dtype, tolerance):
    """The lowest-level way in: a Config and LayerWeights in fastrnn's layout."""
    layers = cast_layers(random_layers("lstm", INPUT, HIDDEN, proj_size=3, peephole=True,
                                       num_layers=2), dtype)
    config = Config(kind="lstm", input_size=INPUT, hidden_size=HIDDEN, num_layers=2, proj_size=3,
                    clip=1.5, activations=(("Sigmoid", 0, 0), ("Softsign", 0, 0),
                                           ("ScaledTanh", 1.1, 0.9)))
    model = fastrnn.Model(config, [LayerWeights(**w) for w in layers])
    assert model.dtype == dtype and model.output_size == 3
    x = random_input((STEPS, BATCH, INPUT)).astype(dtype)
    y, state = model(x, lengths=[2, STEPS, 6])
    ref_y, ref_h, ref_c = reference.run_model("lstm", layers, x, lengths=[2, STEPS, 6], clip=1.5,
                                              activations=config.activations)
    np.testing.assert_allclose(y, ref_y, rtol=0, atol=tolerance)
    np.testing.assert_allclose(state.h, ref_h, rtol=0, atol=tolerance)
    np.testing.assert_allclose(state.c, ref_c, rtol=0, atol=tolerance)


def test_float32_model_from_float64_weights():
    """dtype= casts the weights; the answer is that of the rounded weights."""
    layers = random_layers("gru", INPUT, HIDDEN)
    model = fastrnn.from_numpy("gru", layers, dtype=np.float32)
    assert model.dtype == np.float32
    x = random_input((STEPS, BATCH, INPUT))
    y, h = model(x.astype(np.float32))   # the weights are cast, not the input
    assert y.dtype == np.float32 and h.dtype == np.float32
    ref_y = reference.run_model("gru", cast_layers(layers, np.float32), x.astype(np.float32))[0]
    np.testing.assert_allclose(y, ref_y, rtol=0, atol=3e-5)


def test_long_sequence_float32_stays_within_tolerance():
    """Tens of steps (DESIGN.md's float32 figure is for sequences of tens of steps)."""
    layers = cast_layers(random_layers("lstm", 8, 16, num_layers=2), np.float32)
    model = fastrnn.from_numpy("lstm", layers)
    x = random_input((60, 2, 8)).astype(np.float32)
    y, _ = model(x)
    np.testing.assert_allclose(y, reference.run_model("lstm", layers, x)[0], rtol=0, atol=3e-5)


# -- numerics at the edges ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_silence_never_goes_subnormal(kind, dtype):
    """A sequence that falls silent decays towards zero; the cells flush tiny state values, so no
    output or state is ever subnormal (whose arithmetic costs ~100x). The decay is real: the
    reference, which does not flush, passes through subnormal values of the model's dtype."""
    steps = 2500
    layers = random_layers(kind, 3, 4, bias=False, scale=0.5, seed=2)
    x = np.zeros((steps, 1, 3))
    x[0] = 1.0
    model = fastrnn.from_numpy(kind, cast_layers(layers, dtype))
    y, state = model(x.astype(dtype))
    tiny = np.finfo(dtype).tiny
    for values in (y,) + (tuple(state) if kind == "lstm" else (state,)):
        magnitudes = np.abs(values[values != 0])
        assert (magnitudes >= tiny).all(), f"subnormal values: {magnitudes.min()}"
    assert not final_h(state).any()   # decayed to (flushed) zero
    ref_y = reference.run_model(kind, cast_layers(layers, dtype), x.astype(dtype))[0]
    ref_y = ref_y.astype(dtype)
    assert ((ref_y != 0) & (np.abs(ref_y) < tiny)).any()


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_silent_stream_never_goes_subnormal(kind, dtype):
    """The same through the streaming step, one call per timestep, as a service would feed it."""
    layers = random_layers(kind, 3, 4, num_layers=2, bias=False, scale=0.5, seed=2)
    stream = fastrnn.from_numpy(kind, cast_layers(layers, dtype)).stream(batch=1)
    tiny = np.finfo(dtype).tiny
    silence = np.zeros((1, 3), dtype)
    outputs = [stream.step(np.ones((1, 3), dtype)).copy()]
    outputs += [stream.step(silence).copy() for _ in range(2500)]
    state = stream.state
    for values in [np.array(outputs), state.h] + ([state.c] if state.c is not None else []):
        magnitudes = np.abs(values[values != 0])
        assert (magnitudes >= tiny).all(), f"subnormal values: {magnitudes.min()}"
    assert np.abs(outputs[0]).max() > 1e-3 and not outputs[-1].any()


def test_unbatched_input_ignores_batch_first(dtype):
    """As in torch, a (T, I) input is one sequence whichever layout the model was built with."""
    layers = cast_layers(random_layers("gru", INPUT, HIDDEN, bidirectional=True), dtype)
    x = random_input((STEPS, INPUT)).astype(dtype)
    y_first, h_first = fastrnn.from_numpy("gru", layers, bidirectional=True,
                                          batch_first=True)(x)
    y_major, h_major = fastrnn.from_numpy("gru", layers, bidirectional=True)(x)
    assert y_first.shape == (STEPS, 2 * HIDDEN)
    np.testing.assert_array_equal(y_first, y_major)
    np.testing.assert_array_equal(h_first, h_major)


@pytest.mark.parametrize("dtype_", [np.float32, np.float64])
def test_clip_and_flush_edges(dtype_):
    """The clip bounds +-inf and lets NaN through; the flush zeroes only tiny values and leaves
    NaN alone (the sign of a zero is free: the kernels compile with fastmath's nsz)."""
    from fastrnn.engine.cells.common import DENORMAL_FLUSH, clip_range, flush_tiny
    values = np.array([np.nan, np.inf, -np.inf, 5.0, -5.0, 0.3, -0.0, 7.0], dtype_)
    clip_range(values, 0, 7, 0.5)
    np.testing.assert_array_equal(values, np.array([np.nan, 0.5, -0.5, 0.5, -0.5, 0.3, -0.0, 7.0],
                                                   dtype_))
    unclipped = np.array([np.inf, 5.0], dtype_)
    clip_range(unclipped, 0, 2, 0.0)
    np.testing.assert_array_equal(unclipped, [np.inf, 5.0])
    state = np.array([DENORMAL_FLUSH / 2, -DENORMAL_FLUSH / 2, DENORMAL_FLUSH * 2, np.nan,
                      1e-39 if dtype_ == np.float32 else 1e-310, 0.25], dtype_)
    flush_tiny(state)
    np.testing.assert_array_equal(state[[0, 1, 4]], 0.0)
    assert state[2] == dtype_(DENORMAL_FLUSH * 2) and np.isnan(state[3]) and state[5] == 0.25


# -- the reference itself, against the frameworks' own definitions ------------------------------------

def _blocks(array, order, hidden):
    """Gate blocks of `array` (along axis 0) taken in `order`."""
    return np.concatenate([array[k * hidden:(k + 1) * hidden] for k in order])


@pytest.mark.parametrize("case", ["lstm_peephole", "gru_reset_before", "gru_reset_after"])
def test_reference_agrees_with_onnx_reference_evaluator(case):
    """The reference's peepholes (P_o on the new c) and both GRU reset conventions are ONNX's, as
    onnx.reference implements the LSTM and GRU operators (bidirectional, initial state)."""
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator
    kind = case.split("_")[0]
    hidden = HIDDEN
    layers = random_layers(kind, INPUT, hidden, bidirectional=True, peephole=kind == "lstm",
                           scale=2.0)
    # fastrnn blocks -> ONNX blocks: LSTM i, f, g, o -> i, o, f, c; GRU r, z, n -> z, r, h
    order = [0, 3, 1, 2] if kind == "lstm" else [1, 0, 2]
    w = np.stack([_blocks(l["w_ih"], order, hidden) for l in layers])
    r = np.stack([_blocks(l["w_hh"], order, hidden) for l in layers])
    b = np.stack([np.concatenate([_blocks(l["b_ih"], order, hidden),
                                  _blocks(l["b_hh"], order, hidden)]) for l in layers])
    x = random_input((STEPS, BATCH, INPUT))
    h0, c0 = random_state(kind, layers, BATCH)
    feeds = {"X": x, "W": w, "R": r, "B": b, "initial_h": h0}
    inputs = ["X", "W", "R", "B", "", "initial_h"]
    attributes = {"hidden_size": hidden, "direction": "bidirectional"}
    options = {}
    if kind == "lstm":
        feeds["initial_c"] = c0
        feeds["P"] = np.stack([l["peephole"][[0, 2, 1]].ravel() for l in layers])  # i, o, f
        inputs += ["initial_c", "P"]
    else:
        attributes["linear_before_reset"] = int(case == "gru_reset_after")
        options["linear_before_reset"] = case == "gru_reset_after"
    node = helper.make_node(kind.upper(), inputs, ["Y", "Y_h"], **attributes)
    graph = helper.make_graph(
        [node], "cell",
        [helper.make_tensor_value_info(name, TensorProto.DOUBLE, None) for name in feeds],
        [helper.make_tensor_value_info(name, TensorProto.DOUBLE, None) for name in ("Y", "Y_h")])
    onnx_y, onnx_h = ReferenceEvaluator(helper.make_model(graph)).run(None, feeds)
    ref_y, ref_h, _ = reference.run_model(kind, layers, x, bidirectional=True, h0=h0, c0=c0,
                                          **options)
    # ONNX's Y is (T, D, B, H); ours (T, B, D*H)
    np.testing.assert_allclose(ref_y, onnx_y.transpose(0, 2, 1, 3).reshape(ref_y.shape),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(ref_h, onnx_h, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_reference_agrees_with_torch_packed_sequences(kind):
    """The reference's driver is torch's: stacked bidirectional layers, batch_first, projection,
    initial states, and per-row lengths as packed sequences give them."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    torch.manual_seed(0)
    options = dict(num_layers=2, bidirectional=True, batch_first=True)
    module = {"lstm": lambda: torch.nn.LSTM(INPUT, HIDDEN, proj_size=3, **options),
              "gru": lambda: torch.nn.GRU(INPUT, HIDDEN, **options),
              "rnn_tanh": lambda: torch.nn.RNN(INPUT, HIDDEN, **options),
              "rnn_relu": lambda: torch.nn.RNN(INPUT, HIDDEN, nonlinearity="relu", **options),
              }[kind]().double()
    weights = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    layers = []
    for layer in range(2):
        for suffix in ("", "_reverse"):
            names = {"w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih",
                     "b_hh": "bias_hh", "w_proj": "weight_hr"}
            layers.append({ours: weights[f"{theirs}_l{layer}{suffix}"]
                           for ours, theirs in names.items()
                           if f"{theirs}_l{layer}{suffix}" in weights})
    lengths = [3, STEPS, 1, 5]
    x = random_input((len(lengths), STEPS, INPUT))
    h0, c0 = random_state(kind, layers, len(lengths))
    state = torch.tensor(h0) if c0 is None else (torch.tensor(h0), torch.tensor(c0))
    packed = pack_padded_sequence(torch.tensor(x), torch.tensor(lengths), batch_first=True,
                                  enforce_sorted=False)
    out, final = module(packed, state)
    torch_y = pad_packed_sequence(out, batch_first=True, total_length=STEPS)[0].detach().numpy()
    ref_y, ref_h, ref_c = reference.run_model(kind, layers, x, bidirectional=True,
                                              batch_first=True, lengths=lengths, h0=h0, c0=c0)
    np.testing.assert_allclose(ref_y, torch_y, rtol=0, atol=1e-12)
    torch_h = final[0] if kind == "lstm" else final
    np.testing.assert_allclose(ref_h, torch_h.detach().numpy(), rtol=0, atol=1e-12)
    if kind == "lstm":
        np.testing.assert_allclose(ref_c, final[1].detach().numpy(), rtol=0, atol=1e-12)
