"""Graphs exported by torch.onnx.export(..., dynamo=False) from nn.LSTM/GRU/RNN, with and without a
Linear head: fastrnn.InferenceSession against onnxruntime, fastrnn.from_onnx against torch."""

import io
import warnings

import numpy as np
import pytest
import torch

import fastrnn
from onnx_cases import assert_outputs_close, onnxruntime_session

INPUT, HIDDEN, OUTPUT = 3, 5, 2
MODULES = {
    "lstm": lambda **kw: torch.nn.LSTM(INPUT, HIDDEN, **kw),
    "gru": lambda **kw: torch.nn.GRU(INPUT, HIDDEN, **kw),
    "rnn_tanh": lambda **kw: torch.nn.RNN(INPUT, HIDDEN, **kw),
    "rnn_relu": lambda **kw: torch.nn.RNN(INPUT, HIDDEN, nonlinearity="relu", **kw),
}


class WithHead(torch.nn.Module):
    """A recurrent stack with a Linear head, taking and returning its state explicitly."""

    def __init__(self, recurrent, with_state):
        super().__init__()
        self.recurrent = recurrent
        self.with_state = with_state
        width = HIDDEN * (2 if recurrent.bidirectional else 1)
        self.head = torch.nn.Linear(width, OUTPUT)

    def forward(self, x, *state):
        if isinstance(self.recurrent, torch.nn.LSTM):
            y, (h, c) = self.recurrent(x, tuple(state) if state else None)
            return self.head(y), h, c
        y, h = self.recurrent(x, state[0] if state else None)
        return self.head(y), h


def export(module, args, input_names, opset, dynamic):
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buffer, dynamo=False, opset_version=opset,
                          input_names=input_names, dynamic_axes=dynamic)
    return buffer.getvalue()


def build(kind, *, layers=2, bidirectional=True, batch_first=True, head=True, with_state=True,
          opset=17, seed=0):
    torch.manual_seed(seed)
    recurrent = MODULES[kind](num_layers=layers, bidirectional=bidirectional,
                              batch_first=batch_first).eval()
    module = WithHead(recurrent, with_state).eval() if head else recurrent
    rows = layers * (2 if bidirectional else 1)
    x = torch.randn(2, 4, INPUT) if batch_first else torch.randn(4, 2, INPUT)
    batch_axis, time_axis = (0, 1) if batch_first else (1, 0)
    names, args = ["x"], [x]
    dynamic = {"x": {batch_axis: "batch", time_axis: "time"}}
    if with_state:
        names.append("h0")
        args.append(torch.randn(rows, 2, HIDDEN))
        dynamic["h0"] = {1: "batch"}
        if kind == "lstm":
            names.append("c0")
            args.append(torch.randn(rows, 2, HIDDEN))
            dynamic["c0"] = {1: "batch"}
    if head:
        call_args = tuple(args)
    else:
        state = None
        if with_state:
            state = tuple(args[1:]) if kind == "lstm" else args[1]
        call_args = (x, state) if with_state else (x,)
    return module, export(module, call_args, names, opset, dynamic), names


def feeds_for(names, kind, batch_first, rows, batch=3, steps=6, seed=1):
    rng = np.random.default_rng(seed)
    x_shape = (batch, steps, INPUT) if batch_first else (steps, batch, INPUT)
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    for name in names[1:]:
        feeds[name] = rng.standard_normal((rows, batch, HIDDEN)).astype(np.float32)
    return feeds


@pytest.mark.parametrize("kind", list(MODULES))
@pytest.mark.parametrize("layers, bidirectional, batch_first", [(2, True, True), (1, False, False),
                                                               (2, False, True)])
def test_exported_stack_with_head_matches_onnxruntime(kind, layers, bidirectional, batch_first):
    _, model, names = build(kind, layers=layers, bidirectional=bidirectional,
                            batch_first=batch_first)
    rows = layers * (2 if bidirectional else 1)
    feeds = feeds_for(names, kind, batch_first, rows)  # batch and time differ from the export's
    ours = fastrnn.InferenceSession(model).run(None, feeds)
    assert_outputs_close(ours, onnxruntime_session(model).run(None, feeds))


@pytest.mark.parametrize("opset", [9, 14, 22])
@pytest.mark.parametrize("with_state", [False, True])
def test_exported_opsets(opset, with_state):
    _, model, names = build("lstm", opset=opset, with_state=with_state)
    feeds = feeds_for(names, "lstm", True, 4)
    assert_outputs_close(fastrnn.InferenceSession(model).run(None, feeds),
                         onnxruntime_session(model).run(None, feeds))


@pytest.mark.parametrize("kind", list(MODULES))
@pytest.mark.parametrize("bidirectional, batch_first", [(True, True), (False, False)])
def test_from_onnx_matches_torch(kind, bidirectional, batch_first):
    module, model, names = build(kind, head=False, bidirectional=bidirectional,
                                 batch_first=batch_first, with_state=False)
    converted = fastrnn.from_onnx(model)
    assert isinstance(converted, fastrnn.Model)
    assert (converted.kind, converted.config.num_layers, converted.config.bidirectional,
            converted.config.batch_first) == (kind, 2, bidirectional, batch_first)
    feeds = feeds_for(names, kind, batch_first, 0)
    x = feeds["x"]
    rows = 2 * (2 if bidirectional else 1)
    rng = np.random.default_rng(5)
    h0 = rng.standard_normal((rows, 3, HIDDEN)).astype(np.float32)
    c0 = rng.standard_normal((rows, 3, HIDDEN)).astype(np.float32)
    state = (h0, c0) if kind == "lstm" else h0
    y, final = converted(x, state)
    with torch.no_grad():
        torch_state = (tuple(map(torch.from_numpy, state)) if kind == "lstm"
                       else torch.from_numpy(h0))
        expected_y, expected_state = module(torch.from_numpy(x), torch_state)
    np.testing.assert_allclose(y, expected_y.numpy(), atol=3e-5, rtol=0)
    expected_h = expected_state[0] if kind == "lstm" else expected_state
    np.testing.assert_allclose(final.h if kind == "lstm" else final, expected_h.numpy(),
                               atol=3e-5, rtol=0)
    if kind == "lstm":
        np.testing.assert_allclose(final.c, expected_state[1].numpy(), atol=3e-5, rtol=0)


def test_from_onnx_with_state_inputs():
    module, model, _ = build("gru", head=False, with_state=True)
    converted = fastrnn.from_onnx(model)
    x = np.random.default_rng(2).standard_normal((2, 3, INPUT)).astype(np.float32)
    with torch.no_grad():
        expected, _ = module(torch.from_numpy(x))
    np.testing.assert_allclose(converted(x)[0], expected.numpy(), atol=3e-5, rtol=0)


def test_from_onnx_refuses_a_head():
    _, model, _ = build("lstm", head=True)
    with pytest.raises(ValueError, match=r"MatMul|Gemm|Add.*InferenceSession"):
        fastrnn.from_onnx(model)


def test_opset_7_export_with_constantfill_matches_torch():
    # At opset 7 torch writes the zero initial state with ConstantFill, which onnxruntime no longer
    # runs; fastrnn does, so this one is held against torch itself.
    module, model, names = build("gru", opset=7, with_state=False)
    feeds = feeds_for(names, "gru", True, 4)
    ours = fastrnn.InferenceSession(model).run(None, feeds)[0]
    with torch.no_grad():
        expected = module(torch.from_numpy(feeds["x"]))[0].numpy()
    np.testing.assert_allclose(ours, expected, atol=3e-5, rtol=0)


def test_from_onnx_model_streams():
    module, model, _ = build("lstm", head=False, bidirectional=False, batch_first=False,
                             with_state=False)
    converted = fastrnn.from_onnx(model)
    x = np.random.default_rng(4).standard_normal((5, 2, INPUT)).astype(np.float32)
    y, _ = converted(x)
    stream = converted.stream(batch=2)
    for t in range(x.shape[0]):
        np.testing.assert_allclose(stream.step(x[t]), y[t], atol=1e-6, rtol=0)
