"""Checks shared by every public entry point. Kernels trust their inputs; these make that safe.

Floating inputs are converted to the model's dtype; anything else is a TypeError. Shapes, lengths
and states that do not fit are a ValueError saying what was expected.
"""

import numpy as np


def as_float_array(value, dtype, name):
    """`value` as a C-contiguous array of `dtype`, from any floating array-like (numpy, torch)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        value = _torch_to_numpy(value)
    try:
        array = np.asarray(value)
    except Exception as error:  # ragged lists and the like
        raise TypeError(f"{name} must be a floating-point array, got {type(value).__name__}: "
                        f"{error}") from None
    if array.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=dtype)


def _torch_to_numpy(tensor):
    """A torch tensor as numpy; floating types numpy lacks (bfloat16, float8) are widened first."""
    tensor = tensor.detach().cpu()
    try:
        return tensor.numpy()
    except TypeError:
        if tensor.is_floating_point():
            return tensor.float().numpy()
        raise


def check_shape(array, expected, name):
    """ValueError unless array.shape == expected; the message names both."""
    if array.shape != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {array.shape}")


def as_lengths(lengths, batch, steps):
    """Per-row lengths as int64, each in 1..steps; None means every row is `steps` long."""
    if lengths is None:
        return np.full(batch, steps, np.int64)
    if hasattr(lengths, "detach") and hasattr(lengths, "cpu"):
        lengths = lengths.detach().cpu().numpy()
    array = np.asarray(lengths)
    if array.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers, got dtype {array.dtype}")
    if array.shape != (batch,):
        raise ValueError(f"lengths must have one entry per batch row, shape ({batch},), "
                         f"got {array.shape}")
    if batch and (array.min() < 1 or array.max() > steps):
        raise ValueError(f"lengths must lie in 1..{steps} (the sequence length), got "
                         f"min {array.min()}, max {array.max()}")
    # Always a fresh array: a caller's read-only or non-native array would make Numba compile
    # the driver again for that array type.
    return np.array(array, dtype=np.int64, order="C", copy=True)
