"""The spatial ops (Conv, ConvTranspose, Pad, the normalizations and the pools), one node each:
fastrnn against onnxruntime on the same inputs, float32, within 1e-4 of the largest |y|; the
float64 path against a float64 numpy reference; bad attributes refused when loading, naming the
node."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import fastrnn
from onnx_cases import onnxruntime_session

ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
        np.dtype(np.int64): TensorProto.INT64}
RELATIVE = 1e-4


def normal(*shape, seed=0):
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(np.float32)


def node_model(op_type, fed, constants=(), attributes=None, opset=17, outputs=1, inputs=None):
    """A one-node graph: `fed` (name -> array) are graph inputs, `constants` initializers; the
    node reads `inputs` (names, '' for an omitted optional one; default fed then constants)."""
    fed, constants = dict(fed), dict(constants)
    names = inputs if inputs is not None else [*fed, *constants]
    out_names = [f"y{k}" for k in range(outputs)]
    node = helper.make_node(op_type, names, out_names, name=f"the_{op_type.lower()}",
                            **(attributes or {}))
    graph = helper.make_graph(
        [node], "spatial",
        [helper.make_tensor_value_info(n, ELEM[v.dtype], list(v.shape)) for n, v in fed.items()],
        [helper.make_empty_tensor_value_info(n) for n in out_names],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model, fed


def assert_matches_onnxruntime(model, feeds, runs=2):
    theirs = onnxruntime_session(model).run(None, feeds)
    session = fastrnn.InferenceSession(model)
    for _ in range(runs):  # the second run reuses the buffers and geometry of the first
        ours = session.run(None, feeds)
        assert len(ours) == len(theirs)
        for index, (got, expected) in enumerate(zip(ours, theirs)):
            assert got.shape == expected.shape, f"output {index}: {got.shape} != {expected.shape}"
            assert got.dtype == expected.dtype
            scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
            np.testing.assert_allclose(got, expected, rtol=0, atol=RELATIVE * scale,
                                       err_msg=f"output {index}")
    return ours


# -- Conv ------------------------------------------------------------------------------------------

# (x shape, W shape, bias, attributes)
CONV_CASES = [
    ((2, 3, 9), (4, 3, 3), True, {}),
    ((2, 3, 9), (4, 3, 3), False, {"pads": [1, 2], "strides": [2]}),
    ((1, 4, 11), (4, 2, 3), True, {"group": 2, "dilations": [2], "pads": [2, 2]}),
    ((1, 4, 10), (4, 1, 5), True, {"group": 4, "auto_pad": "SAME_UPPER", "strides": [3]}),
    ((1, 2, 10), (3, 2, 4), True, {"auto_pad": "SAME_LOWER"}),
    ((1, 2, 10), (3, 2, 4), True, {"auto_pad": "SAME_UPPER"}),
    ((1, 2, 10), (3, 2, 4), True, {"auto_pad": "VALID", "strides": [2]}),
    ((2, 3, 8, 7), (5, 3, 3, 3), True, {}),
    ((2, 3, 8, 7), (5, 3, 3, 2), True, {"pads": [1, 0, 2, 1], "strides": [2, 1],
                                         "dilations": [1, 2]}),
    ((1, 6, 7, 7), (4, 3, 3, 3), True, {"group": 2, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 4, 9, 6), (4, 1, 3, 3), False, {"group": 4, "auto_pad": "SAME_UPPER",
                                          "strides": [2, 2]}),
    ((1, 3, 9, 6), (2, 3, 2, 4), True, {"auto_pad": "SAME_LOWER", "strides": [2, 1]}),
    ((1, 3, 9, 6), (2, 3, 3, 3), True, {"auto_pad": "VALID", "strides": [2, 3]}),
    ((2, 5, 4, 3), (6, 5, 1, 1), True, {}),                      # pointwise: no im2col
    ((2, 5, 4, 3), (6, 5, 1, 1), False, {"strides": [2, 2]}),
]


@pytest.mark.parametrize("x_shape, w_shape, bias, attributes", CONV_CASES,
                         ids=[f"conv{index}" for index in range(len(CONV_CASES))])
def test_conv(x_shape, w_shape, bias, attributes):
    constants = {"W": normal(*w_shape, seed=1)}
    if bias:
        constants["B"] = normal(w_shape[0], seed=2)
    if "auto_pad" not in attributes:
        attributes = {**attributes, "kernel_shape": list(w_shape[2:])}
    model, feeds = node_model("Conv", {"X": normal(*x_shape)}, constants, attributes)
    assert_matches_onnxruntime(model, feeds)


def test_conv_weights_fed_at_run_time():
    x, w, b = normal(2, 4, 6, 5), normal(6, 2, 3, 3, seed=1), normal(6, seed=2)
    model, feeds = node_model("Conv", {"X": x, "W": w, "B": b}, {},
                              {"group": 2, "pads": [1, 1, 1, 1]})
    assert_matches_onnxruntime(model, feeds)


def test_conv_other_batch_sizes_reuse_nothing_stale():
    model, _ = node_model("Conv", {"X": normal(1, 3, 8, 8)}, {"W": normal(4, 3, 3, 3, seed=1)},
                          {"pads": [1, 1, 1, 1]})
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "n"
    session, peer = fastrnn.InferenceSession(model), onnxruntime_session(model)
    for batch in (1, 3, 1):
        feeds = {"X": normal(batch, 3, 8, 8, seed=batch)}
        np.testing.assert_allclose(session.run(None, feeds)[0], peer.run(None, feeds)[0],
                                   rtol=0, atol=1e-4 * 10)


@pytest.mark.parametrize("op_type", ["Conv", "ConvTranspose"])
def test_products_big_enough_for_threads(op_type, monkeypatch):
    # Past PARALLEL_PRODUCT multiply-adds the product is cut into blocks over fastrnn's threads,
    # and past PARALLEL_COLUMNS (made 1 here) im2col's images too.
    from fastrnn.converters.onnx import spatial
    monkeypatch.setattr(spatial, "PARALLEL_COLUMNS", 1)
    x, w = normal(2, 16, 32, 40), normal(16, 16, 3, 3, seed=1)
    assert 2 * 16 * 32 * 40 * 16 * 9 >= spatial.PARALLEL_PRODUCT
    model, feeds = node_model(op_type, {"X": x}, {"W": w, "B": normal(16, seed=2)},
                              {"pads": [1, 1, 1, 1]})
    assert_matches_onnxruntime(model, feeds)


def test_conv_session_shared_by_threads():
    # im2col buffers are per thread: runs in threads at once must not see each other's columns.
    from concurrent.futures import ThreadPoolExecutor
    model, _ = node_model("Conv", {"X": normal(2, 3, 12, 12)}, {"W": normal(8, 3, 3, 3, seed=1)},
                          {"pads": [1, 1, 1, 1]})
    session, peer = fastrnn.InferenceSession(model), onnxruntime_session(model)
    inputs = [normal(2, 3, 12, 12, seed=10 * k) for k in range(8)]
    expected = [peer.run(None, {"X": x})[0] for x in inputs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: [session.run(None, {"X": x})[0] for _ in range(20)][-1],
                            inputs))
    for ours, theirs in zip(got, expected):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * np.max(np.abs(theirs)))


# -- ConvTranspose ---------------------------------------------------------------------------------

CONV_TRANSPOSE_CASES = [
    ((2, 3, 5), (3, 4, 3), True, {}),
    ((1, 3, 5), (3, 2, 4), False, {"strides": [2], "pads": [1, 2]}),
    ((1, 4, 6), (4, 3, 3), True, {"group": 2, "strides": [3], "output_padding": [1],
                                   "dilations": [2]}),
    ((1, 2, 5), (2, 3, 3), True, {"strides": [2], "output_shape": [12]}),
    ((1, 2, 5), (2, 3, 4), True, {"strides": [2], "auto_pad": "SAME_UPPER"}),
    ((1, 2, 5), (2, 3, 4), True, {"strides": [2], "auto_pad": "SAME_LOWER"}),
    ((1, 2, 5), (2, 3, 3), True, {"strides": [2], "auto_pad": "SAME_UPPER"}),   # odd total pad
    ((1, 2, 5), (2, 3, 3), True, {"strides": [2], "auto_pad": "SAME_LOWER"}),
    ((1, 2, 5), (2, 3, 3), True, {"strides": [2], "output_shape": [10]}),
    ((2, 3, 4, 5), (3, 2, 3, 3), True, {}),
    ((1, 3, 4, 5), (3, 2, 3, 2), True, {"strides": [2, 3], "pads": [1, 0, 1, 1]}),
    ((1, 4, 3, 4), (4, 1, 3, 3), False, {"group": 4, "strides": [2, 2], "output_padding": [1, 1]}),
    ((1, 2, 4, 4), (2, 3, 3, 3), True, {"strides": [2, 2], "output_shape": [9, 8]}),
    ((1, 2, 4, 4), (2, 3, 2, 3), True, {"strides": [2, 2], "dilations": [2, 1],
                                         "auto_pad": "VALID"}),
    ((1, 2, 3, 5), (2, 3, 3, 3), True, {"strides": [2, 1], "auto_pad": "SAME_UPPER"}),
]


@pytest.mark.parametrize("x_shape, w_shape, bias, attributes", CONV_TRANSPOSE_CASES,
                         ids=[f"convT{index}" for index in range(len(CONV_TRANSPOSE_CASES))])
def test_conv_transpose(x_shape, w_shape, bias, attributes):
    constants = {"W": normal(*w_shape, seed=1)}
    if bias:
        constants["B"] = normal(w_shape[1] * attributes.get("group", 1), seed=2)
    model, feeds = node_model("ConvTranspose", {"X": normal(*x_shape)}, constants, attributes)
    assert_matches_onnxruntime(model, feeds)


# -- pooling ---------------------------------------------------------------------------------------

POOL_CASES = [
    ("MaxPool", (2, 3, 9), {"kernel_shape": [3]}, 17),
    ("MaxPool", (2, 3, 10), {"kernel_shape": [3], "strides": [2], "pads": [1, 1],
                             "ceil_mode": 1}, 17),
    ("MaxPool", (1, 2, 11), {"kernel_shape": [2], "dilations": [3], "pads": [1, 1]}, 17),
    ("MaxPool", (1, 2, 11), {"kernel_shape": [3], "strides": [2], "auto_pad": "SAME_UPPER"}, 17),
    ("MaxPool", (2, 3, 8, 9), {"kernel_shape": [2, 2], "strides": [2, 2]}, 12),
    ("MaxPool", (1, 2, 7, 8), {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 1, 1],
                               "ceil_mode": 1}, 17),
    ("MaxPool", (1, 2, 9, 8), {"kernel_shape": [3, 3], "dilations": [2, 1], "strides": [1, 2]},
     17),
    ("MaxPool", (1, 2, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 2],
                               "auto_pad": "SAME_LOWER"}, 17),
    ("MaxPool", (1, 2, 7, 8), {"kernel_shape": [2, 3], "strides": [2, 2], "auto_pad": "VALID"},
     17),
    # ceil_mode drops a last window that would start in the end padding
    ("MaxPool", (1, 2, 9), {"kernel_shape": [2], "strides": [2], "pads": [1, 1], "ceil_mode": 1},
     17),
    ("AveragePool", (1, 2, 9), {"kernel_shape": [2], "strides": [2], "pads": [1, 1],
                                "ceil_mode": 1, "count_include_pad": 1}, 17),
    ("AveragePool", (2, 3, 9), {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}, 17),
    ("AveragePool", (2, 3, 9), {"kernel_shape": [3], "strides": [2], "pads": [1, 1],
                                "count_include_pad": 1}, 17),
    ("AveragePool", (2, 3, 10), {"kernel_shape": [3], "strides": [2], "pads": [1, 1],
                                 "ceil_mode": 1, "count_include_pad": 1}, 17),
    ("AveragePool", (2, 3, 8, 7), {"kernel_shape": [2, 2], "strides": [2, 2]}, 11),
    ("AveragePool", (1, 2, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 2],
                                   "pads": [1, 1, 1, 1], "ceil_mode": 1}, 17),
    ("AveragePool", (1, 2, 7, 8), {"kernel_shape": [3, 2], "strides": [2, 3],
                                   "pads": [1, 0, 2, 1], "count_include_pad": 1,
                                   "ceil_mode": 1}, 17),
    ("AveragePool", (1, 2, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 2],
                                   "auto_pad": "SAME_UPPER", "count_include_pad": 1}, 17),
    ("AveragePool", (1, 2, 9, 8), {"kernel_shape": [2, 2], "dilations": [2, 2],
                                   "pads": [1, 1, 1, 1]}, 19),
]


@pytest.mark.parametrize("op_type, x_shape, attributes, opset", POOL_CASES,
                         ids=[f"{case[0]}{index}" for index, case in enumerate(POOL_CASES)])
def test_pool(op_type, x_shape, attributes, opset):
    model, feeds = node_model(op_type, {"X": normal(*x_shape)}, {}, attributes, opset)
    assert_matches_onnxruntime(model, feeds)


def test_max_pool_same_with_dilations_follows_the_spec():
    # SAME_* gives ceil(size / stride) outputs, padded for the dilated window (the spec's formula);
    # onnxruntime pads for the undilated kernel and gives fewer outputs, so ONNX's reference
    # evaluator is the peer here.
    from onnx.reference import ReferenceEvaluator
    model, feeds = node_model("MaxPool", {"X": normal(1, 2, 11)}, {},
                              {"kernel_shape": [2], "dilations": [3], "auto_pad": "SAME_UPPER"})
    got = fastrnn.InferenceSession(model).run(None, feeds)[0]
    assert got.shape == (1, 2, 11)
    np.testing.assert_array_equal(got, ReferenceEvaluator(model).run(None, feeds)[0])


@pytest.mark.parametrize("op_type", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("x_shape", [(2, 3, 7), (2, 3, 4, 5)])
def test_global_pool(op_type, x_shape):
    model, feeds = node_model(op_type, {"X": normal(*x_shape)})
    assert_matches_onnxruntime(model, feeds)


# -- normalization ---------------------------------------------------------------------------------

@pytest.mark.parametrize("x_shape, opset", [((2, 3, 5, 4), 15), ((3, 4, 6), 9), ((5, 3), 14)])
def test_batch_normalization(x_shape, opset):
    channels = x_shape[1]
    constants = {"scale": normal(channels, seed=1), "B": normal(channels, seed=2),
                 "mean": normal(channels, seed=3),
                 "var": np.abs(normal(channels, seed=4)) + 0.1}
    model, feeds = node_model("BatchNormalization", {"X": normal(*x_shape)}, constants,
                              {"epsilon": 1e-3}, opset)
    assert_matches_onnxruntime(model, feeds)


def test_batch_normalization_statistics_fed_at_run_time():
    fed = {"X": normal(2, 3, 4), "scale": normal(3, seed=1), "B": normal(3, seed=2),
           "mean": normal(3, seed=3), "var": np.abs(normal(3, seed=4)) + 0.1}
    model, feeds = node_model("BatchNormalization", fed)
    assert_matches_onnxruntime(model, feeds)


# (x shape, axis, scale shape, bias, outputs)
LAYER_NORM_CASES = [
    ((2, 5, 8), -1, (8,), True, 1),
    ((2, 5, 8), -1, (8,), False, 1),
    ((2, 5, 4, 3), 2, (4, 3), True, 3),
    ((3, 6), 0, (3, 6), True, 1),
    ((2, 5, 4), 1, (1, 4), True, 1),     # Scale broadcast over the normalized shape
]


@pytest.mark.parametrize("x_shape, axis, scale_shape, bias, outputs", LAYER_NORM_CASES,
                         ids=[f"layernorm{index}" for index in range(len(LAYER_NORM_CASES))])
def test_layer_normalization(x_shape, axis, scale_shape, bias, outputs):
    constants = {"Scale": normal(*scale_shape, seed=1)}
    if bias:
        constants["B"] = normal(*scale_shape, seed=2)
    x = normal(*x_shape) * 3 + 2   # a mean and a spread far from 0 and 1
    model, feeds = node_model("LayerNormalization", {"X": x}, constants,
                              {"axis": axis, "epsilon": 1e-4}, 17, outputs)
    assert_matches_onnxruntime(model, feeds)


@pytest.mark.parametrize("x_shape", [(2, 3, 7), (2, 3, 4, 5)])
def test_instance_normalization(x_shape):
    channels = x_shape[1]
    model, feeds = node_model("InstanceNormalization", {"X": normal(*x_shape) + 1},
                              {"scale": normal(channels, seed=1), "B": normal(channels, seed=2)},
                              {"epsilon": 1e-3})
    assert_matches_onnxruntime(model, feeds)


# -- Pad -------------------------------------------------------------------------------------------

I64 = lambda *values: np.array(values, np.int64)  # noqa: E731
X_PAD = normal(2, 3, 4)

# (fed, constants, attributes, opset, node inputs)
PAD_CASES = [
    ({}, {}, {"pads": [0, 1, 2, 0, 2, 1], "value": 1.5}, 10, None),
    ({}, {}, {"pads": [0, 0, 2, 0, 1, 3], "mode": "reflect"}, 2, None),
    ({}, {}, {"pads": [0, 1, 1, 0, 2, 2], "mode": "edge"}, 10, None),
    ({}, {"pads": I64(0, 1, 2, 0, 0, 1)}, {}, 13, None),
    ({}, {"pads": I64(0, 0, 2, 0, 1, 1), "value": np.array(-2.0, np.float32)}, {}, 13, None),
    ({}, {"pads": I64(0, 1, -1, 0, -1, 2)}, {}, 13, None),               # negative pads crop
    ({}, {"pads": I64(0, 0, 3, 0, 2, 1)}, {"mode": "reflect"}, 13, None),
    ({}, {"pads": I64(1, 0, 1, 1, 2, 2)}, {"mode": "edge"}, 13, None),
    ({}, {"pads": I64(1, 2, 1, 3), "value": np.array(0.5, np.float32), "axes": I64(1, -1)}, {},
     18, None),
    ({}, {"pads": I64(2, 1), "axes": I64(2)}, {"mode": "reflect"}, 18, ["X", "pads", "", "axes"]),
    ({}, {"pads": I64(0, 0, 3, 0, 0, 2)}, {"mode": "wrap"}, 19, None),
    ({"pads": I64(0, 1, 1, 0, 1, 2)}, {}, {"mode": "edge"}, 13, None),   # pads fed at run time
]


@pytest.mark.parametrize("fed, constants, attributes, opset, inputs", PAD_CASES,
                         ids=[f"pad{index}" for index in range(len(PAD_CASES))])
def test_pad(fed, constants, attributes, opset, inputs):
    model, feeds = node_model("Pad", {"X": X_PAD, **fed}, constants, attributes, opset,
                              inputs=inputs)
    assert_matches_onnxruntime(model, feeds)


# -- float64 against a numpy reference -------------------------------------------------------------

def reference_conv(x, w, b, stride, pad, group):
    """Direct float64 2-D convolution, symmetric pads."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    batch, channels, height, width = x.shape
    out_channels, per_group, kh, kw = w.shape
    out_h, out_w = (height - kh) // stride + 1, (width - kw) // stride + 1
    y = np.zeros((batch, out_channels, out_h, out_w))
    per_out = out_channels // group
    for m in range(out_channels):
        g = m // per_out
        for oy in range(out_h):
            for ox in range(out_w):
                patch = x[:, g * per_group:(g + 1) * per_group,
                          oy * stride:oy * stride + kh, ox * stride:ox * stride + kw]
                y[:, m, oy, ox] = np.sum(patch * w[m], axis=(1, 2, 3)) + b[m]
    return y


def reference_max_pool(x, kernel, stride):
    batch, channels, height, width = x.shape
    out_h, out_w = (height - kernel) // stride + 1, (width - kernel) // stride + 1
    y = np.empty((batch, channels, out_h, out_w))
    for oy in range(out_h):
        for ox in range(out_w):
            y[:, :, oy, ox] = x[:, :, oy * stride:oy * stride + kernel,
                                ox * stride:ox * stride + kernel].max(axis=(2, 3))
    return y


def test_float64_conv_and_pool_match_a_numpy_reference():
    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal((2, 4, 7, 6)), rng.standard_normal((6, 2, 3, 3)), \
        rng.standard_normal(6)
    model, feeds = node_model("Conv", {"X": x}, {"W": w, "B": b},
                              {"group": 2, "strides": [2, 2], "pads": [1, 1, 1, 1]})
    got = fastrnn.InferenceSession(model).run(None, feeds)[0]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, reference_conv(x, w, b, 2, 1, 2), rtol=0, atol=1e-12)
    model, feeds = node_model("MaxPool", {"X": x}, {}, {"kernel_shape": [2, 2],
                                                         "strides": [2, 2]})
    np.testing.assert_array_equal(fastrnn.InferenceSession(model).run(None, feeds)[0],
                                  reference_max_pool(x, 2, 2))


def test_float32_conv_matches_a_float64_reference():
    x, w, b = normal(2, 4, 7, 6), normal(6, 2, 3, 3, seed=1), normal(6, seed=2)
    model, feeds = node_model("Conv", {"X": x}, {"W": w, "B": b},
                              {"group": 2, "strides": [2, 2], "pads": [1, 1, 1, 1]})
    got = fastrnn.InferenceSession(model).run(None, feeds)[0]
    expected = reference_conv(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                              2, 1, 2)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.max(np.abs(expected)))


# -- refused when loading --------------------------------------------------------------------------

BAD_NODES = [
    ("Conv", (1, 4, 5, 5), {"W": (3, 2, 3, 3)}, {"group": 2}, "not divisible by group"),
    ("Conv", (1, 5, 5, 5), {"W": (4, 2, 3, 3)}, {"group": 2}, "divisible by group"),
    ("Conv", (1, 4, 5, 5), {"W": (4, 4, 3, 3)}, {"kernel_shape": [2, 2]}, "kernel_shape"),
    ("Conv", (1, 4, 5, 5), {"W": (4, 4, 3, 3)}, {"strides": [0, 1]}, "strides"),
    ("Conv", (1, 4, 5, 5), {"W": (4, 4, 3, 3)}, {"pads": [1, 1]}, "pads"),
    ("Conv", (1, 4, 5, 5), {"W": (4, 4, 3, 3)}, {"auto_pad": "SAME"}, "auto_pad"),
    ("Conv", (1, 4, 5, 5, 5), {"W": (4, 4, 3, 3, 3)}, {}, "3-D Conv is not supported"),
    ("ConvTranspose", (1, 3, 5, 5), {"W": (3, 2, 3, 3)}, {"group": 2}, "divisible by group"),
    ("ConvTranspose", (1, 4, 5, 5), {"W": (4, 2, 3, 3)},
     {"strides": [2, 2], "output_padding": [2, 0]}, "output_padding"),
    ("MaxPool", (1, 4, 5, 5), {}, {}, "kernel_shape is required"),
    ("MaxPool", (1, 4, 5, 5), {}, {"kernel_shape": [2, 2], "pads": [2, 0, 0, 0]},
     "smaller than the window"),
    ("AveragePool", (1, 4, 5, 5), {}, {"kernel_shape": [2, 2], "dilations": [1, 0]},
     "dilations"),
    ("BatchNormalization", (1, 4, 5, 5), {"s": (4,), "b": (4,), "m": (4,), "v": (4,)},
     {"training_mode": 1}, "training_mode"),
]


@pytest.mark.parametrize("op_type, x_shape, weights, attributes, message", BAD_NODES,
                         ids=[f"{case[0]}-{index}" for index, case in enumerate(BAD_NODES)])
def test_bad_attributes_are_refused_when_loading(op_type, x_shape, weights, attributes,
                                                 message):
    opset = 19 if op_type == "AveragePool" else 17
    model, _ = node_model(op_type, {"X": normal(*x_shape)},
                          {name: normal(*shape) for name, shape in weights.items()}, attributes,
                          opset)
    with pytest.raises(ValueError, match=message) as raised:
        fastrnn.InferenceSession(model)
    assert f"the_{op_type.lower()}" in str(raised.value)


def test_max_pool_indices_output_is_refused_when_loading():
    model, _ = node_model("MaxPool", {"X": normal(1, 2, 4, 4)}, {}, {"kernel_shape": [2, 2]},
                          outputs=2)
    with pytest.raises(ValueError, match="the_maxpool.*Indices"):
        fastrnn.InferenceSession(model)


def test_conv_channels_mismatch_at_run_time_names_the_node():
    model, _ = node_model("Conv", {"X": normal(1, 4, 5, 5)}, {"W": normal(2, 4, 3, 3)})
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "c"   # channels left open
    session = fastrnn.InferenceSession(model)
    with pytest.raises(ValueError, match="the_conv.*3 channels"):
        session.run(None, {"X": normal(1, 3, 5, 5)})


# -- the fast paths: narrow product, row padding, Relu, Conv + Relu --------------------------------

def conv_reference(x, w, b, strides, pads, dilations, group):
    """A 2-D convolution in float64 by its definition, for the kernels below."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    batch, channels, height, width = x.shape
    out_channels, per_group, kh, kw = w.shape
    padded = np.pad(x, [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    oh = (height + pads[0] + pads[2] - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    ow = (width + pads[1] + pads[3] - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    y = np.zeros((batch, out_channels, oh, ow)) + b.astype(np.float64)[None, :, None, None]
    per_out = out_channels // group
    for m in range(out_channels):
        g = m // per_out
        for ky in range(kh):
            for kx in range(kw):
                rows = padded[:, g * per_group:(g + 1) * per_group,
                              ky * dilations[0]:ky * dilations[0] + strides[0] * oh:strides[0],
                              kx * dilations[1]:kx * dilations[1] + strides[1] * ow:strides[1]]
                y[:, m] += np.einsum("nchw,c->nhw", rows, w[m, :, ky, kx])
    return y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_narrow_product_against_float64_reference(dtype):
    from fastrnn.converters.onnx import spatial_kernels as kernels
    rng = np.random.default_rng(3)
    # 7 positions per image (not a multiple of 4: the one-position tail runs too), 2 groups.
    x = rng.standard_normal((2, 4, 3, 5)).astype(dtype)
    w = rng.standard_normal((6, 2, 2, 3)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    strides, pads, dilations, group = (2, 1), (1, 0, 0, 1), (1, 2), 2
    expected = conv_reference(x, w, b, strides, pads, dilations, group)
    oh, ow = expected.shape[2:]
    col = np.empty((2, group, oh * ow, 2 * 2 * 3), dtype)
    kernels.im2col_rows(x, col, group, oh, ow, 2, 3, *strides, *dilations, pads[0], pads[1])
    y = np.empty((2, group, 3, oh * ow), dtype)
    kernels.narrow_product(np.ascontiguousarray(w.reshape(group, 3, -1)), col,
                           b.reshape(group, 3), y, 0)
    tolerance = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(y.reshape(expected.shape), expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_narrow_tiles_and_product_against_float64_reference(dtype):
    """Channel tiles for the first rows, narrow_product for the rest: M = 2 tiles and 3 rows,
    positions 1 to 6 (a full group of four, a part of one, a part alone), two groups."""
    from fastrnn.converters.onnx import spatial_kernels as kernels
    rng = np.random.default_rng(5)
    groups, depth = 2, 13
    lanes = 32 // np.dtype(dtype).itemsize
    rows = 2 * (2 * lanes) + 3
    a = rng.standard_normal((groups, rows, depth)).astype(dtype)
    bias = rng.standard_normal((groups, rows)).astype(dtype)
    for positions in range(1, 7):
        col = rng.standard_normal((2, groups, positions, depth)).astype(dtype)
        expected = np.einsum("gmk,ngpk->ngmp", a.astype(np.float64), col.astype(np.float64)) + \
            bias.astype(np.float64)[None, :, :, None]
        out = np.full((2, groups, rows, positions), np.nan, dtype)
        first = kernels.narrow_tiles(np.ascontiguousarray(a.transpose(0, 2, 1)), col, bias, out)
        assert first == 2 * (2 * lanes)
        kernels.narrow_product(a, col, bias, out, first)
        tolerance = 1e-12 if dtype == np.float64 else 1e-5
        np.testing.assert_allclose(out, expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grouped_product_against_float64_reference(dtype):
    """The register-tiled product on shapes that take each of its paths: rows in fours and one
    by one (M = 7), a last panel narrower than the rest and a block of POSITION_BLOCK positions
    and part of one (P = POSITION_BLOCK + 37), two groups, two images, the units cut at an odd
    place (so that a unit ends partway along an image's blocks)."""
    from fastrnn.converters.onnx import spatial_kernels as kernels
    rng = np.random.default_rng(4)
    groups, rows, depth, positions = 2, 7, 11, kernels.POSITION_BLOCK + 37
    a = rng.standard_normal((groups, rows, depth)).astype(dtype)
    b = rng.standard_normal((2, groups, depth, positions)).astype(dtype)
    bias = rng.standard_normal((groups, rows)).astype(dtype)
    expected = np.einsum("gmk,ngkp->ngmp", a.astype(np.float64), b.astype(np.float64)) + \
        bias.astype(np.float64)[None, :, :, None]
    out = np.full((2, groups, rows, positions), np.nan, dtype)
    units = kernels.product_units(b)
    assert units == 2 * groups * 2
    kernels.grouped_product(a, b, bias, out, 0, 3)
    kernels.grouped_product(a, b, bias, out, 3, units)
    tolerance = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(out, expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize("mode, code", [("reflect", 0), ("edge", 1), ("wrap", 2)])
def test_pad_rows_against_numpy(mode, code):
    from fastrnn.converters.onnx import spatial_kernels as kernels
    x = np.random.default_rng(4).standard_normal((3, 5))
    for begin, end in [(0, 0), (2, 4), (4, 1)] + ([(7, 11)] if mode != "reflect" else []):
        y = np.empty((3, 5 + begin + end))
        kernels.pad_rows(x, y, begin, end, code)
        np.testing.assert_array_equal(y, np.pad(x, [(0, 0), (begin, end)], mode=mode))


@pytest.mark.parametrize("mode", ["reflect", "edge"])
def test_pad_last_axis_matches_onnxruntime(mode):
    x = normal(2, 3, 10)
    model, feeds = node_model("Pad", {"X": x}, {"pads": np.array([0, 0, 3, 0, 0, 4], np.int64)},
                              {"mode": mode})
    assert_matches_onnxruntime(model, feeds)


def test_relu_kernel_keeps_nan_and_matches_maximum():
    from fastrnn.converters.onnx.glue import relu_array
    x = np.array([np.nan, -0.0, 0.0, -np.inf, np.inf, -2.5, 3.0], np.float32)
    got = relu_array(x)
    expected = np.maximum(x, np.float32(0))
    np.testing.assert_array_equal(got, expected)
    assert not np.signbit(got[1])
    assert not np.shares_memory(got, x)
    np.testing.assert_array_equal(relu_array(np.arange(-3, 3)), np.maximum(np.arange(-3, 3), 0))


def conv_relu_model(conv_output_read_twice):
    w, b = normal(4, 3, 3, seed=1), normal(4, seed=2)
    nodes = [helper.make_node("Conv", ["X", "W", "B"], ["c"], name="conv", pads=[1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if conv_output_read_twice:
        nodes.append(helper.make_node("Neg", ["c"], ["z"], name="neg"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes, "conv_relu", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3, 9])],
        outputs, [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("read_twice", [False, True])
def test_conv_relu_fused_only_where_nothing_else_reads_the_conv(read_twice):
    model = conv_relu_model(read_twice)
    session = fastrnn.InferenceSession(model)
    op_types = [step.op_type for step in session._graph.steps]
    assert op_types == (["Conv", "Relu", "Neg"] if read_twice else ["Conv+Relu"])
    x = normal(2, 3, 9)
    x[0, 0, 4] = np.nan
    theirs = onnxruntime_session(model).run(None, {"X": x})
    for got, expected in zip(session.run(None, {"X": x}), theirs):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_conv_output_not_overwritten_by_the_next_run():
    model, _ = node_model("Conv", {"X": normal(1, 3, 12)}, {"W": normal(4, 3, 3, seed=1)},
                          {"pads": [1, 1]})
    session = fastrnn.InferenceSession(model)
    first_x, second_x = normal(1, 3, 12, seed=5), normal(1, 3, 12, seed=6)
    (first,) = session.run(None, {"X": first_x})
    kept = first.copy()
    (second,) = session.run(None, {"X": second_x})
    np.testing.assert_array_equal(first, kept)
    assert not np.shares_memory(first, second)


def _conv_chain_model(last_op):
    """X -> Conv -> Relu -> MaxPool -> Conv -> last_op (Identity or Reshape) -> Y."""
    w1, w2 = numpy_helper.from_array(normal(4, 3, 3, 3, seed=1), "W1"), \
        numpy_helper.from_array(normal(5, 4, 3, 3, seed=2), "W2")
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    nodes = [helper.make_node("Conv", ["X", "W1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"], name="relu"),
             helper.make_node("MaxPool", ["b"], ["c"], name="pool", kernel_shape=[2, 2],
                              strides=[2, 2]),
             helper.make_node("Conv", ["c", "W2"], ["d"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node(last_op, ["d", "shape"] if last_op == "Reshape" else ["d"], ["Y"],
                              name="last")]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3, 8, 8])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], [w1, w2, shape])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("last_op", ["Reshape", "Identity"])
def test_outputs_kept_between_runs_only_where_they_never_leave_a_run(last_op):
    """Conv+Relu and MaxPool read only by a MaxPool or a Conv write into buffers kept between
    runs; the last Conv, read by a Reshape (a view) or an Identity, makes a fresh array each run:
    an earlier run's answer is never overwritten, and every run matches onnxruntime."""
    model = _conv_chain_model(last_op)
    session, peer = fastrnn.InferenceSession(model), onnxruntime_session(model)
    reuse = {step.node: getattr(step.function, "reusable_output", None)
             for step in session._graph.steps}
    assert {node: output.reuse for node, output in reuse.items() if output is not None} == \
        {"conv1": True, "pool": True, "conv2": False}
    answers = []
    for seed in (5, 6, 5):
        feeds = {"X": normal(2, 3, 8, 8, seed=seed)}
        (y,) = session.run(None, feeds)
        np.testing.assert_allclose(y, peer.run(None, feeds)[0], rtol=0, atol=1e-4)
        answers.append((y, y.copy()))
    for y, kept in answers:
        np.testing.assert_array_equal(y, kept)
    np.testing.assert_array_equal(answers[0][1], answers[2][1])


def test_max_pool_over_threads_matches_onnxruntime(monkeypatch):
    # Past PARALLEL_COLUMNS (made 1 here) MaxPool's images are cut into blocks over the threads.
    from fastrnn.converters.onnx import spatial
    monkeypatch.setattr(spatial, "PARALLEL_COLUMNS", 1)
    model, feeds = node_model("MaxPool", {"X": normal(3, 2, 9, 8)}, {},
                              {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]})
    assert_matches_onnxruntime(model, feeds)
