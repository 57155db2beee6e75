"""Whole torch models in: nn.Sequential and torch.fx-traceable modules, as a fastrnn.Chain.

fastrnn.from_torch(module) comes here for an nn.Sequential or a module with its own forward.
The module is traced with torch.fx (torch.nn's own modules stay leaves) and the graph is read as
a chain, node by node:

    nn.Linear, nn.Conv1d (stride 1, zero padding), nn.ConstantPad1d/ZeroPad1d with zeros before a
    conv, nn.BatchNorm1d (eval mode: running statistics), nn.LayerNorm (over the channels),
    nn.ReLU, LeakyReLU, PReLU, ELU, GELU, SiLU, Tanh, Sigmoid, Softmax (over the channels),
    Hardtanh (and ReLU6), nn.Dropout (identity), nn.Identity, nn.LSTM/GRU/RNN (their output
    tuple's first element, from the zero state), torch.relu/tanh/sigmoid and their methods;
    permute, transpose and contiguous between them; x[..., :-n] right after a conv padded n
    (or more) on the right (the usual causal conv: pad both sides, drop the look-ahead).

Layouts are resolved at load: the three axes of the input are given roles (B batch, C channels,
T time) by what each layer needs (Conv1d and BatchNorm1d (B, C, T), Linear and LayerNorm channels
last, a recurrent layer (B, T, C) or (T, B, C) as its batch_first says), followed through every
permute and transpose; the permutes themselves become nothing, since a chain's arrays are
time-major inside. The chain's input_layout and output_layout are those roles at the input and
output, so chain(x) takes and gives arrays laid out as the module's. A model that never fixes
which axis is time (Linear and activations only) is taken as (B, T, C).

The graph must be a chain: each layer takes the output of the one before, except for residual
adds, x + f(x) (operator.add or torch.add), which become a Residual layer around f's layers.
Anything else (another module or function, another branch, a second input, a recurrent layer's
h_n, an initial state) is refused with the node's qualified name and type. A BatchNorm1d is folded into its neighbour
(fastrnn.layers.norm). The chain is float64 when every parameter is, else float32.
"""

from __future__ import annotations

import operator

import numpy as np

from fastrnn.chain import Chain
from fastrnn.layers import Activation, Conv1d, LayerNorm, Linear, Recurrent, Residual
from fastrnn.layers.norm import Affine, fold_affines


class _Value:
    """A tensor in the traced graph: which input axis each of its axes is, and how many layers
    had been made when it was (a layer may only take the newest layer's output)."""

    def __init__(self, axes, made, pad=(0, 0), recurrent=False):
        self.axes, self.made, self.pad, self.recurrent = tuple(axes), made, pad, recurrent
        self.refusal = None  # why a node that must not be used is refused, when it is


def is_whole_model(module):
    """Whether from_torch should read `module` as a whole model: an nn.Sequential, or a module
    whose class defines its own forward (torch.nn's leaf modules keep the recurrent converter)."""
    import torch.nn as nn
    if isinstance(module, nn.Sequential):
        return True
    forward = getattr(type(module), "forward", None)
    return (isinstance(module, nn.Module) and not type(module).__module__.startswith("torch.")
            and forward is not None and forward is not nn.Module.forward
            and getattr(forward, "__name__", "") != "_forward_unimplemented")


def from_module(module):
    """A fastrnn.Chain computing what `module` computes in eval mode (see the module docstring)."""
    import torch
    import torch.fx
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception as error:
        raise ValueError(f"torch.fx cannot trace {type(module).__qualname__} (fastrnn reads a "
                         f"whole model from its traced graph): {str(error).splitlines()[0]}") \
            from None
    parameters = list(module.parameters())
    dtype = np.float64 if parameters and all(p.dtype == torch.float64 for p in parameters) \
        else np.float32
    return _Reader(module, dtype).read(graph)


def _array(tensor):
    return None if tensor is None else tensor.detach().cpu().double().numpy()


def _where(node):
    return f"{node.target}" if node.op == "call_module" else f"node {node.name!r}"


class _Reader:
    def __init__(self, module, dtype):
        self.module, self.dtype = module, dtype
        self.roles = {}       # input axis -> "B", "C" or "T"
        self.layers = []      # layers, or ("activation", name, kwargs) until the sizes are known
        self.values = {}

    # -- layouts --

    def require(self, value, pattern, node, what):
        """Give value's axes the roles `pattern` (None: any); ValueError on a contradiction."""
        for position, role in enumerate(pattern):
            if role is None:
                continue
            axis = value.axes[position]
            known = self.roles.get(axis)
            if known is None:
                if role in self.roles.values():
                    raise ValueError(self._conflict(node, what, position, role))
                self.roles[axis] = role
            elif known != role:
                raise ValueError(self._conflict(node, what, position, role))

    def _conflict(self, node, what, position, role):
        names = {"B": "batch", "C": "channels", "T": "time"}
        return (f"{_where(node)} ({what}) needs axis {position} of its input to be "
                f"{names[role]}, but the permutes before it put another axis there: the layouts "
                f"of the model's layers do not fit together")

    def take(self, node, argument, layer_node=True):
        """The _Value a node reads; a layer may only read the newest layer's output."""
        import torch.fx
        if not isinstance(argument, torch.fx.Node) or argument not in self.values:
            raise ValueError(f"{_where(node)} takes {argument!r}, which is not the model's "
                             f"input or a layer's output")
        value = self.values[argument]
        if value.refusal:
            raise ValueError(value.refusal)
        if value.recurrent:
            raise ValueError(f"{_where(node)} takes a recurrent layer's output tuple; take its "
                             f"first element (output, _ = rnn(x), or rnn(x)[0])")
        if layer_node and value.made != len(self.layers):
            raise ValueError(f"{_where(node)} does not take the previous layer's output: fastrnn "
                             f"reads a model as a chain of layers (branches other than "
                             f"residual adds are not supported yet)")
        return value

    # -- the graph --

    def read(self, graph):
        output = None
        inputs = [node for node in graph.nodes if node.op == "placeholder"]
        if len(inputs) != 1:
            raise ValueError(f"the model's forward takes {len(inputs)} inputs; fastrnn runs models "
                             f"of one input")
        for node in graph.nodes:
            if node.op == "placeholder":
                self.values[node] = _Value((0, 1, 2), 0)
            elif node.op == "call_module":
                self.values[node] = self.call_module(node, self.module.get_submodule(node.target))
            elif node.op in ("call_method", "call_function"):
                self.values[node] = self.call_function(node)
            elif node.op == "output":
                output = self.take(node, node.args[0])
            else:
                raise ValueError(f"{_where(node)}: graph operation {node.op!r} is not supported")
        if not self.layers:
            raise ValueError("the model holds no layer fastrnn runs (only layout operations)")
        if output.pad != (0, 0):
            raise ValueError("the model ends with padding, which fastrnn runs only before a conv")
        layers = self.finish()
        # Roles no layer fixed (Linear and activations only): (B, T, C) is assumed.
        missing = [role for role in "BTC" if role not in self.roles.values()]
        for axis in range(3):
            if axis not in self.roles:
                self.roles[axis] = missing.pop(0)
        input_layout = "".join(self.roles[axis] for axis in range(3))
        output_layout = "".join(self.roles[axis] for axis in output.axes)
        return Chain(layers, input_layout=input_layout, output_layout=output_layout)

    def finish(self):
        """The layers, with sizes for the activations (from the layers before them, or the first
        sized layer's input) and the BatchNorms folded."""
        features = self.first_features(self.layers)
        if features is None:
            raise ValueError("the model has no layer that tells its channel count (a Linear, "
                             "Conv1d, norm or recurrent layer)")
        return self.build(self.layers, features)

    def first_features(self, items):
        for item in items:
            if isinstance(item, tuple):
                found = self.first_features(item[1]) if item[0] == "residual" else None
                if found is not None:
                    return found
            else:
                return item.in_features
        return None

    def build(self, items, features):
        layers = []
        for item in items:
            if isinstance(item, tuple) and item[0] == "activation":
                layer = Activation(item[1], features, dtype=self.dtype, **item[2])
            elif isinstance(item, tuple):
                layer = Residual(self.build(item[1], features))
            else:
                layer = item
            layers.append(layer)
            features = layer.out_features
        return fold_affines(layers)

    def add(self, layer, value):
        """Emit `layer` reading `value`; its output keeps value's axes."""
        self.layers.append(layer)
        return _Value(value.axes, len(self.layers))

    def call_module(self, node, sub):
        import torch.nn as nn
        kind = type(sub).__name__
        what = f"{node.target} ({kind})"
        if len(node.args) != 1 or node.kwargs:
            raise ValueError(f"{what} is called with {len(node.args)} arguments"
                             f"{' and keywords' if node.kwargs else ''}; fastrnn runs it on one "
                             f"input (a recurrent layer from the zero state)")
        if isinstance(sub, (nn.Dropout, nn.Dropout1d, nn.AlphaDropout, nn.Identity)):
            return self.take(node, node.args[0], layer_node=False)  # identity at inference
        if isinstance(sub, (nn.ConstantPad1d, nn.ZeroPad1d)):
            value = self.take(node, node.args[0])
            if float(sub.value) != 0.0:
                raise ValueError(f"{what} pads with {sub.value}; fastrnn pads convs with zeros")
            self.require(value, (None, None, "T"), node, kind)
            left, right = sub.padding
            return _Value(value.axes, value.made, (value.pad[0] + left, value.pad[1] + right))
        value = self.take(node, node.args[0])
        if value.pad != (0, 0) and not isinstance(sub, nn.Conv1d):
            raise ValueError(f"{what} follows a padding; fastrnn runs padding only before a conv")
        if isinstance(sub, nn.Conv1d):
            return self.add(self.conv(sub, value, node, what), value)
        if isinstance(sub, nn.Linear):
            self.require(value, (None, None, "C"), node, kind)
            return self.add(Linear(_array(sub.weight), _array(sub.bias), dtype=self.dtype), value)
        if isinstance(sub, nn.BatchNorm1d):
            self.require(value, ("B", "C", "T"), node, kind)
            if sub.running_mean is None:
                raise ValueError(f"{what} keeps no running statistics "
                                 f"(track_running_stats=False): it has no inference form")
            return self.add(Affine.from_batch_norm(_array(sub.running_mean),
                                                   _array(sub.running_var), _array(sub.weight),
                                                   _array(sub.bias), sub.eps, self.dtype), value)
        if isinstance(sub, nn.LayerNorm):
            if len(sub.normalized_shape) != 1:
                raise ValueError(f"{what} normalises over {tuple(sub.normalized_shape)}; fastrnn "
                                 f"normalises over the channels of a step only")
            self.require(value, (None, None, "C"), node, kind)
            return self.add(LayerNorm(sub.normalized_shape[0], _array(sub.weight),
                                      _array(sub.bias), eps=sub.eps, dtype=self.dtype), value)
        if isinstance(sub, (nn.LSTM, nn.GRU, nn.RNN)):
            from fastrnn.converters.pytorch import from_state_dict, _RECURRENT_MODES
            self.require(value, ("B", "T", "C") if sub.batch_first else ("T", "B", "C"), node, kind)
            model = from_state_dict(sub.state_dict(), kind=_RECURRENT_MODES[sub.mode],
                                    batch_first=False)
            if self.dtype == np.float32 and model.dtype != np.float32:
                from fastrnn.model import Model
                model = Model(model.config, model.layers, np.float32)
            result = self.add(Recurrent(model), value)
            result.recurrent = True
            return result
        activation = self.activation_of(sub, value, node, kind)
        if activation is None:
            raise ValueError(f"{what}: {type(sub).__module__}.{type(sub).__qualname__} is not a "
                             f"module fastrnn runs (see fastrnn.converters.torch_modules)")
        return self.add(activation, value)

    def conv(self, sub, value, node, what):
        self.require(value, ("B", "C", "T"), node, "Conv1d")
        if tuple(sub.stride) != (1,):
            raise ValueError(f"{what} has stride {sub.stride[0]}; fastrnn runs stride 1 only")
        if sub.padding_mode != "zeros":
            raise ValueError(f"{what} pads with mode {sub.padding_mode!r}; fastrnn pads with zeros")
        taps, dilation = sub.kernel_size[0], sub.dilation[0]
        if sub.padding == "same":
            total = dilation * (taps - 1)
            padding = (total // 2, total - total // 2)
        elif sub.padding == "valid":
            padding = (0, 0)
        else:
            padding = (sub.padding[0], sub.padding[0])
        padding = (padding[0] + value.pad[0], padding[1] + value.pad[1])
        return Conv1d(_array(sub.weight), _array(sub.bias), dilation=dilation, groups=sub.groups,
                      padding=padding, dtype=self.dtype)

    def activation_of(self, sub, value, node, kind):
        import torch.nn as nn
        simple = {nn.ReLU: "relu", nn.SiLU: "silu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}
        if type(sub) in simple:
            return ("activation", simple[type(sub)], {})
        if isinstance(sub, nn.LeakyReLU):
            return ("activation", "leaky_relu", {"negative_slope": sub.negative_slope})
        if isinstance(sub, nn.ELU):
            return ("activation", "elu", {"alpha": sub.alpha})
        if isinstance(sub, nn.GELU):
            return ("activation", "gelu" if sub.approximate == "none" else "gelu_tanh", {})
        if isinstance(sub, nn.Hardtanh):
            return ("activation", "hardtanh", {"min_val": sub.min_val, "max_val": sub.max_val})
        if isinstance(sub, nn.Softmax):
            self.require(value, tuple("C" if axis == (sub.dim % 3) else None for axis in range(3)),
                         node, kind)
            return ("activation", "softmax", {})
        if isinstance(sub, nn.PReLU):
            slopes = _array(sub.weight)
            if slopes.shape[0] > 1:  # torch applies one slope per index of axis 1
                self.require(value, (None, "C", None), node, kind)
            return Activation("prelu", slopes.shape[0], slopes=slopes, dtype=self.dtype) \
                if slopes.shape[0] > 1 else ("activation", "prelu", {"slopes": slopes})
        return None

    def call_function(self, node):
        import torch
        import torch.nn.functional as F
        target = node.target
        name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
        argument = node.args[0] if node.args else None
        if target is operator.getitem:
            return self.getitem(node)
        if target in (operator.add, torch.add, "add") and len(node.args) == 2 and not node.kwargs:
            return self.residual(node)
        value = self.take(node, argument, layer_node=False)
        if name == "contiguous":
            return value
        if name in ("permute", "transpose"):
            dims = list(node.args[1:]) or list(node.kwargs.values())
            if name == "permute" and len(dims) == 1 and isinstance(dims[0], (tuple, list)):
                dims = list(dims[0])
            if not all(isinstance(d, int) for d in dims):
                raise ValueError(f"{_where(node)}: {name} with dimensions {dims} that are not "
                                 f"constants")
            dims = [d % 3 for d in dims]
            axes = list(value.axes)
            if name == "transpose":
                if len(dims) != 2:
                    raise ValueError(f"{_where(node)}: transpose needs two dimensions")
                axes[dims[0]], axes[dims[1]] = axes[dims[1]], axes[dims[0]]
            elif sorted(dims) == [0, 1, 2]:
                axes = [axes[d] for d in dims]
            else:
                raise ValueError(f"{_where(node)}: permute{tuple(dims)} of a 3-D tensor")
            if value.pad != (0, 0):
                raise ValueError(f"{_where(node)}: a permute between a padding and its conv")
            return _Value(axes, value.made)
        functions = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid", "silu": "silu"}
        if name in functions and target in (getattr(torch, name, None), getattr(F, name, None),
                                            name) and not node.kwargs and len(node.args) == 1:
            value = self.take(node, argument)
            self.layers.append(("activation", functions[name], {}))
            return _Value(value.axes, len(self.layers))
        raise ValueError(f"{_where(node)}: {node.op} {name!r} is not an operation fastrnn runs "
                         f"(see fastrnn.converters.torch_modules)")

    def residual(self, node):
        """a + b, where one is the newest layer's output and the other an earlier value that the
        layers since were computed from: those layers become one Residual."""
        import torch.fx
        values = [self.values.get(a) if isinstance(a, torch.fx.Node) else None for a in node.args]
        if None in values:
            raise ValueError(f"{_where(node)}: an add of {node.args[0]!r} and {node.args[1]!r}; "
                             f"fastrnn adds two layer outputs only (a residual connection)")
        for value in values:
            self.take(node, node.args[values.index(value)], layer_node=False)
        newest, skip = sorted(values, key=lambda value: -value.made)
        if newest.made != len(self.layers) or skip.made == newest.made:
            raise ValueError(f"{_where(node)} adds values that are not a layer's output and an "
                             f"earlier value it was computed from (a residual connection)")
        if newest.axes != skip.axes or newest.pad != (0, 0) or skip.pad != (0, 0):
            raise ValueError(f"{_where(node)} adds tensors laid out differently (the permutes "
                             f"inside the residual branch do not return to its input's layout)")
        inner = self.layers[skip.made:]
        del self.layers[skip.made:]
        self.layers.append(("residual", inner))
        return _Value(newest.axes, len(self.layers))

    def getitem(self, node):
        source, index = node.args
        value = self.values.get(source)
        if value is None:
            raise ValueError(f"{_where(node)} indexes something that is not a layer's output")
        if value.recurrent:
            result = _Value(value.axes, value.made)
            if index != 0:  # refused only where used: `y, _ = rnn(x)` indexes the state too
                result.refusal = (f"{_where(node)}, element {index} of a recurrent layer's "
                                  f"output (its final state), is used; fastrnn's chain passes on "
                                  f"the output sequence, element 0, only")
            return result
        # x[..., :-n] (or [:, :, :-n]) right after a conv: the conv's right padding, dropped.
        layer = self.layers[-1] if self.layers else None
        slices = list(index) if isinstance(index, tuple) else [index]
        if slices and slices[0] is Ellipsis:
            slices = [slice(None)] * (4 - len(slices)) + slices[1:]
        full = slice(None)
        cut = slices[-1] if len(slices) == 3 and slices[:2] == [full, full] else None
        if (isinstance(layer, Conv1d) and value.made == len(self.layers)
                and isinstance(cut, slice) and cut.start is None and cut.step is None
                and isinstance(cut.stop, int) and cut.stop < 0
                and layer.padding[1] >= -cut.stop):
            self.require(value, ("B", "C", "T"), node, "crop")
            left, right = layer.padding
            self.layers[-1] = Conv1d(layer.weight, layer.bias, dilation=layer.dilation,
                                     groups=layer.groups, padding=(left, right + cut.stop),
                                     dtype=self.dtype)
            return _Value(value.axes, value.made)
        raise ValueError(f"{_where(node)}: indexing [{index}] is not supported; fastrnn takes "
                         f"x[..., :-n] right after a conv padded at least n on the right")
