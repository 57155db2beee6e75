"""fastrnn's native model file: one file, no pickle, bit-exact round trips.

    bytes 0-7     b"FASTRNN\\0"
    bytes 8-11    format version, uint32 little-endian
    bytes 12-19   header length N, uint64 little-endian
    next N bytes  header, UTF-8 JSON: {"config", "dtype", "arrays": [{"name", "shape", "offset"}],
                  "data_bytes", "crc32", "fastrnn_version"}
    then          the arrays, little-endian, back to back from offset 0 of the data section

The CRC of the data section catches truncated and garbled files.
"""

import json
import struct
import zlib
from pathlib import Path

import numpy as np

MAGIC = b"FASTRNN\0"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIQ")


def save(model, path):
    """Write `model` to `path`."""
    from fastrnn import __version__
    dtype = model.dtype.newbyteorder("<")
    entries, chunks, offset = [], [], 0
    for index, weights in enumerate(model.layers):
        for name, array in weights.arrays().items():
            data = np.ascontiguousarray(array, dtype=dtype).tobytes()
            entries.append({"name": f"{index}.{name}", "shape": list(array.shape),
                            "offset": offset})
            chunks.append(data)
            offset += len(data)
    data = b"".join(chunks)
    header = json.dumps({
        "config": model.config.to_json(), "dtype": model.dtype.name, "arrays": entries,
        "data_bytes": len(data), "crc32": zlib.crc32(data), "fastrnn_version": __version__,
    }).encode()
    Path(path).write_bytes(_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header + data)


def read_header(path):
    """The parsed header and the raw data section of a model file, checked for integrity."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such model file: {path}")
    blob = path.read_bytes()
    if len(blob) < _PREFIX.size or blob[:8] != MAGIC:
        raise ValueError(f"{path} is not a fastrnn model file (expected it to start with {MAGIC!r})")
    _, version, header_size = _PREFIX.unpack_from(blob)
    if version != FORMAT_VERSION:
        raise ValueError(f"{path} has format version {version}; this fastrnn reads version "
                         f"{FORMAT_VERSION}")
    header_end = _PREFIX.size + header_size
    if header_end > len(blob):
        raise ValueError(f"{path} is truncated: its header runs past the end of the file")
    try:
        header = json.loads(blob[_PREFIX.size:header_end].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} has a damaged header: {error}") from None
    data = blob[header_end:]
    if len(data) != header.get("data_bytes"):
        raise ValueError(f"{path} is truncated or padded: {len(data)} bytes of weights, expected "
                         f"{header.get('data_bytes')}")
    if zlib.crc32(data) != header.get("crc32"):
        raise ValueError(f"{path} is damaged: the weights' checksum does not match")
    return header, data


def load(path):
    """Read a Model written by Model.save."""
    from fastrnn.model import Model
    from fastrnn.weights import Config, LayerWeights, layer_names
    header, data = read_header(path)
    try:
        config = Config.from_json(header["config"])
        dtype = np.dtype(header["dtype"]).newbyteorder("<")
        layers = [dict() for _ in layer_names(config)]
        for entry in header["arrays"]:
            index, name = entry["name"].split(".", 1)
            count = int(np.prod(entry["shape"], dtype=np.int64))
            array = np.frombuffer(data, dtype, count, entry["offset"]).reshape(entry["shape"])
            layers[int(index)][name] = array.astype(dtype.newbyteorder("="))
        return Model(config, [LayerWeights(**w) for w in layers], dtype=dtype.newbyteorder("="))
    except (KeyError, TypeError, IndexError) as error:
        raise ValueError(f"{path} has a malformed header: {error!r}") from None
