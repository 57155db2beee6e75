"""Whole models with convolution and normalization around a recurrent core, exported by
torch.onnx.export(..., dynamo=False) at opsets 14, 17 and 20: fastrnn.InferenceSession against
onnxruntime on the same file and inputs, float32, within 1e-4 of the largest |y|.

- CRNN: Conv2d + BatchNorm2d + ReLU + MaxPool2d twice, the feature map read as a sequence
  (width as time), a bidirectional GRU, a Linear head.
- Conv front end + LSTM: Conv1d over (B, C, T), ReLU, transpose to (B, T, C), LSTM, Linear,
  Sigmoid.
- Denoiser: LayerNorm over the bins, GRU, Linear, Sigmoid mask multiplied by the input.

torch folds each eval-mode BatchNorm into the Conv before it, so the CRNN's graph has none (the
op has single-node tests of its own); before opset 17 torch writes LayerNorm as ReduceMean, Sub,
Pow, Sqrt and Div.
"""

import functools
import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import fastrnn
from onnx_cases import onnxruntime_session

OPSETS = (14, 17, 20)
RELATIVE = 1e-4


class CRNN(nn.Module):
    def __init__(self, height=16, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d((2, 1)))
        self.gru = nn.GRU(16 * (height // 4), 32, bidirectional=True)
        self.head = nn.Linear(64, classes)

    def forward(self, x):                                    # x (B, 1, H, W)
        features = self.features(x)                          # (B, 16, H/4, W/2)
        batch, channels, height, width = features.shape
        sequence = features.permute(3, 0, 1, 2).reshape(width, batch, channels * height)
        y, _ = self.gru(sequence)                            # (W/2, B, 64)
        return self.head(y)


class ConvLSTM(nn.Module):
    def __init__(self, channels=12):
        super().__init__()
        self.conv = nn.Conv1d(channels, 24, 5, padding=2)
        self.lstm = nn.LSTM(24, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x):                                    # x (B, C, T)
        features = torch.relu(self.conv(x)).transpose(1, 2)  # (B, T, 24)
        y, _ = self.lstm(features)
        return torch.sigmoid(self.head(y))                   # (B, T, 1)


class Denoiser(nn.Module):
    def __init__(self, bins=16):
        super().__init__()
        self.norm = nn.LayerNorm(bins)
        self.gru = nn.GRU(bins, 24, batch_first=True)
        self.mask = nn.Linear(24, bins)

    def forward(self, x):                                    # x (B, T, F)
        y, _ = self.gru(self.norm(x))
        return torch.sigmoid(self.mask(y)) * x


def randomize_statistics(module, generator):
    """BatchNorm running statistics and LayerNorm affine parameters away from their defaults,
    so that folding them wrongly would show."""
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.running_mean.uniform_(-0.5, 0.5, generator=generator)
            layer.running_var.uniform_(0.5, 2.0, generator=generator)
            layer.weight.data.uniform_(0.5, 1.5, generator=generator)
            layer.bias.data.uniform_(-0.5, 0.5, generator=generator)
        if isinstance(layer, nn.LayerNorm):
            layer.weight.data.uniform_(0.5, 1.5, generator=generator)
            layer.bias.data.uniform_(-0.5, 0.5, generator=generator)


# name -> (module factory, input shape for batch b, the batch axis and any other dynamic axis)
MODELS = {
    "crnn": (CRNN, lambda batch: (batch, 1, 16, 20), {0: "batch", 3: "width"}),
    "conv_lstm": (ConvLSTM, lambda batch: (batch, 12, 30), {0: "batch", 2: "time"}),
    "denoiser": (Denoiser, lambda batch: (batch, 25, 16), {0: "batch", 1: "time"}),
}
# What fastrnn lacks for a model at an opset, if anything: that case is an expected failure.
MISSING = {}


@functools.lru_cache(maxsize=None)
def exported(name, opset):
    factory, shape, dynamic = MODELS[name]
    torch.manual_seed(0)
    module = factory()
    randomize_statistics(module, torch.Generator().manual_seed(1))
    module.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(shape(2)),), buffer, dynamo=False,
                          opset_version=opset, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": dynamic, "y": {0: "batch"}})
    return buffer.getvalue()


def cases():
    for name in MODELS:
        for opset in OPSETS:
            reason = MISSING.get((name, opset))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            yield pytest.param(name, opset, marks=marks, id=f"{name}-opset{opset}")


@pytest.mark.parametrize("name, opset", list(cases()))
def test_model_matches_onnxruntime(name, opset):
    model = exported(name, opset)
    session, peer = fastrnn.InferenceSession(model), onnxruntime_session(model)
    _, shape, _ = MODELS[name]
    rng = np.random.default_rng(opset)
    for batch in (2, 3, 1):   # the export's batch and others: geometry and buffers per shape
        x = rng.standard_normal(shape(batch)).astype(np.float32)
        (ours,), (theirs,) = session.run(None, {"x": x}), peer.run(None, {"x": x})
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
        scale = max(1.0, float(np.max(np.abs(theirs))))
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=RELATIVE * scale)


def test_crnn_graph_holds_the_spatial_ops():
    # The CRNN case exercises Conv and MaxPool in a whole graph (its BatchNorms folded by torch).
    import onnx
    ops = {node.op_type for node in onnx.load_from_string(exported("crnn", 17)).graph.node}
    assert {"Conv", "MaxPool", "Relu", "GRU"} <= ops
    ops = {node.op_type for node in onnx.load_from_string(exported("denoiser", 17)).graph.node}
    assert "LayerNormalization" in ops
