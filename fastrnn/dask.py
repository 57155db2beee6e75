"""fastrnn.dask: batch inference of a Model over Dask collections (the `fastrnn[dask]` extra).

    y, state = fastrnn.dask.run(model, x, lengths=None)       # dask array (T, B, I) / (B, T, I)
    y, state = fastrnn.dask.run(model, da, dims=("time", "series", "feature"))   # xarray
    results = fastrnn.dask.run_bag(model, bag)                 # bag of (T_i, I) -> (y_i, state_i)
    y_df, state_df = fastrnn.dask.run_dataframe(model, df, by="user", time="t")

Every result is lazy: compute it as any Dask collection (dask.compute, .compute(), persist), so
dask.diagnostics.ProgressBar and the distributed dashboard show the work as usual; the model's
tasks are named "fastrnn-run-...".

How the model reaches the workers: its native file's bytes (Model.save), once per worker. With a
distributed Client (the current one, or `client=`), they are registered as a WorkerPlugin named
"fastrnn-model-<hash>", which every worker, including ones that join or restart later, writes
to a file in its local directory, loads with fastrnn.load and warms with one tiny call, so the
first task does not pay the compile; tasks then carry the hash alone. Without a Client (Dask's
local schedulers) the tasks carry the bytes and each process loads them once, into a cache keyed
by their hash. `release(model)` removes a model from the workers.

On the workers fastrnn runs each call on one thread (fastrnn.set_num_threads(1)), as Dask sets
OMP_NUM_THREADS=1 for numpy: the worker's own threads already take the cores. A worker started
with FASTRNN_NUM_THREADS in its environment keeps that count instead.

Results are bit for bit those of the same Model called locally on the whole input: the engine
computes every row on its own, so how rows are chunked or batched does not change a bit.
"""

import asyncio
import hashlib
import operator
import os
import tempfile
import threading
import weakref

import numpy as np

import dask
import dask.array as da
from dask.highlevelgraph import HighLevelGraph

import fastrnn
from fastrnn.state import State

try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # only the local schedulers, which need no plugin
    WorkerPlugin = object

__all__ = ["run", "run_bag", "run_dataframe", "release", "ModelPlugin"]

PLUGIN_PREFIX = "fastrnn-model-"

# Models installed in this process from their bytes (by a plugin or a task), by hash.
_INSTALLED = {}
# Models the caller passed in this process (a local scheduler's tasks use them directly).
_LOCAL = weakref.WeakValueDictionary()
_LOCK = threading.Lock()


# -- the model on the workers ---------------------------------------------------------------------

def _model_bytes(model):
    """(sha256 hex, the native file's bytes) of a CPU model."""
    if getattr(model, "device", "cpu") != "cpu":
        raise ValueError(f"fastrnn.dask runs CPU models; got one on {model.device!r} "
                         "(pass model.to('cpu'))")
    if not callable(getattr(model, "save", None)):
        raise TypeError(f"model must be a fastrnn.Model, got {type(model).__name__}")
    with tempfile.TemporaryDirectory(prefix="fastrnn-dask-") as folder:
        path = os.path.join(folder, "model.fastrnn")
        model.save(path)
        with open(path, "rb") as file:
            blob = file.read()
    return hashlib.sha256(blob).hexdigest(), blob


def _warm(model):
    """One tiny call, so that the kernels are compiled (or loaded from Numba's cache) now."""
    shape = (1, 2, model.input_size) if model.config.batch_first else (2, 1, model.input_size)
    model(np.zeros(shape, model.dtype))


def _install(key, blob, folder=None):
    """The model of these bytes in this process: loaded from a local file once, warmed."""
    with _LOCK:
        model = _INSTALLED.get(key)
        if model is not None:
            return model
        if hashlib.sha256(blob).hexdigest() != key:
            raise ValueError("fastrnn.dask: the model bytes received do not match their hash")
        handle, path = tempfile.mkstemp(prefix="fastrnn-", suffix=".fastrnn", dir=folder)
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(blob)
            model = fastrnn.load(path)
        finally:
            os.unlink(path)
        _warm(model)
        _INSTALLED[key] = model
        return model


class ModelPlugin(WorkerPlugin):
    """Installs one model on every worker of a cluster, present and future (see the module doc)."""

    # Registering a model that is already there returns at once instead of loading it again.
    idempotent = True

    def __init__(self, key, blob):
        self.key = key
        self.blob = blob
        self.name = PLUGIN_PREFIX + key

    async def setup(self, worker):
        if "FASTRNN_NUM_THREADS" not in os.environ:
            fastrnn.set_num_threads(1)
        # In a thread: a first compile can take seconds, and the worker's event loop must keep
        # answering the scheduler's heartbeats meanwhile.
        await asyncio.to_thread(_install, self.key, self.blob, worker.local_directory)

    def teardown(self, worker):
        with _LOCK:
            _INSTALLED.pop(self.key, None)


class _ModelRef:
    """What a task carries instead of a Model: the hash of its bytes, and the bytes themselves
    only when no Client installs them on the workers."""

    __slots__ = ("key", "blob")

    def __init__(self, key, blob=None):
        self.key = key
        self.blob = blob

    def __getstate__(self):
        return self.key, self.blob

    def __setstate__(self, state):
        self.key, self.blob = state

    def __dask_tokenize__(self):
        return ("fastrnn-model", self.key)  # not the bytes: hashing them per task is waste

    def model(self):
        model = _INSTALLED.get(self.key) or _LOCAL.get(self.key)
        if model is not None:
            return model
        if self.blob is None:
            raise RuntimeError(
                f"fastrnn.dask: model {self.key[:12]} is not installed in this process. It was "
                "sent to a distributed cluster's workers; compute the result on that cluster's "
                "Client, or call fastrnn.dask.run with client=False for Dask's local schedulers")
        return _install(self.key, self.blob)


def _current_client(client):
    """The distributed Client to install the model on: `client`, else the current one, else None
    (client=False: none, even where one exists)."""
    if client is False:
        return None
    if client is not None:
        return client
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:  # no client in this process
        return None


def _reference(model, client):
    """A _ModelRef for the tasks, with the model installed where they will run."""
    key, blob = _model_bytes(model)
    _LOCAL[key] = model  # the caller's process: local threads use this very Model
    client = _current_client(client)
    if client is None:
        return _ModelRef(key, blob)
    client.register_plugin(ModelPlugin(key, blob))
    return _ModelRef(key)


def release(model, client=None):
    """Remove `model` from the cluster's workers (and this process's cache)."""
    key, _ = _model_bytes(model)
    with _LOCK:
        _INSTALLED.pop(key, None)
    _LOCAL.pop(key, None)
    client = _current_client(client)
    if client is not None:
        try:
            client.unregister_worker_plugin(PLUGIN_PREFIX + key)
        except ValueError:  # never registered there
            pass


def _state_arrays(state):
    """(h, c) from a call's state: a fastrnn.State, torch's (h, c), or h alone (c is None)."""
    if hasattr(state, "h"):
        return state.h, getattr(state, "c", None)
    if isinstance(state, (tuple, list)):
        h, c = state
        return h, c
    return state, None


def _as_state(h, c):
    """The final state as this module returns it: a fastrnn.State (unpacks as (h, c))."""
    return State(h, c)


# -- padded batches: dask arrays and xarray ------------------------------------------------------

def _run_block(ref, x, lengths):
    y, state = ref.model()(x, lengths=lengths)
    h, c = _state_arrays(state)
    return y, h, c


def run(model, x, lengths=None, *, dims=None, out_dim="output", client=None):
    """Run `model` over a dask array (or an xarray.DataArray) of padded sequences.

    x: (T, B, I), or (B, T, I) for a batch_first model, chunked along the batch axis B; the time
      and feature axes are rechunked to one chunk each (one task runs whole sequences). A float
      dtype; the model's dtype is what runs.
    lengths: optional (B,) integers (dask or numpy array), as Model's: row b is valid for
      t < lengths[b].
    dims: for a DataArray, the names of its (time, batch, feature) dimensions, in that order, e.g.
      ("time", "series", "feature"); its own order may be any.
    out_dim: for a DataArray, the name of the output's feature dimension.
    client: the distributed Client to install the model on (default: the current one, if any);
      False for none (Dask's local schedulers).

    Returns (y, state) as Model does, lazily: y (T, B, D*H_out) (batch_first: (B, T, D*H_out)) and
    state = fastrnn.State(h (L*D, B, H_out), c (L*D, B, H) for an LSTM else None), dask arrays
    chunked along B as x is. For a DataArray: y is a DataArray with x's dimension order (feature
    renamed out_dim) and x's time and batch coordinates; h and c are DataArrays with dims
    ("layer_direction", batch, "hidden") and ("layer_direction", batch, "cell").
    """
    if _is_dataarray(x):
        return _run_dataarray(model, x, lengths, dims, out_dim, client)
    if dims is not None:
        raise TypeError("dims= names the dimensions of an xarray.DataArray; x is a "
                        f"{type(x).__name__}")
    return _run_array(model, x, lengths, client)


def _is_dataarray(x):
    try:
        import xarray
    except ImportError:
        return False
    return isinstance(x, xarray.DataArray)


def _check_collection(x, name):
    if isinstance(x, da.Array):
        return
    kind = type(x).__module__.split(".")[0] + "." + type(x).__name__
    if kind.startswith("dask.") and "Bag" in kind:
        raise TypeError(f"{name} is a dask.bag; use fastrnn.dask.run_bag")
    if hasattr(x, "npartitions") and hasattr(x, "columns"):
        raise TypeError(f"{name} is a dask dataframe; use fastrnn.dask.run_dataframe")
    raise TypeError(f"{name} must be a dask array (or an xarray.DataArray), got {kind}; wrap a "
                    "numpy array with dask.array.from_array(x, chunks=...) chunked along the "
                    "batch axis")


def _run_array(model, x, lengths, client):
    _check_collection(x, "x")
    config = model.config
    layout = "(B, T, I)" if config.batch_first else "(T, B, I)"
    time_axis, batch_axis = (1, 0) if config.batch_first else (0, 1)
    if x.ndim != 3:
        raise ValueError(f"x must be {layout} for this model, got {x.ndim} dimensions, shape "
                         f"{x.shape}")
    if x.dtype.kind != "f":
        raise TypeError(f"x must be a floating-point array, got dtype {x.dtype}")
    if any(np.isnan(size) for size in x.shape):
        raise ValueError(f"x has unknown chunk sizes (shape {x.shape}), so it cannot be "
                         "rechunked into whole sequences; call x.compute_chunk_sizes() first")
    if x.shape[2] != model.input_size:
        raise ValueError(f"x must have {model.input_size} features in its last axis ({layout}), "
                         f"got shape {x.shape}")
    if x.shape[time_axis] == 0:
        raise ValueError("x has no time steps")
    split = [axis for axis in (time_axis, 2) if len(x.chunks[axis]) > 1]
    if split and len(x.chunks[batch_axis]) == 1 and x.shape[batch_axis] > 1:
        names = {time_axis: "time", 2: "feature", batch_axis: "batch"}
        raise ValueError(
            f"x is chunked along its {' and '.join(names[a] for a in split)} axis, not along the "
            f"batch axis (axis {batch_axis} of {layout} for this "
            f"{'batch_first' if config.batch_first else 'time-major'} model); each task runs "
            f"whole sequences, so chunk the batch axis, e.g. "
            f"x.rechunk({{{batch_axis}: 256, {time_axis}: -1, 2: -1}})")
    x = x.rechunk({time_axis: -1, 2: -1})
    batch_chunks = x.chunks[batch_axis]

    if lengths is not None:
        lengths = _lengths_array(lengths, x.shape[batch_axis], batch_chunks)

    ref = _reference(model, client)
    token = dask.base.tokenize(ref, x, lengths)
    # One task per chunk runs the model; y, h and c are getitems of its result (a graph of its
    # own: from_delayed and concatenate would add three more tasks per chunk for the scheduler).
    run_name = f"fastrnn-run-{token}"
    layers = {run_name: {
        (run_name, i): (_run_block, ref,
                        (x.name, i, 0, 0) if config.batch_first else (x.name, 0, i, 0),
                        None if lengths is None else (lengths.name, i))
        for i in range(len(batch_chunks))}}
    dependencies = {run_name: {x.name} | (set() if lengths is None else {lengths.name})}
    sources = [x.dask] + ([] if lengths is None else [lengths.dask])
    for graph in sources:
        layers.update(graph.layers)
        dependencies.update(graph.dependencies)

    def part(index, name, chunks, axis):
        name = f"fastrnn-{name}-{token}"
        keys = [(name, i, 0, 0) if axis == 0 else (name, 0, i, 0)
                for i in range(len(batch_chunks))]
        graph = HighLevelGraph(
            {**layers, name: {key: (operator.getitem, (run_name, i), index)
                              for i, key in enumerate(keys)}},
            {**dependencies, name: {run_name}})
        return da.Array(graph, name, chunks, meta=np.empty((0, 0, 0), model.dtype))

    steps = x.shape[time_axis]
    rows = config.num_layers * config.num_directions
    y_chunks = (((steps,), batch_chunks) if not config.batch_first
                else (batch_chunks, (steps,))) + ((model.output_size,),)
    y = part(0, "y", y_chunks, batch_axis)
    h = part(1, "h", ((rows,), batch_chunks, (config.output_size,)), 1)
    c = part(2, "c", ((rows,), batch_chunks, (config.hidden_size,)), 1) \
        if model.kind == "lstm" else None
    return y, _as_state(h, c)


def _lengths_array(lengths, batch, batch_chunks):
    """lengths as a dask array chunked as x's batch axis; numpy arrays and lists are wrapped."""
    if not isinstance(lengths, da.Array):
        lengths = np.asarray(lengths)
        if lengths.dtype.kind not in "iu":
            raise TypeError(f"lengths must be integers, got dtype {lengths.dtype}")
        lengths = da.from_array(lengths, chunks=-1)
    if lengths.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers, got dtype {lengths.dtype}")
    if lengths.ndim != 1 or (not np.isnan(lengths.shape[0]) and lengths.shape[0] != batch):
        raise ValueError(f"lengths must have one entry per batch row, shape ({batch},), got "
                         f"{lengths.shape}")
    if np.isnan(lengths.shape[0]):
        raise ValueError("lengths has unknown chunk sizes; call lengths.compute_chunk_sizes()")
    return lengths.rechunk((batch_chunks,))


def _run_dataarray(model, x, lengths, dims, out_dim, client):
    import xarray
    if dims is None:
        raise ValueError(f"name x's (time, batch, feature) dimensions: dims=(...), from its "
                         f"dims {x.dims}")
    dims = tuple(dims)
    if len(dims) != 3 or len(set(dims)) != 3:
        raise ValueError(f"dims must name three different dimensions (time, batch, feature), "
                         f"got {dims}")
    missing = [d for d in dims if d not in x.dims]
    if missing or x.ndim != 3:
        raise ValueError(f"dims {dims} must be x's three dimensions; x has {x.dims}")
    time_dim, batch_dim, feature_dim = dims
    if out_dim in (time_dim, batch_dim):
        raise ValueError(f"out_dim {out_dim!r} is already x's time or batch dimension")
    if not isinstance(x.data, da.Array):
        raise TypeError(f"x holds a {type(x.data).__name__}, not a dask array; chunk it along "
                        f"the batch dimension: x.chunk({{{batch_dim!r}: 256}})")
    layout = ((batch_dim, time_dim, feature_dim) if model.config.batch_first
              else (time_dim, batch_dim, feature_dim))
    if isinstance(lengths, xarray.DataArray):
        if lengths.dims != (batch_dim,):
            raise ValueError(f"lengths must have the one dimension {batch_dim!r}, got "
                             f"{lengths.dims}")
        lengths = lengths.data
    y, state = _run_array(model, x.transpose(*layout).data, lengths, client)
    h, c = _state_arrays(state)

    def coords_on(*keep):
        return {name: coord for name, coord in x.coords.items()
                if set(coord.dims) <= set(keep)}

    y = xarray.DataArray(y, dims=layout[:2] + (out_dim,), coords=coords_on(*layout[:2]))
    y = y.transpose(*[out_dim if d == feature_dim else d for d in x.dims])
    h = xarray.DataArray(h, dims=("layer_direction", batch_dim, "hidden"),
                         coords=coords_on(batch_dim))
    if c is not None:
        c = xarray.DataArray(c, dims=("layer_direction", batch_dim, "cell"),
                             coords=coords_on(batch_dim))
    return y, _as_state(h, c)


# -- variable-length sequences: bags and dataframes ----------------------------------------------

def _length_batches(lengths, batch_size):
    """How run_bag and run_dataframe batch a partition: indices into `lengths`, sorted longest
    first (ties in their order), cut into consecutive batches of at most batch_size."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def _run_sequences(model, sequences, batch_size, where):
    """[(y_i (T_i, D*H_out), h_i (L*D, H_out), c_i or None)] for (T_i, I) arrays, in their order,
    run in padded batches of similar length (_length_batches)."""
    arrays = []
    for index, sequence in enumerate(sequences):
        array = np.asarray(sequence)
        if array.dtype.kind != "f":
            raise TypeError(f"{where} sequence {index} must be a floating-point array, got "
                            f"dtype {array.dtype}")
        if array.ndim != 2 or array.shape[1] != model.input_size or array.shape[0] == 0:
            raise ValueError(f"{where} sequence {index} must be (T, {model.input_size}) with "
                             f"T >= 1, got shape {array.shape}")
        arrays.append(array)
    batch_first = model.config.batch_first
    results = [None] * len(arrays)
    for batch in _length_batches([len(a) for a in arrays], batch_size):
        lengths = np.array([len(arrays[i]) for i in batch], np.int64)
        steps = int(lengths[0])
        x = np.zeros((steps, len(batch), model.input_size), model.dtype)
        for column, i in enumerate(batch):
            x[:lengths[column], column] = arrays[i]
        if batch_first:
            x = np.ascontiguousarray(x.transpose(1, 0, 2))
        y, state = model(x, lengths=lengths)
        h, c = _state_arrays(state)
        if batch_first:
            y = y.transpose(1, 0, 2)
        for column, i in enumerate(batch):
            results[i] = (y[:lengths[column], column].copy(), h[:, column].copy(),
                          None if c is None else c[:, column].copy())
    return results


def _run_bag_partition(sequences, ref, batch_size):
    results = _run_sequences(ref.model(), list(sequences), batch_size, "bag")
    return [(y, _as_state(h, c)) for y, h, c in results]


def run_bag(model, bag, *, batch_size=64, client=None):
    """Run `model` over a dask.bag of (T_i, I) arrays, one sequence each, any lengths.

    Inside each partition the sequences run in padded batches of at most batch_size, sorted by
    length (_length_batches). Returns a bag, in the input's order, of (y_i (T_i, D*H_out),
    fastrnn.State(h_i (L*D, H_out), c_i)): what model(sequence) returns for one sequence.
    """
    import dask.bag as db
    if not isinstance(bag, db.Bag):
        raise TypeError(f"run_bag takes a dask.bag.Bag of (T, I) arrays, got "
                        f"{type(bag).__name__}")
    batch_size = _check_batch_size(batch_size)
    ref = _reference(model, client)
    return bag.map_partitions(_run_bag_partition, ref, batch_size,
                              token="fastrnn-run-" + dask.base.tokenize(ref, bag, batch_size))


def _output_columns(model, prefix):
    return [f"{prefix}{j}" for j in range(model.output_size)]


def _state_columns(model):
    config = model.config
    rows = config.num_layers * config.num_directions
    names = [f"h{r}_{j}" for r in range(rows) for j in range(config.output_size)]
    if model.kind == "lstm":
        names += [f"c{r}_{j}" for r in range(rows) for j in range(config.hidden_size)]
    return names


def _run_frame_partition(ref, frame, by, time, features, batch_size, prefix):
    import pandas as pd
    model = ref.model()
    frame = frame.sort_values([by, time], kind="stable")
    keys, sequences, groups = [], [], []
    for key, group in frame.groupby(by, sort=False):
        keys.append(key)
        groups.append(group)
        sequences.append(group[features].to_numpy())
    if not sequences:
        out = frame[[by, time]].copy()
        for name in _output_columns(model, prefix):
            out[name] = np.zeros(0, model.dtype)
        return out, pd.DataFrame({name: np.zeros(0, model.dtype) for name in _state_columns(model)},
                                 index=pd.Index(frame[by].iloc[:0], name=by))
    results = _run_sequences(model, sequences, batch_size, f"group {by}=")
    outputs = pd.DataFrame(np.concatenate([y for y, _, _ in results]),
                           columns=_output_columns(model, prefix), index=frame.index)
    out = pd.concat([frame[[by, time]], outputs], axis=1)
    states = np.stack([np.concatenate([h.ravel()] + ([] if c is None else [c.ravel()]))
                       for _, h, c in results])
    state_frame = pd.DataFrame(states, columns=_state_columns(model),
                               index=pd.Index(keys, name=by, dtype=frame[by].dtype))
    return out, state_frame


def run_dataframe(model, df, by, time, features=None, *, batch_size=64, prefix="y",
                  shuffle=True, client=None):
    """Run `model` over a dask DataFrame holding one sequence per value of the column `by`,
    its steps ordered by the column `time`.

    features: the input columns, in the model's input order (default: every column but `by` and
      `time`). shuffle=False when each key's rows are already in one partition (otherwise they
      are gathered by df.shuffle(on=by)). Each partition's sequences run in padded batches of at
      most batch_size, sorted by length (the keys in sorted order).

    Returns (y, state), dask DataFrames: y has one row per input row, its index kept, sorted by
    (by, time) within a partition, with columns by, time, prefix0 .. prefix{D*H_out - 1}; state
    has one row per key (index named by), columns h{r}_{j} for row r of the final h and, for an
    LSTM, c{r}_{j}.
    """
    import dask.dataframe as dd
    import pandas as pd
    if not isinstance(df, dd.DataFrame):
        raise TypeError(f"run_dataframe takes a dask DataFrame, got {type(df).__name__}")
    for role, column in (("by", by), ("time", time)):
        if column not in df.columns:
            raise ValueError(f"{role}={column!r} is not a column of df; its columns are "
                             f"{list(df.columns)}")
    if by == time:
        raise ValueError(f"by and time must be different columns, both are {by!r}")
    if features is None:
        features = [name for name in df.columns if name not in (by, time)]
    features = list(features)
    unknown = [name for name in features if name not in df.columns]
    if unknown:
        raise ValueError(f"feature columns {unknown} are not in df; its columns are "
                         f"{list(df.columns)}")
    if len(features) != model.input_size:
        raise ValueError(f"the model takes {model.input_size} features, got {len(features)} "
                         f"feature columns: {features}")
    not_float = [name for name in features if df[name].dtype.kind != "f"]
    if not_float:
        raise TypeError(f"feature columns must be floating-point; {not_float} are not")
    batch_size = _check_batch_size(batch_size)
    if shuffle and df.npartitions > 1:
        df = df.shuffle(on=by)
    ref = _reference(model, client)
    token = dask.base.tokenize(ref, df, by, time, features, batch_size, prefix)
    meta = df._meta
    y_meta = meta[[by, time]].copy()
    for name in _output_columns(model, prefix):
        y_meta[name] = np.zeros(0, model.dtype)
    state_meta = pd.DataFrame({name: np.zeros(0, model.dtype) for name in _state_columns(model)},
                              index=pd.Index(meta[by], name=by))
    y_parts, state_parts = [], []
    for index, part in enumerate(df.to_delayed()):
        out = dask.delayed(_run_frame_partition, nout=2, pure=True)(
            ref, part, by, time, features, batch_size, prefix,
            dask_key_name=f"fastrnn-run-{token}-{index}")
        y_parts.append(out[0])
        state_parts.append(out[1])
    return (dd.from_delayed(y_parts, meta=y_meta, verify_meta=False),
            dd.from_delayed(state_parts, meta=state_meta, verify_meta=False))
