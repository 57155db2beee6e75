"""LSTM, GRU and RNN nodes built with onnx.helper: fastrnn.InferenceSession against onnxruntime
(and onnx.reference.ReferenceEvaluator where onnxruntime refuses), 2e-5 absolute."""

import numpy as np
import pytest
from onnx.reference import ReferenceEvaluator

import fastrnn
from onnx_cases import (assert_outputs_close, onnxruntime_session, random_feeds,
                        recurrent_graph)

OPS = ("LSTM", "GRU", "RNN")
DIRECTIONS = ("forward", "reverse", "bidirectional")


def compare_with_onnxruntime(model, feeds=None, tolerance=2e-5):
    feeds = random_feeds(model) if feeds is None else feeds
    ours = fastrnn.InferenceSession(model).run(None, feeds)
    theirs = onnxruntime_session(model).run(None, feeds)
    assert_outputs_close(ours, theirs, tolerance)
    return ours


@pytest.mark.parametrize("initial_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("sequence_lens", [False, True], ids=["full", "lens"])
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("op_type", OPS)
def test_directions_lengths_and_states(op_type, direction, sequence_lens, initial_state):
    model = recurrent_graph(op_type, direction=direction, sequence_lens=sequence_lens,
                            initial_state=initial_state)
    compare_with_onnxruntime(model)


@pytest.mark.parametrize("op_type", OPS)
@pytest.mark.parametrize("opset", [7, 14, 22])
def test_opsets(op_type, opset):
    compare_with_onnxruntime(recurrent_graph(op_type, opset=opset, direction="bidirectional",
                                             initial_state=True))


# Every one of the eleven activations appears, with and without explicit alpha/beta.
ACTIVATION_CASES = {
    "LSTM": [
        dict(activations=["HardSigmoid", "Tanh", "Softsign"]),
        dict(activations=["Sigmoid", "LeakyRelu", "Elu"]),
        dict(activations=["HardSigmoid", "ScaledTanh", "Affine"], activation_alpha=[0.3, 0.9, 0.5],
             activation_beta=[0.4, 1.3, 0.1]),
        dict(activations=["Sigmoid", "Softplus", "ThresholdedRelu"], activation_alpha=[0.2]),
        dict(activations=["Sigmoid", "Tanh", "Tanh", "HardSigmoid", "Elu", "LeakyRelu"],
             activation_alpha=[0.25, 0.5, 0.2], direction="bidirectional"),
    ],
    "GRU": [
        dict(activations=["Sigmoid", "Relu"]),
        dict(activations=["HardSigmoid", "ScaledTanh"], activation_alpha=[0.3, 1.5],
             activation_beta=[0.6, 0.7]),
        dict(activations=["Sigmoid", "Tanh", "HardSigmoid", "Softsign"], direction="bidirectional"),
    ],
    "RNN": [
        dict(activations=["Relu"]),
        dict(activations=["Affine"], activation_alpha=[0.7], activation_beta=[0.2]),
        dict(activations=["LeakyRelu"]),
        dict(activations=["ThresholdedRelu"], activation_alpha=[0.3]),
        dict(activations=["Elu"], activation_alpha=[0.5]),
        dict(activations=["Softplus"]),
        dict(activations=["ScaledTanh", "Sigmoid"], activation_alpha=[1.7], activation_beta=[0.4],
             direction="bidirectional"),
    ],
}


@pytest.mark.parametrize("op_type, attributes", [(op, case) for op, cases in
                                                 ACTIVATION_CASES.items() for case in cases])
def test_activations(op_type, attributes):
    compare_with_onnxruntime(recurrent_graph(op_type, sequence_lens=True, initial_state=True,
                                             **attributes))


@pytest.mark.parametrize("activation", ["Affine", "ThresholdedRelu", "ScaledTanh", "LeakyRelu",
                                        "HardSigmoid", "Elu"])
def test_default_alpha_beta_follow_onnxruntime(activation):
    # The inputs are scaled so that the defaults matter (ThresholdedRelu's threshold, ...).
    model = recurrent_graph("RNN", activations=[activation], scale=1.5, initial_state=True)
    compare_with_onnxruntime(model)


@pytest.mark.parametrize("op_type", OPS)
def test_clip(op_type):
    compare_with_onnxruntime(recurrent_graph(op_type, clip=0.5, scale=1.5, sequence_lens=True,
                                             direction="bidirectional", initial_state=True))


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_lstm_input_forget_and_peepholes(direction):
    compare_with_onnxruntime(recurrent_graph("LSTM", direction=direction, peephole=True,
                                             input_forget=1, sequence_lens=True,
                                             initial_state=True))
    compare_with_onnxruntime(recurrent_graph("LSTM", direction=direction, peephole=True,
                                             initial_state=True))


@pytest.mark.parametrize("linear_before_reset", [0, 1])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_gru_linear_before_reset(direction, linear_before_reset):
    compare_with_onnxruntime(recurrent_graph("GRU", direction=direction, initial_state=True,
                                             sequence_lens=True,
                                             linear_before_reset=linear_before_reset))


@pytest.mark.parametrize("op_type", OPS)
def test_without_bias(op_type):
    compare_with_onnxruntime(recurrent_graph(op_type, bias=False, direction="bidirectional"))


@pytest.mark.parametrize("outputs", [("Y",), ("Y_h",), ("Y_c",), ("Y", "Y_c"), ("Y_h", "Y_c")])
def test_any_subset_of_outputs(outputs):
    model = recurrent_graph("LSTM", outputs=outputs, direction="bidirectional", initial_state=True)
    results = compare_with_onnxruntime(model)
    assert len(results) == len(outputs)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("op_type", OPS)
def test_zero_sequence_length_matches_onnxruntime(op_type, direction):
    # onnxruntime gives a row of length 0 zero outputs and zero Y_h/Y_c (not its initial state).
    model = recurrent_graph(op_type, direction=direction, sequence_lens=True, initial_state=True)
    feeds = random_feeds(model, zero_length_rows=[1])
    results = compare_with_onnxruntime(model, feeds)
    assert not results[1][:, 1].any()


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("op_type", OPS)
def test_single_step(op_type, direction):
    # T=1 takes the streaming step kernel for one direction; lens of 1 keep it there.
    compare_with_onnxruntime(recurrent_graph(op_type, steps=1, direction=direction,
                                             initial_state=True))
    compare_with_onnxruntime(recurrent_graph(op_type, steps=1, direction=direction,
                                             initial_state=True, sequence_lens=True))


def test_single_steps_fed_back_equal_the_whole_sequence():
    steps = 6
    whole = recurrent_graph("LSTM", steps=steps, batch=2, initial_state=True, seed=3)
    one = recurrent_graph("LSTM", steps=1, batch=2, initial_state=True, seed=3)
    feeds = random_feeds(whole)
    y, h, c = fastrnn.InferenceSession(whole).run(None, feeds)
    session = fastrnn.InferenceSession(one)
    reference = onnxruntime_session(one)
    state = {"h0": feeds["h0"], "c0": feeds["c0"]}
    for t in range(steps):
        step_feeds = {"X": feeds["X"][t:t + 1], **state}
        y_t, h_t, c_t = session.run(None, step_feeds)
        assert_outputs_close([y_t, h_t, c_t], reference.run(None, step_feeds))
        np.testing.assert_allclose(y_t[0], y[t], atol=1e-6, rtol=0)
        state = {"h0": h_t, "c0": c_t}
    np.testing.assert_allclose(state["h0"], h, atol=1e-6, rtol=0)
    np.testing.assert_allclose(state["c0"], c, atol=1e-6, rtol=0)


@pytest.mark.parametrize("op_type", OPS)
def test_float64(op_type):
    # No sequence_lens: the reference evaluator, the fallback, ignores them.
    model = recurrent_graph(op_type, dtype=np.float64, direction="bidirectional",
                            initial_state=True, peephole=op_type == "LSTM")
    feeds = random_feeds(model)
    ours = fastrnn.InferenceSession(model).run(None, feeds)
    assert all(array.dtype == np.float64 for array in ours)
    try:
        theirs = onnxruntime_session(model).run(None, feeds)
    except Exception:  # onnxruntime has no double kernel for this op: the reference evaluator has
        theirs = ReferenceEvaluator(model).run(None, feeds)
    assert_outputs_close(ours, theirs, 1e-9)


@pytest.mark.parametrize("op_type", OPS)
def test_weights_from_constant_nodes(op_type):
    compare_with_onnxruntime(recurrent_graph(op_type, weights_as="constant",
                                             peephole=op_type == "LSTM",
                                             direction="bidirectional"))


def transposed_feeds(feeds):
    return {name: value.transpose(1, 0, 2).copy() if value.ndim == 3 else value
            for name, value in feeds.items()}


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("op_type", OPS)
def test_layout_1(op_type, direction):
    """onnxruntime refuses layout=1: compare with the reference evaluator, and with the same node at
    layout 0 in onnxruntime on transposed tensors (which also covers sequence_lens)."""
    options = dict(direction=direction, initial_state=True, peephole=op_type == "LSTM")
    batch_major = recurrent_graph(op_type, layout=1, **options)
    feeds = random_feeds(batch_major)
    ours = fastrnn.InferenceSession(batch_major).run(None, feeds)
    assert_outputs_close(ours, ReferenceEvaluator(batch_major).run(None, feeds))

    with_lens = recurrent_graph(op_type, layout=1, sequence_lens=True, **options)
    time_major = recurrent_graph(op_type, layout=0, sequence_lens=True, **options)
    feeds = random_feeds(with_lens)
    ours = fastrnn.InferenceSession(with_lens).run(None, feeds)
    theirs = onnxruntime_session(time_major).run(None, transposed_feeds(feeds))
    expected = [theirs[0].transpose(2, 0, 1, 3)]
    expected += [state.transpose(1, 0, 2) for state in theirs[1:]]
    assert_outputs_close(ours, expected)


def test_session_describes_inputs_and_outputs_as_onnxruntime():
    model = recurrent_graph("LSTM", sequence_lens=True, initial_state=True)
    ours, theirs = fastrnn.InferenceSession(model), onnxruntime_session(model)
    for mine, peer in [(a, b) for a, b in zip(ours.get_inputs(), theirs.get_inputs())] + \
            [(a, b) for a, b in zip(ours.get_outputs(), theirs.get_outputs())]:
        assert (mine.name, mine.shape, mine.type) == (peer.name, peer.shape, peer.type)
    assert len(ours.get_inputs()) == len(theirs.get_inputs())


def test_run_selects_outputs_by_name():
    model = recurrent_graph("GRU", initial_state=True)
    feeds = random_feeds(model)
    session = fastrnn.InferenceSession(model)
    y, h = session.run(None, feeds)
    (only_h,) = session.run(["Y_h"], feeds)
    np.testing.assert_array_equal(only_h, h)
    h_again, y_again = session.run(["Y_h", "Y"], feeds)
    np.testing.assert_array_equal(y_again, y)


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("steps", [1, 3])
def test_inputs_are_not_written(layout, steps):
    model = recurrent_graph("LSTM", initial_state=True, layout=layout, steps=steps, batch=1)
    feeds = random_feeds(model)
    before = {name: value.copy() for name, value in feeds.items()}
    fastrnn.InferenceSession(model).run(None, feeds)
    for name, value in feeds.items():
        np.testing.assert_array_equal(value, before[name])
