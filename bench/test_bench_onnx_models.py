"""fastrnn.InferenceSession beside onnxruntime.InferenceSession on whole models with a
convolution front end, each exported once by torch.onnx.export (dynamo=False, opset 17) from a
seeded module; both engines load the same file.

- CRNN (text-line recogniser shape): Conv2d(1, 32, 3) + BatchNorm2d + ReLU + MaxPool2d(2),
  Conv2d(32, 64, 3) + BatchNorm2d + ReLU + MaxPool2d((2, 1)), the (B, 64, 8, 64) map read as 64
  steps of 512 features, a bidirectional GRU (H=128), Linear(256, 40). Input (B, 1, 32, 128),
  one whole sequence per call, at batch 1 and 16.
- Conv front end + LSTM (streaming detector shape): Conv1d(40, 64, 5, padding 2) over a chunk of
  50 frames (B=1), ReLU, LSTM(64, 128), Linear(128, 1), Sigmoid; one chunk per call.

Each engine's answer is compared with the module run in float64 by torch before the engines are
timed in interleaved rounds (registry.measured); speed is recorded, never asserted.
"""

import functools
import io
import warnings

import numpy as np
import pytest

from registry import Entrant, report_case

ENGINES = ("fastrnn", "onnxruntime")
RELATIVE = 1e-4         # float32 answers within this of the float64 reference's largest |y|
CRNN_SHAPE = (1, 32, 128)
CHUNK = (40, 50)        # (features, frames) of one conv + LSTM chunk


def crnn_module():
    import torch
    from torch import nn

    class CRNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                nn.MaxPool2d((2, 1)))
            self.gru = nn.GRU(64 * 8, 128, bidirectional=True)
            self.head = nn.Linear(256, 40)

        def forward(self, x):
            features = self.features(x)
            batch, channels, height, width = features.shape
            y, _ = self.gru(features.permute(3, 0, 1, 2).reshape(width, batch, channels * height))
            return self.head(y)

    torch.manual_seed(0)
    return CRNN()


def conv_lstm_module():
    import torch
    from torch import nn

    class ConvLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(CHUNK[0], 64, 5, padding=2)
            self.lstm = nn.LSTM(64, 128, batch_first=True)
            self.head = nn.Linear(128, 1)

        def forward(self, x):
            y, _ = self.lstm(torch.relu(self.conv(x)).transpose(1, 2))
            return torch.sigmoid(self.head(y))

    torch.manual_seed(0)
    return ConvLSTM()


MODULES = {"crnn": crnn_module, "conv_lstm": conv_lstm_module}


@functools.lru_cache(maxsize=None)
def model_bytes_and_module(name):
    import torch
    module = MODULES[name]().eval()
    shape = (2, *CRNN_SHAPE) if name == "crnn" else (1, *CHUNK)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(shape),), buffer, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return buffer.getvalue(), module


def session(engine, model):
    if engine == "fastrnn":
        import fastrnn
        return fastrnn.InferenceSession(model)
    import onnxruntime
    return onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])


def entrants(name, x, info):
    def build(engines):
        import torch
        model, module = model_bytes_and_module(name)
        with torch.no_grad():
            reference = module.double()(torch.from_numpy(x.astype(np.float64))).numpy()
            module.float()
        scale = max(1.0, float(np.max(np.abs(reference))))
        built = {}
        for engine in engines:
            runner = session(engine, model)
            y = runner.run(None, {"x": x})[0]                 # also the warm-up
            error = float(np.max(np.abs(y.astype(np.float64) - reference)))
            built[engine] = Entrant(lambda runner=runner: runner.run(None, {"x": x}),
                                    {"engine": engine, "correct": error <= RELATIVE * scale,
                                     "max_abs_error": error, "api": "InferenceSession.run",
                                     **info}, [runner])
        return built
    return build


@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("engine", ENGINES)
def test_crnn_sequence(benchmark, engine, batch):
    x = np.random.default_rng(1).standard_normal((batch, *CRNN_SHAPE)).astype(np.float32)
    info = {"workload": "sequence", "kind": "crnn", "batch": batch, "steps": CRNN_SHAPE[2] // 2,
            "input_size": 512, "hidden_size": 128, "bidirectional": True}
    group = f"onnx crnn seq B={batch} in=1x32x128 GRU H=128 bi"
    report_case(benchmark, group, engine, entrants("crnn", x, info), ENGINES, benchmark.enabled)


@pytest.mark.parametrize("engine", ENGINES)
def test_conv_lstm_chunk(benchmark, engine):
    x = np.random.default_rng(2).standard_normal((1, *CHUNK)).astype(np.float32)
    info = {"workload": "chunk", "kind": "conv+lstm", "batch": 1, "steps": CHUNK[1],
            "steps_per_call": CHUNK[1], "input_size": 64, "hidden_size": 128}
    group = f"onnx conv1d+lstm chunk T={CHUNK[1]} B=1 C={CHUNK[0]} H=128"
    report_case(benchmark, group, engine, entrants("conv_lstm", x, info), ENGINES,
                benchmark.enabled)
