"""fastrnn.engine.flat: the flat cell pass gives the driver's general kernels' results, bit for bit,
and the float64 reference's within DESIGN.md's tolerance; plans it cannot run keep the general path.

The general kernels are called directly (driver.sequence_block, and step_block on a copy of the
layout with FLAT_CELL cleared), so both paths see the same plan and the same inputs.
"""

import numpy as np
import pytest

import fastrnn
from fastrnn.engine import driver, flat, memory, parallel
from fastrnn.engine.plan import FLAT_CELL, REVERSE
from reference import random_layers, run_model

KINDS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


def model_of(kind, dtype, **options):
    layers = random_layers(kind, 3, 5, num_layers=2, seed=7,
                           bidirectional=options.get("bidirectional", False))
    return layers, fastrnn.from_numpy(kind, layers, dtype=dtype, **options)


def both_sequence_paths(model, x):
    """(y, h, c) of sequence_flat and of sequence_block for x (T, B, I), from a random start."""
    plan, (steps, batch) = model.plan, x.shape[:2]
    h_shape, c_shape = model.state_shapes(batch)
    rng = np.random.default_rng(3)
    h0 = rng.standard_normal(h_shape).astype(x.dtype)
    c0 = rng.standard_normal(c_shape if c_shape else (h_shape[0], batch, 0)).astype(x.dtype)
    results = []
    for general in (False, True):
        h, c = h0.copy(), c0.copy()
        buffers = memory.zeros((2, steps, batch, plan.num_directions * plan.config.output_size),
                               x.dtype)
        if general:
            driver.sequence_block(plan.weights, plan.layout, plan.parameters, x,
                                  np.full(batch, steps, np.int64), h, c, buffers, 0, batch)
        else:
            flat.sequence_flat(plan.weights, plan.layout, x, h, c, buffers, 0, batch)
        results.append((buffers[(plan.num_layers - 1) % 2], h, c))
    return results, (h0, c0)


@pytest.mark.parametrize("kind", KINDS)
def test_sequence_flat_is_sequence_block_bit_for_bit(kind, dtype, tolerance, rng):
    layers, model = model_of(kind, dtype, bidirectional=True)
    assert model.plan.flat_sequences
    x = rng.standard_normal((37, 3, 3)).astype(dtype)   # 37 steps: a pass and a part of one
    (got, general), (h0, c0) = both_sequence_paths(model, x)
    for ours, theirs in zip(got, general):
        np.testing.assert_array_equal(ours, theirs)
    y, h_n, c_n = run_model(kind, layers, x, bidirectional=True, h0=h0,
                            c0=c0 if kind == "lstm" else None)
    np.testing.assert_allclose(got[0], y, rtol=0, atol=tolerance)
    np.testing.assert_allclose(got[1], h_n, rtol=0, atol=tolerance)
    if kind == "lstm":
        np.testing.assert_allclose(got[2], c_n, rtol=0, atol=tolerance)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_directions_on_two_threads_are_sequence_flat_bit_for_bit(kind, dtype, rng,
                                                                 monkeypatch):
    """Two layers, both directions: sequence_flat_directions (each layer's directions at once)
    and sequence_flat (in turn) give the same y, h and c; a bidirectional call of one row takes
    it when two threads may run."""
    _, model = model_of(kind, dtype, bidirectional=True)
    plan = model.plan
    x = rng.standard_normal((37, 1, 3)).astype(dtype)
    h_shape, c_shape = model.state_shapes(1)
    h0 = rng.standard_normal(h_shape).astype(dtype)
    c0 = rng.standard_normal(c_shape if c_shape else (h_shape[0], 1, 0)).astype(dtype)
    results = []
    for directions_at_once in (False, True):
        h, c = h0.copy(), c0.copy()
        buffers = memory.zeros((2, 37, 1, 2 * model.hidden_size), dtype)
        arguments = (plan.weights, plan.layout, x, h, c, buffers)
        if directions_at_once:
            flat.sequence_flat_directions(*arguments)
        else:
            flat.sequence_flat(*arguments, 0, 1)
        results.append((buffers[1], h, c))
    for ours, theirs in zip(*results):
        np.testing.assert_array_equal(ours, theirs)
    spy = Counted(flat.sequence_flat_directions)
    monkeypatch.setattr(flat, "sequence_flat_directions", spy)
    monkeypatch.setattr(driver, "PARALLEL_DIRECTIONS", 0)
    monkeypatch.setattr(parallel, "_num_threads", 2)
    y = model(x)[0]
    assert spy.calls == 1
    monkeypatch.setattr(parallel, "_num_threads", 1)
    np.testing.assert_array_equal(model(x)[0], y)
    assert spy.calls == 1                     # one thread: sequence_flat


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_step_flat_is_the_general_step_bit_for_bit(kind, dtype):
    """Pool ticks on slots out of order and a Stream's consecutive slots, through step_flat and
    through step_block's general path (the same layout with FLAT_CELL cleared)."""
    _, model = model_of(kind, dtype)
    plan = model.plan
    assert plan.layout[:, FLAT_CELL].all()
    general_layout = plan.layout.copy()
    general_layout[:, FLAT_CELL] = 0
    rng = np.random.default_rng(5)
    capacity = 9
    h_shape, c_shape = model.state_shapes(capacity)
    h0 = rng.standard_normal(h_shape).astype(dtype)
    c0 = rng.standard_normal(c_shape if c_shape else (h_shape[0], capacity, 0)).astype(dtype)
    for slots in (np.array([7, 2, 5, 0, 8], np.int64), np.arange(3, 6, dtype=np.int64)):
        x = rng.standard_normal((slots.shape[0], 3)).astype(dtype)
        results = []
        for layout in (plan.layout, general_layout):
            h, c = h0.copy(), c0.copy()
            y = np.zeros((slots.shape[0], 5), dtype)
            scratch = np.zeros(driver.step_scratch_size(plan, slots.shape[0]), dtype)
            for _ in range(4):
                driver.step_block(plan.weights, layout, plan.parameters, slots, h, c, scratch, 0,
                                  slots.shape[0], x, y)
            results.append((y, h, c))
        for ours, theirs in zip(*results):
            np.testing.assert_array_equal(ours, theirs)
        untouched = np.setdiff1d(np.arange(capacity), slots)
        np.testing.assert_array_equal(results[0][1][:, untouched], h0[:, untouched])


def test_plans_the_flat_pass_cannot_run_keep_the_general_path():
    layers = random_layers("lstm", 3, 5, seed=2)
    assert not fastrnn.from_numpy("lstm", layers, clip=1.0).plan.flat_sequences
    assert not fastrnn.from_numpy("lstm", layers, input_forget=True).plan.flat_sequences
    peephole = [dict(layers[0], peephole=np.ones((3, 5)))]
    assert not fastrnn.from_numpy("lstm", peephole).plan.flat_sequences
    low_bit = fastrnn.from_numpy("lstm", layers, dtype=np.float32).with_weights("bfloat16")
    assert not low_bit.plan.flat_sequences and not low_bit.plan.layout[:, FLAT_CELL].any()
    # A reverse direction runs flat on whole sequences, never as a stream.
    bidirectional = fastrnn.from_numpy("gru", random_layers("gru", 3, 5, bidirectional=True,
                                                            seed=2), bidirectional=True)
    layout = bidirectional.plan.layout
    assert bidirectional.plan.flat_sequences
    assert list(layout[:, FLAT_CELL]) == [int(not reverse) for reverse in layout[:, REVERSE]]


class Counted:
    """A kernel dispatcher that counts its calls (and is otherwise the dispatcher)."""

    def __init__(self, dispatcher):
        self.dispatcher, self.calls = dispatcher, 0

    def __getattr__(self, name):
        return getattr(self.dispatcher, name)

    def __call__(self, *arguments):
        self.calls += 1
        return self.dispatcher(*arguments)


def test_rows_of_their_own_lengths_take_the_general_path_and_match_the_reference(rng,
                                                                                monkeypatch):
    layers, model = model_of("lstm", np.float64)
    x = rng.standard_normal((6, 3, 3))
    spy = Counted(flat.sequence_flat)
    monkeypatch.setattr(flat, "sequence_flat", spy)
    model(x)
    assert spy.calls == 1                     # every row of full length: the flat pass
    y, (h, c) = model(x, lengths=[6, 2, 4])
    assert spy.calls == 1                     # rows of their own lengths: sequence_block
    expected, h_n, c_n = run_model("lstm", layers, x, lengths=[6, 2, 4])
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(h, h_n, rtol=0, atol=1e-9)
    np.testing.assert_allclose(c, c_n, rtol=0, atol=1e-9)
