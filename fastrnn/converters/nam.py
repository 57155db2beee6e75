"""Neural Amp Modeler (.nam) files of the LSTM architecture, as a fastrnn.Chain.

    chain = fastrnn.from_nam("amp.nam")        # or the file's parsed JSON, a dict
    y = chain(x)                               # x (B, T, input_size) -> y (B, T, 1), "BTC"
    stream = chain.stream(); y_t = stream.step(x_t); ys = stream.process(chunk)

A .nam file is JSON:

    {"version": "0.5.x", "architecture": "LSTM",
     "config": {"input_size": I, "hidden_size": H, "num_layers": L},
     "weights": [flat list of floats], "sample_rate": 48000 (optional), "metadata": {...}}

The flat weights are read as Neural Amp Modeler writes them (nam/models/recurrent.py,
`LSTM._export_weights`) and as its C++ core reads them (NAM/lstm.cpp, `LSTMCell`): per layer l,
with I_l = I for l = 0 and H above,

    W       4H x (I_l + H), row-major: [W_ih | W_hh], torch's weight_ih_l{l} and weight_hh_l{l}
            side by side, gate blocks i, f, g, o (torch's order, so nothing is permuted)
    b       4H: bias_ih_l{l} + bias_hh_l{l}, summed (fastrnn keeps it as b_ih, b_hh = 0)
    h0      H: the layer's start state h
    c0      H: the layer's start state c

then the head, a Linear H -> 1: its weight (H values) and its bias (1). So a file holds
L (4H (I_l + H) + 4H + 2H) + H + 1 numbers, and any other count is refused (expected vs got).

The start state. Neural Amp Modeler exports as h0, c0 the state its LSTM reaches after a second
of silence (48000 zero samples from the zero state, `_get_initial_state`), not the zero state;
the C++ core starts every layer from them. Here they are the Recurrent layers' initial_state:
whole-sequence calls start from them, a stream starts from them and reset() returns to them.
The core also "pre-warms" a model after loading by running it on silence; fastrnn does not (the
file's state is already that of a model after silence).

Version. The C++ core reads version 0.5.x only, and so does this reader (the layout above is
that version's); other architectures (WaveNet, ConvNet, Linear, ...) are refused by name. Each
chain is two layers, a Recurrent (an L-layer fastrnn LSTM) and the Linear head; it is
float32, as the core computes, unless dtype=np.float64 is asked for. `sample_rate` and
`metadata` (loudness, gain, ...) are kept on the chain as chain.nam = {"sample_rate", "metadata",
"version"}: fastrnn does not resample or apply them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from fastrnn.builders import from_numpy
from fastrnn.chain import Chain
from fastrnn.layers import Linear, Recurrent

SUPPORTED_VERSION = (0, 5)
_CONFIG_KEYS = ("input_size", "hidden_size", "num_layers")


def load_nam(source: str | os.PathLike | Mapping[str, Any]) -> dict:
    """The parsed JSON of a .nam file (a path), or `source` itself when it is already a mapping."""
    if isinstance(source, Mapping):
        return dict(source)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"from_nam takes a .nam file's path or its parsed JSON (a dict), got "
                        f"{type(source).__name__}")
    with open(source, encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{os.fspath(source)} is not a .nam file: not JSON ({error})") \
                from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{os.fspath(source)} is not a .nam file: its JSON is not an object")
    return dict(data)


def expected_weight_count(input_size: int, hidden_size: int, num_layers: int) -> int:
    """How many numbers the weights list of an LSTM .nam file holds (see the module docstring)."""
    total = 0
    for layer in range(num_layers):
        inputs = input_size if layer == 0 else hidden_size
        total += 4 * hidden_size * (inputs + hidden_size) + 4 * hidden_size + 2 * hidden_size
    return total + hidden_size + 1


def from_nam(source: str | os.PathLike | Mapping[str, Any], *, dtype: Any = np.float32) -> Chain:
    """A fastrnn.Chain computing what the LSTM .nam file `source` computes (module docstring)."""
    data = load_nam(source)
    _check_version(data.get("version"))
    architecture = data.get("architecture")
    if architecture != "LSTM":
        raise ValueError(f"the .nam file's architecture is {architecture!r}; fastrnn reads the "
                         f"'LSTM' architecture only (WaveNet, ConvNet and Linear models are "
                         f"convolutional and not supported)")
    config = data.get("config")
    if not isinstance(config, Mapping):
        raise ValueError("the .nam file has no 'config' object")
    sizes = {}
    for key in _CONFIG_KEYS:
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"the .nam file's config.{key} must be a positive integer, got "
                             f"{value!r}")
        sizes[key] = value
    input_size, hidden_size, num_layers = (sizes[key] for key in _CONFIG_KEYS)
    weights = data.get("weights")
    if not isinstance(weights, (list, tuple, np.ndarray)):
        raise ValueError("the .nam file has no 'weights' list")
    try:
        flat = np.asarray(weights, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError("the .nam file's weights must be a flat list of numbers") from None
    expected = expected_weight_count(input_size, hidden_size, num_layers)
    if flat.shape[0] != expected:
        raise ValueError(f"the .nam file's weights hold {flat.shape[0]} numbers; an LSTM of "
                         f"input_size {input_size}, hidden_size {hidden_size} and num_layers "
                         f"{num_layers} has {expected}")
    if not np.all(np.isfinite(flat)):
        raise ValueError("the .nam file's weights hold NaN or infinite values")

    position = 0

    def take(count, shape):
        nonlocal position
        block = flat[position:position + count].reshape(shape)
        position += count
        return block

    cells, h0, c0 = [], [], []
    for layer in range(num_layers):
        inputs = input_size if layer == 0 else hidden_size
        w = take(4 * hidden_size * (inputs + hidden_size), (4 * hidden_size, inputs + hidden_size))
        bias = take(4 * hidden_size, (4 * hidden_size,))
        h0.append(take(hidden_size, (hidden_size,)))
        c0.append(take(hidden_size, (hidden_size,)))
        cells.append({"w_ih": w[:, :inputs], "w_hh": w[:, inputs:], "b_ih": bias,
                      "b_hh": np.zeros_like(bias)})
    head_weight = take(hidden_size, (1, hidden_size))
    head_bias = take(1, (1,))
    recurrent = Recurrent(from_numpy("lstm", cells, dtype=dtype),
                          initial_state=(np.stack(h0), np.stack(c0)))
    layers = [recurrent, Linear(head_weight, head_bias, dtype=recurrent.dtype)]
    chain = Chain(layers, input_layout="BTC", output_layout="BTC")
    chain.nam = {"version": data.get("version"), "sample_rate": data.get("sample_rate"),
                 "metadata": data.get("metadata")}
    return chain


def _check_version(version):
    parts = str(version).split(".") if isinstance(version, str) else []
    try:
        numbers = tuple(int(part) for part in parts)
    except ValueError:
        numbers = ()
    if len(numbers) != 3:
        raise ValueError(f"the .nam file's version must be a 'major.minor.patch' string, got "
                         f"{version!r}")
    if numbers[:2] != SUPPORTED_VERSION:
        raise ValueError(f"the .nam file is version {version}; fastrnn reads version "
                         f"{SUPPORTED_VERSION[0]}.{SUPPORTED_VERSION[1]}.x (as Neural Amp "
                         f"Modeler's own core does): re-export it with a current "
                         f"neural-amp-modeler")
