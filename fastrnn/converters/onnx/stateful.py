"""A session's graph run chunk by chunk with its recurrent state kept inside.

    stream = session.stream(state={"stateN": "state"})   # graph output -> the input it feeds
    for chunk in chunks:
        (probability,) = stream.run({"input": chunk, "sr": sr})   # no state in the feeds
    blob = stream.snapshot(); stream.restore(blob); stream.reset()

Each run feeds the state inputs from what the previous run output; the first run (and the first
after reset()) feeds zeros of each state input's declared shape (a symbolic size counts as 1: one
stream), or the `initial` arrays given.

Snapshots are versioned, checked bytes in the layout of fastrnn.snapshot, holding any number of
named tensors:

    offset  size  field
    0       8     magic b"FRNNOSNP"
    8       4     format version (uint32, little-endian), SNAPSHOT_VERSION
    12      32    fingerprint: sha256 of the graph's bytes and the state pairs
    44      4     tensor count N (uint32)
    48      ...   N times: name length (uint16), name (UTF-8), dtype (uint8 length, then numpy's
                  dtype string, little-endian), rank (uint8), shape (rank x uint64), the tensor's
                  bytes in C order
    end-4   4     crc32 of every byte before it

The version is read before the checksum, so a blob of a later format is refused for its version,
not called corrupted; a blob of another graph, other state pairs, a truncated or altered blob is
refused naming which.
"""

import hashlib
import re
import struct
import zlib
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

SNAPSHOT_MAGIC = b"FRNNOSNP"
SNAPSHOT_VERSION = 1
# A fastrnn.Stream's snapshot, recognised to say what it is.
_STREAM_MAGIC = b"FRNNSNAP"
_HEADER = struct.Struct("<8sI32sI")
_CHECKSUM = struct.Struct("<I")
_NAME = struct.Struct("<H")
_BYTE = struct.Struct("<B")
_SIZE = struct.Struct("<Q")


class SessionStream:
    """A session run chunk by chunk, the graph's state outputs fed back into its state inputs.

    Made by InferenceSession.stream(state=..., initial=...); see the module for the snapshot
    format. Not safe to share between threads: each stream holds one state.
    """

    def __init__(self, session, state: Mapping[str, str],
                 initial: Mapping[str, npt.ArrayLike] | None = None) -> None:
        """Check the state pairs (graph output -> graph input) and the initial arrays."""
        graph = session._graph
        inputs = {v.name: v for v in graph.inputs}
        outputs = {v.name: v for v in graph.outputs}
        if not isinstance(state, Mapping) or not state:
            raise TypeError(f"state must be a non-empty mapping of graph output name to the graph "
                            f"input it feeds, got {state!r}")
        seen_inputs = set()
        for output_name, input_name in state.items():
            if output_name not in outputs:
                raise ValueError(f"state maps {output_name!r}, which is not a graph output; the "
                                 f"outputs are {list(outputs)}")
            if input_name not in inputs:
                raise ValueError(f"state maps {output_name!r} to {input_name!r}, which is not a "
                                 f"graph input; the inputs are {list(inputs)}")
            if input_name in seen_inputs:
                raise ValueError(f"state feeds input {input_name!r} from two outputs")
            seen_inputs.add(input_name)
            source, target = outputs[output_name], inputs[input_name]
            if source.dtype is not None and target.dtype is not None and \
                    source.dtype != target.dtype:
                raise ValueError(f"state output {output_name!r} is {source.type}, but input "
                                 f"{input_name!r} it feeds is {target.type}")
        self._session = session
        self._pairs = tuple(state.items())
        output_order = [v.name for v in graph.outputs]
        # (position in the session's outputs, input it feeds), and the other outputs' positions
        self._feedback = tuple((output_order.index(out), inp) for out, inp in self._pairs)
        state_outputs = set(state)
        self._returned = tuple(i for i, name in enumerate(output_order)
                               if name not in state_outputs)
        self._returned_names = [output_order[i] for i in self._returned]
        self._state_inputs = frozenset(state.values())
        self._feed_names = [name for name in inputs if name not in self._state_inputs]
        initial = {} if initial is None else initial
        if not isinstance(initial, Mapping):
            raise TypeError(f"initial must be a mapping of state input name to array, got "
                            f"{type(initial).__name__}")
        for name in initial:
            if name not in self._state_inputs:
                raise ValueError(f"initial gives {name!r}, which is not a state input; the state "
                                 f"inputs are {sorted(self._state_inputs)}")
        self._initial = {name: self._initial_value(inputs[name], initial.get(name))
                         for name in state.values()}
        self._fingerprint = _fingerprint(graph.model, self._pairs)
        self._state = {}
        self.reset()

    def __repr__(self) -> str:
        pairs = ", ".join(f"{out!r} -> {inp!r}" for out, inp in self._pairs)
        return f"SessionStream({pairs})"

    @staticmethod
    def _initial_value(info, value):
        if value is None:
            if info.shape is None or info.dtype is None:
                raise ValueError(f"state input {info.name!r} declares no shape or type: give its "
                                 f"first value in initial=")
            shape = [size if isinstance(size, int) and size > 0 else 1 for size in info.shape]
            return np.zeros(shape, info.dtype)
        array = np.array(value)  # a copy: the caller's array may change later
        if info.dtype is not None and array.dtype != info.dtype:
            raise TypeError(f"initial value of {info.name!r} must be {info.type} (numpy "
                            f"{info.dtype}), got numpy {array.dtype}")
        _check_shape(info, array.shape, "initial value of")
        return array

    @property
    def state_pairs(self) -> dict:
        """The state pairs, graph output name -> the graph input it feeds."""
        return dict(self._pairs)

    @property
    def output_names(self) -> list:
        """The outputs run() returns, in the graph's order: every output but the state ones."""
        return list(self._returned_names)

    @property
    def state(self) -> dict:
        """The state the next run feeds, state input name -> a copy of its array."""
        return {name: value.copy() for name, value in self._state.items()}

    def run(self, feeds: Mapping[str, npt.ArrayLike]) -> list:
        """Run one chunk: `feeds` holds every graph input but the state ones; returns the graph's
        other outputs (output_names), and keeps the state outputs for the next run."""
        try:
            merged = {**feeds, **self._state}
        except TypeError:
            raise TypeError(f"feeds must be a dict of input name to array, got "
                            f"{type(feeds).__name__}") from None
        if len(merged) != len(feeds) + len(self._state):
            fed = sorted(name for name in feeds if name in self._state_inputs)
            raise ValueError(f"feeds give state input(s) {fed}, which the stream carries; feed "
                             f"only {self._feed_names} (reset() or restore() set the state)")
        outputs = self._session.run(None, merged)
        state = self._state
        for position, name in self._feedback:
            state[name] = outputs[position]
        return [outputs[position] for position in self._returned]

    def reset(self) -> None:
        """Back to the initial state (zeros, or the `initial` arrays given)."""
        self._state = {name: value.copy() for name, value in self._initial.items()}

    def snapshot(self) -> bytes:
        """The state as versioned, checked bytes (see the module), for restore() on a stream of
        this graph with the same state pairs."""
        parts = [_HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, self._fingerprint,
                              len(self._state))]
        for name, value in self._state.items():
            value = np.ascontiguousarray(value)
            dtype = value.dtype.newbyteorder("<") if value.dtype.byteorder != "|" else value.dtype
            encoded_name, dtype_string = name.encode(), dtype.str.encode()
            parts += [_NAME.pack(len(encoded_name)), encoded_name,
                      _BYTE.pack(len(dtype_string)), dtype_string, _BYTE.pack(value.ndim),
                      *(_SIZE.pack(size) for size in value.shape),
                      value.astype(dtype, copy=False).tobytes()]
        body = b"".join(parts)
        return body + _CHECKSUM.pack(zlib.crc32(body))

    def restore(self, blob: bytes) -> None:
        """Take the state held by `blob`, a snapshot() of a stream of this graph and state pairs;
        ValueError (TypeError for what is not bytes) saying why if it is not one."""
        restored = _decode(blob, self._fingerprint)
        graph_inputs = {v.name: v for v in self._session._graph.inputs}
        if set(restored) != self._state_inputs:
            raise ValueError(f"snapshot holds state {sorted(restored)}; this stream carries "
                             f"{sorted(self._state_inputs)}")
        for name, value in restored.items():
            info = graph_inputs[name]
            if info.dtype is not None and value.dtype != info.dtype:
                raise ValueError(f"snapshot holds {name!r} as {value.dtype}; the graph declares "
                                 f"{info.type}")
            _check_shape(info, value.shape, "snapshot's")
        self._state = restored


def _check_shape(info, shape, what):
    if info.shape is None:
        return
    if len(shape) != len(info.shape) or any(
            isinstance(size, int) and size > 0 and size != given
            for size, given in zip(info.shape, shape)):
        raise ValueError(f"{what} {info.name!r} has shape {tuple(shape)}; the graph declares "
                         f"{info.shape}")


def _fingerprint(model, pairs):
    digest = hashlib.sha256(model.SerializeToString(deterministic=True))
    digest.update(repr(sorted(pairs)).encode())
    return digest.digest()


def _decode(blob, fingerprint):
    """{state input name: fresh array} from a snapshot, checked in order: header, version,
    checksum, graph, then each tensor's layout against the blob's length."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"a snapshot is bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if blob[:8] == _STREAM_MAGIC:
        raise ValueError("this is a snapshot of a fastrnn.Stream (a Model's state), not of an "
                         "InferenceSession stream")
    if len(blob) < _HEADER.size + _CHECKSUM.size or blob[:8] != SNAPSHOT_MAGIC:
        raise ValueError("not a fastrnn session stream snapshot (it does not start with the "
                         "snapshot header)")
    _, version, blob_fingerprint, count = _HEADER.unpack_from(blob)
    if version != SNAPSHOT_VERSION:
        raise ValueError(f"snapshot format version {version} cannot be read: this fastrnn reads "
                         f"version {SNAPSHOT_VERSION}")
    (stored_checksum,) = _CHECKSUM.unpack_from(blob, len(blob) - _CHECKSUM.size)
    if zlib.crc32(blob[:-_CHECKSUM.size]) != stored_checksum:
        raise ValueError("snapshot is corrupted or truncated: its checksum does not match its "
                         "contents")
    if blob_fingerprint != fingerprint:
        raise ValueError("snapshot was taken from a stream of a different graph or with other "
                         "state pairs")
    end = len(blob) - _CHECKSUM.size
    offset = _HEADER.size
    state = {}
    try:
        for _ in range(count):
            (length,) = _NAME.unpack_from(blob, offset)
            name = blob[offset + _NAME.size:offset + _NAME.size + length].decode()
            offset += _NAME.size + length
            (length,) = _BYTE.unpack_from(blob, offset)
            dtype = np.dtype(blob[offset + 1:offset + 1 + length].decode())
            offset += 1 + length
            (rank,) = _BYTE.unpack_from(blob, offset)
            offset += 1
            shape = tuple(_SIZE.unpack_from(blob, offset + k * _SIZE.size)[0]
                          for k in range(rank))
            offset += rank * _SIZE.size
            size = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if dtype.hasobject or offset + size > end:
                raise ValueError
            state[name] = np.frombuffer(blob, dtype, count=size // max(dtype.itemsize, 1),
                                        offset=offset).reshape(shape).astype(
                                            dtype.newbyteorder("="))
            offset += size
    except (struct.error, ValueError, TypeError, UnicodeDecodeError):
        raise ValueError("snapshot is corrupted: its tensors do not match its length") from None
    if offset != end:
        raise ValueError("snapshot is corrupted: its length does not match its tensors")
    return state


def suggest_pairs(graph) -> list:
    """(output name, input name) pairs that look like state fed back: same dtype and rank, no
    declared size that disagrees, and names alike ("stateN" -> "state", "hn" -> "h0"); by shape
    alone where no name is alike."""
    def compatible(output, input_):
        if output.dtype != input_.dtype or output.rank is None or output.rank != input_.rank:
            return False
        return all(not (isinstance(a, int) and a > 0 and isinstance(b, int) and b > 0 and a != b)
                   for a, b in zip(output.shape, input_.shape))

    def stem(name):
        name = re.sub(r"(?i)(_?(out|in|new|next|prev|init|initial|0|n|N))$", "", name)
        return name.lower().strip("_.:/")

    by_name, by_shape = [], []
    taken = set()
    for output in graph.outputs:
        for input_ in graph.inputs:
            if input_.name in taken or not compatible(output, input_):
                continue
            if stem(output.name) == stem(input_.name) or output.name.startswith(input_.name) \
                    or stem(output.name).endswith("_" + stem(input_.name)):
                by_name.append((output.name, input_.name))
                taken.add(input_.name)
                break
    for output in graph.outputs:
        if output.name in {out for out, _ in by_name}:
            continue
        for input_ in graph.inputs:
            if input_.name not in taken and compatible(output, input_):
                by_shape.append((output.name, input_.name))
                taken.add(input_.name)
                break
    return by_name or by_shape
