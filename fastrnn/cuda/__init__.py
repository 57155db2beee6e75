"""The CUDA target: fastrnn models on NVIDIA GPUs through numba.cuda.

    model_gpu = model.to("cuda")     # fastrnn.cuda.to_cuda(model, "cuda")

Layout mirrors the CPU engine: activations.py and cells.py hold the device functions of the same
equations, driver.py the kernels (input projection, one persistent kernel per layer, the stream
step) and their launches, model.py the CudaModel, stream.py the device Stream and StreamPool.

Without a GPU, setting NUMBA_ENABLE_CUDASIM=1 before numba is imported runs all of it in Numba's
CUDA simulator (slow, for tests); otherwise model.to("cuda") raises CudaUnavailableError.
"""

from fastrnn.cuda.model import CudaModel, CudaUnavailableError, cuda_usable, to_cuda

__all__ = ["CudaModel", "CudaUnavailableError", "cuda_usable", "to_cuda"]
