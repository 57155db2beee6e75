"""Shared by tests/ and bench/: the runs keep Numba's cache in .numba_cache (git-ignored) rather
than in the package's __pycache__ folders. fastrnn.engine.jit stamps every cached kernel with a
digest of all of fastrnn's sources and Numba's version, so an edit anywhere recompiles."""

import os
from pathlib import Path

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).parent / ".numba_cache"))
