"""BLAS's GEMM called from Numba kernels, on the thread that calls it.

The GEMM paths (packing + BLAS, Winograd) run as one parallel Numba kernel per call: each of
Numba's threads packs its tasks' operands and multiplies them by calling BLAS's ``sgemm`` or
``dgemm`` itself (NumPy's OpenBLAS where its wheel bundles one, else SciPy's through
``scipy.linalg.cython_blas``), with BLAS held at one thread
(:func:`._numba_tasks.one_blas_thread`). BLAS then starts no threads of its own, so nothing spins
against Numba's pool (the trap of calling a multi-threaded BLAS inside ``prange``), and a call
costs one launch of Numba's pool: a few microseconds, where handing tasks to a pool of Python
threads took 30-100 (ResNet-50's first 1x1 layer at batch 1 went 0.38-0.49 -> 0.23-0.26 ms).

The function is passed to the kernels as an argument, not read as a global: its address
differs from process to process, and a kernel that embeds it could not be cached on disk.
"""

from __future__ import annotations

import ctypes

import numpy as np
from numba import njit
from numba.extending import get_cython_function_address

from . import _numba_cache  # noqa: F401  (first: the kernels' cache stamp)

# ?gemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc): Fortran, all by pointer
_GEMM_TYPE = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 13))
NO_TRANSPOSE, TRANSPOSE = ord("N"), ord("T")


def _numpy_gemms():
    """NumPy's own OpenBLAS's ``?gemm`` (64-bit integers), where NumPy's wheel bundles one:
    ``sgemm`` there ran 2-23% faster than SciPy's (OpenBLAS 0.3.31 against 0.3.30; one
    thread, ResNet-sized products). ``None`` elsewhere (a NumPy on another BLAS)."""
    from threadpoolctl import threadpool_info

    for info in threadpool_info():
        if info.get("internal_api") != "openblas":
            continue
        try:
            lib = ctypes.CDLL(info["filepath"])
        except OSError:
            continue
        if hasattr(lib, "scipy_sgemm_64_") and hasattr(lib, "scipy_dgemm_64_"):
            return {np.dtype(np.float32): _GEMM_TYPE(("scipy_sgemm_64_", lib)),
                    np.dtype(np.float64): _GEMM_TYPE(("scipy_dgemm_64_", lib))}, np.int64
    return None


def _scipy_gemms():
    """SciPy's ``?gemm`` (32-bit integers), through its documented ``cython_blas`` (loaded
    here, before :func:`._numba_tasks.one_blas_thread` looks for the BLAS libraries to
    limit)."""
    import scipy.linalg.cython_blas  # noqa: F401

    return {np.dtype(dtype): _GEMM_TYPE(get_cython_function_address("scipy.linalg.cython_blas",
                                                                    name))
            for dtype, name in ((np.float32, "sgemm"), (np.float64, "dgemm"))}, np.int32


_GEMMS, _INTEGER = _numpy_gemms() or _scipy_gemms()


def gemm_function(dtype):
    """BLAS's GEMM for ``dtype`` (float32 or float64) and an array of its integer type, to
    pass to the kernels as ``blas``."""
    return _GEMMS[np.dtype(dtype)], np.empty(0, _INTEGER)


@njit(cache=True, nogil=True)
def _gemm(blas, trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """Row-major ``C = op(A) @ op(B) + beta * C``, ``C`` of ``m x n``, summing over ``k``.

    ``blas`` is :func:`gemm_function`'s pair. ``a``, ``b`` and ``c`` are 1-D views starting
    at their matrix's first element, whose rows are ``lda``, ``ldb`` and ``ldc`` elements
    apart; ``op`` transposes where ``trans_*`` is ``TRANSPOSE``. BLAS is column-major: it
    computes ``C^T = op(B)^T op(A)^T``.
    """
    gemm, integer = blas
    ints = np.empty(6, integer.dtype)
    ints[0], ints[1], ints[2] = n, m, k
    ints[3], ints[4], ints[5] = ldb, lda, ldc
    chars = np.empty(2, np.uint8)
    chars[0], chars[1] = trans_b, trans_a
    scalars = np.empty(2, c.dtype)
    scalars[0], scalars[1] = 1, beta
    gemm(chars[0:].ctypes, chars[1:].ctypes, ints[0:].ctypes, ints[1:].ctypes, ints[2:].ctypes,
         scalars[0:].ctypes, b.ctypes, ints[3:].ctypes, a.ctypes, ints[4:].ctypes,
         scalars[1:].ctypes, c.ctypes, ints[5:].ctypes)
