"""Shared by tests/ and bench/.

Numba's on-disk cache is checked against the file of each jitted function only, not the files of
the functions it calls, so an edit to a cell could leave a stale compiled driver. The test runs
therefore keep their cache in a folder named by a hash of every fastrnn source file.
"""

import hashlib
import os
from pathlib import Path

_ROOT = Path(__file__).parent
if "NUMBA_CACHE_DIR" not in os.environ:
    _digest = hashlib.sha256()
    for _source in sorted(_ROOT.glob("fastrnn/**/*.py")):
        _digest.update(_source.read_bytes())
    os.environ["NUMBA_CACHE_DIR"] = str(_ROOT / ".numba_cache" / _digest.hexdigest()[:16])
