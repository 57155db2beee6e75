"""The CUDA tests run on a real GPU, or in Numba's CUDA simulator, or not at all in this process.

Numba decides at import whether numba.cuda is the simulator (NUMBA_ENABLE_CUDASIM=1 in the
environment before numba is first imported), and the rest of the suite imports numba long before
this folder is collected. So:

- with a GPU, or with the simulator already on, the tests here run in this process;
- otherwise they are not collected here, and tests/test_cuda_simulator.py runs this folder in a child
  pytest with NUMBA_ENABLE_CUDASIM=1, so CI without a GPU runs every CUDA path in the simulator.

The simulator runs each CUDA thread as a Python thread and polls them from the main thread; a
short GIL switch interval lets the threads of a block reach each barrier sooner (2x faster here).
"""

import sys
from pathlib import Path

from numba.core import config as numba_config

from fastrnn.cuda import cuda_usable

SIMULATOR = bool(numba_config.ENABLE_CUDASIM)
RUN_HERE = cuda_usable()

if SIMULATOR:
    sys.setswitchinterval(0.0005)


# Not collected at all here otherwise: tests/test_cuda_simulator.py runs them in the simulator.
collect_ignore_glob = [] if RUN_HERE else ["test_*.py"]

# tests/reference.py (the float64 numpy reference) sits one folder up.
sys.path.insert(0, str(Path(__file__).parent.parent))
