"""Building a Model from raw numpy weights, for frameworks without a converter."""

from collections.abc import Mapping

import numpy as np

from fastrnn.engine.cells import CELL_CODES, NUM_GATES
from fastrnn.model import Model
from fastrnn.engine.weights import Config, LayerWeights, layer_names


def from_numpy(kind, layers, *, bidirectional=False, batch_first=False, clip=0.0,
               input_forget=False, linear_before_reset=True, activations=(),
               gru_update="previous", dtype=None):
    """A Model from weights already in fastrnn's layout (see fastrnn.engine.weights).

    kind: "lstm", "gru", "rnn_tanh" or "rnn_relu". layers: one mapping per layer and direction
    (l0, l0_reverse, l1, ...) with w_ih, w_hh and optionally b_ih, b_hh (zero when absent),
    peephole and w_proj. Sizes are read from the shapes.

    gru_update: "previous" when the update gate z weights the previous state, h' = (1-z) n + z h
    (PyTorch, ONNX); "new" when it weights the new content, h' = (1-u) h + u n (the cs224n notes).
    "new" weights are converted by negating the update gate's rows and biases, since
    sigmoid(-a) = 1 - sigmoid(a).
    """
    if kind not in CELL_CODES:
        raise ValueError(f"kind must be one of {tuple(CELL_CODES)}, got {kind!r}")
    if gru_update not in ("previous", "new"):
        raise ValueError(f"gru_update must be 'previous' or 'new', got {gru_update!r}")
    if gru_update == "new" and kind != "gru":
        raise ValueError("gru_update='new' applies to GRUs only")
    if gru_update == "new" and activations and any(a[0] != "Sigmoid" for a in activations[::2]):
        raise ValueError("gru_update='new' needs the sigmoid gate activation")
    if isinstance(layers, Mapping) or any(not isinstance(w, (Mapping, LayerWeights))
                                          for w in layers):
        raise TypeError("layers must be a list with one mapping per layer and direction "
                        "(l0, l0_reverse, l1, ...), e.g. [{'w_ih': ..., 'w_hh': ...}]")
    layers = [dict(w.arrays()) if isinstance(w, LayerWeights) else dict(w) for w in layers]
    if not layers:
        raise ValueError("layers must hold at least one layer's weights")
    directions = 2 if bidirectional else 1
    if len(layers) % directions:
        raise ValueError(f"a bidirectional model needs two weight sets per layer, got {len(layers)}")
    first = layers[0]
    for index, weights in enumerate(layers):
        for key in ("w_ih", "w_hh"):
            if weights.get(key) is None:
                raise KeyError(f"layer {index} (in the order l0, l0_reverse, l1, ...): missing "
                               f"weight {key!r}")
    w_ih = np.asarray(first["w_ih"])
    gates = NUM_GATES[CELL_CODES[kind]]
    if w_ih.ndim != 2 or w_ih.shape[0] % gates:
        raise ValueError(f"layer l0: w_ih must be ({gates} * hidden_size, input_size), "
                         f"got shape {w_ih.shape}")
    hidden_size = w_ih.shape[0] // gates
    proj_size = np.asarray(first["w_proj"]).shape[0] if first.get("w_proj") is not None else 0
    config = Config(kind=kind, input_size=w_ih.shape[1], hidden_size=hidden_size,
                    num_layers=len(layers) // directions, bidirectional=bidirectional,
                    batch_first=batch_first, proj_size=proj_size, clip=float(clip),
                    input_forget=input_forget, linear_before_reset=linear_before_reset,
                    activations=tuple(tuple(a) for a in activations))
    built = []
    for name, weights in zip(layer_names(config), layers):
        weights = dict(weights)
        for key in ("b_ih", "b_hh"):
            if weights.get(key) is None:
                weights[key] = np.zeros(gates * hidden_size, np.asarray(weights["w_ih"]).dtype)
        if gru_update == "new":
            update = slice(hidden_size, 2 * hidden_size)
            for key in ("w_ih", "w_hh", "b_ih", "b_hh"):
                weights[key] = np.array(weights[key], copy=True)
                weights[key][update] *= -1
        unknown = set(weights) - {"w_ih", "w_hh", "b_ih", "b_hh", "peephole", "w_proj"}
        if unknown:
            raise KeyError(f"layer {name}: unknown weight name(s) {sorted(unknown)}")
        built.append(LayerWeights(**weights))
    return Model(config, built, dtype=dtype)
