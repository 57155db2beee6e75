# make demo | make test | make bench — each sets up .venv itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch, pinned: a plain `torch` would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,bench]"
	# Silero VAD's ONNX files for the whole-graph tests; --no-deps: it would pull a torch build.
	$(PY) -m pip install -q --no-deps silero-vad
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest -q --benchmark-disable

bench: $(STAMP)
	mkdir -p bench/results
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) -m pytest bench -q --benchmark-only --benchmark-json=bench/results/latest.json
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) bench/report.py bench/results/latest.json

# The documentation site, into site/ (git-ignored); --strict makes every warning an error.
docs: $(STAMP)
	$(PY) -m mkdocs build --strict --site-dir site

# The fuzz suite at length: 2000 examples a test from random seeds (make test runs 100 from a
# fixed seed); a failure prints the seed that reproduces it.
.PHONY: fuzz
fuzz: $(STAMP)
	FASTRNN_FUZZ=long $(PY) -m pytest -q tests/test_fuzz.py

clean:
	rm -rf $(VENV) .numba_cache .pytest_cache .benchmarks
