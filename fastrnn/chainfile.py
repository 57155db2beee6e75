"""A whole chain (fastrnn.Chain) in fastrnn's native model file: Chain.save and fastrnn.load.

The file is the native format of fastrnn.fileformat, same preamble, checks and atomic write:

    bytes 0-7     b"FASTRNN\\0"
    bytes 8-11    format version, uint32 little-endian
    bytes 12-19   header length N, uint64 little-endian
    bytes 20-23   CRC-32 of the header, uint32 little-endian
    next N bytes  header, UTF-8 JSON padded with spaces to a multiple of 8 bytes:
                  {"chain": {"layers": [spec, ...], "input_layout", "output_layout"},
                   "dtype": "float32" | "float64",
                   "arrays": [{"name": "<layer path>.<weight name>", "shape", "offset"}],
                   "data_bytes", "crc32", "fastrnn_version"}
    then          the arrays, little-endian, C order, back to back

A spec is the layer's config() (its "type" and settings; a recurrent layer's is its stack's
Config.to_json(), a residual's lists its inner layers' specs). A layer's path is its index, and
an inner layer of a residual at index i is "i.j": Linear 0's weight is "0.weight", a recurrent
layer 2's first w_ih "2.0.w_ih". The "chain" key is what tells a chain's file from a single
model's. Weights come back bit for bit, so a loaded chain has the fingerprint of the saved one
and takes its snapshots.
"""

from __future__ import annotations

import json
import os
import zlib
from typing import TYPE_CHECKING

import numpy as np

from fastrnn import fileformat
from fastrnn.version import __version__

if TYPE_CHECKING:
    from fastrnn.chain import Chain

_CHAIN_KEY = "chain"


def _walk(layers, prefix=""):
    """(specs, [(name, array)]) of a list of layers, residuals' inner layers nested."""
    from fastrnn.layers import Residual
    specs, arrays = [], []
    for index, layer in enumerate(layers):
        path = f"{prefix}{index}"
        if isinstance(layer, Residual):
            inner, inner_arrays = _walk(layer.layers, f"{path}.")
            specs.append({"type": "residual", "layers": inner})
            arrays += inner_arrays
            continue
        specs.append(layer.config())
        arrays += [(f"{path}.{name}", array) for name, array in sorted(layer.weights().items())]
    return specs, arrays


def save(chain: Chain, path: str | os.PathLike) -> None:
    """Write `chain` to `path`, every layer and weight (see the module docstring)."""
    path = fileformat._as_path(path)
    dtype = chain.dtype.newbyteorder("<")
    specs, arrays = _walk(chain.layers)
    entries, chunks, offset = [], [], 0
    for name, array in arrays:
        data = np.ascontiguousarray(array, dtype=dtype).tobytes()
        entries.append({"name": name, "shape": list(array.shape), "offset": offset})
        chunks.append(data)
        offset += len(data)
    data = b"".join(chunks)
    header = json.dumps({
        _CHAIN_KEY: {"layers": specs, "input_layout": chain.input_layout,
                     "output_layout": chain.output_layout},
        "dtype": chain.dtype.name, "arrays": entries, "data_bytes": len(data),
        "crc32": zlib.crc32(data), "fastrnn_version": __version__,
    }).encode()
    header += b" " * (-(fileformat._PREFIX.size + len(header)) % fileformat._ALIGNMENT)
    blob = fileformat._PREFIX.pack(fileformat.MAGIC, fileformat.FORMAT_VERSION, len(header),
                                   zlib.crc32(header)) + header + data
    fileformat._write_atomically(path, blob)


def holds_chain(path: str | os.PathLike) -> bool:
    """Whether `path` is a native file whose header says it holds a chain (read from its
    preamble and header only; a damaged or foreign file is False, for fastrnn.load to report)."""
    try:
        file, size = fileformat._open_model_file(fileformat._as_path(path))
    except (OSError, ValueError, TypeError):
        return False
    with file:
        prefix = file.read(fileformat._PREFIX.size)
        if len(prefix) < fileformat._PREFIX.size or prefix[:8] != fileformat.MAGIC:
            return False
        _, _, header_size, header_crc = fileformat._PREFIX.unpack(prefix)
        if fileformat._PREFIX.size + header_size > size:
            return False
        header_bytes = file.read(header_size)
    if zlib.crc32(header_bytes) != header_crc:
        return False
    try:
        header = json.loads(header_bytes.decode())
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(header, dict) and _CHAIN_KEY in header


def load(path: str | os.PathLike) -> Chain:
    """The Chain a file written by Chain.save holds, bit for bit; ValueError naming what is wrong
    for a damaged file (its checksums, sizes and every layer's spec and arrays are checked)."""
    from fastrnn.chain import Chain
    path = fileformat._as_path(path)
    _, header, data = fileformat.read_header(path)
    try:
        spec = header[_CHAIN_KEY]
        if header["dtype"] not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {header['dtype']!r}")
        dtype = np.dtype(header["dtype"])
        entries = header["arrays"]
        if not isinstance(entries, list):
            raise ValueError("'arrays' must be a list of array entries")
        arrays = {}
        for entry in entries:
            name = entry["name"]
            if not isinstance(name, str) or name in arrays:
                raise ValueError(f"array name {name!r} is not a string or is listed twice")
            arrays[name] = fileformat._read_array(entry, data, dtype)
        layers = _build(spec["layers"], arrays, dtype, "")
        if arrays:
            raise ValueError(f"arrays {sorted(arrays)} belong to no layer")
        return Chain(layers, input_layout=spec["input_layout"],
                     output_layout=spec["output_layout"])
    except (KeyError, TypeError, IndexError, ValueError, OverflowError) as error:
        raise ValueError(f"{path} has a malformed chain header: {error}") from None


def _build(specs, arrays, dtype, prefix):
    from fastrnn.engine.weights import Config, LayerWeights
    from fastrnn.layers import (Activation, Affine, Conv1d, LastStep, LayerNorm, Linear,
                                Recurrent, Residual)
    from fastrnn.model import Model
    if not isinstance(specs, list) or not specs:
        raise ValueError(f"layers{' of ' + prefix[:-1] if prefix else ''} must be a non-empty "
                         f"list")
    layers = []
    for index, spec in enumerate(specs):
        path = f"{prefix}{index}"

        def take(name):
            key = f"{path}.{name}"
            if key not in arrays:
                raise ValueError(f"layer {path} ({spec.get('type')!r}) has no array {key!r}")
            return arrays.pop(key)

        kind = spec["type"]
        if kind == "linear":
            layer = Linear(take("weight"), take("bias"), dtype=dtype)
        elif kind == "conv1d":
            layer = Conv1d(take("weight"), take("bias"), dilation=spec["dilation"],
                           groups=spec["groups"], padding=tuple(spec["padding"]), dtype=dtype)
        elif kind == "activation":
            parameters = {key: value for key, value in spec.items()
                          if key not in ("type", "name", "features")}
            slopes = take("slopes") if spec["name"] == "prelu" else None
            layer = Activation(spec["name"], spec["features"], slopes=slopes, dtype=dtype,
                               **parameters)
        elif kind == "layer_norm":
            layer = LayerNorm(spec["features"], take("weight"), take("bias"), eps=spec["eps"],
                              dtype=dtype)
        elif kind == "affine":
            layer = Affine(take("scale"), take("shift"), dtype=dtype)
        elif kind == "recurrent":
            config = Config.from_json({key: value for key, value in spec.items()
                                       if key not in ("type", "initial_state")})
            start = None
            if spec.get("initial_state"):
                start = (take("initial_h"),
                         take("initial_c") if f"{path}.initial_c" in arrays else None)
            weights = []
            for ld in range(config.num_layers * config.num_directions):
                names = {key[len(f"{path}.{ld}."):] for key in arrays
                         if key.startswith(f"{path}.{ld}.")}
                weights.append(LayerWeights(**{name: take(f"{ld}.{name}") for name in names}))
            layer = Recurrent(Model(config, weights, dtype=dtype), initial_state=start)
        elif kind == "residual":
            layer = Residual(_build(spec["layers"], arrays, dtype, f"{path}."))
        elif kind == "last_step":  # Keras's return_sequences=False
            layer = LastStep(spec["features"], dtype=dtype)
        else:
            raise ValueError(f"layer {path} has an unknown type {kind!r}")
        if kind != "residual" and json.loads(json.dumps(layer.config())) != spec:
            raise ValueError(f"layer {path}'s spec {spec} does not match the layer its arrays "
                             f"make ({layer.config()})")
        layers.append(layer)
    return layers
