"""Low-bit weight formats: a float32 model's weight matrices stored as bfloat16 or int8.

Only the matrices are stored in fewer bits: W_ih, W_hh and the LSTM's W_proj. Biases,
peepholes, the state and all arithmetic stay float32. Each matrix M (rows, columns) is in
fastrnn's layout (fastrnn.engine.weights): a row is one output unit.

    bfloat16   b = the high 16 bits of float32(M), rounded to nearest, ties to even (as torch's
               .to(torch.bfloat16)); the value it stands for is float32(b << 16), exactly.
               NaN stays NaN (a quiet one) and inf stays inf.
    int8       s_r = max_j |M_rj| / 127 (float32, one per row; 0 for a row of zeros)
               q_rj = round(M_rj / s_r), ties to even, in [-127, 127]; it stands for q_rj * s_r.
               The product a row makes is s_r * sum_j q_rj x_j (fastrnn.engine.products).

The plan (fastrnn.engine.plan) packs what is here for the kernels; the native file
(fastrnn.fileformat) stores it bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FLOAT_FORMATS = ("float32", "float64")
LOW_BIT_FORMATS = ("bfloat16", "int8")
WEIGHT_FORMATS = FLOAT_FORMATS + LOW_BIT_FORMATS
# The weights of a layer that a low-bit format stores in fewer bits; the rest stay float32.
MATRICES = ("w_ih", "w_hh", "w_proj")
INT8_LIMIT = 127  # symmetric: -128 is never used, so that -q is always representable


def check_format(weight_format: str) -> str:
    """`weight_format` if it is one of WEIGHT_FORMATS, else a ValueError naming them."""
    if not isinstance(weight_format, str) or weight_format not in WEIGHT_FORMATS:
        raise ValueError(f"weight format must be one of {WEIGHT_FORMATS}, got {weight_format!r}")
    return weight_format


@dataclass(frozen=True, eq=False)
class Quantised:
    """One weight matrix (rows, columns) in a low-bit format.

        format  "bfloat16" or "int8"
        data    bfloat16: uint16 (rows, columns), the bit patterns; int8: int8 (rows, columns)
        scale   int8: float32 (rows,), one per row; None for bfloat16
    """

    format: str
    data: np.ndarray
    scale: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape

    def dequantised(self) -> np.ndarray:
        """The float32 values the stored matrix stands for (see the module docstring)."""
        if self.format == "bfloat16":
            return bfloat16_to_float32(self.data)
        return self.data.astype(np.float32) * self.scale[:, None]


def float32_to_bfloat16(values: np.ndarray) -> np.ndarray:
    """uint16 bit patterns of `values` (float32) rounded to bfloat16, nearest, ties to even."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) \
        >> np.uint32(16)
    # A NaN whose payload sits in the low bits alone would round to inf: keep it a (quiet) NaN.
    quiet_nan = (bits >> np.uint32(16)) | np.uint32(0x0040)
    rounded = np.where(np.isnan(values), quiet_nan, rounded)
    return rounded.astype(np.uint16)


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """The float32 values of bfloat16 bit patterns (uint16): each a float32's high half."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def float32_to_int8(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q int8 (rows, columns), scale float32 (rows,)) of a finite float32 matrix, symmetric per
    row: scale = max|row| / 127, q = round(row / scale) ties to even (module docstring)."""
    values = np.asarray(values, np.float32)
    if not np.isfinite(values).all():
        raise ValueError("int8 weights need finite values: the matrix holds NaN or inf")
    largest = np.abs(values).max(axis=1) if values.shape[1] else np.zeros(values.shape[0],
                                                                          np.float32)
    scale = (largest / np.float32(INT8_LIMIT)).astype(np.float32)
    divisor = np.where(scale > 0, scale, np.float32(1))[:, None]
    q = np.rint(values / divisor)
    return np.clip(q, -INT8_LIMIT, INT8_LIMIT).astype(np.int8), scale


def quantise(values: np.ndarray, weight_format: str) -> Quantised:
    """A float32 matrix in `weight_format` ("bfloat16" or "int8")."""
    if weight_format == "bfloat16":
        return Quantised("bfloat16", float32_to_bfloat16(values))
    if weight_format == "int8":
        return Quantised("int8", *float32_to_int8(values))
    raise ValueError(f"low-bit weight format must be one of {LOW_BIT_FORMATS}, got "
                     f"{weight_format!r}")


def quantise_layers(layers, weight_format: str) -> list[dict[str, Quantised]]:
    """Per layer-direction (LayerWeights, float32), {name: Quantised} of its matrices."""
    return [{name: quantise(array, weight_format) for name, array in w.arrays().items()
             if name in MATRICES} for w in layers]


def matrix_dtype(weight_format: str) -> np.dtype:
    """The dtype of a Quantised matrix's data in this format (uint16 patterns, or int8)."""
    return np.dtype({"bfloat16": np.uint16, "int8": np.int8}[weight_format])


def storage_dtype(weight_format: str) -> np.dtype:
    """The dtype of a plan's flat weight array in this format (fastrnn.engine.plan): bfloat16
    packs two patterns a uint32 word (fastrnn.engine.products)."""
    return np.dtype({"bfloat16": np.uint32, "int8": np.int8}.get(weight_format, weight_format))
