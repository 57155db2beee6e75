"""CudaModel against the CPU Model (and float64 against the numpy reference): every cell, option,
activation and layout, with lengths, initial states, layers, both directions, several blocks.

Sizes are small and blocks tiny (2 threads for 5 hidden units, 4x4 matmul tiles) so that the
simulator runs every path of the kernels: strided units, several blocks per launch, partial tiles.
"""

import numpy as np
import pytest

import fastrnn
import reference
from fastrnn.cuda import CudaModel, to_cuda

FLOAT32_TOLERANCE = 1e-5   # the CUDA target against the CPU engine, float32
FLOAT64_TOLERANCE = 1e-9
SMALL = dict(threads_per_block=2, tile=4)
I, H, T, B = 3, 5, 4, 3


def build(kind, *, num_layers=1, bidirectional=False, proj_size=0, peephole=False, dtype=np.float32,
          seed=0, **options):
    """(CPU model, its float64 weights) from random weights in fastrnn's layout."""
    layers = reference.random_layers(kind, I, H, num_layers=num_layers, bidirectional=bidirectional,
                                     proj_size=proj_size, peephole=peephole, scale=1.5, seed=seed)
    model = fastrnn.from_numpy(kind, reference.cast_layers(layers, dtype),
                               bidirectional=bidirectional, dtype=dtype, **options)
    return model, layers


def tolerance(dtype):
    return FLOAT32_TOLERANCE if np.dtype(dtype) == np.float32 else FLOAT64_TOLERANCE


CASES = {
    "lstm-bidirectional-2layers-lengths": dict(
        build=dict(kind="lstm", num_layers=2, bidirectional=True), lengths=[4, 2, 3]),
    "lstm-proj-peephole-clip-state-batch_first-f64": dict(
        build=dict(kind="lstm", num_layers=2, proj_size=3, peephole=True, clip=0.8,
                   batch_first=True, dtype=np.float64), state=True, lengths=[1, 4, 3]),
    "lstm-input_forget-onnx-activations-bidirectional": dict(
        build=dict(kind="lstm", bidirectional=True, input_forget=True, activations=(
            ("HardSigmoid", 0.3, 0.4), ("ScaledTanh", 0.9, 1.1), ("Elu", 0.7, 0.0),
            ("Sigmoid", 0.0, 0.0), ("Softsign", 0.0, 0.0), ("Softplus", 0.0, 0.0))),
        state=True),
    "gru-bidirectional-lengths-state": dict(
        build=dict(kind="gru", bidirectional=True), lengths=[2, 4, 1], state=True),
    # The recurrence split into a launch per timestep, and into windows of 3 steps (4 = 3 + 1).
    "gru-bidirectional-lengths-state-launch-per-step": dict(
        build=dict(kind="gru", bidirectional=True), lengths=[2, 4, 1], state=True,
        steps_per_launch=1),
    "lstm-proj-2layers-lengths-windows-of-3": dict(
        build=dict(kind="lstm", num_layers=2, proj_size=3, bidirectional=True),
        lengths=[4, 3, 1], steps_per_launch=3),
    "gru-reset-before-2layers-clip-activations-f64": dict(
        build=dict(kind="gru", num_layers=2, linear_before_reset=False, clip=0.6, dtype=np.float64,
                   activations=(("HardSigmoid", 0.25, 0.5), ("Affine", 0.8, 0.1))), state=True),
    "rnn_relu-bidirectional-2layers-lengths": dict(
        build=dict(kind="rnn_relu", num_layers=2, bidirectional=True), lengths=[3, 1, 4]),
    "rnn-thresholded-leaky-f64": dict(
        build=dict(kind="rnn_tanh", bidirectional=True, dtype=np.float64,
                   activations=(("ThresholdedRelu", 0.1, 0.0), ("LeakyRelu", 0.2, 0.0)))),
}


@pytest.mark.parametrize("name", list(CASES))
def test_sequence_matches_cpu(name):
    case = CASES[name]
    options = dict(case["build"])
    model, layers = build(**options)
    gpu = to_cuda(model, **SMALL, steps_per_launch=case.get("steps_per_launch"))
    rng = np.random.default_rng(7)
    x = rng.normal(size=(B, T, I) if model.config.batch_first else (T, B, I))
    state = None
    if case.get("state"):
        h_shape, c_shape = model.state_shapes(B)
        state = (rng.normal(size=h_shape), rng.normal(size=c_shape)) if c_shape else \
            rng.normal(size=h_shape)
    lengths = case.get("lengths")
    y_cpu, state_cpu = model(x, state, lengths)
    y_gpu, state_gpu = gpu(x, state, lengths)
    tol = tolerance(model.dtype)
    assert y_gpu.dtype == model.dtype and y_gpu.shape == y_cpu.shape
    np.testing.assert_allclose(y_gpu, y_cpu, rtol=0, atol=tol)
    if model.kind == "lstm":
        (h_gpu, c_gpu), (_, c_cpu) = state_gpu, state_cpu
        np.testing.assert_allclose(c_gpu, c_cpu, rtol=0, atol=tol)
        h_cpu = state_cpu.h
    else:
        h_gpu, h_cpu = state_gpu, state_cpu
        assert type(h_gpu) is np.ndarray   # h alone, as the CPU model (and torch) return it
    np.testing.assert_allclose(h_gpu, h_cpu, rtol=0, atol=tol)
    if lengths is not None:  # padding is zero, not left over from another step
        for row, length in enumerate(lengths):
            padded = y_gpu[row, length:] if model.config.batch_first else y_gpu[length:, row]
            assert not padded.any()
    if model.dtype == np.float64:  # and independently of the CPU engine
        h0, c0 = (None, None) if state is None else (state if isinstance(state, tuple)
                                                     else (state, None))
        flags = {k: options[k] for k in ("clip", "input_forget", "linear_before_reset",
                                         "activations", "batch_first") if k in options}
        y_ref, h_ref, c_ref = reference.run_model(
            model.kind, layers, x,
            bidirectional=options.get("bidirectional", False), lengths=lengths, h0=h0, c0=c0,
            **flags)
        np.testing.assert_allclose(y_gpu, y_ref, rtol=0, atol=FLOAT64_TOLERANCE)
        np.testing.assert_allclose(h_gpu, h_ref, rtol=0, atol=FLOAT64_TOLERANCE)


def test_model_to_cuda_with_defaults_unbatched_and_nan():
    model, _ = build("lstm", num_layers=2)
    gpu = model.to("cuda")
    assert isinstance(gpu, CudaModel) and gpu.device == "cuda"
    rng = np.random.default_rng(3)
    x = rng.normal(size=(T, I)).astype(np.float32)
    h0 = rng.normal(size=(2, H)).astype(np.float32)
    c0 = rng.normal(size=(2, H)).astype(np.float32)
    y_cpu, (h_cpu, c_cpu) = model(x, (h0, c0))
    y_gpu, (h_gpu, c_gpu) = gpu(x, (h0, c0))
    assert y_gpu.shape == (T, H) and h_gpu.shape == (2, H)
    for got, want in ((y_gpu, y_cpu), (h_gpu, h_cpu), (c_gpu, c_cpu)):
        np.testing.assert_allclose(got, want, rtol=0, atol=FLOAT32_TOLERANCE)
    # NaN in one row reaches that row's outputs and no other row's.
    batch = np.stack([x, x], axis=1)
    batch[1, 0, 0] = np.nan
    y, state = gpu(batch)
    assert np.isnan(y[1:, 0]).all() and not np.isnan(y[:1, 0]).any()
    np.testing.assert_allclose(y[:, 1], model(x)[0], rtol=0, atol=FLOAT32_TOLERANCE)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_torch_input_gives_torch_tensors_as_the_cpu_model_does(kind):
    torch = pytest.importorskip("torch")
    model, _ = build(kind)
    gpu = to_cuda(model, **SMALL)
    x = torch.from_numpy(np.random.default_rng(4).normal(size=(T, B, I)).astype(np.float32))
    (y_cpu, state_cpu), (y_gpu, state_gpu) = model(x), gpu(x)
    assert type(y_gpu) is torch.Tensor and type(state_gpu) is type(state_cpu)
    cpu_arrays = tuple(state_cpu) if kind == "lstm" else (state_cpu,)
    gpu_arrays = tuple(state_gpu) if kind == "lstm" else (state_gpu,)
    for got, want in zip((y_gpu,) + gpu_arrays, (y_cpu,) + cpu_arrays):
        assert type(got) is torch.Tensor and got.device.type == "cpu"   # results on the host
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=FLOAT32_TOLERANCE)


def test_description_and_devices(tmp_path):
    model, _ = build("gru", num_layers=2, dtype=np.float64)
    gpu = to_cuda(model, **SMALL)
    assert gpu.to("cpu") is model and gpu.to("cuda") is gpu and gpu.to("cuda:0") is gpu
    assert gpu.device == "cuda" and model.device == "cpu"
    for name in ("config", "dtype", "kind", "input_size", "hidden_size", "output_size",
                 "num_parameters", "layers"):
        assert getattr(gpu, name) == getattr(model, name) or getattr(gpu, name) is \
            getattr(model, name), name
    assert "device='cuda:0'" in repr(gpu) and "gru" in repr(gpu)
    assert gpu.state_shapes(2) == model.state_shapes(2)
    gpu.save(tmp_path / "m.fastrnn")
    assert fastrnn.load(tmp_path / "m.fastrnn").config == model.config
    assert to_cuda(gpu).to("cpu") is model  # a CUDA model passed in means its CPU model


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "cuda0"])
def test_bad_device_string(device):
    model, _ = build("rnn_tanh")
    with pytest.raises(ValueError, match="device must be"):
        model.to(device)


def test_bad_options_and_objects():
    model, _ = build("rnn_tanh")
    for options in (dict(threads_per_block=0), dict(threads_per_block=2048), dict(tile=0),
                    dict(tile=64), dict(threads_per_block=True), dict(steps_per_launch=0)):
        with pytest.raises(ValueError):
            to_cuda(model, **options)
    with pytest.raises(TypeError, match="fastrnn.Model"):
        to_cuda("not a model")


@pytest.fixture(scope="module")
def rnn_pair():
    """A small CPU model and its CUDA twin, shared by the refusal cases (nothing runs on them)."""
    model, _ = build("rnn_tanh")
    return model, to_cuda(model, **SMALL)


def refusal(call):
    try:
        call()
    except (TypeError, ValueError) as error:
        return type(error), str(error)
    raise AssertionError("no error")


@pytest.mark.parametrize("bad", [
    dict(x=np.zeros((T, B, I + 1))),                      # wrong feature count
    dict(x=np.zeros((T, B, I), np.int64)),                 # not floating
    dict(x=np.zeros((B, I))[None, None]),                  # 4-D
    dict(x=np.zeros((0, B, I))),                           # no time steps
    dict(lengths=[1, 2]),                                  # one length missing
    dict(lengths=[0, 2, 3]),                               # a length out of range
    dict(lengths=[1.0, 2.0, 3.0]),                         # not integers
    dict(state=(np.zeros((1, B, H)), np.zeros((1, B, H)))),  # an RNN state has no c
    dict(state=np.zeros((1, B + 1, H))),                   # wrong batch
])
def test_refusals_are_the_cpu_models(bad, rnn_pair):
    model, gpu = rnn_pair
    arguments = dict(x=np.zeros((T, B, I)), state=None, lengths=None) | bad
    assert refusal(lambda: gpu(**arguments)) == refusal(lambda: model(**arguments))


def test_a_device_that_cannot_run_the_kernels_fails_at_to(monkeypatch):
    from fastrnn.cuda import CudaUnavailableError, driver

    def broken(*args, **kwargs):
        raise RuntimeError("libNVVM cannot be found")

    monkeypatch.setattr(driver, "run_sequence", broken)
    model, _ = build("rnn_tanh")
    with pytest.raises(CudaUnavailableError, match="could not compile or run.*libNVVM"):
        model.to("cuda")


def test_an_empty_batch_launches_nothing_and_matches_the_cpu(rnn_pair):
    model, gpu = rnn_pair
    x = np.zeros((T, 0, I), np.float32)
    (y_cpu, state_cpu), (y_gpu, state_gpu) = model(x), gpu(x)
    assert y_gpu.shape == y_cpu.shape == (T, 0, H)
    assert state_gpu.shape == state_cpu.shape == (1, 0, H)   # an RNN's state: h alone
