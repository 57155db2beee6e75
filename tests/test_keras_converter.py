"""fastrnn.converters.keras against Keras 3 itself (torch backend), on the same inputs.

Keras's float32 results are the reference: fastrnn's are within 3e-5 of them; streams of causal
models equal the whole sequence to 1e-6.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")   # before keras is first imported

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import fastrnn  # noqa: E402
from fastrnn.converters.keras import LastStep  # noqa: E402

layers = keras.layers
# Keras's own saving turns torch tensors into numpy arrays in a way numpy 2 deprecates.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
TOLERANCE = 3e-5
CHANNELS = 3


def randomised(model, seed=0):
    """`model` with every weight drawn at random (Keras starts biases and norm statistics at 0
    and 1, which would hide a wrong bias or statistic), variances kept positive."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        value = 0.5 * rng.standard_normal(shape)
        if variable.path.endswith("moving_variance"):
            value = np.abs(value) + 0.5
        variable.assign(value.astype(str(variable.dtype)))
    return model


def sequential(*stack, seed=0):
    return randomised(keras.Sequential([keras.Input((None, CHANNELS)), *stack]), seed)


def keras_output(model, x):
    return model(x, training=False).detach().numpy()   # a torch tensor (the torch backend)


def inputs(batch=2, steps=12, seed=1):
    return np.random.default_rng(seed).standard_normal((batch, steps, CHANNELS)).astype(np.float32)


# Small models, one per layer family (each build costs Keras time: they are few and tiny).
CASES = {
    "dense_activations": lambda: sequential(
        layers.Dense(4, activation="relu"), layers.Dense(4, activation="leaky_relu"),
        layers.Dense(4, activation="elu"), layers.Dense(4, activation="gelu"),
        layers.Dense(4, activation="silu"), layers.Dense(4, activation="tanh"),
        layers.Dense(4, activation="relu6"), layers.Dense(4, activation="sigmoid"),
        layers.Dense(4, use_bias=False), layers.Dense(3, activation="softmax")),
    "activation_layers": lambda: sequential(
        layers.Dense(4), layers.Activation("tanh"), layers.ReLU(max_value=0.5),
        layers.Dense(4), layers.LeakyReLU(negative_slope=0.1), layers.ELU(alpha=0.7),
        layers.PReLU(shared_axes=[1]), layers.Dropout(0.5), layers.Softmax()),
    "norms": lambda: sequential(
        layers.BatchNormalization(), layers.Dense(5), layers.BatchNormalization(),
        layers.Activation("tanh"), layers.BatchNormalization(), layers.LayerNormalization(),
        layers.LSTM(4, return_sequences=True)),
    "conv_causal_dilated_grouped": lambda: sequential(
        layers.Conv1D(6, 3, padding="causal", dilation_rate=2, activation="relu"),
        layers.Conv1D(4, 2, padding="causal", groups=2)),
    "conv_valid_same": lambda: sequential(
        # "same" with K = 4: 3 steps of padding, Keras puts 1 on the left and 2 on the right
        layers.Conv1D(4, 3, padding="valid"), layers.Conv1D(4, 4, padding="same"),
        layers.Conv1D(4, 3, padding="same", dilation_rate=2)),
    "lstm_stack_activations": lambda: sequential(
        layers.LSTM(5, return_sequences=True),
        layers.LSTM(4, return_sequences=True, activation="softsign",
                    recurrent_activation="hard_sigmoid")),
    "gru_reset_after": lambda: sequential(layers.GRU(5, return_sequences=True)),
    "simple_rnn": lambda: sequential(
        layers.SimpleRNN(4, return_sequences=True),
        layers.SimpleRNN(3, return_sequences=True, activation="relu")),
    "bidirectional": lambda: sequential(
        layers.Bidirectional(layers.GRU(3, return_sequences=True))),
    "last_step": lambda: sequential(
        layers.LSTM(5, return_sequences=False), layers.Dense(2, activation="tanh")),
}
CAUSAL = ("dense_activations", "activation_layers", "norms", "conv_causal_dilated_grouped",
          "lstm_stack_activations", "gru_reset_after", "simple_rnn")


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_families_match_keras(case):
    model = CASES[case]()
    chain = fastrnn.from_keras(model)
    assert chain.input_layout == chain.output_layout == "BTC"
    x = inputs()
    expected = keras_output(model, x)
    got = chain(x)
    if case == "last_step":   # Keras's (B, C); fastrnn keeps a time axis of length 1
        assert isinstance(chain.layers[1], LastStep) and got.shape == (2, 1, 2)
        got = got[:, 0]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)
    if case == "norms":   # the first two BatchNorms fold into the Dense; the third stays
        assert [type(layer).__name__ for layer in chain.layers] == \
            ["Linear", "Activation", "Affine", "LayerNorm", "Recurrent"]
    if case in CAUSAL:
        stream = chain.stream(batch=2)
        steps = np.stack([stream.step(x[:, t]) for t in range(x.shape[1])], axis=1)
        np.testing.assert_allclose(steps, got, rtol=0, atol=1e-6)
        stream.reset()
        chunked = np.concatenate([stream.process(x[:, :5]), stream.process(x[:, 5:])], axis=1)
        np.testing.assert_allclose(chunked, got, rtol=0, atol=1e-6)
    elif case == "last_step":   # each step is the last step so far
        stream = chain.stream(batch=2)
        last = [stream.step(x[:, t]) for t in range(x.shape[1])][-1]
        np.testing.assert_allclose(last, got, rtol=0, atol=1e-6)
        stream.reset()
        np.testing.assert_allclose(stream.process(x)[:, 0], got, rtol=0, atol=1e-6)
        # The chain kernel runs it (the Dense after LastStep on every step, the last kept):
        # chunks carry the state, and it has a pool.
        from fastrnn.layers.program import ProgramTable
        assert isinstance(stream._table, ProgramTable)
        stream.reset()
        stream.process(x[:, :5])
        np.testing.assert_allclose(stream.process(x[:, 5:])[:, 0], got, rtol=0, atol=1e-6)
        pool = chain.pool(capacity=4)
        pooled = pool.process([3, 1], np.ascontiguousarray(x.transpose(1, 0, 2)))
        assert pooled.shape == (1, 2, 2)
        np.testing.assert_allclose(pooled[0], got, rtol=0, atol=1e-6)
    else:
        with pytest.raises(ValueError, match="cannot stream"):
            chain.stream()


def test_conv_lstm_dense_model_streams_and_round_trips_a_keras_file(tmp_path, capsys):
    inp = keras.Input((None, CHANNELS))
    hidden = layers.Conv1D(6, 3, padding="causal", activation="tanh")(inp)
    hidden = layers.LSTM(8, return_sequences=True)(hidden)
    out = layers.Dense(2)(layers.Dropout(0.2)(hidden))
    model = randomised(keras.Model(inp, out), seed=3)
    x = inputs(batch=3, steps=30, seed=4)
    expected = keras_output(model, x)
    chain = fastrnn.from_keras(model)
    whole = chain(x)
    np.testing.assert_allclose(whole, expected, rtol=0, atol=TOLERANCE)
    stream = chain.stream(batch=3)
    steps = np.stack([stream.step(x[:, t]) for t in range(x.shape[1])], axis=1)
    np.testing.assert_allclose(steps, whole, rtol=0, atol=1e-6)
    stream.reset()
    chunks = [stream.process(x[:, start:start + 7]) for start in range(0, 30, 7)]
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), whole, rtol=0, atol=1e-6)

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = fastrnn.from_keras(path)
    assert loaded.fingerprint() == chain.fingerprint()
    np.testing.assert_array_equal(loaded(x), whole)
    reloaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(loaded(x), keras_output(reloaded, x), rtol=0, atol=TOLERANCE)
    from fastrnn.cli import main
    assert main(["info", str(path)]) == 0
    assert "Keras 3 model" in capsys.readouterr().out


def test_gru_reset_before_the_product_model():
    inp = keras.Input((None, CHANNELS))
    hidden = layers.GRU(6, reset_after=False, return_sequences=True)(inp)
    out = layers.Dense(2)(layers.GRU(4, reset_after=False, return_sequences=True)(hidden))
    model = randomised(keras.Model(inp, out), seed=5)
    chain = fastrnn.from_keras(model)
    assert not chain.layers[0].model.config.linear_before_reset
    x = inputs(steps=25, seed=6)
    np.testing.assert_allclose(chain(x), keras_output(model, x), rtol=0, atol=TOLERANCE)


def test_unsupported_models_are_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"layer 'flat' \(Flatten\).*not a layer fastrnn reads"):
        fastrnn.from_keras(keras.Sequential([keras.Input((5, CHANNELS)), layers.Dense(2),
                                             layers.Flatten(name="flat")]))
    with pytest.raises(ValueError, match=r"'back' \(LSTM\) has go_backwards=True"):
        fastrnn.from_keras(sequential(layers.LSTM(2, go_backwards=True, return_sequences=True,
                                                  name="back")))
    with pytest.raises(ValueError, match="merge_mode 'sum'"):
        fastrnn.from_keras(sequential(layers.Bidirectional(
            layers.LSTM(2, return_sequences=True), merge_mode="sum")))
    with pytest.raises(ValueError, match="activation 'selu' is not one"):
        fastrnn.from_keras(sequential(layers.Dense(2, activation="selu")))
    with pytest.raises(ValueError, match="activation 'selu' is not one fastrnn's recurrent"):
        fastrnn.from_keras(sequential(layers.GRU(2, activation="selu", return_sequences=True)))
    quantized = sequential(layers.Dense(4, name="small"))
    quantized.layers[0].quantize("int8")
    with pytest.raises(ValueError, match=r"'small' \(Dense\) is quantized \(int8\)"):
        fastrnn.from_keras(quantized)
    inp = keras.Input((None, CHANNELS))
    branch = layers.Dense(CHANNELS, name="branch")(inp)
    with pytest.raises(ValueError, match="'added' \\(Add\\) does not take the previous"):
        fastrnn.from_keras(keras.Model(inp, layers.Add(name="added")([inp, branch])))
    with pytest.raises(ValueError, match="reads Keras 3 .keras files.*is not one"):
        fastrnn.from_keras(str(tmp_path / "model.h5"))
    with pytest.raises(TypeError, match="keras.Model or a .keras file"):
        fastrnn.from_keras(42)
