"""Checks shared by every public entry point. Kernels trust their inputs; these make that safe.

Floating inputs are converted to the model's dtype, as they come (numpy, torch tensors, lists):
float16 and bfloat16 widen to float32 exactly; a cast that rounds (float64 into a float32 model,
longdouble into a float64 one) warns once per process and dtype pair, with a PrecisionWarning,
and goes ahead. Anything not floating is a TypeError. Shapes, lengths and states that do not fit
are a ValueError saying what was expected.
"""

import sys
import warnings

import numpy as np


class PrecisionWarning(UserWarning):
    """An input was rounded to the model's narrower dtype (e.g. float64 into a float32 model)."""


# (from dtype, to dtype) pairs already warned about: one warning per process and pair, since a
# service feeding float64 would otherwise warn on every call's new stack location.
_WARNED_CASTS = set()


def warn_outside_fastrnn(message, category):
    """warnings.warn, attributed to the first caller outside fastrnn (the user's line)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_globals.get("__name__", "").startswith("fastrnn"):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def as_float_array(value, dtype, name):
    """`value` as a C-contiguous array of `dtype`, from any floating array-like (numpy, torch)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch, without importing torch
        value = _torch_to_numpy(value)
    try:
        array = np.asarray(value)
    except Exception as error:  # ragged lists and the like
        raise TypeError(f"{name} must be a floating-point array, got {type(value).__name__}: "
                        f"{error}") from None
    if array.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {array.dtype}")
    if array.dtype != dtype:
        _check_cast(array.dtype, np.dtype(dtype), name)
    return np.ascontiguousarray(array, dtype=dtype)


def _check_cast(source, target, name):
    """PrecisionWarning, once per process and pair, when casting source to target rounds."""
    pair = (source, target)
    if pair in _WARNED_CASTS or np.can_cast(source, target, "safe"):
        return
    _WARNED_CASTS.add(pair)
    wider = (", or use a float64 model for float64 results (fastrnn.from_torch(module.double()), "
             "or float64 weights)" if source == np.float64 else "")
    warn_outside_fastrnn(
        f"{name} is {source.name} and the model computes in {target.name}: inputs are rounded "
        f"to {target.name} (every {source.name} input will be; this warning is shown once). "
        f"Pass {target.name} arrays to avoid the cast{wider}.", PrecisionWarning)


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


def is_torch_tensor(value):
    """Whether `value` is a torch tensor (no torch import: a tensor exists only once it is loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)
