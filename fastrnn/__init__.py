"""fastrnn: fast inference for trained LSTM, GRU and RNN models, on the CPU (Numba) and CUDA.

    model = fastrnn.from_torch(module_or_state_dict_or_path)
    y, state = model(x)
    stream = model.stream(batch=1); y_t = stream.step(x_t)
"""

from fastrnn.model import Model
from fastrnn.state import State
from fastrnn.engine.weights import Config, LayerWeights
from fastrnn.builders import from_numpy
from fastrnn.fileformat import load
from fastrnn.engine.parallel import get_num_threads, set_num_threads
from fastrnn.chain import Chain

__version__ = "0.1.0"


def from_torch(obj, *, prefix="", kind=None, batch_first=None, trust_pickle=False):
    """A Model from a torch module, a state dict, or a .pt/.pth/.safetensors file.

    What a state dict cannot tell (a plain RNN's nonlinearity, batch_first) is assumed with an
    AssumptionWarning unless kind= and batch_first= state it; see fastrnn.converters.pytorch.
    """
    from fastrnn.converters.pytorch import from_torch as convert
    return convert(obj, prefix=prefix, kind=kind, batch_first=batch_first,
                   trust_pickle=trust_pickle)


def from_onnx(model):
    """A Model from an ONNX graph that is a recurrent stack (converters.onnx)."""
    from fastrnn.converters.onnx import from_onnx as convert
    return convert(model)


def __getattr__(name):
    # Parts with heavier imports load on first use.
    if name == "InferenceSession":
        from fastrnn.converters.onnx import InferenceSession
        return InferenceSession
    if name in ("Stream", "StreamPool"):
        from fastrnn import stream
        return getattr(stream, name)
    raise AttributeError(f"module 'fastrnn' has no attribute {name!r}")


__all__ = ["Model", "State", "Config", "LayerWeights", "from_numpy", "from_torch", "from_onnx",
           "load", "InferenceSession", "Stream", "StreamPool", "set_num_threads",
           "get_num_threads", "Chain"]
