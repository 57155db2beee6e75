"""fastrnn's native model file: one file, no pickle, bit-exact round trips.

    bytes 0-7     b"FASTRNN\\0"
    bytes 8-11    format version, uint32 little-endian
    bytes 12-19   header length N, uint64 little-endian
    bytes 20-23   CRC-32 of the header, uint32 little-endian
    next N bytes  header, UTF-8 JSON padded with spaces to a multiple of 8 bytes:
                  {"config": Config.to_json(), "dtype": "float32" | "float64",
                   "arrays": [{"name": "<layer index>.<weight name>", "shape", "offset"}],
                   "data_bytes", "crc32", "fastrnn_version"}
    then          the arrays, little-endian, C order, back to back from offset 0 of the data
                  section (which therefore starts 8-byte aligned)

Weights are stored in fastrnn's own layout (fastrnn.engine.weights), layers listed as PyTorch names them
(l0, l0_reverse, l1, ...). The two CRCs catch truncated and garbled files; every array entry is
checked against the data section before it is read. Files are written to a temporary name and
renamed, so an interrupted save never leaves a half-written model behind.
"""

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np

MAGIC = b"FASTRNN\0"
FORMAT_VERSION = 1
SUFFIX = ".fastrnn"
_PREFIX = struct.Struct("<8sIQI")
_ALIGNMENT = 8
_DTYPES = ("float32", "float64")
_WEIGHT_NAMES = ("w_ih", "w_hh", "b_ih", "b_hh", "peephole", "w_proj")


def save(model, path):
    """Write `model` to `path` (any name; ".fastrnn" is the convention)."""
    from fastrnn import __version__
    dtype = np.dtype(model.dtype).newbyteorder("<")
    entries, chunks, offset = [], [], 0
    for index, weights in enumerate(model.layers):
        for name, array in weights.arrays().items():
            data = np.ascontiguousarray(array, dtype=dtype).tobytes()
            entries.append({"name": f"{index}.{name}", "shape": list(array.shape),
                            "offset": offset})
            chunks.append(data)
            offset += len(data)
    data = b"".join(chunks)
    config = model.config.to_json()
    # Activation parameters as floats, so that equal models write equal bytes.
    config["activations"] = [[str(name), float(alpha), float(beta)]
                             for name, alpha, beta in config.get("activations", ())]
    header = json.dumps({
        "config": config, "dtype": np.dtype(model.dtype).name,
        "arrays": entries, "data_bytes": len(data), "crc32": zlib.crc32(data),
        "fastrnn_version": __version__,
    }).encode()
    header += b" " * (-(_PREFIX.size + len(header)) % _ALIGNMENT)
    blob = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), zlib.crc32(header)) + header + data
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_bytes(blob)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def read_header(path):
    """(format version, parsed header, raw data section) of a model file, checked for integrity."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such model file: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a fastrnn model file")
    blob = path.read_bytes()
    if blob[:len(MAGIC)] != MAGIC:
        raise ValueError(f"{path} is not a fastrnn model file (expected it to start with "
                         f"{MAGIC!r}, as files written by Model.save do)")
    if len(blob) < _PREFIX.size:
        raise ValueError(f"{path} is truncated: {len(blob)} bytes, shorter than the "
                         f"{_PREFIX.size}-byte preamble")
    _, version, header_size, header_crc = _PREFIX.unpack_from(blob)
    if version != FORMAT_VERSION:
        newer = " (written by a newer fastrnn)" if version > FORMAT_VERSION else ""
        raise ValueError(f"{path} has format version {version}{newer}; this fastrnn reads "
                         f"version {FORMAT_VERSION}")
    header_end = _PREFIX.size + header_size
    if header_end > len(blob):
        raise ValueError(f"{path} is truncated: its header runs past the end of the file")
    header_bytes = blob[_PREFIX.size:header_end]
    if zlib.crc32(header_bytes) != header_crc:
        raise ValueError(f"{path} has a damaged header: its checksum does not match")
    try:
        header = json.loads(header_bytes.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} has a damaged header: {error}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} has a malformed header: expected a JSON object")
    data = blob[header_end:]
    if len(data) != header.get("data_bytes"):
        raise ValueError(f"{path} is truncated or padded: {len(data)} bytes of weights, expected "
                         f"{header.get('data_bytes')}")
    if zlib.crc32(data) != header.get("crc32"):
        raise ValueError(f"{path} is damaged: the weights' checksum does not match")
    return version, header, data


def load(path):
    """Read a Model written by Model.save; the weights come back bit for bit."""
    from fastrnn.model import Model
    from fastrnn.engine.weights import Config, LayerWeights, layer_names
    _, header, data = read_header(path)
    try:
        config = Config.from_json(header["config"])
        if header["dtype"] not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {header['dtype']!r}")
        dtype = np.dtype(header["dtype"])
        layers = [dict() for _ in layer_names(config)]
        for entry in header["arrays"]:
            layers[_layer_index(entry["name"], len(layers))].update(
                [_read_array(entry, data, dtype)])
        return Model(config, [LayerWeights(**w) for w in layers], dtype=dtype)
    except (KeyError, TypeError, IndexError, ValueError) as error:
        raise ValueError(f"{path} has a malformed header: {error}") from None


def _layer_index(name, count):
    index, _, weight = str(name).partition(".")
    if not index.isdigit() or int(index) >= count or weight not in _WEIGHT_NAMES:
        raise ValueError(f"array name {name!r} is not '<layer index below {count}>.<one of "
                         f"{', '.join(_WEIGHT_NAMES)}>'")
    return int(index)


def _read_array(entry, data, dtype):
    """(weight name, native-order copy) of one array entry, checked against the data section."""
    shape = tuple(entry["shape"])
    offset = entry["offset"]
    if not all(isinstance(n, int) and n >= 0 for n in shape + (offset,)):
        raise ValueError(f"array {entry['name']!r}: shape and offset must be non-negative "
                         f"integers, got {shape} and {offset!r}")
    count = int(np.prod(shape, dtype=np.int64))
    if offset + count * dtype.itemsize > len(data):
        raise ValueError(f"array {entry['name']!r} runs past the end of the data section")
    stored = np.frombuffer(data, dtype.newbyteorder("<"), count, offset).reshape(shape)
    return entry["name"].partition(".")[2], stored.astype(dtype, copy=False)  # packing copies it
