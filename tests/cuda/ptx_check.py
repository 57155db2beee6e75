"""Compile every fastrnn CUDA kernel to PTX for an H100 (cc 9.0), with no GPU present.

The simulator runs the kernels as Python, so it cannot tell whether Numba can type and compile
them for a real device; this does. It needs the CUDA compiler (NVVM), which
`pip install numba-cuda[cu12]` brings (the `cuda` extra), and no GPU:

    python tests/cuda/ptx_check.py

It prints, per dtype and kernel, the PTX size, the registers and spills ptxas gives it for sm_90
(when the wheel's ptxas is there), and for float32 the double-precision instructions. There should
be only these: the loads and conversions of the float64 alpha/beta table, ThresholdedRelu's
compare against its float64 alpha (a setp.f64 at each activation site), and the LSTM's cell-state
update c - (1 - f) c + i g, one mul, sub and fma in float64 a unit (fastrnn/cuda/cells.py says
why). With numba-cuda 0.30.4 on numba 0.68.1, 2026-12-01: 16 ld.global.f64, 27-33 cvt.rn.f32.f64, 14
cvt.f64, 10 setp.ge.f64, 1 each of mul.f64, sub.f64, fma.rn.f64, selp.f64 per float32 kernel.
"""

import re
import subprocess
import tempfile
import types
from collections import Counter
from pathlib import Path

import numba
import numpy as np
from numba import cuda, typeof

if getattr(cuda, "implementation", "") != "NVIDIA":
    raise SystemExit("needs the numba-cuda package (pip install 'numba-cuda[cu12]')")

import numba.cuda.dispatcher as dispatcher  # noqa: E402

# Device functions ask the current device for its compute capability; there is none: say 9.0.
dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=(9, 0))

from fastrnn.cuda import driver  # noqa: E402


def signatures(dtype):
    real = numba.from_dtype(np.dtype(dtype))
    i64, boolean = numba.int64, numba.boolean

    def arrays(nd, of=dtype):
        return typeof(np.zeros((1,) * nd, of))

    A, I, F = arrays, (lambda nd: arrays(nd, np.int64)), (lambda nd: arrays(nd, np.float64))
    return {
        "matmul_bias": (A(2), A(2), A(1), A(2), i64),
        "sequence_kernel": (i64, boolean, real, i64, i64, i64, A(3), I(1), A(3), A(3), A(4), A(3), A(3),
                            A(2), A(3), A(3), I(2), F(2), F(2), A(3)),
        "step_kernel": (i64, boolean, real, A(2), I(1), A(1), I(1), A(2), A(3), A(2), A(3), A(3),
                        I(2), F(2), F(2), A(3), A(3), A(2), A(2), A(2), A(2)),
    }


def ptxas():
    """The path of ptxas from the nvidia-cuda-nvcc wheel, or None."""
    try:
        import nvidia.cuda_nvcc
    except ImportError:
        return None
    path = Path(list(nvidia.cuda_nvcc.__path__)[0]) / "bin" / "ptxas"
    return path if path.exists() else None


def registers(ptx, assembler):
    """ptxas's resource line (registers, spills) for sm_90, or a note when ptxas is missing."""
    if assembler is None:
        return "no ptxas"
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "kernel.ptx"
        source.write_text(ptx)
        result = subprocess.run([str(assembler), "-arch=sm_90", "-v", str(source), "-o",
                                 str(Path(folder) / "kernel.cubin")], capture_output=True,
                                text=True)
    if result.returncode:
        return f"ptxas failed: {result.stderr[-500:]}"
    return " ".join(line.split(":")[-1].strip() for line in result.stderr.splitlines()
                    if "registers" in line or "spill" in line)


def main():
    assembler = ptxas()
    for dtype in (np.float32, np.float64):
        kernels = driver.build(np.dtype(dtype), 16)
        for name, signature in signatures(dtype).items():
            ptx, _ = cuda.compile_ptx(getattr(kernels, name).py_func, signature, cc=(9, 0))
            doubles = Counter(m.group(0) for m in re.finditer(r"\b[a-z]+(?:\.[a-z0-9]+)*\.f64\b",
                                                                 ptx))
            print(f"{np.dtype(dtype).name:8} {name:16} {len(ptx):7} chars of PTX; "
                  f"{registers(ptx, assembler)}")
            if np.dtype(dtype) == np.float32:
                print(f"{'':26}f64 instructions: {dict(doubles)}")


if __name__ == "__main__":
    main()
