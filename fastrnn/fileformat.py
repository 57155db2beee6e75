"""fastrnn's native model file: one file, no pickle, bit-exact round trips.

    bytes 0-7     b"FASTRNN\\0"
    bytes 8-11    format version, uint32 little-endian
    bytes 12-19   header length N, uint64 little-endian
    bytes 20-23   CRC-32 of the header, uint32 little-endian
    next N bytes  header, UTF-8 JSON padded with spaces to a multiple of 8 bytes:
                  {"config": Config.to_json(), "dtype": "float32" | "float64",
                   "arrays": [{"name": "<layer index>.<weight name>", "shape", "offset"}],
                   "data_bytes", "crc32", "fastrnn_version",
                   "assumptions" (only when the converter assumed something the weights cannot
                   tell: {"kind": "rnn_tanh", "batch_first": false}, Model.assumptions)}
    then          the arrays, little-endian, C order, back to back from offset 0 of the data
                  section (which therefore starts 8-byte aligned)

Weights are stored in fastrnn's own layout (fastrnn.engine.weights), layers listed as PyTorch
names them (l0, l0_reverse, l1, ...). The two CRCs catch truncated and garbled files; every array
entry is checked against the data section before it is read. Files are written to a temporary
file of a unique name in the target directory, flushed to disk and renamed over the target, so an
interrupted save, or two processes saving to one path at once, never leaves a half-written model.

A model with low-bit weights (Model.with_weights, fastrnn.engine.quantise) is written as format
version 2, so that a fastrnn that predates them refuses it by its version: the header adds
"weights": "bfloat16" | "int8", its "dtype" stays "float32" (biases, peepholes, arithmetic), and
each matrix entry (w_ih, w_hh, w_proj) says its own "dtype": "uint16" (bfloat16 bit patterns) or
"int8", an int8 matrix followed by its float32 row scales "<layer index>.<matrix>_scale"; every
array starts 8-byte aligned. Version 1 files (float weights) are written and read as before.

Loading is bounded by the file: only a regular file is opened (a FIFO or a device such as
/dev/zero is refused at once), the magic bytes come from a bounded read of the preamble, and every
size the file declares (header length, data length, layer count, array shapes) is checked against
the file's real size before anything of that size is read or allocated.
"""

import json
import math
import os
import stat
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

from fastrnn.engine.quantise import LOW_BIT_FORMATS, MATRICES, Quantised, matrix_dtype
from fastrnn.engine.weights import Config, LayerWeights, check_layers
from fastrnn.version import __version__
from fastrnn.paths import open_regular_file

MAGIC = b"FASTRNN\0"
FORMAT_VERSION = 1
LOW_BIT_FORMAT_VERSION = 2  # written for low-bit weights only; both are read
_READABLE_VERSIONS = (FORMAT_VERSION, LOW_BIT_FORMAT_VERSION)
SUFFIX = ".fastrnn"
_PREFIX = struct.Struct("<8sIQI")
_ALIGNMENT = 8
_DTYPES = ("float32", "float64")
_WEIGHT_NAMES = ("w_ih", "w_hh", "b_ih", "b_hh", "peephole", "w_proj")
_SCALE_NAMES = tuple(f"{name}_scale" for name in MATRICES)
_REQUIRED_PER_LAYER = 4  # w_ih, w_hh, b_ih, b_hh


def save(model, path):
    """Write `model` to `path` (any name; ".fastrnn" is the convention).

    The bytes go to a temporary file of a unique name in the same directory, are flushed to disk,
    and the file is renamed over `path`: a reader (or another process saving at the same time)
    sees the old file or a whole new one, and a crash leaves no half-written model at `path`.
    """
    path = _as_path(path)
    dtype = np.dtype(model.dtype).newbyteorder("<")
    encoded = model.plan.encoded
    entries, chunks, offset = [], [], 0

    def add(name, array, entry_dtype, labelled):
        nonlocal offset
        data = np.ascontiguousarray(array, dtype=entry_dtype.newbyteorder("<")).tobytes()
        entry = {"name": name, "shape": list(array.shape), "offset": offset}
        if labelled:
            entry["dtype"] = entry_dtype.name
            data += b"\0" * (-len(data) % _ALIGNMENT)
        entries.append(entry)
        chunks.append(data)
        offset += len(data)

    for index, weights in enumerate(model.layers):
        for name, array in weights.arrays().items():
            if encoded is not None and name in MATRICES:
                stored = encoded[index][name]
                add(f"{index}.{name}", stored.data, stored.data.dtype, True)
                if stored.scale is not None:
                    add(f"{index}.{name}_scale", stored.scale, np.dtype(np.float32), True)
            else:
                add(f"{index}.{name}", array, dtype, encoded is not None)
    data = b"".join(chunks)
    config = model.config.to_json()
    # Activation parameters as floats, so that equal models write equal bytes.
    config["activations"] = [[str(name), float(alpha), float(beta)]
                             for name, alpha, beta in config.get("activations", ())]
    fields = {"config": config, "dtype": np.dtype(model.dtype).name}
    if encoded is not None:
        fields["weights"] = model.plan.weight_format
    if model.assumptions:
        fields["assumptions"] = dict(model.assumptions)
    header = json.dumps({
        **fields, "arrays": entries, "data_bytes": len(data), "crc32": zlib.crc32(data),
        "fastrnn_version": __version__,
    }).encode()
    header += b" " * (-(_PREFIX.size + len(header)) % _ALIGNMENT)
    version = FORMAT_VERSION if encoded is None else LOW_BIT_FORMAT_VERSION
    blob = _PREFIX.pack(MAGIC, version, len(header), zlib.crc32(header)) + header + data
    _write_atomically(path, blob)


def _write_atomically(path, blob):
    directory = path.parent
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)  # an overwritten file keeps its permissions
    except OSError:
        mode = 0o666 & ~_umask()                   # as open() would create it
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as error:
        raise _save_error(error, path) from None
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(blob)
            file.flush()
            os.fchmod(file.fileno(), mode)  # mkstemp makes the file 0600
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException as error:
        try:
            os.unlink(temp)
        except OSError:
            pass
        if isinstance(error, OSError):
            raise _save_error(error, path) from None
        raise
    _fsync_directory(directory)


def _save_error(error, path):
    """The OSError `error` (same type and errno) with a message naming the user's path, never the
    temporary file's."""
    reason = error.strerror or str(error)
    return type(error)(error.errno, f"cannot save the model to {path}: {reason}")


def _fsync_directory(directory):
    """Flush the rename to disk; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask():
    """The process's umask, read without changing it where the system tells it (Linux 4.7+)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _as_path(path):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"a model path must be a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


def _open_model_file(path):
    """(binary file, size) for a regular file at `path`; a clear error for anything else."""
    return open_regular_file(path, "fastrnn model file")


def _read_exactly(file, count, path, what):
    data = file.read(count)
    if len(data) != count:
        raise ValueError(f"{path} is truncated: {what} ends after {len(data)} of {count} bytes "
                         f"(the file changed while it was read?)")
    return data


def starts_with_magic(path):
    """Whether `path` is a regular file that starts with MAGIC (read from its first bytes only)."""
    try:
        file, size = _open_model_file(_as_path(path))
    except (OSError, ValueError):
        return False
    with file:
        return file.read(len(MAGIC)) == MAGIC


def read_header(path):
    """(format version, parsed header, raw data section) of a model file, checked for integrity.

    Every size the file declares is checked against the file's real size before anything of that
    size is read, so a small damaged or hostile file never makes a large allocation.
    """
    path = _as_path(path)
    file, size = _open_model_file(path)
    with file:
        prefix = file.read(_PREFIX.size)  # the magic bytes first, from a bounded read
        if prefix[:len(MAGIC)] != MAGIC:
            raise ValueError(f"{path} is not a fastrnn model file (expected it to start with "
                             f"{MAGIC!r}, as files written by Model.save do)")
        if len(prefix) < _PREFIX.size:
            raise ValueError(f"{path} is truncated: {len(prefix)} bytes, shorter than the "
                             f"{_PREFIX.size}-byte preamble")
        _, version, header_size, header_crc = _PREFIX.unpack(prefix)
        if version not in _READABLE_VERSIONS:
            newest = max(_READABLE_VERSIONS)
            newer = " (written by a newer fastrnn)" if version > newest else ""
            raise ValueError(f"{path} has format version {version}{newer}; this fastrnn reads "
                             f"versions {', '.join(map(str, _READABLE_VERSIONS))}")
        header_end = _PREFIX.size + header_size
        if header_end > size:
            raise ValueError(f"{path} is truncated: its header ({header_size} bytes) runs past "
                             f"the end of the file ({size} bytes)")
        header_bytes = _read_exactly(file, header_size, path, "the header")
        if zlib.crc32(header_bytes) != header_crc:
            raise ValueError(f"{path} has a damaged header: its checksum does not match")
        header = _parse_header(header_bytes, path)
        data_bytes = header.get("data_bytes")
        if not _is_count(data_bytes) or data_bytes != size - header_end:
            raise ValueError(f"{path} is truncated or padded: {size - header_end} bytes of "
                             f"weights, expected {data_bytes!r}")
        data = _read_exactly(file, data_bytes, path, "the weights")
    if zlib.crc32(data) != header.get("crc32"):
        raise ValueError(f"{path} is damaged: the weights' checksum does not match")
    return version, header, data


def _parse_header(header_bytes, path):
    try:
        header = json.loads(header_bytes.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} has a damaged header: {error}") from None
    except RecursionError:  # JSON nested deeper than Python's recursion limit
        raise ValueError(f"{path} has a malformed header: its JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} has a malformed header: expected a JSON object")
    return header


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read(path):
    """(config, layers, dtype) of a file written by Model.save, every shape checked; the weights
    come back bit for bit (low-bit matrices as the float32 values they stand for: read_encoded
    gives them as stored)."""
    return read_encoded(path)[:3]


# What a converter may assume, and the values it can assume (fastrnn.converters.pytorch).
_ASSUMPTIONS = {"kind": ("lstm", "gru", "rnn_tanh", "rnn_relu"), "batch_first": (False, True)}


def _assumptions(header, path):
    assumptions = header.get("assumptions", {})
    def known(name, value):  # type checked too: JSON's 0 is not false
        return any(type(value) is type(v) and value == v for v in _ASSUMPTIONS.get(name, ()))

    if not isinstance(assumptions, dict) or not all(known(*item) for item in assumptions.items()):
        raise ValueError(f"{path} has a malformed header: 'assumptions' must map kind and "
                         f"batch_first to what a converter can assume, got {assumptions!r}")
    return assumptions


def read_encoded(path):
    """(config, layers, dtype, encoded, assumptions) of a file written by Model.save: `encoded`
    is None for float weights, else per layer-direction {name: Quantised} of its matrices, bit
    for bit as saved (and `layers` holds the values they stand for); `assumptions` is
    Model.assumptions as saved. fastrnn.load builds the Model."""
    path = _as_path(path)
    version, header, data = read_header(path)
    assumptions = _assumptions(header, path)
    try:
        config = Config.from_json(header["config"])
        if header["dtype"] not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {header['dtype']!r}")
        dtype = np.dtype(header["dtype"])
        weight_format = header.get("weights")
        if (version == LOW_BIT_FORMAT_VERSION) != (weight_format is not None):
            raise ValueError(f"format version {version} with weights {weight_format!r}")
        if weight_format is not None and (weight_format not in LOW_BIT_FORMATS
                                          or dtype != np.float32):
            raise ValueError(f"weights must be one of {LOW_BIT_FORMATS} with dtype float32, got "
                             f"{weight_format!r} with {dtype.name}")
        entries = header["arrays"]
        if not isinstance(entries, list):
            raise ValueError(f"'arrays' must be a list of array entries, got "
                             f"{type(entries).__name__}")
        _check_sizes(config, dtype, len(entries), len(data), weight_format)
        layers = [dict() for _ in range(config.num_layers * config.num_directions)]
        for entry in entries:
            index, weight = _array_name(entry, len(layers), weight_format == "int8")
            if weight in layers[index]:
                raise ValueError(f"array {entry['name']!r} is listed twice")
            layers[index][weight] = _read_array(entry, data,
                                                _entry_dtype(entry, weight, dtype, weight_format))
        encoded = None
        if weight_format is not None:
            encoded = [_encoded_matrices(arrays, weight_format) for arrays in layers]
        layers = check_layers(config, [LayerWeights(**w) for w in layers], dtype)
        return config, layers, dtype, encoded, assumptions
    except (KeyError, TypeError, IndexError, ValueError, OverflowError) as error:
        raise ValueError(f"{path} has a malformed header: {error}") from None


def _entry_dtype(entry, weight, dtype, weight_format):
    """The dtype an array entry must declare (low-bit files) and is read as."""
    if weight_format is None:
        return dtype
    expected = matrix_dtype(weight_format) if weight in MATRICES else np.dtype(np.float32)
    if entry.get("dtype") != expected.name:
        raise ValueError(f"array {entry['name']!r} must be stored as {expected.name}, got "
                         f"{entry.get('dtype')!r}")
    return expected


def _encoded_matrices(arrays, weight_format):
    """One layer's matrices (and int8 scales) taken out of `arrays` as Quantised, replaced there
    by the float32 values they stand for."""
    encoded = {}
    for name in MATRICES:
        if name not in arrays:
            continue
        scale = arrays.pop(f"{name}_scale", None) if weight_format == "int8" else None
        if weight_format == "int8" and (scale is None or scale.shape != arrays[name].shape[:1]):
            raise ValueError(f"int8 matrix {name} needs a {name}_scale of shape "
                             f"{arrays[name].shape[:1]}")
        encoded[name] = Quantised(weight_format, arrays[name], scale)
        arrays[name] = encoded[name].dequantised()
    if any(name in arrays for name in _SCALE_NAMES):
        raise ValueError("a scale array without its matrix")
    return encoded


def _check_sizes(config, dtype, num_entries, data_bytes, weight_format=None):
    """Refuse a config that the file cannot hold, before anything is allocated for it: its layers
    need four arrays each in the header, and their weights need bytes in the data section (at
    least one a weight for low-bit files)."""
    layers = config.num_layers * config.num_directions
    if _REQUIRED_PER_LAYER * layers > num_entries:
        raise ValueError(f"the config declares {config.num_layers} layer(s) of "
                         f"{config.num_directions} direction(s), which need at least "
                         f"{_REQUIRED_PER_LAYER * layers} arrays; the header lists {num_entries}")
    rows = config.num_gates * config.hidden_size
    projection = config.proj_size * config.hidden_size

    def per_direction(inputs):
        return rows * (inputs + config.output_size + 2) + projection

    later_input = config.num_directions * config.output_size
    elements = config.num_directions * (per_direction(config.input_size)
                                         + (config.num_layers - 1) * per_direction(later_input))
    itemsize = 1 if weight_format is not None else dtype.itemsize
    if elements * itemsize > data_bytes:
        raise ValueError(f"the config declares {elements * itemsize} bytes of weights; the "
                         f"data section holds {data_bytes}")


def _array_name(entry, count, scales=False):
    """(layer index, weight name) of an array entry named '<layer index>.<weight name>'
    (scales: an int8 file's '<matrix>_scale' names are weight names too)."""
    name = entry["name"]
    index, _, weight = name.partition(".") if isinstance(name, str) else ("", "", "")
    names = _WEIGHT_NAMES + (_SCALE_NAMES if scales else ())
    if not (index.isascii() and index.isdigit()) or int(index) >= count or \
            weight not in names:
        raise ValueError(f"array name {name!r} is not '<layer index below {count}>.<one of "
                         f"{', '.join(names)}>'")
    return int(index), weight


def _read_array(entry, data, dtype):
    """A native-order array for one entry, checked against the data section before it is read."""
    shape, offset = entry["shape"], entry["offset"]
    if not isinstance(shape, list) or not all(map(_is_count, shape + [offset])):
        raise ValueError(f"array {entry['name']!r}: shape and offset must be non-negative "
                         f"integers, got {shape!r} and {offset!r}")
    size = math.prod(shape) * dtype.itemsize  # Python ints: a shape of 2**70 cannot overflow
    if offset + size > len(data):
        raise ValueError(f"array {entry['name']!r} of shape {tuple(shape)} runs past the end of "
                         f"the data section ({len(data)} bytes)")
    stored = np.frombuffer(data, dtype.newbyteorder("<"), size // dtype.itemsize, offset)
    return stored.reshape(shape).astype(dtype, copy=False)  # packing copies it
