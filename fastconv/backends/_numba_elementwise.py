"""Element-wise kernels of ``fastconv.nn``: the sigmoid and its gradient.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _numba_cache  # noqa: F401  (first: the kernels' cache stamp)
from ._numba_band import _jit_o2

# Element-wise kernels for fastconv.nn's activations: one pass over memory instead of NumPy's
# one per operation, on every thread.
_ELEMENT_CHUNK = 1 << 12


# 2**f on [-1/2, 1/2]: Taylor coefficients ln(2)**k / k!, k = 6 .. 0 (error below 2e-7)
_EXP2_COEFFS = (1.5403530393381609e-4, 1.3333558146428443e-3, 9.6181291076284772e-3,
                5.5504108664821580e-2, 2.4022650695910071e-1, 6.9314718055994531e-1, 1.0)


@njit(**_jit_o2)
def _sigmoid_forward_f32(x, y):
    """``1 / (1 + exp(-x))`` of float32 ``x``, flat. ``exp(-x) = 2**(n + f)``: ``2**f`` by a
    polynomial, ``2**n`` by writing ``n`` into a float's exponent bits, so the loop vectorises
    (libm's exp does not; relative error below 3e-7, against 6e-8 for one rounding). NaN stays
    NaN; the exponent is clamped to +-126, which gives 1 for large x and at most 1.2e-38 for
    x below -87 (the true value, and NumPy's and PyTorch's, being 0 or a subnormal there)."""
    n = x.size
    c6, c5, c4, c3, c2, c1, c0 = _EXP2_COEFFS
    for t in prange(-(-n // _ELEMENT_CHUNK)):
        lo = t * _ELEMENT_CHUNK
        m = min(n, lo + _ELEMENT_CHUNK) - lo
        bits = np.empty(m, dtype=np.int32)
        poly = np.empty(m, dtype=np.float32)
        for i in range(m):
            # -x log2(e) in float64: in float32 its rounding error, times |x|, would be the
            # result's (1.6e-6 at x = -24)
            v = np.float64(x[np.uintp(lo + i)]) * -1.4426950408889634
            if v < -126:  # comparisons are false for NaN, which passes through
                v = -126.0
            if v > 126:
                v = 126.0
            r = np.floor(v + 0.5)
            f = np.float32(v - r)
            q = np.float32(c6) * f + np.float32(c5)
            q = q * f + np.float32(c4)
            q = q * f + np.float32(c3)
            q = q * f + np.float32(c2)
            q = q * f + np.float32(c1)
            poly[i] = q * f + np.float32(c0)
            bits[i] = (np.int32(r) + 127) << 23 if v == v else 0
        scale = bits.view(np.float32)
        for i in range(m):
            y[np.uintp(lo + i)] = np.float32(1) / (np.float32(1) + poly[i] * scale[i])
    return y


@njit(**_jit_o2)
def _sigmoid_backward(y, gy, g):
    """``g = gy * y * (1 - y)``, flat, in one pass."""
    n = y.size
    for t in prange(-(-n // _ELEMENT_CHUNK)):
        for i in range(t * _ELEMENT_CHUNK, min(n, (t + 1) * _ELEMENT_CHUNK)):
            v = y[np.uintp(i)]
            g[np.uintp(i)] = gy[np.uintp(i)] * v * (1 - v)
    return g
