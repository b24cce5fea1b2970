"""Helpers the kernels share: the jit options, in-bounds ranges, and the band copies of the
direct kernels (padded, split by stride phase, rows at one pitch, so that every tap reads
contiguous positions).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import _numba_cache  # noqa: F401  (first: the kernels' cache stamp)
from ._numba_optimisation import AtMostO2
from ._numba_simd import VECTOR_BYTES, _vdeinterleave

# No `fastmath`: it would break NaN propagation, which must match PyTorch.
_jit = {"cache": True, "parallel": True, "nogil": True}
# the same at LLVM's -O2, for kernels that compile faster so and run as fast (measured)
_jit_o2 = dict(_jit, pipeline_class=AtMostO2)


@njit(cache=True, inline="always")
def _valid_range(count, stride, offset, size):
    """The positions ``j`` in ``[0, count)`` with ``0 <= j * stride + offset < size``."""
    lo = 0
    while lo < count and lo * stride + offset < 0:
        lo += 1
    hi = count
    while hi > lo and (hi - 1) * stride + offset >= size:
        hi -= 1
    return lo, hi


@njit(cache=True, inline="always")
def _share(count, part, parts):
    """The ``part``-th of ``parts`` near-equal contiguous ranges of ``range(count)``."""
    return count * part // parts, count * (part + 1) // parts


# Direct kernels work band by band on a copy of the input: padded (so no tap needs a bounds
# check) and split by stride phase (so every tap reads contiguously). With the band's rows laid
# out at one pitch, a tap is one long multiply-add over the whole band, which vectorises; the
# few lanes that fall in the pitch's slack columns are computed and never copied out.
_BAND_ELEMS = 1 << 14  # input elements of one band's copy: stays in the L1/L2 caches


@njit(cache=True, inline="always")
def _band_geometry(o_n, stride, kernel, dilation):
    """``(rows per band, row pitch)`` of the banded input copy for an output of ``o_n`` (H, W)."""
    oh_n, ow_n = o_n
    sh, sw = stride
    kh, kw = kernel
    dh, dw = dilation
    pitch = ((ow_n - 1) * sw + (kw - 1) * dw + sw) // sw
    fit = max(1, _BAND_ELEMS // (pitch * sw))
    rows = ((fit - (kh - 1) * dh - 1) // sh) + 1
    return max(1, min(oh_n, rows)), pitch


@njit(cache=True, inline="always")
def _band_height(rows, sh, kh, dh):
    """Rows per stride phase of the input copy that ``rows`` output rows read."""
    return ((rows - 1) * sh + (kh - 1) * dh + sh) // sh


@njit(cache=True, inline="always")
def _inside_range(pitch, sw, col0, w_in):
    """The ``m < pitch`` whose every phase ``col0 + m * sw + pw`` (``pw < sw``) lies inside a
    row of ``w_in``: the first phase's first, the last phase's last."""
    lo = _valid_range(pitch, sw, col0, w_in)[0]
    return lo, max(lo, _valid_range(pitch, sw, col0 + sw - 1, w_in)[1])


@njit(cache=True, inline="always")
def _fill_phases(buf, dst, phase_len, xf, src, col0, w_in, pitch, sw, fill):
    """``buf[dst + pw * phase_len + m] = x_row[col0 + m * sw + pw]`` for ``m < pitch``, ``pw <
    sw`` (``x_row`` at ``xf[src - col0:]``, ``fill`` outside it), ``sw`` a literal: a vector's
    worth of ``m`` at a time split by shuffles (:func:`_vdeinterleave`), the rest and the
    edges element by element."""
    lo, hi = _inside_range(pitch, sw, col0, w_in)
    count = VECTOR_BYTES // buf.itemsize
    if hi - lo < count:
        for m in range(lo, hi):
            for pw in range(sw):
                buf[np.uintp(dst + pw * phase_len + m)] = xf[np.uintp(src + m * sw + pw)]
    else:
        for m in range(lo, hi - count, count):
            _vdeinterleave(xf, src + m * sw, sw, buf, dst + m, phase_len)
        # the last vector's worth ends at hi, overlapping the one before (the same copy again)
        _vdeinterleave(xf, src + (hi - count) * sw, sw, buf, dst + hi - count, phase_len)
    for m in range(lo):
        _fill_edge(buf, dst, phase_len, xf, src, col0, w_in, m, sw, fill)
    for m in range(hi, pitch):
        _fill_edge(buf, dst, phase_len, xf, src, col0, w_in, m, sw, fill)


@njit(cache=True, nogil=True)
def _fill_edge(buf, dst, phase_len, xf, src, col0, w_in, m, sw, fill):
    """:func:`_fill_phases` for one ``m`` whose phases may fall outside the row."""
    for pw in range(sw):
        col = col0 + m * sw + pw
        buf[np.uintp(dst + pw * phase_len + m)] = (xf[np.uintp(src + m * sw + pw)]
                                                   if 0 <= col < w_in else fill)


@njit(cache=True, nogil=True)
def _fill_row_phases(buf, dst, phase_len, xf, src, col0, w_in, pitch, sw, fill):
    """:func:`_fill_phases` for ``sw`` 3 or 4 (AlexNet's and M5's stride-4 layers; M5's 1-D
    max pool at batch 1: 52-68 -> 34-37 us), in a function of its own: inlined into
    :func:`_fill_band`, it slowed the stride-2 rows (C3D's 2x2x2 max pool 1.3 -> 1.4 ms).
    Stride 2 keeps its pair loop, which LLVM vectorises itself: through shuffles the short
    rows lost (C3D's 28 columns 1.3 -> 2.3 ms, VGG's 112 0.61 -> 0.70)."""
    if sw == 3:
        _fill_phases(buf, dst, phase_len, xf, src, col0, w_in, pitch, 3, fill)
    else:
        _fill_phases(buf, dst, phase_len, xf, src, col0, w_in, pitch, 4, fill)


@njit(cache=True, nogil=True)
def _fill_band(buf, base, xf, plane, h_in, w_in, row0, col0, sh, sw, hb, pitch, fill):
    """``buf[base:][ph, pw, j, m] = x[plane][row0 + j*sh + ph, col0 + m*sw + pw]``, ``fill``
    outside."""
    for ph in range(sh):
        for j in range(hb):
            row = row0 + j * sh + ph
            dst = base + (ph * sw * hb + j) * pitch
            if row < 0 or row >= h_in:
                for pw in range(sw):
                    for m in range(pitch):
                        buf[np.uintp(dst + pw * hb * pitch + m)] = fill
                continue
            src = plane + row * w_in + col0
            if sw == 2:
                # both phases in one pass: contiguous pairs, which vectorise as shuffles
                lo, hi = _inside_range(pitch, 2, col0, w_in)
                odd = dst + hb * pitch
                for m in range(lo, hi):
                    buf[np.uintp(dst + m)] = xf[np.uintp(src + 2 * m)]
                    buf[np.uintp(odd + m)] = xf[np.uintp(src + 2 * m + 1)]
                for m in range(lo):
                    _fill_edge(buf, dst, hb * pitch, xf, src, col0, w_in, m, 2, fill)
                for m in range(hi, pitch):
                    _fill_edge(buf, dst, hb * pitch, xf, src, col0, w_in, m, 2, fill)
                continue
            if 3 <= sw <= 4:
                _fill_row_phases(buf, dst, hb * pitch, xf, src, col0, w_in, pitch, sw, fill)
                continue
            for pw in range(sw):
                lo, hi = _valid_range(pitch, sw, col0 + pw, w_in)
                d = dst + pw * hb * pitch
                for m in range(lo):
                    buf[np.uintp(d + m)] = fill
                if sw == 1:
                    for m in range(lo, hi):
                        buf[np.uintp(d + m)] = xf[np.uintp(src + m)]
                else:
                    for m in range(lo, hi):
                        buf[np.uintp(d + m)] = xf[np.uintp(src + m * sw + pw)]
                for m in range(hi, pitch):
                    buf[np.uintp(d + m)] = fill


@njit(cache=True, nogil=True)
def _tap_start(rh, rw, dilation, sh, sw, hb, pitch):
    """Where tap ``(rh, rw)`` starts reading in a band copied by :func:`_fill_band`."""
    eh, ew = rh * dilation[1], rw * dilation[2]
    return (((eh % sh) * sw + ew % sw) * hb + eh // sh) * pitch + ew // sw
