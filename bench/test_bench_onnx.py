"""fastrnn.InferenceSession beside onnxruntime.InferenceSession and OpenVINO (float32 precision
hint) on the same ONNX file.

Two workloads on an LSTM exported by torch.onnx.export (dynamo=False) from the seeded module of a
ModelSpec (bench/registry.py), I=64, H=128, B=1:
- one timestep per call, the state fed in as inputs (h0, c0) and taken back from the outputs, as a
  streaming service runs an ONNX model;
- a 1000-step sequence in one call.
Each engine's answer is compared with the float64 torch reference before the engines are timed in
interleaved rounds (registry.measured).
"""

import functools
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

from registry import Entrant, ModelSpec, OpenVinoSession, report_case

ENGINES = ("fastrnn", "onnxruntime", "openvino")
STEP = ModelSpec("lstm", input_size=64, hidden_size=128, steps=1, batch=1)
SEQUENCE = ModelSpec("lstm", input_size=64, hidden_size=128, steps=1000, batch=1)
CHECKED_STEPS = 50          # steps of the step workload compared with the reference
TOLERANCE = 3e-5            # DESIGN.md's float32 bound against the float64 reference


@functools.lru_cache(maxsize=None)
def onnx_file(spec, with_state):
    """The spec's torch module exported once per workload; both engines load this same file."""
    import torch
    folder = Path(tempfile.mkdtemp(prefix="fastrnn-bench-onnx-"))
    path = folder / "model.onnx"
    module = spec.torch_module()
    x = torch.from_numpy(spec.input())
    shape = (spec.num_layers, spec.batch, spec.hidden_size)
    args = (x, (torch.zeros(shape), torch.zeros(shape))) if with_state else (x,)
    names = ["x", "h0", "c0"] if with_state else ["x"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=17,
                          input_names=names, output_names=["y", "h_n", "c_n"])
    return str(path)


def session(engine, path):
    if engine == "fastrnn":
        import fastrnn
        return fastrnn.InferenceSession(path)
    if engine == "openvino":
        return OpenVinoSession(path)
    import onnxruntime
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])


@functools.lru_cache(maxsize=None)
def step_inputs_and_reference():
    """CHECKED_STEPS inputs (T, 1, 64) and the float64 reference outputs of running them in turn."""
    spec = ModelSpec("lstm", input_size=64, hidden_size=128, steps=CHECKED_STEPS, batch=1)
    x = spec.input()
    return x, spec.reference(x)


def run_steps(runner, xs, h, c):
    """Feed xs one step at a time, the state carried through the graph's inputs and outputs."""
    ys = []
    for x_t in xs:
        y, h, c = runner.run(None, {"x": x_t[None], "h0": h, "c0": c})
        ys.append(y[0])
    return np.stack(ys)


def step_entrants(engines):
    xs, reference = step_inputs_and_reference()
    zeros = np.zeros((1, 1, STEP.hidden_size), np.float32)
    built = {}
    for engine in engines:
        runner = session(engine, onnx_file(STEP, with_state=True))
        answer = run_steps(runner, xs, zeros, zeros)      # also the warm-up (JIT, first touch)
        error = float(np.max(np.abs(answer.astype(np.float64) - reference)))
        info = {"engine": engine, "correct": error <= TOLERANCE, "max_abs_error": error,
                "workload": "step", "api": "InferenceSession.run", **STEP.info()}
        state = {"x": xs[0][None], "h0": zeros, "c0": zeros}

        def one_step(runner=runner, state=state):
            _, state["h0"], state["c0"] = runner.run(None, state)

        built[engine] = Entrant(one_step, info, [runner])
    return built


def sequence_entrants(engines):
    x = SEQUENCE.input()
    reference = SEQUENCE.reference(x)
    built = {}
    for engine in engines:
        runner = session(engine, onnx_file(SEQUENCE, with_state=False))
        y = runner.run(["y"], {"x": x})[0]                 # also the warm-up
        error = float(np.max(np.abs(y.astype(np.float64) - reference)))
        info = {"engine": engine, "correct": error <= TOLERANCE, "max_abs_error": error,
                "workload": "sequence", "api": "InferenceSession.run", **SEQUENCE.info()}
        built[engine] = Entrant(lambda runner=runner: runner.run(["y"], {"x": x}), info, [runner])
    return built


@pytest.mark.parametrize("engine", ENGINES)
def test_single_step(benchmark, engine):
    report_case(benchmark, STEP.workload_id("onnx step"), engine, step_entrants, ENGINES,
                benchmark.enabled)


@pytest.mark.parametrize("engine", ENGINES)
def test_sequence(benchmark, engine):
    report_case(benchmark, SEQUENCE.workload_id("onnx seq"), engine, sequence_entrants, ENGINES,
                benchmark.enabled)
