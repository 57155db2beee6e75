"""The documentation site builds cleanly, and its tables agree with the code they come from.

`mkdocs build --strict` turns every warning (a broken link, a docstring mkdocstrings cannot
resolve, a page missing from the nav) into a failure, so `make test` catches docs that rot. The
Design page's tables are copies of the docstrings of fastrnn/engine/weights.py,
fastrnn/converters/pytorch.py and fastrnn/converters/onnx/__init__.py: a change to either side without the other
fails here.
"""

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DESIGN = (ROOT / "docs" / "design.md").read_text()
# What the reference page must render: the public names, by the anchors mkdocstrings gives them.
PUBLIC = ["fastrnn.Model", "fastrnn.load", "fastrnn.converters.pytorch.from_torch", "fastrnn.from_onnx",
          "fastrnn.from_numpy", "fastrnn.stream.Stream", "fastrnn.stream.StreamPool",
          "fastrnn.converters.onnx.session.InferenceSession", "fastrnn.Config", "fastrnn.LayerWeights",
          "fastrnn.warmup"]


def docstring(relative_path):
    """A module's docstring, read without importing it."""
    return ast.get_docstring(ast.parse((ROOT / relative_path).read_text()))


def squeeze(text):
    return " ".join(text.split())


def test_docs_build_strict(tmp_path):
    missing = [name for name in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers")
               if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"the docs toolchain is not installed (missing {', '.join(missing)}): "
                    f"pip install -e '.[docs]' to build the docs here")
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
         "-d", str(site)], cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert done.returncode == 0, done.stdout + done.stderr
    api = (site / "api" / "index.html").read_text()
    absent = [name for name in PUBLIC if f'id="{name}"' not in api]
    assert not absent, f"the API reference does not render {absent}"
    for plot in ("latency_vs_hidden.png", "throughput_vs_batch.png"):
        assert (site / "bench" / plot).is_file(), f"the benchmarks page's plot {plot} is missing"


def test_weight_layout_table_is_the_docstring():
    rows = re.findall(r"^    (\w+) +(\([^)]*\)) *(.*)$", docstring("fastrnn/engine/weights.py"),
                      re.MULTILINE)
    assert len(rows) == 6, rows
    table = re.findall(r"^\| `(\w+)` \| (\([^)]*\)) \| (.*?) ?\|$", DESIGN, re.MULTILINE)
    assert table[:len(rows)] == [(name, shape, squeeze(note)) for name, shape, note in rows]


def test_pytorch_table_is_the_docstring():
    rows = re.findall(r"^    (\S+) +-> (\w+) +(.*)$", docstring("fastrnn/converters/pytorch.py"),
                      re.MULTILINE)
    assert len(rows) == 5, rows
    table = re.findall(r"^\| `(\S+)` \| `(\w+)` \| (.*?) \|$", DESIGN, re.MULTILINE)
    assert table == [(key, name, squeeze(rest)) for key, name, rest in rows]


def test_onnx_gate_order_table_is_the_docstring():
    rows = [line for line in docstring("fastrnn/converters/onnx/__init__.py").splitlines()
            if line.startswith("|")]
    assert len(rows) == 6, rows
    missing = [row for row in rows if row not in DESIGN.splitlines()]
    assert not missing, f"docs/design.md lacks these rows of the ONNX converter's table: {missing}"


def test_readme_says_how_to_get_a_cpu_build_of_torch():
    readme = (ROOT / "README.md").read_text()
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in readme
