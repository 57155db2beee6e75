"""fastrnn.engine.simd: vector loads, stores, splats and fused multiply-adds in jitted code, for
both dtypes, against numpy."""

import numba
import numpy as np
import pytest

from fastrnn.engine import simd


@numba.njit
def _multiply_add(vectors, scales, out, at):
    """out[at:at + lanes] = fma(vectors[at + lanes:], scales[0], splat(scales[1])) + fma of the
    first lanes values with scales[2]: each intrinsic once."""
    lanes = simd.lanes(out)
    total = simd.fma(simd.load(vectors, at + lanes), scales[0], simd.splat(scales[1]))
    total = simd.fma(simd.load(vectors, at), scales[2], total)
    simd.store(out, at, total)
    return lanes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vectors_compute_what_numpy_computes(dtype, rng):
    lanes = simd.VECTOR_BYTES // np.dtype(dtype).itemsize
    vectors = rng.standard_normal(3 + 2 * lanes).astype(dtype)
    scales = rng.standard_normal(3).astype(dtype)
    out = np.full(3 + 2 * lanes, -7.0, dtype)
    assert _multiply_add(vectors, scales, out, 3) == lanes
    # Fused: each term rounded once; float64 holds the float32 result's two products exactly.
    wide = vectors.astype(np.float64)
    expected = (wide[3 + lanes:3 + 2 * lanes] * scales[0] + scales[1]).astype(dtype)
    expected = (wide[3:3 + lanes] * scales[2] + expected.astype(np.float64)).astype(dtype)
    if dtype == np.float32:
        np.testing.assert_array_equal(out[3:3 + lanes], expected)
    else:
        np.testing.assert_allclose(out[3:3 + lanes], expected, rtol=1e-15, atol=0)
    # The store wrote its lanes and nothing around them.
    np.testing.assert_array_equal(out[:3], -7.0)
    np.testing.assert_array_equal(out[3 + lanes:], -7.0)
