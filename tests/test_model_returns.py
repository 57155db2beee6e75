"""model(x) answers as torch does: the same structure (an LSTM's (h, c), a GRU's or RNN's h
alone) and, for a torch tensor x, torch tensors over fastrnn's results (no copy)."""

import numpy as np
import pytest
import torch

import fastrnn
from fastrnn import State

STEPS, BATCH, INPUT, HIDDEN, LAYERS = 5, 3, 4, 6, 2
TORCH_MODULES = {
    "lstm": lambda **options: torch.nn.LSTM(INPUT, HIDDEN, num_layers=LAYERS, **options),
    "gru": lambda **options: torch.nn.GRU(INPUT, HIDDEN, num_layers=LAYERS, **options),
    "rnn_tanh": lambda **options: torch.nn.RNN(INPUT, HIDDEN, num_layers=LAYERS, **options),
    "rnn_relu": lambda **options: torch.nn.RNN(INPUT, HIDDEN, num_layers=LAYERS,
                                               nonlinearity="relu", **options),
}


def make_pair(kind, **options):
    """(kind, torch module, fastrnn model converted from it)."""
    torch.manual_seed(0)
    module = TORCH_MODULES[kind](**options).eval()
    return kind, module, fastrnn.from_torch(module)


@pytest.fixture(scope="module", params=list(TORCH_MODULES))
def pair(request):
    return make_pair(request.param)


def sequence(shape=(STEPS, BATCH, INPUT), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def as_arrays(state):
    """The arrays of a torch-shaped state: (h, c) for an LSTM, (h,) otherwise."""
    return tuple(state) if isinstance(state, tuple) else (state,)


def test_numpy_input_gives_what_torch_gives(pair):
    kind, module, model = pair
    x = sequence()
    y, state = model(x)
    with torch.no_grad():
        torch_y, torch_state = module(torch.from_numpy(x))
    assert type(y) is np.ndarray and y.shape == tuple(torch_y.shape)
    if kind == "lstm":
        assert type(state) is State and isinstance(torch_state, tuple)
        h, c = state  # unpacks as torch's (h_n, c_n)
        assert h is state.h and c is state.c
        assert c.shape == tuple(torch_state[1].shape) == (LAYERS, BATCH, HIDDEN)
    else:
        assert type(state) is np.ndarray and isinstance(torch_state, torch.Tensor)
    assert len(as_arrays(state)) == len(as_arrays(torch_state))
    for ours, theirs in zip((y,) + as_arrays(state), (torch_y,) + as_arrays(torch_state)):
        assert type(ours) is np.ndarray and ours.dtype == np.float32
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=0, atol=3e-5)


def test_torch_input_gives_torch_tensors_equal_to_the_numpy_answer(pair):
    kind, module, model = pair
    x = sequence()
    y, state = model(x)
    y_t, state_t = model(torch.from_numpy(x))
    assert type(y_t) is torch.Tensor and y_t.dtype == torch.float32
    if kind == "lstm":
        assert type(state_t) is State and type(state_t.h) is torch.Tensor
        assert type(state_t.c) is torch.Tensor
    else:
        assert type(state_t) is torch.Tensor
    for ours_t, ours in zip((y_t,) + as_arrays(state_t), (y,) + as_arrays(state)):
        assert type(ours_t) is torch.Tensor
        np.testing.assert_array_equal(ours_t.numpy(), ours)


@pytest.mark.parametrize("kind", list(TORCH_MODULES))
def test_unbatched_and_batch_first_torch_inputs(kind):
    _, _, model = make_pair(kind, batch_first=True)
    x = sequence((BATCH, STEPS, INPUT))
    y, state = model(torch.from_numpy(x))
    assert type(y) is torch.Tensor and tuple(y.shape) == (BATCH, STEPS, HIDDEN)
    assert all(type(a) is torch.Tensor and tuple(a.shape) == (LAYERS, BATCH, HIDDEN)
               for a in as_arrays(state))
    y1, state1 = model(torch.from_numpy(x[0]))   # (T, I): one sequence, as torch takes it
    assert type(y1) is torch.Tensor and tuple(y1.shape) == (STEPS, HIDDEN)
    assert type(state1) is (State if kind == "lstm" else torch.Tensor)
    for whole, alone in zip(as_arrays(state), as_arrays(state1)):
        assert type(alone) is torch.Tensor and tuple(alone.shape) == (LAYERS, HIDDEN)
        np.testing.assert_allclose(alone.numpy(), whole[:, 0].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(y1.numpy(), y[0].numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("as_input", [np.asarray, torch.from_numpy], ids=["numpy", "torch"])
def test_returned_state_continues_the_sequence(pair, as_input):
    """The state model(x) returns is what state= takes back, numpy or torch."""
    _, _, model = pair
    x = sequence()
    y, _ = model(x)
    y_head, state = model(as_input(x[:2]))
    y_tail, _ = model(as_input(x[2:]), state=state)
    np.testing.assert_allclose(np.concatenate([np.asarray(y_head), np.asarray(y_tail)]), y,
                               rtol=0, atol=1e-6)


def test_float64_torch_input_to_a_float64_model():
    module = torch.nn.GRU(INPUT, HIDDEN).double().eval()
    model = fastrnn.from_torch(module)
    x = torch.from_numpy(sequence().astype(np.float64))
    y, h = model(x)
    with torch.no_grad():
        torch_y, torch_h = module(x)
    assert y.dtype == h.dtype == torch.float64
    np.testing.assert_allclose(y.numpy(), torch_y.numpy(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(h.numpy(), torch_h.numpy(), rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("unbatched", [False, True])
def test_torch_results_share_memory_with_the_kernels_arrays(kind, unbatched):
    """No copy on the way out: the tensors are views of the arrays the kernels wrote."""
    model = fastrnn.from_numpy(kind, [{
        "w_ih": np.zeros((4 * HIDDEN if kind == "lstm" else 3 * HIDDEN, INPUT), np.float32),
        "w_hh": np.zeros((4 * HIDDEN if kind == "lstm" else 3 * HIDDEN, HIDDEN), np.float32)}])
    y = np.zeros((STEPS, 1, HIDDEN), np.float32)
    h = np.zeros((1, 1, HIDDEN), np.float32)
    c = np.zeros((1, 1, HIDDEN if kind == "lstm" else 0), np.float32)
    y_t, state_t = model._package(y, h, c, unbatched, as_torch=True)
    y_n, state_n = model._package(y, h, c, unbatched)
    for tensor, array in zip((y_t,) + as_arrays(state_t), (y_n,) + as_arrays(state_n)):
        assert type(tensor) is torch.Tensor and tuple(tensor.shape) == array.shape
        assert np.shares_memory(tensor.numpy(), array)
    assert np.shares_memory(y_t.numpy(), y) and np.shares_memory(as_arrays(state_t)[0].numpy(), h)
