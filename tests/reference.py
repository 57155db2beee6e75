"""A plain float64 numpy reference of every cell and of the driver, for the tests to hold fastrnn to.

Written from the equations in the cell docstrings (fastrnn/cells/*.py) and DESIGN.md, one row and
one timestep at a time, with nothing taken from fastrnn's kernels: slow and obvious on purpose.

Weights are in fastrnn's layout (fastrnn/weights.py): per layer and direction a mapping with
w_ih (G*H, I_l), w_hh (G*H, H_out), b_ih, b_hh (G*H,), and for the LSTM optionally peephole (3, H)
rows i, f, o and w_proj (H_out, H). Gate blocks: LSTM i, f, g, o; GRU r, z, n; RNN one block.

The cs224n GRU (`gru_cs224n_cell`) takes its own weights by the notes' names instead, so that a test
can check that fastrnn.from_numpy(..., gru_update="new") really runs that formulation.
"""

import numpy as np

DEFAULT_ACTIVATIONS = {
    "lstm": (("Sigmoid", 0.0, 0.0), ("Tanh", 0.0, 0.0), ("Tanh", 0.0, 0.0)),
    "gru": (("Sigmoid", 0.0, 0.0), ("Tanh", 0.0, 0.0)),
    "gru_cs224n": (("Sigmoid", 0.0, 0.0), ("Tanh", 0.0, 0.0)),
    "rnn_tanh": (("Tanh", 0.0, 0.0),),
    "rnn_relu": (("Relu", 0.0, 0.0),),
}
NUM_GATES = {"lstm": 4, "gru": 3, "gru_cs224n": 3, "rnn_tanh": 1, "rnn_relu": 1}

ACTIVATION_NAMES = ("Relu", "Tanh", "Sigmoid", "Affine", "LeakyRelu", "ThresholdedRelu",
                    "ScaledTanh", "HardSigmoid", "Elu", "Softsign", "Softplus")


def activation(name, x, alpha=0.0, beta=0.0):
    """The ONNX activation `name` with its alpha/beta, in float64 (ONNX operator definitions)."""
    x = np.asarray(x, np.float64)
    result = _activation(name, x, alpha, beta)
    # fastrnn's rule: NaN in, NaN out (ThresholdedRelu's definition alone would map NaN to 0).
    return np.where(np.isnan(x), x, result)


def _activation(name, x, alpha, beta):
    with np.errstate(over="ignore", invalid="ignore"):
        if name == "Relu":
            return np.maximum(x, 0.0)
        if name == "Tanh":
            return np.tanh(x)
        if name == "Sigmoid":
            return 1.0 / (1.0 + np.exp(-x))
        if name == "Affine":
            return alpha * x + beta
        if name == "LeakyRelu":
            return np.where(x >= 0, x, alpha * x)
        if name == "ThresholdedRelu":
            return np.where(x > alpha, x, 0.0)
        if name == "ScaledTanh":
            return alpha * np.tanh(beta * x)
        if name == "HardSigmoid":
            return np.clip(alpha * x + beta, 0.0, 1.0)
        if name == "Elu":
            return np.where(x >= 0, x, alpha * np.expm1(np.minimum(x, 0.0)))
        if name == "Softsign":
            return np.where(np.isinf(x), np.sign(x), x / (1.0 + np.abs(x)))
        if name == "Softplus":
            return np.logaddexp(0.0, x)
    raise ValueError(f"unknown activation {name!r}")


def _clip(values, clip):
    return np.clip(values, -clip, clip) if clip > 0 else values


def _act(entry, x):
    name, alpha, beta = entry
    return activation(name, x, alpha, beta)


def lstm_cell(x, h, c, weights, activations, clip=0.0, input_forget=False):
    """One LSTM step: returns (h', c'). activations: (f, g, h) as (name, alpha, beta)."""
    f_act, g_act, h_act = activations
    hidden = c.shape[0]
    pre = weights["w_ih"] @ x + weights["b_ih"] + weights["w_hh"] @ h + weights["b_hh"]
    pre_i, pre_f, pre_g, pre_o = (pre[k * hidden:(k + 1) * hidden] for k in range(4))
    peephole = weights.get("peephole")
    if peephole is not None:
        pre_i = pre_i + peephole[0] * c
        pre_f = pre_f + peephole[1] * c
    i = _act(f_act, _clip(pre_i, clip))
    f = 1.0 - i if input_forget else _act(f_act, _clip(pre_f, clip))
    g = _act(g_act, _clip(pre_g, clip))
    c_new = f * c + i * g
    if peephole is not None:
        pre_o = pre_o + peephole[2] * c_new
    o = _act(f_act, _clip(pre_o, clip))
    h_new = o * _act(h_act, c_new)
    if weights.get("w_proj") is not None:
        h_new = weights["w_proj"] @ h_new
    return h_new, c_new


def gru_cell(x, h, weights, activations, clip=0.0, linear_before_reset=True):
    """One GRU step, z weighting the previous state (PyTorch, ONNX). activations: (f, g)."""
    f_act, g_act = activations
    hidden = h.shape[0]
    w_ih, w_hh, b_ih, b_hh = weights["w_ih"], weights["w_hh"], weights["b_ih"], weights["b_hh"]
    rows = [slice(k * hidden, (k + 1) * hidden) for k in range(3)]
    r = _act(f_act, _clip(w_ih[rows[0]] @ x + b_ih[rows[0]] + w_hh[rows[0]] @ h + b_hh[rows[0]], clip))
    z = _act(f_act, _clip(w_ih[rows[1]] @ x + b_ih[rows[1]] + w_hh[rows[1]] @ h + b_hh[rows[1]], clip))
    if linear_before_reset:
        pre_n = w_ih[rows[2]] @ x + b_ih[rows[2]] + r * (w_hh[rows[2]] @ h + b_hh[rows[2]])
    else:
        pre_n = w_ih[rows[2]] @ x + b_ih[rows[2]] + w_hh[rows[2]] @ (r * h) + b_hh[rows[2]]
    n = _act(g_act, _clip(pre_n, clip))
    return (1.0 - z) * n + z * h


def gru_cs224n_cell(x, h, weights):
    """One GRU step as the cs224n lecture notes write it (update gate u weights the new content):

        u  = sigmoid(W_u h + U_u x + b_u)
        r  = sigmoid(W_r h + U_r x + b_r)
        h~ = tanh(W_h (r * h) + U_h x + b_h)
        h' = (1 - u) * h + u * h~

    weights: W_u, W_r, W_h (H, H); U_u, U_r, U_h (H, I); b_u, b_r, b_h (H,).
    """
    w = weights
    u = activation("Sigmoid", w["W_u"] @ h + w["U_u"] @ x + w["b_u"])
    r = activation("Sigmoid", w["W_r"] @ h + w["U_r"] @ x + w["b_r"])
    candidate = np.tanh(w["W_h"] @ (r * h) + w["U_h"] @ x + w["b_h"])
    return (1.0 - u) * h + u * candidate


def rnn_cell(x, h, weights, activations, clip=0.0):
    """One Elman RNN step. activations: (f,)."""
    (f_act,) = activations
    pre = weights["w_ih"] @ x + weights["b_ih"] + weights["w_hh"] @ h + weights["b_hh"]
    return _act(f_act, _clip(pre, clip))


def output_size(kind, weights):
    """H_out of one layer's weights."""
    if kind == "gru_cs224n":
        return weights["W_h"].shape[0]
    if weights.get("w_proj") is not None:
        return weights["w_proj"].shape[0]
    return weights["w_hh"].shape[1]


def hidden_size(kind, weights):
    if kind == "gru_cs224n":
        return weights["W_h"].shape[0]
    return weights["w_hh"].shape[0] // NUM_GATES[kind]


def _as_float64(kind, weights):
    """One layer's weights in float64, absent biases as zeros (a bias-free layer)."""
    weights = {k: np.asarray(v, np.float64) for k, v in weights.items() if v is not None}
    if kind != "gru_cs224n":
        rows = weights["w_ih"].shape[0]
        for key in ("b_ih", "b_hh"):
            weights.setdefault(key, np.zeros(rows))
    return weights


def run_model(kind, layers, x, *, bidirectional=False, batch_first=False, lengths=None, h0=None,
              c0=None, clip=0.0, input_forget=False, linear_before_reset=True, activations=()):
    """The whole stack over a padded batch, as torch (packed sequences) and DESIGN.md define it.

    x: (T, B, I), or (B, T, I) with batch_first. lengths: one per row (None: all T). h0: (L*D, B,
    H_out), c0: (L*D, B, H) (LSTM), None for zeros. activations: as fastrnn.Config takes them, the
    forward direction's then the reverse's; empty for the defaults.
    Returns y (T, B, D*H_out) (batch_first: (B, T, ...)), h_n (L*D, B, H_out), c_n (LSTM) or None.

    Each row runs alone: a row of length n sees inputs 0..n-1 only; the forward direction walks
    0..n-1, the reverse direction n-1..0; outputs at t >= n are zero; each final state is the one
    after that direction's last step.
    """
    x = np.asarray(x, np.float64)
    if batch_first:
        x = x.transpose(1, 0, 2)
    steps, batch = x.shape[:2]
    directions = 2 if bidirectional else 1
    num_layers = len(layers) // directions
    assert num_layers * directions == len(layers)
    layers = [_as_float64(kind, w) for w in layers]
    h_out = output_size(kind, layers[0])
    hidden = hidden_size(kind, layers[0])
    count = len(DEFAULT_ACTIVATIONS[kind])
    entries = tuple(activations) or DEFAULT_ACTIVATIONS[kind] * directions
    per_direction = [entries[d * count:(d + 1) * count] for d in range(directions)]
    lengths = np.full(batch, steps) if lengths is None else np.asarray(lengths)
    h_n = np.zeros((len(layers), batch, h_out)) if h0 is None else np.array(h0, np.float64)
    c_n = np.zeros((len(layers), batch, hidden)) if c0 is None else np.array(c0, np.float64)
    y = np.zeros((steps, batch, directions * h_out))
    for row in range(batch):
        length = int(lengths[row])
        layer_input = x[:length, row]
        for layer in range(num_layers):
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                weights = layers[index]
                acts = per_direction[direction]
                h, c = h_n[index, row].copy(), c_n[index, row].copy()
                out = np.zeros((length, h_out))
                order = range(length - 1, -1, -1) if direction else range(length)
                for t in order:
                    xt = layer_input[t]
                    if kind == "lstm":
                        h, c = lstm_cell(xt, h, c, weights, acts, clip, input_forget)
                    elif kind == "gru":
                        h = gru_cell(xt, h, weights, acts, clip, linear_before_reset)
                    elif kind == "gru_cs224n":
                        h = gru_cs224n_cell(xt, h, weights)
                    else:
                        h = rnn_cell(xt, h, weights, acts, clip)
                    out[t] = h
                h_n[index, row] = h
                c_n[index, row] = c
                outputs.append(out)
            layer_input = np.concatenate(outputs, axis=1)
        y[:length, row] = layer_input
    if batch_first:
        y = y.transpose(1, 0, 2)
    return y, h_n, (c_n if kind == "lstm" else None)


def random_layers(kind, input_size, hidden_size, *, num_layers=1, bidirectional=False,
                  proj_size=0, peephole=False, bias=True, scale=1.0, seed=0):
    """Random float64 weights in fastrnn's layout, drawn like torch's init: U(-k, k), k = 1/sqrt(H)."""
    rng = np.random.default_rng(seed)
    gates = NUM_GATES[kind]
    directions = 2 if bidirectional else 1
    h_out = proj_size or hidden_size
    bound = scale / np.sqrt(hidden_size)
    layers = []
    for layer in range(num_layers):
        layer_input = input_size if layer == 0 else directions * h_out
        for _ in range(directions):
            weights = {
                "w_ih": rng.uniform(-bound, bound, (gates * hidden_size, layer_input)),
                "w_hh": rng.uniform(-bound, bound, (gates * hidden_size, h_out)),
            }
            if bias:
                weights["b_ih"] = rng.uniform(-bound, bound, gates * hidden_size)
                weights["b_hh"] = rng.uniform(-bound, bound, gates * hidden_size)
            if peephole:
                weights["peephole"] = rng.uniform(-bound, bound, (3, hidden_size))
            if proj_size:
                weights["w_proj"] = rng.uniform(-bound, bound, (proj_size, hidden_size))
            layers.append(weights)
    return layers


def cast_layers(layers, dtype):
    """The same weights in `dtype`: float32 tests compare against the reference of the rounded weights."""
    return [{k: np.asarray(v, dtype) for k, v in w.items()} for w in layers]
