"""bfloat16 and int8 weights (Model.with_weights, fastrnn.engine.quantise): the quantisation
against numpy and torch bit for bit, the kernels against the float64 reference, the error against
the float32 model held within measured bounds, and every path once.

Two errors are held apart. The kernels' own: a low-bit model against the float64 reference run
on the values its weights stand for (model.layers), within float32's 3e-5 (measured: <= 2.2e-7).
The formats': a low-bit model against the float32 model it came from and against the float64
reference of the original weights. Those bounds are measured: the largest error over 6 seeds x 3
rows x 20 steps of these models (H = 16, torch's init U(-1/4, 1/4), N(0, 1) inputs), times 3 and
rounded up. They grow with what a step adds up: a weight's rounding (bfloat16 2^-9 of it, int8
up to max|row| / 254) times the inputs, over I + H_out products, carried through the state; the
RNN, whose tanh passes its pre-activations on with gain near 1, shows the largest.
"""

import struct
import sys
import zlib
from pathlib import Path

import numba
import numpy as np
import pytest
import torch

import fastrnn
import reference
from fastrnn import fileformat
from fastrnn.engine.plan import _stored_block
from fastrnn.engine.products import add_scaled_rows, add_scaled_rows_batch, matrix_block
from fastrnn.engine.quantise import (bfloat16_to_float32, float32_to_bfloat16, float32_to_int8,
                                     quantise, storage_dtype)
from fastrnn.layers import Recurrent

sys.path.insert(0, str(Path(__file__).parent / "onnx"))
import onnx_cases  # noqa: E402 (tests/onnx's graph builders)

FORMATS = ("bfloat16", "int8")
KERNEL_TOLERANCE = 3e-5
CASES = {
    "lstm": ("lstm", dict(proj_size=6, peephole=True), {}),
    "gru": ("gru", {}, dict(linear_before_reset=True)),
    "gru_reset_first": ("gru", {}, dict(linear_before_reset=False)),
    "rnn": ("rnn_tanh", {}, {}),
}
# Measured worst error against the float32 model (see the module docstring), x3 rounded up:
# (lstm 1.9e-4 / 5.7e-4, gru 1.2e-3 / 2.3e-3, gru_reset_first 1.1e-3 / 2.1e-3, rnn 3.3e-3 / 5.1e-3)
BOUNDS = {
    ("lstm", "bfloat16"): 6e-4, ("lstm", "int8"): 2e-3,
    ("gru", "bfloat16"): 4e-3, ("gru", "int8"): 7e-3,
    ("gru_reset_first", "bfloat16"): 4e-3, ("gru_reset_first", "int8"): 7e-3,
    ("rnn", "bfloat16"): 1e-2, ("rnn", "int8"): 1.6e-2,
}
# The demo model (2 x LSTM 64, 50 steps): measured 6.9e-4 (bfloat16) and 3.0e-3 (int8), x3.
DEMO_BOUNDS = {"bfloat16": 2.1e-3, "int8": 9e-3}
DEMO = Path(__file__).parents[1] / "examples" / "demo_lstm.safetensors"


def random_model(case, seed=0):
    kind, shape, options = CASES[case]
    layers = reference.random_layers(kind, 5, 16, num_layers=2, seed=seed, **shape)
    model = fastrnn.from_numpy(kind, reference.cast_layers(layers, np.float32),
                               dtype=np.float32, **options)
    return model, layers, options


# -- the formats themselves ------------------------------------------------------------------------

def special_float32s():
    """float32 values where rounding to bfloat16 is easy to get wrong, and random ones."""
    bits = [0x3F808000, 0x3F818000, 0x3F80_7FFF, 0x3F80_8001, 0x7F7F_FFFF, 0x0000_0001,
            0x8000_8000, 0x807F_FFFF, 0x7F80_0000, 0xFF80_0000, 0x0000_0000, 0x8000_0000]
    values = np.array(bits, np.uint32).view(np.float32)
    rng = np.random.default_rng(3)
    randoms = rng.standard_normal(2000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 2000)
    return np.concatenate([values, randoms.astype(np.float32)])


def test_bfloat16_rounds_to_nearest_even_as_torch_does():
    values = special_float32s()
    ours = float32_to_bfloat16(values)
    theirs = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, theirs)
    # The ties by hand: 1 + 2^-8 goes down to 1 (even), 1 + 3 * 2^-8 up to 1 + 2^-6.
    assert list(ours[:2]) == [0x3F80, 0x3F82]
    # And as a numpy reference in float64: the nearest bfloat16, ties to the even pattern.
    finite = values[np.isfinite(values)]
    low = finite.view(np.uint32) >> 16
    candidates = np.stack([low, low + 1]).astype(np.uint32)
    widened = (candidates << 16).view(np.float32).astype(np.float64)
    # The pattern past the largest finite one stands for 2^128 when rounding (IEEE overflow).
    widened = np.where(np.isinf(widened), np.copysign(2.0 ** 128, widened), widened)
    distance = np.abs(widened - finite.astype(np.float64))
    pick = np.where(distance[0] != distance[1], np.argmin(distance, axis=0), candidates[0] % 2)
    np.testing.assert_array_equal(float32_to_bfloat16(finite),
                                  candidates[pick, np.arange(len(pick))])
    np.testing.assert_array_equal(bfloat16_to_float32(ours[np.isfinite(values)]).view(np.uint32),
                                  ours[np.isfinite(values)].astype(np.uint32) << 16)


def test_bfloat16_keeps_nan_a_nan():
    payload_low = np.array([0x7F800001, 0xFF800001, 0x7FC00000], np.uint32).view(np.float32)
    assert np.isnan(bfloat16_to_float32(float32_to_bfloat16(payload_low))).all()


def test_int8_matches_a_numpy_reference():
    rng = np.random.default_rng(4)
    matrix = (rng.standard_normal((12, 37)) * rng.uniform(0.01, 3, (12, 1))).astype(np.float32)
    matrix[3] = 0.0                                   # a row of zeros: scale 0, q 0
    matrix[5, 7] = -np.abs(matrix[5]).max() * 2       # a negative extreme maps to -127
    q, scale = float32_to_int8(matrix)
    expected_scale = np.array([np.float32(max(abs(float(v)) for v in row)) / np.float32(127)
                               for row in matrix], np.float32)
    np.testing.assert_array_equal(scale, expected_scale)
    divisor = np.where(expected_scale > 0, expected_scale, 1).astype(np.float64)[:, None]
    expected_q = np.clip(np.round(matrix.astype(np.float64) / divisor), -127, 127)
    np.testing.assert_array_equal(q, expected_q.astype(np.int8))
    assert q.dtype == np.int8 and scale.dtype == np.float32
    assert (q[3] == 0).all() and scale[3] == 0 and q[5, 7] == -127
    assert (np.abs(q).max(axis=1)[scale > 0] == 127).all()
    error = np.abs(quantise(matrix, "int8").dequantised() - matrix)
    assert (error <= scale[:, None] * (0.5 + 1e-5)).all()


def test_int8_refuses_non_finite_weights():
    with pytest.raises(ValueError, match="finite"):
        float32_to_int8(np.array([[1.0, np.inf]], np.float32))


@numba.njit
def both_products(flat, count, columns, vectors, column, width):
    """(add_scaled_rows_batch's, add_scaled_rows' row by row) products of the packed matrix."""
    rows = matrix_block(flat, 0, count, columns)
    batch = np.zeros((vectors.shape[0], width), np.float32)
    add_scaled_rows_batch(batch, vectors, rows, 0, column, width)
    single = np.zeros((vectors.shape[0], width), np.float32)
    for b in range(vectors.shape[0]):
        add_scaled_rows(single[b], vectors[b], rows, column)
    return batch, single


@pytest.mark.parametrize("weight_format", ("float32",) + FORMATS)
def test_products_against_float64_on_every_tail(weight_format):
    """Every count of weight rows mod 8 (the passes' tails, a bfloat16 word's odd half), one to
    three batch rows (pairs and a lone row), a column window: against float64 numpy."""
    rng = np.random.default_rng(5)
    for count in range(1, 18):
        matrix = rng.standard_normal((24, count)).astype(np.float32)   # (columns, count) layout
        if weight_format == "float32":
            flat, values = matrix.T.copy().ravel(), matrix
        else:
            stored = quantise(matrix, weight_format)
            flat = _stored_block(stored, None, storage_dtype(weight_format))
            values = stored.dequantised()
        for batch in (1, 2, 3):
            vectors = rng.standard_normal((batch, count)).astype(np.float32)
            got = both_products(flat, count, 24, vectors, 5, 13)
            expected = vectors.astype(np.float64) @ values.T.astype(np.float64)[:, 5:18]
            for product in got:
                np.testing.assert_allclose(product, expected, rtol=0, atol=1e-5)


# -- the models --------------------------------------------------------------------------------

@pytest.mark.parametrize("weight_format", FORMATS)
@pytest.mark.parametrize("case", list(CASES))
def test_error_against_float32_and_the_float64_reference(case, weight_format):
    model, layers, options = random_model(case)
    kind = model.kind
    x = np.random.default_rng(10).standard_normal((20, 3, 5)).astype(np.float32)
    low = model.with_weights(weight_format)
    assert low.weight_format == weight_format and low.dtype == np.float32
    y, _ = low(x)
    # The kernels: against float64 of the values the low-bit weights stand for.
    stored = reference.run_model(kind, [w.arrays() for w in low.layers], x, **options)[0]
    np.testing.assert_allclose(y, stored, rtol=0, atol=KERNEL_TOLERANCE)
    # The format: against the float32 model and the float64 reference of the original weights.
    bound = BOUNDS[case, weight_format]
    y32, _ = model(x)
    assert np.abs(y - y32).max() <= bound
    original = reference.run_model(kind, layers, x, **options)[0]
    assert np.abs(y - original).max() <= bound
    assert np.abs(y - y32).max() > 0  # the weights really changed


def test_demo_model_within_its_bounds():
    model = fastrnn.from_torch(DEMO, prefix="rnn", batch_first=False)
    x = np.random.default_rng(7).standard_normal((50, 2, 16)).astype(np.float32)
    y32, _ = model(x)
    original = reference.run_model("lstm", [w.arrays() for w in model.layers], x)[0]
    for weight_format in FORMATS:
        low = model.with_weights(weight_format)
        y, _ = low(x)
        stored = reference.run_model("lstm", [w.arrays() for w in low.layers], x)[0]
        np.testing.assert_allclose(y, stored, rtol=0, atol=KERNEL_TOLERANCE)
        assert np.abs(y - y32).max() <= DEMO_BOUNDS[weight_format]
        assert np.abs(y - original).max() <= DEMO_BOUNDS[weight_format]


def test_with_weights_formats_repr_and_refusals():
    model, _, _ = random_model("lstm")
    low = model.with_weights("int8")
    assert "weights=int8" in repr(low) and "weights=" not in repr(model)
    # Its layers are the values it computes with; "float32" gives them back as a float model.
    matrix = quantise(np.asarray(model.layers[0].w_ih), "int8")
    np.testing.assert_array_equal(low.layers[0].w_ih, matrix.dequantised())
    np.testing.assert_array_equal(low.layers[0].b_ih, model.layers[0].b_ih)
    back = low.with_weights("float32")
    assert back.weight_format == "float32" and "weights=" not in repr(back)
    np.testing.assert_array_equal(back.layers[0].w_hh, low.layers[0].w_hh)
    again = low.with_weights("int8")  # the same format: the same stored weights
    assert all(np.array_equal(a.w_ih, b.w_ih) for a, b in zip(again.layers, low.layers))
    with pytest.raises(ValueError, match="weight format must be one of"):
        model.with_weights("float16")
    with pytest.raises(TypeError, match="float64"):
        model.with_weights("float64").with_weights("bfloat16")
    with pytest.raises(ValueError, match="read-only"):
        low.layers[0].w_ih[0, 0] = 1.0


# -- every path --------------------------------------------------------------------------------

@pytest.mark.parametrize("weight_format", FORMATS)
def test_stream_pool_and_chain_equal_whole_sequences(weight_format):
    model, _, _ = random_model("gru")
    low = model.with_weights(weight_format)
    x = np.random.default_rng(11).standard_normal((6, 3, 5)).astype(np.float32)
    y, _ = low(x)
    stream = low.stream(3)
    steps = np.stack([stream.step(x[t]).copy() for t in range(6)])
    np.testing.assert_allclose(steps, y, rtol=0, atol=1e-6)
    pool = fastrnn.StreamPool(low, capacity=4)
    slots = [pool.open() for _ in range(3)]
    pooled = np.stack([pool.step(slots[::-1], x[t][::-1]).copy()[::-1] for t in range(6)])
    np.testing.assert_allclose(pooled, y, rtol=0, atol=1e-6)
    batch_first = fastrnn.from_numpy("gru", [w.arrays() for w in model.layers],
                                     batch_first=True, dtype=np.float32)
    layer = Recurrent(batch_first.with_weights(weight_format))  # rebuilt time-major, as stored
    assert layer.model.weight_format == weight_format
    chain = fastrnn.Chain([layer])
    np.testing.assert_allclose(chain(x), y, rtol=0, atol=1e-6)
    chained = chain.stream(3)
    np.testing.assert_allclose(np.stack([chained.step(x[t]).copy() for t in range(6)]), y,
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("weight_format", FORMATS)
def test_save_load_round_trip_is_bit_exact(weight_format, tmp_path):
    model, _, _ = random_model("lstm")
    low = model.with_weights(weight_format)
    path = tmp_path / "low.fastrnn"
    low.save(path)
    loaded = fastrnn.load(path)
    assert loaded.weight_format == weight_format and repr(loaded) == repr(low)
    assert loaded.plan.weights.tobytes() == low.plan.weights.tobytes()
    for a, b in zip(loaded.plan.encoded, low.plan.encoded):
        for name in b:
            assert a[name].data.tobytes() == b[name].data.tobytes()
            assert (a[name].scale is None) == (b[name].scale is None)
            if b[name].scale is not None:
                assert a[name].scale.tobytes() == b[name].scale.tobytes()
    x = np.random.default_rng(2).standard_normal((4, 2, 5)).astype(np.float32)
    assert loaded(x)[0].tobytes() == low(x)[0].tobytes()
    loaded.save(tmp_path / "again.fastrnn")
    assert (tmp_path / "again.fastrnn").read_bytes() == path.read_bytes()
    version, header, data = fileformat.read_header(path)
    assert version == fileformat.LOW_BIT_FORMAT_VERSION and header["weights"] == weight_format
    # 2 or 1 bytes a matrix weight (plus int8's scales, padding), 4 for the rest.
    assert len(data) < 0.6 * 4 * model.num_parameters
    # A float model still writes version 1, which every fastrnn reads.
    model.save(tmp_path / "float.fastrnn")
    assert fileformat.read_header(tmp_path / "float.fastrnn")[0] == fileformat.FORMAT_VERSION


def test_a_low_bit_file_with_a_wrong_array_dtype_is_refused(tmp_path):
    model, _, _ = random_model("rnn")
    path = tmp_path / "low.fastrnn"
    model.with_weights("int8").save(path)
    version, header, data = fileformat.read_header(path)
    header["arrays"][0]["dtype"] = "float32"
    text = fileformat.json.dumps(header).encode()
    text += b" " * (-(24 + len(text)) % 8)
    path.write_bytes(struct.pack("<8sIQI", fileformat.MAGIC, version, len(text),
                                 zlib.crc32(text)) + text + data)
    with pytest.raises(ValueError, match="must be stored as int8"):
        fastrnn.load(path)


@pytest.mark.parametrize("weight_format", FORMATS)
def test_onnx_session_runs_low_bit_weights(weight_format):
    for steps in (5, 1):   # whole sequences, and one step (the streaming kernel)
        graph = onnx_cases.recurrent_graph("LSTM", steps=steps, batch=2, hidden=8, peephole=True,
                                           scale=0.3)
        feeds = onnx_cases.random_feeds(graph)
        expected = onnx_cases.onnxruntime_session(graph).run(None, feeds)
        plain = fastrnn.InferenceSession(graph.SerializeToString()).run(None, feeds)
        low = fastrnn.InferenceSession(graph.SerializeToString(), weights=weight_format)
        got = low.run(None, feeds)
        for ours, theirs, exact in zip(got, expected, plain):
            assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
            # Measured: 1.5e-3 (bfloat16) and 4.0e-3 (int8) at most over these graphs; x3.
            bound = {"bfloat16": 5e-3, "int8": 1.2e-2}[weight_format]
            assert 0 < np.abs(ours - theirs).max() <= bound
            assert np.abs(exact - theirs).max() <= 2e-5
    float64 = onnx_cases.recurrent_graph("GRU", dtype=np.float64)
    with pytest.raises(ValueError, match="float64 node"):
        fastrnn.InferenceSession(float64.SerializeToString(), weights=weight_format)
