"""CuPy GPU backend: the primitives of :mod:`._gpu_ops` on CuPy arrays.

The CUDA kernels (``cuda_kernels.cu``) are compiled by NVRTC through ``cupy.RawModule`` once per
(element type, GPU) and kept; GEMMs go to cuBLAS through ``cupy.matmul``. Calls are
asynchronous, as CuPy's: they return once the work is queued on the current stream.

Importing this module fails with ``ImportError`` where CuPy is missing or finds no GPU, which
makes the backend unavailable (``fastconv.available_backends()``) rather than broken.
"""

from __future__ import annotations

import functools

import cupy
import numpy as np

from .._compiling import compiling_cuda
from . import _cuda_source
from ._gpu_ops import GpuOps

name = "cupy"

# Threads per block; the grid-stride loops take any total with at most MAX_BLOCKS blocks.
BLOCK = 256
MAX_BLOCKS = 1 << 16


def _gpu_count():
    try:
        return cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError:
        return 0


if _gpu_count() == 0:
    raise ImportError("CuPy is installed but finds no CUDA GPU")


@functools.cache
def _module(dtype_name, device_id):
    """The kernels compiled for one element type on one GPU (NVRTC; CuPy caches on disk too),
    compiled here rather than at the first launch, so that the compile is seen as one."""
    with cupy.cuda.Device(device_id), compiling_cuda():
        module = cupy.RawModule(code=_cuda_source.source(np.dtype(dtype_name)),
                                options=("--std=c++14",))
        module.compile()
        return module


class CupyDevice:
    """The device of :class:`GpuOps` on the GPU: CuPy arrays, kernels launched by CuPy."""

    xp = cupy

    @staticmethod
    def launch(kernel, dtype, total, *args):
        function = _module(np.dtype(dtype).name, cupy.cuda.Device().id).get_function(kernel)
        blocks = min(-(-total // BLOCK), MAX_BLOCKS)
        function((blocks,), (BLOCK,),
                 tuple(a if isinstance(a, cupy.ndarray) else np.int64(a) for a in args))


def describe():
    """The GPU, CUDA and CuPy versions, for ``fastconv info``."""
    device = cupy.cuda.Device()
    properties = cupy.cuda.runtime.getDeviceProperties(device.id)
    gpu_name = properties["name"]
    gpu_name = gpu_name.decode() if isinstance(gpu_name, bytes) else gpu_name
    runtime = cupy.cuda.runtime.runtimeGetVersion()
    return {"gpu": gpu_name, "compute capability": device.compute_capability,
            "memory GiB": round(properties["totalGlobalMem"] / 2**30, 1),
            "CUDA runtime": f"{runtime // 1000}.{runtime % 1000 // 10}",
            "cupy": cupy.__version__}


_ops = GpuOps(CupyDevice())

conv_forward = _ops.conv_forward
conv_transpose_forward = _ops.conv_transpose_forward
conv_weight_grad = _ops.conv_weight_grad
bias_grad = _ops.bias_grad
avg_pool_forward = _ops.avg_pool_forward
avg_pool_backward = _ops.avg_pool_backward
max_pool_forward = _ops.max_pool_forward
max_pool_backward = _ops.max_pool_backward
sigmoid_forward = _ops.sigmoid_forward
sigmoid_backward = _ops.sigmoid_backward
