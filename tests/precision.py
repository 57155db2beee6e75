"""Networks that probe float32 accuracy, and the engines that run them, for tests/test_precision.py
and bench/test_bench_precision.py.

Two kinds of LSTM, built from seeded random weights in fastrnn's layout (no downloads):

- `large_cell_lstm`: cell states that integrate over a long sequence. Forget gates sit between
  1 - 7e-3 and 1 - 6e-6 (biases 5 to 12), input gates are open (biases 2 to 6) and each unit's
  cell input keeps one sign, so |c| grows to hundreds over 1000 steps. Every rounding of the
  forget gate is multiplied by c and kept: the cell state adds up the activations' errors.
- `peephole_bilstm`: two bidirectional layers with peepholes and weights scaled by 1.5, so that
  most gates sit near saturation, as a trained beat tracker's do; there a small bias in the
  activations moves the output far more than its own size.

Each runs in float32 through fastrnn, onnxruntime (an ONNX graph of LSTM nodes made here with
onnx.helper from the same weights) and torch (nn.LSTM, or the same equations in torch ops where
there are peepholes, which nn.LSTM lacks), and in float64 through fastrnn, whose float64 path
tests/test_precision.py also holds to tests/reference.py. Every engine gets the float32-rounded
weights and inputs, so an error against the float64 run is the engine's own arithmetic.
"""

from dataclasses import dataclass

import numpy as np

import fastrnn

GATES = 4


def large_cell_lstm(seed, input_size=16, hidden_size=64):
    """One LSTM layer whose cell states integrate (module docstring), in float64."""
    rng = np.random.default_rng(seed)
    bound = 1 / np.sqrt(hidden_size)
    h = hidden_size
    w_ih = rng.uniform(-bound, bound, (GATES * h, input_size))
    w_hh = rng.uniform(-bound, bound, (GATES * h, h)) * 0.5
    bias = rng.uniform(-bound, bound, GATES * h)
    bias[:h] += rng.uniform(2.0, 6.0, h)
    bias[h:2 * h] += rng.uniform(5.0, 12.0, h)
    bias[2 * h:3 * h] += rng.choice([-1.0, 1.0], h) * rng.uniform(0.05, 0.5, h)
    return [{"w_ih": w_ih, "w_hh": w_hh, "b_ih": bias, "b_hh": np.zeros(GATES * h)}]


def peephole_bilstm(seed, input_size=32, hidden_size=25, num_layers=2, scale=1.5):
    """Bidirectional peephole LSTM layers near saturation (module docstring), in float64."""
    rng = np.random.default_rng(seed)
    h = hidden_size
    bound = 1 / np.sqrt(h)
    layers = []
    for layer in range(num_layers):
        inputs = input_size if layer == 0 else 2 * h
        input_bound = 1 / np.sqrt(inputs)
        for _ in range(2):
            bias = rng.uniform(-1, 1, GATES * h) * scale
            bias[h:2 * h] += rng.uniform(1.0, 6.0, h)
            layers.append({
                "w_ih": rng.uniform(-input_bound, input_bound, (GATES * h, inputs)) * scale,
                "w_hh": rng.uniform(-bound, bound, (GATES * h, h)) * scale * 0.5,
                "b_ih": bias, "b_hh": np.zeros(GATES * h),
                "peephole": rng.uniform(-1, 1, (3, h)) * scale * bound,
            })
    return layers


@dataclass(frozen=True)
class Case:
    """One network and its input: kind "large_cell" or "peephole", a seed for both."""
    kind: str
    seed: int
    steps: int = 1000
    batch: int = 8

    @property
    def bidirectional(self):
        return self.kind == "peephole"

    @property
    def input_size(self):
        return 16 if self.kind == "large_cell" else 32

    def layers(self):
        """The weights, rounded to float32 (then every engine starts from the same numbers)."""
        build = large_cell_lstm if self.kind == "large_cell" else peephole_bilstm
        return [{k: v.astype(np.float32) for k, v in w.items()} for w in build(self.seed)]

    def input(self):
        rng = np.random.default_rng(300 + self.seed)
        return rng.standard_normal((self.steps, self.batch, self.input_size)).astype(np.float32)

    def info(self):
        layers = self.layers()
        return {"kind": self.kind, "seed": self.seed, "steps": self.steps, "batch": self.batch,
                "input_size": self.input_size, "hidden_size": layers[0]["w_hh"].shape[1],
                "num_layers": len(layers) // (2 if self.bidirectional else 1),
                "bidirectional": self.bidirectional}


def run_fastrnn(case, dtype, x=None):
    """fastrnn's (y (T, B, D*H), c_n (L*D, B, H)) in `dtype`."""
    layers = [{k: v.astype(dtype) for k, v in w.items()} for w in case.layers()]
    model = fastrnn.from_numpy("lstm", layers, bidirectional=case.bidirectional)
    x = case.input() if x is None else x
    y, state = model(x.astype(dtype))
    return y, state.c


# fastrnn's gate blocks are i, f, g, o; ONNX's are i, o, f, c. Peepholes: fastrnn's rows i, f, o,
# ONNX's P blocks i, o, f.
def _onnx_gate_order(hidden):
    blocks = [np.arange(k * hidden, (k + 1) * hidden) for k in range(GATES)]
    return np.concatenate([blocks[0], blocks[3], blocks[1], blocks[2]])


ONNX_PEEPHOLE_ROWS = [0, 2, 1]


def onnx_graph(case):
    """An ONNX model of the case's stack: per layer an LSTM node (both directions in one node)
    and a Transpose and Reshape from its Y (T, D, B, H) to the next layer's (T, B, D*H). Outputs:
    y, then each layer's Y_c (D, B, H)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    layers = case.layers()
    directions = 2 if case.bidirectional else 1
    hidden = layers[0]["w_hh"].shape[1]
    order = _onnx_gate_order(hidden)
    nodes, initializers, cell_outputs = [], [], []
    current = "x"
    for layer in range(len(layers) // directions):
        weights = layers[layer * directions:(layer + 1) * directions]
        arrays = {
            f"W{layer}": np.stack([w["w_ih"][order] for w in weights]),
            f"R{layer}": np.stack([w["w_hh"][order] for w in weights]),
            f"B{layer}": np.stack([np.concatenate([w["b_ih"][order], w["b_hh"][order]])
                                   for w in weights]),
        }
        inputs = [current, f"W{layer}", f"R{layer}", f"B{layer}"]
        if "peephole" in weights[0]:
            arrays[f"P{layer}"] = np.stack([w["peephole"][ONNX_PEEPHOLE_ROWS].reshape(-1)
                                            for w in weights])
            inputs += ["", "", "", f"P{layer}"]     # no sequence_lens, initial_h, initial_c
        initializers += [numpy_helper.from_array(a.astype(np.float32), name)
                         for name, a in arrays.items()]
        initializers.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64),
                                                    f"shape{layer}"))
        cell_outputs.append(f"Y_c{layer}")
        nodes += [
            helper.make_node("LSTM", inputs, [f"Y{layer}", "", f"Y_c{layer}"], hidden_size=hidden,
                             direction="bidirectional" if directions == 2 else "forward"),
            helper.make_node("Transpose", [f"Y{layer}"], [f"Yt{layer}"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", [f"Yt{layer}", f"shape{layer}"], [f"y{layer}"]),
        ]
        current = f"y{layer}"
    nodes[-1].output[0] = "y"
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                             ["T", "B", directions * hidden])]
    outputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, [directions, "B", hidden])
                for name in cell_outputs]
    graph = helper.make_graph(
        nodes, "precision",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", case.input_size])],
        outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def run_onnxruntime(case, x=None):
    """onnxruntime's float32 (y, c_n), on one thread (its answer does not depend on the count)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(onnx_graph(case).SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    y, *cells = session.run(None, {"x": case.input() if x is None else x})
    return y, np.concatenate(cells, axis=0)


def run_torch(case, x=None):
    """torch's float32 (y, c_n): nn.LSTM without peepholes, the cell's equations in torch ops
    (torch.sigmoid, torch.tanh, matmul) with them."""
    import torch

    layers = case.layers()
    x = case.input() if x is None else x
    directions = 2 if case.bidirectional else 1
    num_layers = len(layers) // directions
    hidden = layers[0]["w_hh"].shape[1]
    with torch.no_grad():
        if "peephole" not in layers[0]:
            module = torch.nn.LSTM(case.input_size, hidden, num_layers,
                                   bidirectional=case.bidirectional)
            for index, weights in enumerate(layers):
                suffix = f"_l{index // directions}" + ("_reverse" if index % directions else "")
                for name, key in (("weight_ih", "w_ih"), ("weight_hh", "w_hh"),
                                  ("bias_ih", "b_ih"), ("bias_hh", "b_hh")):
                    getattr(module, name + suffix).copy_(torch.from_numpy(weights[key]))
            y, (_, c) = module(torch.from_numpy(x))
            return y.numpy(), c.numpy()
        layer_input = torch.from_numpy(x)
        steps, batch = x.shape[:2]
        cells = []
        for layer in range(num_layers):
            # Both directions at once, stacked on a first axis: direction d takes step t of its
            # own order (the reverse one walks the input backwards).
            w = {key: torch.stack([torch.from_numpy(layers[layer * directions + d][key])
                                   for d in range(directions)])
                 for key in layers[0]}
            inputs = torch.stack([layer_input.flip(0) if d else layer_input
                                  for d in range(directions)])
            projected = (inputs @ w["w_ih"].transpose(1, 2)[:, None]
                         + (w["b_ih"] + w["b_hh"])[:, None, None])
            h = torch.zeros(directions, batch, hidden)
            c = torch.zeros(directions, batch, hidden)
            peephole = w["peephole"][:, :, None, :]
            ys = []
            for t in range(steps):
                gates = projected[:, t] + torch.bmm(h, w["w_hh"].transpose(1, 2))
                i, f, g, o = gates.split(hidden, dim=2)
                i = torch.sigmoid(i + peephole[:, 0] * c)
                f = torch.sigmoid(f + peephole[:, 1] * c)
                c = f * c + i * torch.tanh(g)
                h = torch.sigmoid(o + peephole[:, 2] * c) * torch.tanh(c)
                ys.append(h)
            ys = torch.stack(ys, dim=1)                       # (D, T, B, H), each in its order
            layer_input = torch.cat([ys[d].flip(0) if d else ys[d] for d in range(directions)],
                                    dim=2)
            cells += list(c)
        return layer_input.numpy(), torch.stack(cells).numpy()


ENGINES = {"fastrnn": lambda case: run_fastrnn(case, np.float32),
           "onnxruntime": run_onnxruntime, "torch": run_torch}


def max_errors(answer, reference):
    """(max |y - y_ref|, max |c_n - c_ref|)."""
    (y, c), (y_ref, c_ref) = answer, reference
    assert y.shape == y_ref.shape and c.shape == c_ref.shape, (y.shape, c.shape)
    return (float(np.abs(y.astype(np.float64) - y_ref).max()),
            float(np.abs(c.astype(np.float64) - c_ref).max()))
