"""The CUDA source of the ``cupy`` backend (``cuda_kernels.cu``), ready for a compiler.

One source serves every element type: :func:`source` puts the definitions it expects in front
of it (``T``, and ``FC_INFINITY`` unless the caller's prelude defines it).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

PATH = Path(__file__).with_name("cuda_kernels.cu")

# The kernels the source defines (each ``extern "C"``, so its symbol is this name).
KERNELS = ("conv_direct", "im2col", "col2im", "conv_transpose_direct",
           "conv_weight_grad_direct", "avg_pool_forward", "avg_pool_backward",
           "max_pool_forward", "max_pool_backward")

C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


@functools.cache
def _text():
    return PATH.read_text()


def source(dtype, prelude=""):
    """The kernels compiled for arrays of ``dtype`` (float32 or float64), after ``prelude``."""
    c_type = C_TYPES[np.dtype(dtype)]
    return (f"{prelude}\ntypedef {c_type} T;\n"
            "#ifndef FC_INFINITY\n#define FC_INFINITY __int_as_float(0x7f800000)\n#endif\n"
            f"{_text()}")
