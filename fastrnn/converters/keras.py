"""Keras 3 models in: a keras.Sequential, a functional keras.Model that is a chain, or a .keras
file, as a fastrnn.Chain.

    chain = fastrnn.from_keras(model_or_path)     # KERAS_BACKEND=torch (see below)
    y = chain(x)                                  # x (B, T, C), as the Keras model takes it
    stream = chain.stream(); y_t = stream.step(x_t)

Keras is batch first, (B, T, C) with channels last: the chain's input and output layouts are
"BTC". Layers are read one after the other; a functional model must be a chain too (each layer
takes the output of the one before, one input, one output); a nested Sequential or functional
chain is read as its layers. Keras computes on any backend; the weights are read as numpy arrays
(keras.ops.convert_to_numpy), and a .keras file is loaded with keras.saving.load_model(path,
compile=False), on the backend KERAS_BACKEND names (set it before keras is first imported;
from_keras sets "torch" when it is unset, fastrnn's converters already stand on torch).

What each layer becomes, and what is permuted (G = gates, H = units, I = input channels):

    Keras layer                 fastrnn layer            weights: Keras -> fastrnn
    --------------------------  -----------------------  -----------------------------------------
    Dense(activation=a)         Linear (+ Activation a)  kernel (I, O) -> W = kernel.T (O, I)
    Conv1D(activation=a)        Conv1d (+ Activation a)  kernel (K, I/g, O) -> W (O, I/g, K):
                                                         transpose (2, 1, 0)
    LSTM                        Recurrent (lstm)         kernel (I, 4H) -> w_ih = kernel.T,
                                                         recurrent_kernel (H, 4H) -> w_hh = .T;
                                                         gates i, f, c, o = torch's i, f, g, o:
                                                         no permutation; bias -> b_ih, b_hh = 0
    GRU(reset_after=True)       Recurrent (gru,          kernel (I, 3H), gate blocks z, r, h ->
                                linear_before_reset)     w_ih = kernel.T with blocks reordered to
                                                         r, z, n (rows [H:2H], [0:H], [2H:3H]);
                                                         recurrent_kernel likewise -> w_hh; bias
                                                         (2, 3H): row 0 -> b_ih, row 1 -> b_hh,
                                                         each reordered the same way
    GRU(reset_after=False)      Recurrent (gru, reset    as above; bias (3H,) -> b_ih (reordered),
                                before the product)      b_hh = 0
    SimpleRNN                   Recurrent (rnn_tanh or   kernel.T, recurrent_kernel.T, bias -> b_ih
                                rnn_relu)
    Bidirectional(concat)       Recurrent, bidirectional the forward and backward layers' weights
                                                         as above, forward then reverse
    LayerNormalization          LayerNorm                gamma, beta (ones, zeros without scale,
                                                         center)
    BatchNormalization          folded into the Dense    moving_mean, moving_variance, gamma, beta
                                or Conv1D beside it, or  -> s = gamma / sqrt(var + eps),
                                Affine                   t = beta - mean s
    Activation, ReLU, LeakyReLU Activation
    ELU, Softmax, PReLU
    Dropout, SpatialDropout1D,  nothing (identity at inference)
    GaussianNoise/Dropout,
    AlphaDropout

Keras's GRU update gate z weights the previous state, h' = z h + (1 - z) hh, as torch's does: no
sign flip. With reset_after=True the reset gate scales (U_h h + b_rh), torch's and fastrnn's
linear_before_reset; with reset_after=False it scales h before the product, U_h (r * h), the
engine's other GRU convention (Config.linear_before_reset=False), where b_hh is zero.

Activations. A recurrent layer's `recurrent_activation` is the cell's gate function f and its
`activation` the candidate's and the output's (g, h): tanh, sigmoid, relu, linear (Affine 1, 0),
hard_sigmoid (HardSigmoid 1/6, 1/2: Keras 3's relu6(x + 3) / 6), elu, softsign, softplus and
leaky_relu (slope 0.2) map to the engine's; any other is refused by name. Dense and Conv1D
activations and Activation layers: relu, leaky_relu (0.2), elu, gelu (exact, erf; gelu with
approximate=True cannot be told from the function and is refused only when a layer says so),
silu/swish, tanh, sigmoid, softmax (over the channels), relu6 (hardtanh 0, 6), linear (none).

Conv1D padding: "causal" is ((K - 1) d, 0) and streams; "valid" (0, 0) and "same" (total (K - 1) d,
left total // 2, right the rest, as Keras pads) run on whole sequences, and a stream of them is
refused by the layer, saying why. Strides must be 1, data_format channels_last.

return_sequences. A recurrent layer with return_sequences=True gives every step. With
return_sequences=False it gives its last step only: the chain then has a LastStep layer after it,
and chain(x) is (B, 1, C): Keras's (B, C) with a time axis of length 1 kept. Streamed, LastStep
passes each step through (the output at the newest step is the last step so far) and a chunk
gives its last step, so a stream's step t equals chain(x[:, :t + 1]). Layers after it must work
step by step (Dense, activations, norms). Bidirectional needs return_sequences=True (its
backward half's last output is the one at the first step).

Refused, with the layer's name and class: any other layer (Masking, Flatten, Reshape, Add and
other merges, RepeatVector, attention, ...), go_backwards=True outside Bidirectional,
Bidirectional with another merge_mode than "concat", a branch, several inputs or outputs.
stateful=True carries state between Keras calls; a fastrnn stream is the way to do that, and
chain(x) starts from zero. The chain is float64 when every weight is, else float32.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from fastrnn.builders import from_numpy
from fastrnn.chain import Chain
from fastrnn.engine.cells import DEFAULT_ACTIVATIONS
from fastrnn.layers import Activation, Conv1d, LastStep, LayerNorm, Linear, Recurrent
from fastrnn.layers.norm import Affine, fold_affines

# Keras activation function name -> (fastrnn.layers.Activation name, its parameters); None: none.
_LAYER_ACTIVATIONS = {
    "linear": None, "relu": ("relu", {}), "leaky_relu": ("leaky_relu", {"negative_slope": 0.2}),
    "elu": ("elu", {"alpha": 1.0}), "gelu": ("gelu", {}), "silu": ("silu", {}),
    "tanh": ("tanh", {}), "sigmoid": ("sigmoid", {}), "softmax": ("softmax", {}),
    "relu6": ("hardtanh", {"min_val": 0.0, "max_val": 6.0}),
}
# Keras activation function name -> the recurrent engine's (name, alpha, beta).
_CELL_ACTIVATIONS = {
    "tanh": ("Tanh", 0.0, 0.0), "sigmoid": ("Sigmoid", 0.0, 0.0), "relu": ("Relu", 0.0, 0.0),
    "linear": ("Affine", 1.0, 0.0), "hard_sigmoid": ("HardSigmoid", 1.0 / 6.0, 0.5),
    "elu": ("Elu", 1.0, 0.0), "softsign": ("Softsign", 0.0, 0.0),
    "softplus": ("Softplus", 0.0, 0.0), "leaky_relu": ("LeakyRelu", 0.2, 0.0),
}
_IDENTITIES = ("Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
               "InputLayer")
_RECURRENT = ("LSTM", "GRU", "SimpleRNN")


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    return keras


def from_keras(model: Any) -> Chain:
    """A fastrnn.Chain computing what the Keras `model` (or .keras file) computes at inference."""
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not path.endswith(".keras"):
            raise ValueError(f"from_keras reads Keras 3 .keras files; {path!r} is not one (for "
                             f"an .h5 file, load it with keras and pass the model)")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such .keras file: {path!r}")
        model = _keras().saving.load_model(path, compile=False)
    keras = _keras()
    if not isinstance(model, keras.Model):
        raise TypeError(f"from_keras takes a keras.Model or a .keras file's path, got "
                        f"{type(model).__name__}")
    if not model.built:
        raise ValueError(f"model {model.name!r} is not built: give it an input shape "
                         f"(keras.Input) or call it once, so that its weights exist")
    keras_layers = list(_chain_of(keras, model))
    variables = [variable for layer in keras_layers for variable in layer.weights]
    dtype = np.float64 if variables and all(str(v.dtype) == "float64" for v in variables) \
        else np.float32
    reader = _Reader(keras, dtype)
    for layer in keras_layers:
        reader.read(layer)
    return Chain(reader.finish(), input_layout="BTC", output_layout="BTC")


def _chain_of(keras, model):
    """The model's layers in order, nested chains flattened; ValueError where it branches."""
    if not isinstance(model, keras.Sequential):
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ValueError(f"model {model.name!r} has {len(model.inputs)} inputs and "
                             f"{len(model.outputs)} outputs; fastrnn runs chains of one input "
                             f"and one output")
        previous = model.inputs[0]
        for layer in model.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            if len(layer._inbound_nodes) != 1 or layer.input is not previous:
                raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) does not take "
                                 f"the previous layer's output once: fastrnn reads a model as a "
                                 f"chain of layers (branches, merges and shared layers are not "
                                 f"supported)")
            previous = layer.output
        if previous is not model.outputs[0]:
            raise ValueError(f"model {model.name!r}'s output is not its last layer's: fastrnn "
                             f"reads a model as a chain of layers")
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _chain_of(keras, layer)
        elif not isinstance(layer, keras.layers.InputLayer):
            yield layer


def _numpy(keras, variable):
    value = getattr(variable, "value", variable)
    if hasattr(value, "detach"):   # a torch tensor: keras.ops' np.array(tensor) warns in numpy 2
        return value.detach().cpu().double().numpy()
    return np.asarray(keras.ops.convert_to_numpy(value), np.float64)


def _function_name(keras, function, what):
    """The name of a built-in Keras activation function; ValueError for any other callable."""
    name = getattr(function, "__name__", None)
    try:
        builtin = name is not None and keras.activations.get(name) is function
    except ValueError:
        builtin = False
    if not builtin:
        raise ValueError(f"{what}: activation {function!r} is not a built-in Keras activation "
                         f"fastrnn knows")
    return name


def _input_rank(layer):
    """The rank of the layer's input; 3, (B, T, C), where Keras has no symbolic input for it."""
    try:
        return len(layer.input.shape)
    except (AttributeError, ValueError):
        return 3


def _what(layer):
    return f"layer {layer.name!r} ({type(layer).__name__})"


class _Reader:
    def __init__(self, keras, dtype):
        self.keras, self.dtype = keras, dtype
        self.layers = []          # fastrnn layers, or ("activation", name, parameters)
        self.last_step = False    # a LastStep has been added: only per-step layers may follow

    def add(self, layer):
        self.layers.append(layer)

    def activation(self, function, what):
        name = _function_name(self.keras, function, what)
        if name not in _LAYER_ACTIVATIONS:
            raise ValueError(f"{what}: activation {name!r} is not one fastrnn runs (it runs "
                             f"{sorted(_LAYER_ACTIVATIONS)})")
        if _LAYER_ACTIVATIONS[name] is not None:
            self.add(("activation",) + _LAYER_ACTIVATIONS[name])

    def read(self, layer):
        kind = type(layer).__name__
        what = _what(layer)
        if kind in _IDENTITIES:
            return
        if getattr(layer, "quantization_mode", None):
            # Its kernel holds integers and a scale elsewhere: read as floats it would be wrong.
            raise ValueError(f"{what} is quantized ({layer.quantization_mode}); fastrnn reads "
                             f"float weights only")
        if self.last_step and kind in _RECURRENT + ("Bidirectional", "Conv1D"):
            raise ValueError(f"{what} follows a recurrent layer with return_sequences=False: "
                             f"fastrnn has its last step only there")
        if kind == "Dense":
            kernel = _numpy(self.keras, layer.kernel)
            bias = _numpy(self.keras, layer.bias) if layer.use_bias else None
            self.add(Linear(kernel.T, bias, dtype=self.dtype))
            self.activation(layer.activation, what)
        elif kind == "Conv1D":
            self.add(self.conv(layer, what))
            self.activation(layer.activation, what)
        elif kind in _RECURRENT:
            self.recurrent(layer, what)
        elif kind == "Bidirectional":
            self.bidirectional(layer, what)
        elif kind == "LayerNormalization":
            self.add(self.layer_norm(layer, what))
        elif kind == "BatchNormalization":
            self.add(self.batch_norm(layer, what))
        else:
            self.activation_layer(layer, kind, what)

    # -- layers --

    def conv(self, layer, what):
        if layer.data_format != "channels_last":
            raise ValueError(f"{what} has data_format {layer.data_format!r}; fastrnn reads "
                             f"channels_last (B, T, C) convolutions")
        if tuple(layer.strides) != (1,):
            raise ValueError(f"{what} has strides {tuple(layer.strides)}; fastrnn runs stride 1")
        kernel = _numpy(self.keras, layer.kernel)          # (K, I/groups, O)
        taps, dilation = kernel.shape[0], int(layer.dilation_rate[0])
        total = (taps - 1) * dilation
        padding = {"causal": (total, 0), "valid": (0, 0),
                   "same": (total // 2, total - total // 2)}.get(layer.padding)
        if padding is None:
            raise ValueError(f"{what} has padding {layer.padding!r}; fastrnn reads causal, "
                             f"valid and same")
        bias = _numpy(self.keras, layer.bias) if layer.use_bias else None
        return Conv1d(kernel.transpose(2, 1, 0), bias, dilation=dilation, groups=layer.groups,
                      padding=padding, dtype=self.dtype)

    def cell_weights(self, layer, what):
        """(kind, weights in fastrnn's layout, Config options) of an LSTM, GRU or SimpleRNN."""
        kind = type(layer).__name__
        cell = layer.cell
        units = cell.units
        w_ih = _numpy(self.keras, cell.kernel).T
        w_hh = _numpy(self.keras, cell.recurrent_kernel).T
        bias = _numpy(self.keras, cell.bias) if cell.use_bias else None
        options = {}
        gate = _function_name(self.keras, cell.activation, what)
        if kind == "SimpleRNN":
            engine_kind = {"tanh": "rnn_tanh", "relu": "rnn_relu"}.get(gate, "rnn_tanh")
            names = [gate]
            b_ih = np.zeros(units) if bias is None else bias
            b_hh = np.zeros(units)
            defaults = ["tanh"] if engine_kind == "rnn_tanh" else ["relu"]
        else:
            recurrent = _function_name(self.keras, cell.recurrent_activation, what)
            if kind == "LSTM":
                engine_kind, names, defaults = "lstm", [recurrent, gate, gate], \
                    ["sigmoid", "tanh", "tanh"]
                b_ih = np.zeros(4 * units) if bias is None else bias
                b_hh = np.zeros(4 * units)
            else:
                engine_kind, names, defaults = "gru", [recurrent, gate], ["sigmoid", "tanh"]
                # Keras's z, r, h blocks -> fastrnn's r, z, n.
                order = np.concatenate([np.arange(units, 2 * units), np.arange(units),
                                        np.arange(2 * units, 3 * units)])
                w_ih, w_hh = w_ih[order], w_hh[order]
                options["linear_before_reset"] = bool(cell.reset_after)
                if bias is None:
                    b_ih = b_hh = np.zeros(3 * units)
                elif cell.reset_after:                 # (2, 3H): input bias, recurrent bias
                    b_ih, b_hh = bias[0][order], bias[1][order]
                else:
                    b_ih, b_hh = bias[order], np.zeros(3 * units)
        for name in names:
            if name not in _CELL_ACTIVATIONS:
                raise ValueError(f"{what}: activation {name!r} is not one fastrnn's recurrent "
                                 f"cells run (they run {sorted(_CELL_ACTIVATIONS)})")
        activations = tuple(_CELL_ACTIVATIONS[name] for name in names)
        # The cell's defaults are left implicit (Config.activations empty).
        default = activations == tuple(_CELL_ACTIVATIONS[name] for name in defaults)
        return (engine_kind, {"w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh}, options,
                None if default else activations)

    def recurrent(self, layer, what):
        if layer.go_backwards:
            raise ValueError(f"{what} has go_backwards=True: Keras gives its outputs in reverse "
                             f"time order, which fastrnn does not run (a Bidirectional "
                             f"wrapper is read)")
        if layer.return_state:
            raise ValueError(f"{what} has return_state=True; fastrnn runs its output sequence "
                             f"only")
        kind, weights, options, activations = self.cell_weights(layer, what)
        model = from_numpy(kind, [weights], dtype=self.dtype, activations=activations or (),
                           **options)
        self.add(Recurrent(model))
        if not layer.return_sequences:
            self.add(LastStep(model.output_size, dtype=self.dtype))
            self.last_step = True

    def bidirectional(self, layer, what):
        if layer.merge_mode != "concat":
            raise ValueError(f"{what} has merge_mode {layer.merge_mode!r}; fastrnn runs "
                             f"'concat' (forward outputs, then backward)")
        forward, backward = layer.forward_layer, layer.backward_layer
        if type(forward).__name__ not in _RECURRENT or type(backward) is not type(forward):
            raise ValueError(f"{what} wraps {type(forward).__name__} and "
                             f"{type(backward).__name__}; fastrnn reads a Bidirectional of one "
                             f"LSTM, GRU or SimpleRNN kind")
        if not layer.return_sequences:
            raise ValueError(f"{what} has return_sequences=False: its backward half's last "
                             f"output is the one at the first step, which fastrnn does not "
                             f"give; use return_sequences=True")
        if forward.go_backwards or not backward.go_backwards or layer.return_state:
            raise ValueError(f"{what}: its forward layer must read forwards and its backward "
                             f"layer backwards, without return_state")
        kind, forward_weights, options, forward_activations = self.cell_weights(forward, what)
        other_kind, backward_weights, other_options, backward_activations = \
            self.cell_weights(backward, what)
        if (other_kind, other_options) != (kind, options):
            raise ValueError(f"{what}: its forward and backward layers differ ({kind} "
                             f"{options} and {other_kind} {other_options})")
        activations = ()
        if forward_activations or backward_activations:
            # Spelled out for both directions, the defaults' where a direction has them.
            defaults = tuple((name, 0.0, 0.0) for name in DEFAULT_ACTIVATIONS[kind])
            activations = (forward_activations or defaults) + (backward_activations or defaults)
        model = from_numpy(kind, [forward_weights, backward_weights], bidirectional=True,
                           dtype=self.dtype, activations=activations, **options)
        self.add(Recurrent(model))

    def layer_norm(self, layer, what):
        axes = [layer.axis] if isinstance(layer.axis, int) else list(layer.axis)
        rank = _input_rank(layer)
        if [axis % rank for axis in axes] != [rank - 1]:
            raise ValueError(f"{what} normalises over axes {axes}; fastrnn normalises over the "
                             f"channels (the last axis) of a step only")
        if getattr(layer, "rms_scaling", False):
            raise ValueError(f"{what} has rms_scaling=True, which fastrnn does not run")
        gamma = _numpy(self.keras, layer.gamma) if layer.scale else None
        beta = _numpy(self.keras, layer.beta) if layer.center else None
        features = (gamma if gamma is not None else beta).shape[0] if layer.scale or \
            layer.center else int(layer.input.shape[-1])
        return LayerNorm(features, gamma, beta, eps=layer.epsilon, dtype=self.dtype)

    def batch_norm(self, layer, what):
        rank = _input_rank(layer)
        if layer.axis % rank != rank - 1:
            raise ValueError(f"{what} normalises axis {layer.axis}; fastrnn normalises the "
                             f"channels (the last axis)")
        if getattr(layer, "renorm", False):
            raise ValueError(f"{what} has renorm=True, which fastrnn does not run")
        return Affine.from_batch_norm(
            _numpy(self.keras, layer.moving_mean), _numpy(self.keras, layer.moving_variance),
            _numpy(self.keras, layer.gamma) if layer.scale else None,
            _numpy(self.keras, layer.beta) if layer.center else None, layer.epsilon, self.dtype)

    def activation_layer(self, layer, kind, what):
        if kind == "Activation":
            self.activation(layer.activation, what)
        elif kind == "ReLU":
            maximum, slope, threshold = layer.max_value, layer.negative_slope, layer.threshold
            if threshold:
                raise ValueError(f"{what} has threshold {threshold}; fastrnn runs ReLU at 0")
            if maximum is not None and slope:
                raise ValueError(f"{what} has both max_value and negative_slope, which fastrnn "
                                 f"does not run")
            if maximum is not None:
                self.add(("activation", "hardtanh", {"min_val": 0.0, "max_val": float(maximum)}))
            elif slope:
                self.add(("activation", "leaky_relu", {"negative_slope": float(slope)}))
            else:
                self.add(("activation", "relu", {}))
        elif kind == "LeakyReLU":
            self.add(("activation", "leaky_relu", {"negative_slope": float(layer.negative_slope)}))
        elif kind == "ELU":
            self.add(("activation", "elu", {"alpha": float(layer.alpha)}))
        elif kind == "Softmax":
            axes = [layer.axis] if isinstance(layer.axis, int) else list(layer.axis)
            if axes != [-1]:
                raise ValueError(f"{what} is over axes {axes}; fastrnn's softmax is over the "
                                 f"channels (axis -1)")
            self.add(("activation", "softmax", {}))
        elif kind == "PReLU":
            alpha = _numpy(self.keras, layer.alpha)
            if alpha.ndim > 1 and any(size != 1 for size in alpha.shape[:-1]):
                raise ValueError(f"{what} has slopes of shape {alpha.shape}, one per time step; "
                                 f"fastrnn shares them over time (shared_axes=[1])")
            self.add(("activation", "prelu", {"slopes": alpha.reshape(-1)}))
        else:
            raise ValueError(f"{what}: {type(layer).__module__}.{type(layer).__qualname__} is "
                             f"not a layer fastrnn reads (see fastrnn.converters.keras)")

    # -- assembly --

    def finish(self):
        """The layers, with the activations sized and the BatchNorms folded where they fit."""
        sized = [item for item in self.layers if not isinstance(item, tuple)]
        if not sized:
            raise ValueError("the model holds no layer that tells its channel count (a Dense, "
                             "Conv1D, norm or recurrent layer)")
        # An activation before any sized layer takes that layer's input channels.
        features = sized[0].in_features
        layers = []
        for item in self.layers:
            if isinstance(item, tuple):
                _, name, parameters = item
                parameters = dict(parameters)
                slopes = parameters.pop("slopes", None)
                item = Activation(name, features, slopes=slopes, dtype=self.dtype, **parameters)
            layers.append(item)
            features = item.out_features
        return fold_affines(layers)
