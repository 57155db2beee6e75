"""What help(), IDEs and type checkers see: docstrings where Python would print a default, type
hints on the public API of fastrnn, fastrnn.model and fastrnn.stream, and the py.typed marker."""

import importlib.resources
import inspect
import pydoc
from pathlib import Path

import numpy as np
import pytest

import fastrnn
from fastrnn import model as model_module
from fastrnn import stream as stream_module

ROOT = Path(__file__).resolve().parent.parent


def test_help_of_a_model_documents_its_call():
    model = fastrnn.from_numpy("gru", [{"w_ih": np.zeros((6, 1)), "w_hh": np.zeros((6, 2))}])
    text = pydoc.render_doc(model, renderer=pydoc.plaintext)
    assert "Call self as a function." not in text
    assert "Run the model over whole sequences" in text
    assert "h alone for a GRU or" in text   # what the call returns, as torch


def test_inference_session_init_has_a_docstring():
    pytest.importorskip("onnx")
    from fastrnn.converters.onnx.session import InferenceSession
    assert "path_or_bytes" in inspect.getdoc(InferenceSession.__init__)


def public_callables(module):
    """(name, function) for the public functions of `module` and the public methods, properties,
    __init__ and __call__ of its public classes, defined in the module itself."""
    for name, value in vars(module).items():
        if getattr(value, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(value) and (not name.startswith("_") or name == "__getattr__"):
            yield name, value
        elif inspect.isclass(value) and not name.startswith("_"):
            for member_name, member in vars(value).items():
                if member_name.startswith("_") and member_name not in ("__init__", "__call__"):
                    continue
                if isinstance(member, property):
                    for accessor in (member.fget, member.fset):
                        if accessor is not None:
                            yield f"{name}.{member_name}", accessor
                elif inspect.isfunction(member):
                    yield f"{name}.{member_name}", member


@pytest.mark.parametrize("module", [fastrnn, model_module, stream_module],
                         ids=lambda module: module.__name__)
def test_public_api_has_type_hints(module):
    checked, missing = [], []
    for name, function in public_callables(module):
        checked.append(name)
        signature = inspect.signature(function)
        if signature.return_annotation is inspect.Signature.empty:
            missing.append(f"{name} -> ?")
        for parameter in signature.parameters.values():
            if parameter.name in ("self", "cls"):
                continue
            if parameter.annotation is inspect.Parameter.empty:
                missing.append(f"{name}({parameter.name})")
    assert checked and not missing, f"no type hint: {missing}"


def test_stream_methods_are_among_those_checked():
    names = dict(public_callables(stream_module))
    assert {"Stream.step", "Stream.state", "StreamPool.step", "StreamPool.import_"} <= set(names)
    assert {"Model.__call__", "Model.__init__", "Model.to"} <= set(dict(
        public_callables(model_module)))


def test_py_typed_is_shipped():
    tomllib = pytest.importorskip("tomllib")   # Python 3.11 on
    assert importlib.resources.files("fastrnn").joinpath("py.typed").is_file()
    with open(ROOT / "pyproject.toml", "rb") as file:
        package_data = tomllib.load(file)["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["fastrnn"]
