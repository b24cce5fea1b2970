"""The ``cupy`` backend's kernels on the CPU: ``cuda_kernels.cu`` compiled as plain C++.

Every kernel is a grid-stride loop without shared memory, so with a grid of one block of one
thread it computes its whole output serially. :class:`HostDevice` builds the source that way
with the system's C++ compiler and launches the kernels through ctypes on NumPy arrays; with it
:class:`fastconv.backends._gpu_ops.GpuOps` runs, line for line, the code the GPU runs, minus
CuPy's launch and cuBLAS (``numpy.matmul`` stands in for ``cupy.matmul``). This checks the
kernels' index arithmetic against PyTorch where no GPU is; speed means nothing here.
"""

from __future__ import annotations

import ctypes
import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from fastconv.backends import _cuda_source

PRELUDE = r"""
#include <math.h>
#define __global__
#define __device__
#define __forceinline__ inline
struct fc_dim3 { unsigned x, y, z; };
static const fc_dim3 threadIdx = {0, 0, 0}, blockIdx = {0, 0, 0};
static const fc_dim3 blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
#define FC_INFINITY INFINITY
"""


def compiler():
    """The C++ compiler to build the kernels with, or ``None``."""
    return shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


class HostDevice:
    """A device for :class:`GpuOps` (``xp`` and ``launch``) that runs the kernels on the CPU."""

    xp = np

    def __init__(self):
        self._dir = Path(tempfile.mkdtemp(prefix="fastconv-cuda-host-"))

    @functools.cache  # noqa: B019  (one device per test session)
    def _library(self, dtype):
        source = self._dir / f"kernels_{dtype.name}.cpp"
        source.write_text(_cuda_source.source(dtype, PRELUDE))
        library = source.with_suffix(".so")
        subprocess.run([compiler(), "-O2", "-shared", "-fPIC", "-std=c++14", "-Wall",
                        "-Werror", "-o", str(library), str(source)],
                       check=True, capture_output=True, text=True)
        return ctypes.CDLL(str(library))

    def launch(self, kernel, dtype, total, *args):
        function = getattr(self._library(np.dtype(dtype)), kernel)
        function.restype = None
        function(*(self._argument(a) for a in args))

    @staticmethod
    def _argument(a):
        if isinstance(a, np.ndarray):
            assert a.flags.c_contiguous, "kernels take contiguous arrays"
            return ctypes.c_void_p(a.ctypes.data)
        return ctypes.c_longlong(int(a))
