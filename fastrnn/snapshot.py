"""The snapshot format: a stream's state as bytes, checked against the model it came from.

A Stream of batch 1 and a StreamPool slot share the format, on the CPU and on the GPU, so a
session can move between them (and between processes).
"""

import hashlib
import json
import struct
import weakref
import zlib

import numpy as np

# -- snapshot format --------------------------------------------------------------------------
#
#   offset  size  field
#   0       8     magic b"FRNNSNAP"
#   8       4     format version (uint32, little-endian), SNAPSHOT_VERSION
#   12      32    model fingerprint (sha256, see model_fingerprint)
#   44      1     dtype: 0 float32, 1 float64; then 3 bytes of padding
#   48      12    h shape (L, B, H_out) as uint32
#   60      12    c shape (L, B, H) as uint32, (0, 0, 0) for a cell without c
#   72      ...   h then c, C order, little-endian
#   end-4   4     crc32 of every byte before it
#
# The version is read before the checksum, so a blob of a later format is refused for its version,
# not called corrupted.

SNAPSHOT_MAGIC = b"FRNNSNAP"
SNAPSHOT_VERSION = 1
_HEADER = struct.Struct("<8sI32sB3x3I3I")
_CHECKSUM = struct.Struct("<I")
_DTYPE_CODES = {np.dtype("<f4"): 0, np.dtype("<f8"): 1}
_CODE_DTYPES = {code: dtype for dtype, code in _DTYPE_CODES.items()}

_fingerprints = weakref.WeakKeyDictionary()
_INT64 = np.dtype(np.int64)


def model_fingerprint(model):
    """sha256 (32 bytes) of the model's configuration, dtype and every weight; computed once per model.

    Works for any object with `.config`, `.dtype` and `.layers` (fastrnn's LayerWeights), so a model
    on another device that keeps these gives the same fingerprint as its CPU twin.
    """
    try:
        return _fingerprints[model]
    except (KeyError, TypeError):
        pass
    digest = hashlib.sha256()
    digest.update(json.dumps(model.config.to_json(), sort_keys=True).encode())
    digest.update(np.dtype(model.dtype).str.encode())
    for index, weights in enumerate(model.layers):
        for name, array in sorted(weights.arrays().items()):
            array = np.ascontiguousarray(array, dtype=np.dtype(model.dtype).newbyteorder("<"))
            digest.update(f"{index}.{name}{array.shape}".encode())
            digest.update(array.tobytes())
    fingerprint = digest.digest()
    try:
        _fingerprints[model] = fingerprint
    except TypeError:  # not weak-referenceable: recomputed next time
        pass
    return fingerprint


def encode_snapshot(fingerprint, h, c=None):
    """Bytes holding the state (h, c) of the model whose fingerprint is given.

    h (L, B, H_out) and c (L, B, H) or None are host arrays of the model's dtype (float32/float64).
    """
    h = np.asarray(h)
    dtype = h.dtype.newbyteorder("<")
    if dtype not in _DTYPE_CODES or h.ndim != 3:
        raise ValueError(f"h must be a float32/float64 array (L, B, H_out), got {h.dtype} {h.shape}")
    if len(fingerprint) != 32:
        raise ValueError(f"fingerprint must be 32 bytes, got {len(fingerprint)}")
    if c is None:
        c_shape, c_bytes = (0, 0, 0), b""
    else:
        c = np.asarray(c)
        if c.ndim != 3:
            raise ValueError(f"c must be (L, B, H), got shape {c.shape}")
        c_shape, c_bytes = c.shape, np.ascontiguousarray(c, dtype=dtype).tobytes()
    body = (_HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, bytes(fingerprint), _DTYPE_CODES[dtype],
                         *h.shape, *c_shape)
            + np.ascontiguousarray(h, dtype=dtype).tobytes() + c_bytes)
    return body + _CHECKSUM.pack(zlib.crc32(body))


# Where the 3 padding bytes after the dtype code sit, in the stream and the chain snapshot headers.
PADDING = slice(45, 48)


def check_envelope(blob, header, magic, version, fingerprint, what, source, parts):
    """`blob` as bytes, once its envelope is checked: bytes at all, long enough for `header` (a
    struct.Struct starting magic (8s), version (I), fingerprint (32s)) and a crc32, starting with
    `magic`, of format `version`, its crc32 matching, its header padding (PADDING) zero and its
    fingerprint `fingerprint`; else a TypeError / ValueError naming `what` ("stream snapshot")
    and, for a fingerprint that differs, the `source` ("model") and its `parts` that may differ.

    The version is read before the checksum, so a blob of a later format is refused for its
    version, not called corrupted."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"a snapshot is bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < header.size + _CHECKSUM.size or blob[:len(magic)] != magic:
        raise ValueError(f"not a fastrnn {what} (it does not start with its header)")
    _, found, stored_fingerprint = header.unpack_from(blob)[:3]
    if found != version:
        raise ValueError(f"{what} format version {found} cannot be read: this fastrnn reads "
                         f"version {version}")
    (checksum,) = _CHECKSUM.unpack_from(blob, len(blob) - _CHECKSUM.size)
    if zlib.crc32(blob[:-_CHECKSUM.size]) != checksum:
        raise ValueError(f"{what} is corrupted: its checksum does not match its contents")
    if any(blob[PADDING]):
        raise ValueError(f"{what} is malformed: its header's padding bytes "
                         f"{PADDING.start}-{PADDING.stop - 1} are not zero")
    if stored_fingerprint != bytes(fingerprint):
        raise ValueError(f"{what} was taken from a different {source} (its {parts} differ "
                         f"from this one's)")
    return blob


def snapshot_rows(blob):
    """How many rows (streams) a snapshot holds, from its header; decode_snapshot checks the rest."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"a snapshot is bytes, got {type(blob).__name__}")
    if len(blob) < _HEADER.size + _CHECKSUM.size or bytes(blob[:8]) != SNAPSHOT_MAGIC:
        raise ValueError("not a fastrnn stream snapshot (it does not start with the snapshot header)")
    return _HEADER.unpack_from(blob)[5]  # (magic, version, fingerprint, dtype, L, B, ...)


def decode_snapshot(blob, fingerprint, dtype, h_shape, c_shape=None):
    """(h, c) as fresh arrays from a snapshot, checked against the model and the expected shapes.

    c_shape None means the cell has no c (c comes back None). Anything that is not a snapshot of
    this model with these shapes in this format version is a ValueError saying which.
    """
    blob = bytes(check_envelope(blob, _HEADER, SNAPSHOT_MAGIC, SNAPSHOT_VERSION, fingerprint,
                                "stream snapshot", "model", "configuration, dtype or weights"))
    magic, version, blob_fingerprint, dtype_code, *shapes = _HEADER.unpack_from(blob)
    dtype = np.dtype(dtype)
    stored_dtype = _CODE_DTYPES.get(dtype_code)
    if stored_dtype is None or stored_dtype != dtype.newbyteorder("<"):
        raise ValueError(f"snapshot holds {stored_dtype} state; this model is {dtype}")
    stored_h, stored_c = tuple(shapes[:3]), tuple(shapes[3:])
    expected_c = (0, 0, 0) if c_shape is None else tuple(c_shape)
    if stored_h != tuple(h_shape) or stored_c != expected_c:
        raise ValueError(f"snapshot holds state for {stored_h[1]} row(s) of shape h {stored_h}; "
                         f"expected h {tuple(h_shape)} (batch {h_shape[1]})")
    h_size = int(np.prod(stored_h)) * dtype.itemsize
    c_size = int(np.prod(stored_c)) * dtype.itemsize
    if len(blob) != _HEADER.size + h_size + c_size + _CHECKSUM.size:
        raise ValueError("snapshot is corrupted: its length does not match its header")
    data = blob[_HEADER.size:_HEADER.size + h_size + c_size]
    h = np.frombuffer(data, stored_dtype, count=h_size // dtype.itemsize).reshape(stored_h)
    h = h.astype(dtype)  # a fresh, writable, native-order copy
    if c_shape is None:
        return h, None
    c = np.frombuffer(data, stored_dtype, offset=h_size).reshape(stored_c).astype(dtype)
    return h, c
