"""fastconv: convolution and pooling primitives for NumPy arrays, with PyTorch's semantics.

Every op has an explicit backward. Layouts are PyTorch's: ``(N, C, *spatial)`` inputs,
``(C_out, C_in // groups, *kernel)`` conv weights, ``(C_in, C_out // groups, *kernel)``
transposed-conv weights. The computing backend is chosen by ``FASTCONV_BACKEND``,
:func:`set_backend` or :func:`use_backend`; on the CPU, :func:`set_tuning` (or
``FASTCONV_TUNE=1``) lets each convolution shape's first call measure its ways to compute.
"""

from ._backend import available_backends, get_backend, set_backend, use_backend
from ._threads import get_num_threads, set_num_threads
from .backends._numba_tuning import set_tuning
from .functional import *  # noqa: F403
from .functional import __all__ as _functional_all

__version__ = "0.1.0"

__all__ = [
    *_functional_all,
    "available_backends",
    "get_num_threads",
    "set_num_threads",
    "get_backend",
    "set_backend",
    "use_backend",
    "set_tuning",
    "__version__",
]
