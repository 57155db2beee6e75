"""fastrnn.from_numpy: building a model from raw numpy weights, including the cs224n GRU."""

import numpy as np
import pytest

import fastrnn
import reference
from fastrnn import LayerWeights
from reference import cast_layers, random_layers

STEPS, BATCH, INPUT, HIDDEN = 8, 3, 4, 5


def cs224n_layers(input_size, hidden_size, count, seed=0):
    """Random weights by the cs224n notes' names, for `count` layer-directions (input sizes as a
    bidirectional stack's: the first takes `input_size`, the later ones 2 * hidden_size)."""
    rng = np.random.default_rng(seed)
    layers = []
    for index in range(count):
        size = input_size if index < 2 else 2 * hidden_size
        weights = {}
        for gate in ("u", "r", "h"):
            weights[f"W_{gate}"] = rng.uniform(-0.8, 0.8, (hidden_size, hidden_size))
            weights[f"U_{gate}"] = rng.uniform(-0.8, 0.8, (hidden_size, size))
            weights[f"b_{gate}"] = rng.uniform(-0.5, 0.5, hidden_size)
        layers.append(weights)
    return layers


def to_fastrnn_layout(weights):
    """cs224n names into fastrnn's gate blocks r, z, n, with u in z's place: the conversion to
    PyTorch's z = 1 - u is from_numpy's job (gru_update="new"), not the caller's."""
    return {
        "w_ih": np.vstack([weights["U_r"], weights["U_u"], weights["U_h"]]),
        "w_hh": np.vstack([weights["W_r"], weights["W_u"], weights["W_h"]]),
        "b_ih": np.concatenate([weights["b_r"], weights["b_u"], weights["b_h"]]),
    }


@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
def test_gru_update_new_runs_the_cs224n_gru(bidirectional, dtype, tolerance):
    count = 4 if bidirectional else 1    # two bidirectional layers, or one forward layer
    named = [{k: v.astype(dtype) for k, v in w.items()}
             for w in cs224n_layers(INPUT, HIDDEN, count)]
    layers = [to_fastrnn_layout(w) for w in named]
    originals = [{k: v.copy() for k, v in w.items()} for w in layers]
    model = fastrnn.from_numpy("gru", layers, gru_update="new", linear_before_reset=False,
                               bidirectional=bidirectional)
    for given, original in zip(layers, originals):   # the caller's arrays are left alone
        for key in original:
            np.testing.assert_array_equal(given[key], original[key])
    x = np.random.default_rng(1).standard_normal((STEPS, BATCH, INPUT)).astype(dtype)
    h0 = np.random.default_rng(2).standard_normal((count, BATCH, HIDDEN)).astype(dtype) * 0.5
    lengths = [5, STEPS, 2]
    y, h = model(x, state=h0, lengths=lengths)
    ref_y, ref_h, _ = reference.run_model("gru_cs224n", named, x, bidirectional=bidirectional,
                                          lengths=lengths, h0=h0)
    np.testing.assert_allclose(y, ref_y, rtol=0, atol=tolerance)
    np.testing.assert_allclose(h, ref_h, rtol=0, atol=tolerance)
    # The same arrays read as PyTorch's convention give a different network.
    other, _ = fastrnn.from_numpy("gru", layers, linear_before_reset=False,
                                  bidirectional=bidirectional)(x, state=h0, lengths=lengths)
    assert np.abs(other - ref_y).max() > 1e-2


def test_gru_update_new_with_a_separate_recurrent_bias(dtype, tolerance):
    """A b_hh on the update row is negated with the rest of the row: with the reset applied before
    the product both biases simply add, so the cs224n b_u may be split between them."""
    named = [{k: v.astype(dtype) for k, v in w.items()} for w in cs224n_layers(INPUT, HIDDEN, 1)]
    layer = to_fastrnn_layout(named[0])
    split = np.random.default_rng(4).uniform(-1, 1, 3 * HIDDEN).astype(dtype)
    layer["b_hh"] = split
    layer["b_ih"] = layer["b_ih"] - split
    model = fastrnn.from_numpy("gru", [layer], gru_update="new", linear_before_reset=False)
    x = np.random.default_rng(1).standard_normal((STEPS, BATCH, INPUT)).astype(dtype)
    y, _ = model(x)
    np.testing.assert_allclose(y, reference.run_model("gru_cs224n", named, x)[0], rtol=0,
                               atol=tolerance)


def test_sizes_are_read_from_the_shapes():
    layers = random_layers("lstm", INPUT, HIDDEN, num_layers=3, bidirectional=True, proj_size=2,
                           peephole=True)
    model = fastrnn.from_numpy("lstm", layers, bidirectional=True, batch_first=True)
    c = model.config
    assert (c.kind, c.input_size, c.hidden_size, c.num_layers, c.proj_size) == \
        ("lstm", INPUT, HIDDEN, 3, 2)
    assert c.bidirectional and c.batch_first
    assert model.output_size == 4 and model.dtype == np.float64
    assert model.num_parameters == sum(v.size for w in layers for v in w.values())


def test_absent_biases_are_zero_and_layer_weights_are_accepted(dtype, tolerance):
    with_bias = cast_layers(random_layers("gru", INPUT, HIDDEN, bias=True), dtype)
    without = [{k: v for k, v in w.items() if not k.startswith("b_")} for w in with_bias]
    zeroed = [dict(w, b_ih=np.zeros_like(w["b_ih"]), b_hh=np.zeros_like(w["b_hh"]))
              for w in with_bias]
    x = np.random.default_rng(1).standard_normal((STEPS, BATCH, INPUT)).astype(dtype)
    y_without, _ = fastrnn.from_numpy("gru", without)(x)
    y_objects, _ = fastrnn.from_numpy("gru", [LayerWeights(**w) for w in zeroed])(x)
    np.testing.assert_array_equal(y_without, y_objects)
    np.testing.assert_allclose(y_without, reference.run_model("gru", without, x)[0], rtol=0,
                               atol=tolerance)


def test_weights_as_nested_lists():
    layers = random_layers("rnn_tanh", 2, 3)
    as_lists = [{k: v.tolist() for k, v in w.items()} for w in layers]
    model = fastrnn.from_numpy("rnn_tanh", as_lists)
    x = np.ones((4, 1, 2))
    np.testing.assert_allclose(model(x)[0], reference.run_model("rnn_tanh", layers, x)[0],
                               rtol=0, atol=1e-12)


# -- bad arguments ---------------------------------------------------------------------------------

def _gru(**changes):
    weights = random_layers("gru", INPUT, HIDDEN)[0]
    weights.update(changes)
    return [weights]


@pytest.mark.parametrize("call, error, words", [
    (lambda: fastrnn.from_numpy("lstmm", _gru()), ValueError, "kind must be one of"),
    (lambda: fastrnn.from_numpy("gru", _gru(), gru_update="old"), ValueError, "gru_update"),
    (lambda: fastrnn.from_numpy("lstm", random_layers("lstm", 2, 3), gru_update="new"),
     ValueError, "GRUs only"),
    (lambda: fastrnn.from_numpy("gru", _gru(), gru_update="new",
                                activations=(("HardSigmoid", 0.2, 0.5), ("Tanh", 0, 0))),
     ValueError, "sigmoid"),
    (lambda: fastrnn.from_numpy("gru", []), ValueError, "at least one"),
    (lambda: fastrnn.from_numpy("gru", _gru(), bidirectional=True), ValueError, "two weight sets"),
    (lambda: fastrnn.from_numpy("gru", _gru(w_hh=None)), KeyError, "w_hh"),
    (lambda: fastrnn.from_numpy("gru", [{"w_ih": np.zeros((15, 4))}]), KeyError, "w_hh"),
    (lambda: fastrnn.from_numpy("gru", _gru(w_out=np.zeros(3))), KeyError, "w_out"),
    (lambda: fastrnn.from_numpy("gru", _gru(w_ih=np.zeros((16, 4)))), ValueError, "w_ih"),
    (lambda: fastrnn.from_numpy("gru", _gru(w_ih=np.zeros(15))), ValueError, "w_ih"),
    (lambda: fastrnn.from_numpy("gru", _gru(w_hh=np.zeros((15, 4)))), ValueError, "w_hh"),
    (lambda: fastrnn.from_numpy("gru", _gru(b_hh=np.zeros(14))), ValueError, "b_hh"),
    (lambda: fastrnn.from_numpy("gru", _gru(w_ih=np.zeros((15, 4), np.int64))), TypeError,
     "floating"),
    (lambda: fastrnn.from_numpy("gru", _gru(w_hh=np.zeros((15, 5), complex))), TypeError,
     "floating"),
    (lambda: fastrnn.from_numpy("gru", _gru(w_hh=np.full((15, 5), "a"))), TypeError, "floating"),
    (lambda: fastrnn.from_numpy("gru", _gru(peephole=np.zeros((3, 5)))), ValueError, "peephole"),
    (lambda: fastrnn.from_numpy("gru", _gru(), dtype=np.float16), TypeError, "float32 or float64"),
    (lambda: fastrnn.from_numpy("lstm", [dict(random_layers("lstm", 2, 3)[0],
                                              peephole=np.zeros((3, 2)))]), ValueError, "peephole"),
    (lambda: fastrnn.from_numpy("lstm", [dict(random_layers("lstm", 2, 3)[0],
                                              w_proj=np.zeros((3, 3)))]), ValueError, "proj_size"),
    (lambda: fastrnn.from_numpy("lstm", [dict(random_layers("lstm", 2, 3, proj_size=2)[0],
                                              w_proj=np.zeros((2, 4)))]), ValueError, "w_proj"),
    (lambda: fastrnn.from_numpy("gru", random_layers("gru", 4, 5, num_layers=2)[:1]
                                + [{"w_ih": np.zeros((15, 5))}]), KeyError, "w_hh"),
    (lambda: fastrnn.from_numpy("gru", random_layers("gru", 4, 5)
                                + random_layers("gru", 4, 5)), ValueError, "l1"),
    (lambda: fastrnn.from_numpy("gru", _gru(), clip=-1.0), ValueError, "clip"),
    (lambda: fastrnn.from_numpy("gru", _gru(), input_forget=True), ValueError, "input_forget"),
    (lambda: fastrnn.from_numpy("gru", _gru(), activations=(("Tanh", 0, 0),)), ValueError,
     "activations"),
    (lambda: fastrnn.from_numpy("gru", _gru()[0]), TypeError, "one mapping per layer"),
    (lambda: fastrnn.from_numpy("gru", ["w_ih"]), TypeError, "one mapping per layer"),
], ids=lambda value: None)
def test_bad_arguments_are_clear_errors(call, error, words):
    with pytest.raises(error, match=words):
        call()
