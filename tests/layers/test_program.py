"""fastrnn.layers.program: the one streaming kernel of a chain, against a float64 numpy reference
of every layer family, and its recurrent cells against the engine's."""

import math

import numpy as np
import pytest

import fastrnn
from fastrnn.layers import (Activation, Affine, Conv1d, LayerNorm, Linear, Recurrent,
                            Residual)
from fastrnn.layers.program import CELL, RECURRENT
from tests.reference import random_layers, run_model


# -- a float64 numpy reference of each family, on (T, B, C) time-major arrays ------------------

def conv_reference(x, weight, bias, dilation, groups):
    steps, batch, inputs = x.shape
    outputs, group_inputs, taps = weight.shape
    held = (taps - 1) * dilation
    padded = np.concatenate([np.zeros((held, batch, inputs)), x])
    y = np.tile(bias, (steps, batch, 1)).astype(np.float64)
    per_group = outputs // groups
    for o in range(outputs):
        g = o // per_group
        for k in range(taps):
            window = padded[k * dilation:k * dilation + steps, :, g * group_inputs:
                            (g + 1) * group_inputs]
            y[:, :, o] += window @ weight[o, :, k]
    return y


def activation_reference(name, x, slopes=None, **p):
    erf = np.vectorize(math.erf)
    if name == "relu":
        return np.maximum(x, 0)
    if name == "leaky_relu":
        return np.where(x >= 0, x, p["negative_slope"] * x)
    if name == "prelu":
        return np.where(x >= 0, x, slopes * x)
    if name == "elu":
        return np.where(x > 0, x, p["alpha"] * np.expm1(x))
    if name == "gelu":
        return x * (1 + erf(x / np.sqrt(2))) / 2
    if name == "gelu_tanh":
        return x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))) / 2
    if name == "silu":
        return x / (1 + np.exp(-x))
    if name == "tanh":
        return np.tanh(x)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-x))
    if name == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    return np.clip(x, p["min_val"], p["max_val"])


def recurrent_reference(layer, x):
    weights = [{k: np.asarray(v, np.float64) for k, v in w.arrays().items()}
               for w in layer.model.layers]
    return run_model(layer.model.config.kind, weights, x)[0]


def chain_reference(layers, x):
    for layer in layers:
        x = layer_reference(layer, x)
    return x


def layer_reference(layer, x):
    if isinstance(layer, Linear):
        return x @ layer.weight.T.astype(np.float64) + layer.bias
    if isinstance(layer, Conv1d):
        return conv_reference(x, layer.weight.astype(np.float64), layer.bias, layer.dilation,
                              layer.groups)
    if isinstance(layer, Activation):
        slopes = layer.slopes.astype(np.float64) if layer.name == "prelu" else None
        return activation_reference(layer.name, x, slopes, **layer.parameters)
    if isinstance(layer, LayerNorm):
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        return (x - mean) / np.sqrt(var + layer.eps) * layer.weight + layer.bias
    if isinstance(layer, Affine):
        return x * layer.scale + layer.shift
    if isinstance(layer, Residual):
        return x + chain_reference(layer.layers, x)
    return recurrent_reference(layer, x)


def every_family(dtype, seed=3):
    """A chain with every op the program has: grouped dilated conv, every activation, norms, a
    residual around a recurrent layer, LSTM (two layers), GRU, ReLU RNN and a peephole LSTM with
    a projection (the engine's step_block path)."""
    rng = np.random.default_rng(seed)
    r = lambda *shape: rng.uniform(-0.8, 0.8, shape)  # noqa: E731
    acts = [Activation("leaky_relu", 6, negative_slope=0.2, dtype=dtype),
            Activation("prelu", 6, slopes=r(6), dtype=dtype),
            Activation("elu", 6, alpha=0.7, dtype=dtype), Activation("gelu", 6, dtype=dtype),
            Activation("gelu_tanh", 6, dtype=dtype), Activation("silu", 6, dtype=dtype),
            Activation("hardtanh", 6, min_val=-0.5, max_val=0.6, dtype=dtype),
            Activation("tanh", 6, dtype=dtype)]
    lstm = fastrnn.from_numpy("lstm", random_layers("lstm", 6, 5, num_layers=2, seed=seed),
                              dtype=dtype)
    gru = fastrnn.from_numpy("gru", random_layers("gru", 5, 5, seed=seed + 1), dtype=dtype)
    rnn = fastrnn.from_numpy("rnn_relu", random_layers("rnn_relu", 5, 4, seed=seed + 2),
                             dtype=dtype)
    peephole = fastrnn.from_numpy("lstm", random_layers("lstm", 4, 5, proj_size=3,
                                                        peephole=True, seed=seed + 3),
                                  dtype=dtype)
    return [Conv1d(r(6, 1, 3), r(6), dilation=2, groups=2, dtype=dtype),
            Activation("relu", 6, dtype=dtype), *acts, LayerNorm(6, r(6), r(6), dtype=dtype),
            Affine(r(6), r(6), dtype=dtype), Recurrent(lstm),
            Residual([Recurrent(gru), Linear(r(5, 5), r(5), dtype=dtype)]),
            Recurrent(rnn), Recurrent(peephole), Linear(r(4, 3), r(4), dtype=dtype),
            Activation("softmax", 4, dtype=dtype), Activation("sigmoid", 4, dtype=dtype)]


def test_program_matches_the_float64_reference_streamed_and_pooled(dtype, tolerance, rng):
    layers = every_family(dtype)
    chain = fastrnn.Chain(layers)
    codes = list(chain.program().ops[:, 0])
    assert codes.count(CELL) == 4 and codes.count(RECURRENT) == 1  # LSTM x2, GRU, RNN; peephole
    x = rng.standard_normal((15, 3, 2))
    expected = chain_reference(layers, x)
    whole = chain(x.astype(dtype))
    np.testing.assert_allclose(whole, expected, rtol=0, atol=tolerance)
    # A stream in uneven chunks and steps, and a pool on its slots in another order: the same.
    stream = chain.stream(batch=3)
    parts = [stream.process(x[:4].astype(dtype)), stream.step(x[4].astype(dtype))[None],
             stream.process(x[5:].astype(dtype))]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=0, atol=1e-6 if dtype ==
                               np.float32 else 1e-12)
    pool = chain.pool(capacity=7)
    slots = np.array([5, 0, 3])
    got = np.concatenate([pool.process(slots, x[:9].astype(dtype)),
                          pool.step(slots[::-1], x[9, ::-1].astype(dtype))[None, ::-1],
                          pool.process(slots, x[10:].astype(dtype))])
    np.testing.assert_allclose(got, whole, rtol=0, atol=1e-6 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_flat_cells_equal_the_engines_stream(kind, rng):
    """cell_flat keeps the engine cells' arithmetic: the chain's stream and the engine's
    Stream agree to float32's last places over many steps."""
    model = fastrnn.from_numpy(kind, random_layers(kind, 3, 8,
                                                   num_layers=2, seed=4), dtype=np.float32)
    chain = fastrnn.Chain([Recurrent(model)])
    assert list(chain.program().ops[:, 0]) == [CELL, CELL]
    x = rng.standard_normal((60, 2, 3)).astype(np.float32)
    engine = model.stream(batch=2)
    expected = np.stack([engine.step(x[t]) for t in range(60)])
    np.testing.assert_allclose(chain.stream(batch=2).process(x), expected, rtol=0, atol=1e-6)
