"""ONNX in: `InferenceSession` runs whole graphs, `from_onnx` turns a recurrent stack into a Model.

Ops are handled by a registry (registry.py), one handler per op family keyed by op type and
opset range: LSTM, GRU and RNN (recurrent.py, opsets 7-22) on fastrnn's kernels, and the ops of
the graph around them (glue, math, control flow, convolutions and normalizations; listed below).
A graph with ops that have no handler is refused when it is loaded, with one error listing every
missing op type, its count and its first node.

What the converter permutes (everything else is copied as is; W and R keep their (gates*H, inputs)
shape, B is split into its W and R halves, b_ih and b_hh):

| tensor | ONNX order | fastrnn order (PyTorch's) | ONNX blocks taken, in fastrnn order |
|---|---|---|---|
| LSTM W, R, Wb, Rb | i, o, f, c | i, f, g(=c), o | 0, 2, 3, 1 |
| LSTM P (peepholes) | i, o, f | i, f, o | 0, 2, 1 |
| GRU W, R, Wb, Rb | z, r, h | r, z, n(=h) | 1, 0, 2 |
| RNN W, R, Wb, Rb | i | i | 0 |

Supported (default ONNX domain, opsets up to 22; the full table is in docs/onnx.md):
- LSTM, GRU, RNN (opsets 7-22): every attribute (direction, layout 0 and 1, activations with
  activation_alpha/activation_beta, all eleven functions, clip, input_forget, linear_before_reset,
  hidden_size) and every optional input and output (B, P, sequence_lens, initial_h, initial_c;
  any subset of Y, Y_h, Y_c). float32 and float64.
- Control flow (control.py): If, both branches planned when loading.
- Glue (glue.py): Identity, Constant, ConstantOfShape, ConstantFill (opset < 9), Shape, Cast,
  Squeeze, Unsqueeze, Transpose, Reshape, Flatten, Concat, Slice, Gather, Expand, Split; heads
  MatMul, Gemm, Add, Sub, Mul, Div, Relu, Tanh, Sigmoid, Softmax, LogSoftmax.
- Math (math_ops.py): elementwise math, comparisons and logic, Where, Size, Range, Tile, the
  Reduce* family, LeakyRelu, PRelu, Elu, Selu, HardSigmoid, HardSwish, Softplus, Softsign, Gelu,
  Dropout (inference).
- Spatial (spatial.py, Numba kernels in spatial_kernels.py): Conv, ConvTranspose, MaxPool,
  AveragePool (1-D and 2-D), GlobalAveragePool, GlobalMaxPool, BatchNormalization (inference),
  LayerNormalization, InstanceNormalization, Pad; docs/onnx-ops.md lists their attributes.
Refused when loading, in one error listing every op type with its count and first node: any
other op, ops of other domains, opsets above 22. Refused when loading, naming the node: recurrent
weights (W, R, B, P) that are graph inputs, float16 recurrent weights. Inputs that override
initializers are not accepted as feeds.

InferenceSession.stream(state={output: input}) runs a graph chunk by chunk with its state kept
inside (stateful.py), with versioned, checked snapshots.

Loading is bounded by what the file holds: a path that is not a regular file (a FIFO, a device) is
refused before it is read, external data must lie in regular files in the model's directory and
within them, and constant folding may create at most graph.FOLD_LIMIT_BYTES (256 MiB, or twice
the bytes of the stored tensors if more) in all: a node whose folded result would pass that is
refused, named, before anything is allocated for it. Outputs are fresh, writable arrays of their
own on every run: never a constant of the plan, a feed, or memory shared with another output.

ONNX's GRU default (linear_before_reset=0, reset applied to h before the product) maps to
Config(linear_before_reset=False); activations, clip and input_forget map to the Config fields of
the same names. Recurrent weights must be known when the graph is loaded (initializers, Constant
nodes, or computed from those alone); graphs that feed W, R, B or P as inputs are refused.
"""

from fastrnn.converters.onnx import spatial  # noqa: F401  (registers the spatial ops)
from fastrnn.converters.onnx.registry import register, supported_ops
from fastrnn.converters.onnx.session import InferenceSession
from fastrnn.converters.onnx.stack import from_onnx

__all__ = ["InferenceSession", "from_onnx", "register", "supported_ops"]
