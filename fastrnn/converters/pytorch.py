"""PyTorch in: nn.LSTM/GRU/RNN, their Cell versions, state dicts, and .pt/.pth/.safetensors files.

PyTorch's layout is fastrnn's (see fastrnn.engine.weights), so this converter permutes nothing:

    weight_ih_l{k}[_reverse]  -> w_ih     (G*H, I_l), gates i,f,g,o (LSTM) / r,z,n (GRU)
    weight_hh_l{k}[_reverse]  -> w_hh     (G*H, H_out)
    bias_ih_l{k}[_reverse]    -> b_ih     (G*H,)   zeros when the module has bias=False
    bias_hh_l{k}[_reverse]    -> b_hh     (G*H,)
    weight_hr_l{k}[_reverse]  -> w_proj   (H_out, H)   LSTM with proj_size
    Cells: weight_ih, weight_hh, bias_ih, bias_hh, as layer 0 of a one-layer model.

The architecture of a state dict is read from its weight_hh keys, which every layer and direction
has: layers from the l{k} suffixes, directions from _reverse, H from weight_hh (or weight_hr with a
projection), the cell from the gate count 4H/3H/H. Every key under the prefix must then be used
(else ValueError naming it), every expected key present (else KeyError naming it), every shape
exact (else ValueError naming the key). Keys are named in errors as the caller's dict spells them.
float16/bfloat16 weights are widened to float32; the model is float64 only if every weight is.

Two facts are not in a state dict's weights: a plain RNN's nonlinearity (tanh or relu) and the
layout of its inputs (batch_first). Where the caller leaves them open (kind=None for a one-gate
RNN, batch_first=None), the converter assumes tanh and time-major, records each assumption in
`model.assumptions`, and warns once per conversion with one AssumptionWarning listing them all;
passing kind= and batch_first= states them and silences it. A module knows both, so converting
the module itself assumes nothing; a Cell's state dict has no sequence layout to guess.

Files are loaded with torch.load(weights_only=True), which refuses pickled objects (a whole
nn.Module saved with torch.save(module)); trust_pickle=True unpickles such a file, which can run
code from it, and converts the module it holds.
"""

import os
import re
from collections.abc import Mapping

import numpy as np

from fastrnn.model import Model
from fastrnn.engine.weights import Config, LayerWeights
from fastrnn.validation import warn_outside_fastrnn


class AssumptionWarning(UserWarning):
    """A converter assumed what the weights cannot tell (model.assumptions lists what)."""


_GATES_TO_KIND = {4: "lstm", 3: "gru", 1: "rnn_tanh"}
_KIND_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
_LAYER_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")
_CELL_KEYS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def from_torch(obj, *, prefix="", kind=None, batch_first=None, trust_pickle=False):
    """A fastrnn.Model from a torch module, a mapping of names to tensors/arrays, or a file path.

    An nn.Sequential, or a module whose class defines its own forward, is a whole model: it gives
    a fastrnn.Chain of every layer (fastrnn.converters.torch_modules says what it may hold).

    prefix selects one sub-module: its keys in a state dict ("encoder.rnn." or "encoder.rnn"), or
    its name in a module. kind ("lstm", "gru", "rnn_tanh", "rnn_relu") and batch_first settle
    what a state dict cannot tell (a module's own settings by default; for a state dict, tanh and
    time-major, assumed with an AssumptionWarning). trust_pickle lets a file that holds a pickled
    module be unpickled (only for files you trust: unpickling can run code).
    """
    if kind is not None and kind not in _KIND_GATES:
        raise ValueError(f"kind must be one of {tuple(_KIND_GATES)}, got {kind!r}")
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a string such as 'model.rnn.', got "
                        f"{type(prefix).__name__}")
    if batch_first is not None:
        batch_first = bool(batch_first)
    if isinstance(obj, (str, os.PathLike)):
        obj = load_checkpoint(obj, trust_pickle=trust_pickle)
    if isinstance(obj, Mapping):
        return from_state_dict(obj, prefix=prefix, kind=kind, batch_first=batch_first)
    return _from_module(obj, prefix, kind, batch_first)


# What torch.save writes: a zip archive (since torch 1.6), or a pickle (protocol 2, b"\x80\x02").
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def load_checkpoint(path, *, trust_pickle=False):
    """The mapping of names to arrays in a .pt/.pth (weights_only) or .safetensors file.

    With trust_pickle, a .pt/.pth file is fully unpickled and may hold a module (returned as is).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such checkpoint: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory; expected a checkpoint file"
                                f"{_checkpoints_in(path)}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty (0 bytes); expected a checkpoint written by "
                         f"torch.save(module.state_dict(), path) or safetensors' save_file")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        try:
            return load_file(path)
        except Exception as error:
            numpy_error = error
        try:  # numpy has no bfloat16: torch reads those, and _as_array widens them
            from safetensors.torch import load_file as load_torch_file
            return load_torch_file(path)
        except Exception:
            raise ValueError(f"{path} is not a readable safetensors file: "
                             f"{_first_line(numpy_error)}") from None
    with open(path, "rb") as file:
        head = file.read(16)
    if not head.startswith(_TORCH_MAGIC):
        looks = " (it looks like text)" if _is_text(head) else ""
        raise ValueError(f"{path} is not a PyTorch checkpoint: torch.save writes a zip archive, "
                         f"and this file starts with {head!r}{looks}; expected the file "
                         f"torch.save(module.state_dict(), path) writes")
    import torch
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as error:
        raise ValueError(_load_error(path, error, trust_pickle)) from None
    if trust_pickle and _is_module(loaded):
        return loaded
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, expected a state dict "
                         f"(a mapping of names to tensors)")
    return loaded


def _load_error(path, error, trust_pickle):
    """What torch.load's failure means for the user, in one line."""
    text = _ANSI_ESCAPE.sub("", str(error))
    refused = re.search(r"GLOBAL ([\w.]+) was not an allowed global", text)
    if refused or "Weights only load failed" in text:
        what = f"a pickled {refused.group(1)}" if refused else "pickled Python objects"
        return (f"{path} holds {what} (a whole object saved with torch.save(module)), not a "
                f"state dict; fastrnn loads checkpoints with torch.load(weights_only=True), "
                f"which runs no code from the file. Save the weights instead: "
                f"torch.save(module.state_dict(), path); or, for a file you trust, allow "
                f"unpickling it (fastrnn convert --trust-pickle, from_torch(..., "
                f"trust_pickle=True)), which can run code from the file")
    if trust_pickle:
        return (f"{path} could not be unpickled: {_first_line(error)} (a pickled module needs "
                f"its class importable under the name it was saved with; saving "
                f"module.state_dict() avoids this)")
    return f"{path} is not a readable PyTorch checkpoint: {_first_line(error)}"


def _first_line(error):
    text = _ANSI_ESCAPE.sub("", str(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _is_text(head):
    return all(32 <= byte < 127 or byte in b"\t\r\n" for byte in head)


def _checkpoints_in(directory):
    """A hint naming the checkpoint files a directory holds, if any."""
    suffixes = (".pt", ".pth", ".safetensors", ".onnx")
    try:
        found = sorted(name for name in os.listdir(directory) if name.endswith(suffixes))
    except OSError:
        return ""
    if not found:
        return f" ({', '.join(suffixes)})"
    shown = ", ".join(found[:5]) + (" ..." if len(found) > 5 else "")
    return f"; it holds {shown}: pass one of those files"


def _is_module(obj):
    return hasattr(obj, "state_dict") and hasattr(obj, "named_modules")


_RECURRENT_MODES = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}


def _recurrent_types():
    import torch.nn as nn
    return (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell)


def _from_module(module, prefix, kind, batch_first):
    import torch.nn as nn
    if prefix and _is_module(module):
        name = prefix.rstrip(".")
        try:
            module = module.get_submodule(name)
        except AttributeError:
            raise KeyError(f"the {type(module).__name__} has no submodule {name!r}"
                           f"{_recurrent_hint(module)}") from None
    if isinstance(module, (nn.LSTM, nn.GRU, nn.RNN)):
        module_kind = _RECURRENT_MODES[module.mode]
        layout = module.batch_first if batch_first is None else batch_first
    elif isinstance(module, (nn.LSTMCell, nn.GRUCell, nn.RNNCell)):
        module_kind = {nn.LSTMCell: "lstm", nn.GRUCell: "gru"}.get(
            type(module), f"rnn_{getattr(module, 'nonlinearity', 'tanh')}")
        layout = bool(batch_first)
    else:
        from fastrnn.converters.torch_modules import from_module, is_whole_model
        if is_whole_model(module):  # nn.Sequential or a module with its own forward: a Chain
            if kind is not None or batch_first is not None:
                raise ValueError("kind= and batch_first= describe a recurrent layer; a whole "
                                 "model's layers say their own")
            return from_module(module)
        hint = _recurrent_hint(module) if _is_module(module) else ""
        raise TypeError(f"from_torch takes nn.LSTM, nn.GRU, nn.RNN, their Cell versions, a state "
                        f"dict or a checkpoint path; got {type(module).__name__}. For a module "
                        f"that contains a recurrent layer, pass that layer, or the module with "
                        f"prefix= naming the layer{hint}")
    if kind is not None and kind != module_kind:
        raise ValueError(f"kind={kind!r} does not match the module, which is {module_kind!r}")
    return from_state_dict(module.state_dict(), kind=module_kind, batch_first=layout)


def _recurrent_hint(module):
    """Where a module's recurrent layers are, as prefixes."""
    names = [f"{name!r}" for name, sub in module.named_modules()
             if name and isinstance(sub, _recurrent_types())]
    return f"; its recurrent layers are at prefix {', '.join(names[:5])}" if names else ""


def from_state_dict(state_dict, *, prefix="", kind=None, batch_first=None):
    """A Model from a state dict (names to torch tensors or numpy arrays), architecture inferred.

    The architecture comes from the weight_hh keys, which every layer and direction has: layers
    from their l{k} suffixes, directions from _reverse, sizes from their shapes. Every other key
    under the prefix must then belong to one of those layers, with the shape it must have.
    kind=None for a one-gate RNN and batch_first=None are assumed (tanh, time-major) with an
    AssumptionWarning, and recorded in model.assumptions.
    """
    flat = _flatten(state_dict)
    entries = _select(flat, prefix)
    if not entries:
        raise KeyError(f"no keys under prefix {prefix!r}{_prefix_hint(flat)}")
    shown_prefix = _shown_prefix(flat, prefix)
    if not any(_LAYER_KEY.match(k) or k in _CELL_KEYS for k in entries):
        # e.g. prefix "encoder" for weights under "encoder.rnn.": point at the prefix that fits
        where = f"under prefix {prefix!r}" if prefix else "at the top level of the state dict"
        raise KeyError(f"no recurrent weights (weight_ih_l0, weight_hh_l0, ...) directly {where}"
                       f"{_prefix_hint(flat, shown_prefix)}")
    cell_style = all(k in _CELL_KEYS for k in entries)
    if cell_style:  # nn.LSTMCell/GRUCell/RNNCell: the keys of layer 0 without their suffix
        entries = {f"{name}_l0": value for name, value in entries.items()}

    def user_key(key):
        """The key as the caller's state dict spells it."""
        return shown_prefix + (key[:-3] if cell_style else key)

    layers = {}
    for key, value in entries.items():
        match = _LAYER_KEY.match(key)
        if match is None:
            raise ValueError(f"unexpected key {user_key(key)!r}: not a weight of nn.LSTM/GRU/RNN "
                             f"or their cells{_prefix_hint(flat, shown_prefix, exclude=True)}")
        name, layer, reverse = match.groups()
        layers.setdefault((int(layer), bool(reverse)), {})[name] = _as_array(value, user_key(key))
    stacks = [position for position, arrays in layers.items() if "weight_hh" in arrays]
    if (0, False) not in stacks:
        raise KeyError(f"missing key {user_key('weight_hh_l0')!r}")
    num_layers = max(layer for layer, _ in stacks) + 1
    bidirectional = any(reverse for _, reverse in stacks)
    for (layer, reverse), arrays in sorted(layers.items()):
        if layer >= num_layers or (reverse and not bidirectional):
            suffix = f"_l{layer}" + ("_reverse" if reverse else "")
            name = sorted(arrays)[0]
            raise ValueError(f"unexpected key {user_key(name + suffix)!r}: the model's weight_hh "
                             f"keys give {num_layers} layer(s), "
                             f"{'bidirectional' if bidirectional else 'one direction'}")
    first = layers[(0, False)]
    w_hh = first["weight_hh"]
    if w_hh.ndim != 2:
        raise ValueError(f"{user_key('weight_hh_l0')} must be 2-D, got shape {w_hh.shape}")
    w_hr = first.get("weight_hr")
    if w_hr is not None and w_hr.ndim != 2:
        raise ValueError(f"{user_key('weight_hr_l0')} must be 2-D, got shape {w_hr.shape}")
    if w_hr is not None:
        hidden_size, proj_size = w_hr.shape[1], w_hr.shape[0]
        if w_hh.shape[1] != proj_size:
            raise ValueError(f"unexpected key {user_key('weight_hr_l0')!r} of shape "
                             f"{w_hr.shape}: a projection to {proj_size} needs "
                             f"{user_key('weight_hh_l0')} with {proj_size} columns, and it "
                             f"has shape {w_hh.shape}")
    else:
        hidden_size, proj_size = w_hh.shape[1], 0
    if hidden_size < 1 or w_hh.shape[0] % hidden_size:
        raise ValueError(f"{user_key('weight_hh_l0')} has shape {w_hh.shape}: its rows must be "
                         f"a multiple (1, 3 or 4) of the hidden size {hidden_size}")
    gates = w_hh.shape[0] // hidden_size
    assumptions = {}
    if kind is None:
        if gates not in _GATES_TO_KIND:
            raise ValueError(f"{user_key('weight_hh_l0')} has {gates} gate blocks of size "
                             f"{hidden_size}; expected 4 (LSTM), 3 (GRU) or 1 (RNN)")
        kind = _GATES_TO_KIND[gates]
        if gates == 1:  # tanh and relu RNNs have the same weights
            assumptions["kind"] = kind
    elif _KIND_GATES[kind] != gates:
        raise ValueError(f"kind={kind!r} needs {_KIND_GATES[kind]} gate blocks, but "
                         f"{user_key('weight_hh_l0')} has shape {w_hh.shape} ({gates} blocks)")
    if batch_first is None:
        batch_first = False
        if not cell_style:  # a cell steps (B, I) rows: it has no sequence layout to get wrong
            assumptions["batch_first"] = batch_first
    if proj_size and kind != "lstm":
        raise ValueError(f"unexpected key {user_key('weight_hr_l0')!r}: a projection belongs "
                         f"to an LSTM, and these weights are a {kind}")
    if "weight_ih" not in first:
        raise KeyError(f"missing key {user_key('weight_ih_l0')!r}")
    if first["weight_ih"].ndim != 2:
        raise ValueError(f"{user_key('weight_ih_l0')} must be 2-D, got shape "
                         f"{first['weight_ih'].shape}")
    has_bias = "bias_ih" in first or "bias_hh" in first
    try:
        config = Config(kind=kind, input_size=first["weight_ih"].shape[1],
                        hidden_size=hidden_size, num_layers=num_layers,
                        bidirectional=bidirectional, batch_first=bool(batch_first),
                        proj_size=proj_size)
    except ValueError as error:
        raise ValueError(f"the weights under prefix {prefix!r} do not describe a valid "
                         f"model: {error}") from None
    weights = []
    for layer in range(num_layers):
        for reverse in ((False, True) if bidirectional else (False,)):
            suffix = f"_l{layer}" + ("_reverse" if reverse else "")
            arrays = layers.get((layer, reverse), {})
            expected = _expected_shapes(config, layer, has_bias)
            for name in sorted(arrays):
                if name not in expected:
                    raise ValueError(f"unexpected key {user_key(name + suffix)!r} for this "
                                     f"architecture ({kind}, proj_size={proj_size}, "
                                     f"bias={has_bias})")
            for name, shape in expected.items():
                key = user_key(name + suffix)
                if name not in arrays:
                    raise KeyError(f"missing key {key!r}")
                if arrays[name].shape != shape:
                    raise ValueError(f"{key} has shape {arrays[name].shape}, expected {shape}")
            zeros = np.zeros(gates * hidden_size, arrays["weight_ih"].dtype)
            weights.append(LayerWeights(
                w_ih=arrays["weight_ih"], w_hh=arrays["weight_hh"],
                b_ih=arrays.get("bias_ih", zeros), b_hh=arrays.get("bias_hh", zeros),
                w_proj=arrays.get("weight_hr")))
    all_float64 = all(array.dtype == np.float64 for w in weights for array in w.arrays().values())
    model = Model(config, weights, dtype=np.float64 if all_float64 else np.float32)
    if assumptions:
        model.assumptions.update(assumptions)
        warn_outside_fastrnn(assumption_message(assumptions), AssumptionWarning)
    return model


# How each assumption reads, and the argument a model that differs needs.
_ASSUMED = {
    "kind": ("a plain RNN's nonlinearity: tanh (kind='rnn_tanh')",
             "nn.RNN(nonlinearity='relu') needs kind='rnn_relu'"),
    "batch_first": ("time-major (T, B, I) inputs (batch_first=False)",
                    "a module built with batch_first=True needs batch_first=True"),
}


def assumption_message(assumptions):
    """The one warning for what a conversion assumed."""
    assumed = ", and ".join(_ASSUMED[name][0] for name in assumptions)
    differs = ", and ".join(_ASSUMED[name][1] for name in assumptions)
    stating = " and ".join(f"{name}=" for name in assumptions)
    them = "them" if len(assumptions) > 1 else "it"
    return (f"fastrnn.from_torch: the state dict cannot tell, so the converter assumed "
            f"{assumed}; {differs}. Pass {stating} to state {them} and silence this warning "
            f"(model.assumptions records what was assumed)")


def _expected_shapes(config, layer, has_bias):
    rows = config.num_gates * config.hidden_size
    shapes = {"weight_ih": (rows, config.layer_input_size(layer)),
              "weight_hh": (rows, config.output_size)}
    if has_bias:
        shapes.update(bias_ih=(rows,), bias_hh=(rows,))
    if config.proj_size:
        shapes["weight_hr"] = (config.proj_size, config.hidden_size)
    return shapes


def _flatten(mapping, prefix=""):
    """Nested checkpoint dicts ({"model": {...}, "epoch": 3}) as one dict of dotted names."""
    flat = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if _is_module(value):  # a trusted pickle may hold modules ({"model": net, ...})
            value = value.state_dict()
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _select(entries, prefix):
    """The entries under `prefix`, with it stripped; "a.b" also means "a.b."."""
    prefix = _shown_prefix(entries, prefix)
    return {key[len(prefix):]: value for key, value in entries.items() if key.startswith(prefix)}


def _shown_prefix(entries, prefix):
    """`prefix` as it appears in front of the selected keys (with its dot)."""
    if prefix and not prefix.endswith(".") and any(k.startswith(prefix + ".") for k in entries):
        return prefix + "."
    return prefix


def _prefix_hint(entries, within="", exclude=False):
    """Where recurrent weights sit in a state dict (below `within`), as a hint for `prefix`.

    exclude leaves out `within` itself (recurrent weights were found there, beside other keys),
    and gives no hint when there is nothing else.
    """
    found = sorted({key[:-len(suffix)] for key in entries
                    for suffix in ("weight_hh_l0", "weight_hh") if key.endswith(suffix)
                    and (len(key) == len(suffix) or key[-len(suffix) - 1] == ".")})
    found = [f"{p!r}" for p in found if p and p.startswith(within) and not (exclude and
                                                                            p == within)]
    if found:
        return (f"; recurrent weights were found under prefix {', '.join(found[:5])}: pass "
                f"{'that' if len(found) == 1 else 'one of those'} as the prefix")
    if exclude:
        return ""
    shown = sorted(entries)[:8]
    return f"; the keys present are {shown}{' ...' if len(entries) > 8 else ''}"


def _as_array(value, key):
    if hasattr(value, "detach"):  # a torch tensor; bfloat16/float16 are widened to float32
        value = value.detach().cpu()
        if value.dtype.is_floating_point and value.dtype not in _NUMPY_TORCH_FLOATS():
            value = value.float()
        value = value.numpy()
    array = np.asarray(value)
    if array.dtype.kind == "V" and array.dtype.name.startswith(("bfloat", "float")):
        # ml_dtypes' bfloat16/float8 (what safetensors.numpy returns when ml_dtypes is installed)
        array = array.astype(np.float32)
    if array.dtype.kind != "f":
        raise TypeError(f"{key} must hold floating-point weights, got dtype {array.dtype}")
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    return array


def _NUMPY_TORCH_FLOATS():
    import torch
    return (torch.float32, torch.float64)
