"""fastrnn: fast inference for trained LSTM, GRU and RNN models, on the CPU (Numba) and CUDA.

    model = fastrnn.from_torch(module_or_state_dict_or_path)
    y, state = model(x)
    stream = model.stream(batch=1); y_t = stream.step(x_t)

The CPU kernels are compiled on first use and cached on disk: FASTRNN_CACHE_DIR names where
(see fastrnn.compiles; fastrnn.warmup() fills the cache ahead of the first answer).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any


def _use_cache_dir():
    """Point Numba's disk cache at FASTRNN_CACHE_DIR, when set, before any kernel is defined.

    Numba picks a function's cache directory when the function is decorated, from
    numba.config.CACHE_DIR, which it reads from NUMBA_CACHE_DIR when numba is imported: so the
    variable is set for an import still to come (and for child processes), and the config too
    when numba was imported first. Every Numba function defined afterwards caches there, not
    only fastrnn's: that is NUMBA_CACHE_DIR's reach.
    """
    directory = os.environ.get("FASTRNN_CACHE_DIR", "")
    if not directory.strip():
        return
    directory = os.path.abspath(os.path.expanduser(directory))
    os.environ["NUMBA_CACHE_DIR"] = directory
    config = sys.modules.get("numba.core.config")
    if config is not None:
        config.CACHE_DIR = directory


_use_cache_dir()

from fastrnn.model import Model, load  # noqa: E402 (after the cache directory is set)
from fastrnn.state import State
from fastrnn.engine.weights import Config, LayerWeights
from fastrnn.builders import from_numpy
from fastrnn.engine.parallel import get_num_threads, set_num_threads
from fastrnn.compiles import warmup
from fastrnn.chain import Chain, ChainPool

if TYPE_CHECKING:
    from fastrnn.converters.onnx import InferenceSession
    from fastrnn.stream import Stream, StreamPool

from fastrnn.version import __version__  # noqa: E402


def from_torch(obj: Any, *, prefix: str = "", kind: str | None = None,
               batch_first: bool | None = None, trust_pickle: bool = False) -> Model:
    """A Model from a torch module, a state dict, or a .pt/.pth/.safetensors file.

    What a state dict cannot tell (a plain RNN's nonlinearity, batch_first) is assumed with an
    AssumptionWarning unless kind= and batch_first= state it; see fastrnn.converters.pytorch.
    """
    from fastrnn.converters.pytorch import from_torch as convert
    return convert(obj, prefix=prefix, kind=kind, batch_first=batch_first,
                   trust_pickle=trust_pickle)


def from_onnx(model: Any) -> Model:
    """A Model from an ONNX graph that is a recurrent stack (converters.onnx): a path, the
    file's bytes or an onnx.ModelProto."""
    from fastrnn.converters.onnx import from_onnx as convert
    return convert(model)


def from_keras(model: Any) -> Chain:
    """A Chain from a Keras 3 model (Sequential or a functional chain) or a .keras file; see
    fastrnn.converters.keras. Keras must run on the torch backend (KERAS_BACKEND=torch)."""
    from fastrnn.converters.keras import from_keras as convert
    return convert(model)


def from_nam(source: Any, *, dtype: Any = "float32") -> Chain:
    """A Chain from a Neural Amp Modeler .nam file (LSTM architecture), a path or its parsed
    JSON; see fastrnn.converters.nam."""
    from fastrnn.converters.nam import from_nam as convert
    return convert(source, dtype=dtype)


def __getattr__(name: str) -> Any:
    # Parts with heavier imports load on first use.
    if name == "InferenceSession":
        from fastrnn.converters.onnx import InferenceSession
        return InferenceSession
    if name in ("Stream", "StreamPool"):
        from fastrnn import stream
        return getattr(stream, name)
    raise AttributeError(f"module 'fastrnn' has no attribute {name!r}")


__all__ = ["Model", "State", "Config", "LayerWeights", "from_numpy", "from_torch", "from_onnx",
           "from_keras", "from_nam", "load", "InferenceSession", "Stream", "StreamPool",
           "set_num_threads", "get_num_threads", "warmup", "Chain", "ChainPool"]
