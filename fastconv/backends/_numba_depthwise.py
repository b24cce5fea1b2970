"""Depthwise convolutions (one input and one output channel per group) vectorised over
channels. A task is one image and one vector of channels (16 float32 or 8 float64): it copies
their planes channels last and padded into a scratch that stays in the cache, computes there
with each output's sum in a register over the taps, and writes its planes back, so memory
is read and written once, as the direct kernels do, but the multiply-adds run along whole
vectors of channels instead of short rows of one small plane (MobileNetV2's 960 channels of
7x7: 49 positions per plane). The copies go by squares of a vector's worth of positions x
channels transposed in registers; the weight gradient keeps nine taps' sums in registers
over every position.

Any stride, dilation, padding (a negative one crops) and 1-D to 3-D shape: an output position
is an offset into the scratch, a tap another offset (as in :mod:`._numba_kvector`, whose
copy holds the whole batch and every channel; the scratch, one image and one vector).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _numba_cache  # noqa: F401  (first: the kernels' cache stamp)
from ._numba_kvector import _position_starts, _tap_offset
from ._numba_simd import (
    VECTOR_BYTES,
    _vector_scratch,
    _vfma,
    _vload,
    _vsplat,
    _vstore,
    _vtranspose,
)

# contract: fused multiply-adds (one rounding each); NaN and Inf as without it
_jit = {"cache": True, "parallel": True, "nogil": True, "fastmath": {"contract"}}


def channel_vector(itemsize):
    """Channels per task: one 512-bit vector's worth."""
    return VECTOR_BYTES // itemsize


@njit(cache=True, inline="always")
def _to_scratch(xf, n, c0, c_count, c_n, in_size, pad, extent, vec, xs):
    """Image ``n``'s channels ``c0 .. c0 + c_count`` of ``xf`` (flat ``(N, C, D, H, W)``, sizes
    ``in_size``) into ``xs`` ``(extent..., vec)``: channels last, shifted by ``pad`` (zeros
    outside the input and past ``c_count``)."""
    d_n, h_n, w_n = in_size
    plane = d_n * h_n * w_n
    for i in range(xs.size):
        xs[i] = 0
    inside = (0 <= pad[0] and d_n + pad[0] <= extent[0] and 0 <= pad[1]
              and h_n + pad[1] <= extent[1] and 0 <= pad[2] and w_n + pad[2] <= extent[2])
    if c_count == vec and inside:
        # every input position inside the scratch: squares of a vector's worth of positions
        # (raster order, across rows) x channels transposed in registers, the last few
        # positions element by element (MobileNetV2's 960 channels at 7x7, batch 16: element
        # by element, the copies were most of the time; weight gradient 0.82-0.87 -> 0.51-0.54
        # ms, forward 0.59-0.66 -> 0.42-0.54)
        src = (n * c_n + c0) * plane  # channel c, position j at src + c * plane + j
        # where each position of the plane goes in the scratch: a stride-1 "output" of the
        # input's own size, read from the scratch's shape
        at = np.empty(plane, dtype=np.int64)
        _position_starts(0, plane - 1, ((pad[0] * extent[1] + pad[1]) * extent[2] + pad[2]) * vec,
                         (1, 1, 1), in_size, (1, extent[0], extent[1], extent[2], vec), at)
        for j0 in range(0, plane, vec):
            if j0 + vec <= plane:
                _vtranspose(xf, src + j0, plane, xs, at[j0:j0 + vec])
                continue
            for j in range(j0, plane):
                for c in range(vec):
                    xs[np.uintp(at[j] + c)] = xf[np.uintp(src + c * plane + j)]
        return
    for dp in range(extent[0]):
        d = dp - pad[0]
        if d < 0 or d >= d_n:
            continue
        for hp in range(extent[1]):
            h = hp - pad[1]
            if h < 0 or h >= h_n:
                continue
            w_lo, w_hi = max(0, pad[2]), min(extent[2], w_n + pad[2])
            row = (dp * extent[1] + hp) * extent[2]
            for c in range(c_count):
                src = (n * c_n + c0 + c) * plane + (d * h_n + h) * w_n - pad[2]
                for wp in range(w_lo, w_hi):
                    xs[np.uintp((row + wp) * vec + c)] = xf[np.uintp(src + wp)]


@njit(**_jit)
def _depthwise_forward(x, wt, bias, stride, pad, dilation, kernel, extent, y):
    """The depthwise convolution of ``x`` ``(N, C, D, H, W)`` with ``wt`` ``(taps, C')``
    (the weights by tap, zero past channel C - 1; C' a whole number of vectors) into ``y``
    ``(N, C, OD, OH, OW)``; ``bias`` ``(C',)``. ``extent``: the padded input that the outputs
    read. Per output the sum starts at the bias and takes the taps in raster order."""
    n_b, c_n = x.shape[:2]
    vec = VECTOR_BYTES // x.itemsize
    cblocks = (c_n + vec - 1) // vec
    taps = kernel[0] * kernel[1] * kernel[2]
    out_size = y.shape[2:]
    positions = out_size[0] * out_size[1] * out_size[2]
    scratch = (1, extent[0], extent[1], extent[2], vec)  # the shape the scratch is read as
    xf, wf, yf = x.reshape(x.size), wt.reshape(wt.size), y.reshape(y.size)
    c_pad = wt.shape[1]
    for task in prange(n_b * cblocks):
        n, c0 = task // cblocks, (task % cblocks) * vec
        c_count = min(vec, c_n - c0)
        xs = _vector_scratch(extent[0] * extent[1] * extent[2] * vec, x)
        sums = _vector_scratch(positions * vec, x)
        _to_scratch(xf, n, c0, c_count, c_n, x.shape[2:], pad, extent, vec, xs)
        tap_at = np.empty(taps, dtype=np.int64)
        for tap in range(taps):
            tap_at[tap] = _tap_offset(tap, kernel, dilation, scratch)
        starts = np.empty(positions, dtype=np.int64)
        _position_starts(0, positions - 1, 0, stride, out_size, scratch, starts)
        for p in range(positions):
            start = starts[p]
            acc = _vload(bias, c0)
            for tap in range(taps):
                acc = _vfma(_vload(xs, start + tap_at[tap]), _vload(wf, tap * c_pad + c0), acc)
            _vstore(sums, p * vec, acc)
        for c in range(c_count):
            dst = (n * c_n + c0 + c) * positions
            for p in range(positions):
                yf[np.uintp(dst + p)] = sums[np.uintp(p * vec + c)]
    return y


@njit(**_jit)
def _depthwise_weight_grad(x, gy, stride, pad, dilation, kernel, extent, partial):
    """Per image, the depthwise weight gradient's sums ``partial`` ``(N, taps, C')`` (C' a
    whole number of vectors; the caller adds the images in order) from ``x`` ``(N, C, D, H,
    W)`` and ``gy`` ``(N, C, OD, OH, OW)``; ``extent`` as for :func:`_depthwise_forward`. Per
    image and tap the sum runs over the output positions in order."""
    n_b, c_n = x.shape[:2]
    vec = VECTOR_BYTES // x.itemsize
    cblocks = (c_n + vec - 1) // vec
    taps = kernel[0] * kernel[1] * kernel[2]
    out_size = gy.shape[2:]
    positions = out_size[0] * out_size[1] * out_size[2]
    scratch = (1, extent[0], extent[1], extent[2], vec)  # the shape the scratch is read as
    xf, gf = x.reshape(x.size), gy.reshape(gy.size)
    no_pad = (0, 0, 0)
    for task in prange(n_b * cblocks):
        n, c0 = task // cblocks, (task % cblocks) * vec
        c_count = min(vec, c_n - c0)
        xs = _vector_scratch(extent[0] * extent[1] * extent[2] * vec, x)
        gs = _vector_scratch(positions * vec, x)
        _to_scratch(xf, n, c0, c_count, c_n, x.shape[2:], pad, extent, vec, xs)
        _to_scratch(gf, n, c0, c_count, c_n, out_size, no_pad, out_size, vec, gs)
        sums = partial[n].reshape(taps * partial.shape[2])
        c_pad = partial.shape[2]
        starts = np.empty(positions, dtype=np.int64)
        _position_starts(0, positions - 1, 0, stride, out_size, scratch, starts)
        tap_at = np.empty(taps, dtype=np.int64)
        for tap in range(taps):
            tap_at[tap] = _tap_offset(tap, kernel, dilation, scratch)
        zero = _vsplat(0, gs)
        # nine taps' sums held in registers over every position (a 3x3 kernel's all; a sum
        # kept in memory waited on its own store at every position: MobileNetV2's 960
        # channels at 7x7, batch 16, weight gradient 0.94-0.96 -> 0.82-0.87 ms); past the
        # last tap, the last again, not stored
        for t0 in range(0, taps, 9):
            o0, o1, o2 = tap_at[t0], tap_at[min(t0 + 1, taps - 1)], tap_at[min(t0 + 2, taps - 1)]
            o3, o4, o5 = (tap_at[min(t0 + 3, taps - 1)], tap_at[min(t0 + 4, taps - 1)],
                          tap_at[min(t0 + 5, taps - 1)])
            o6, o7, o8 = (tap_at[min(t0 + 6, taps - 1)], tap_at[min(t0 + 7, taps - 1)],
                          tap_at[min(t0 + 8, taps - 1)])
            s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = zero
            for p in range(positions):
                start = starts[p]
                g = _vload(gs, p * vec)
                s0, s1 = _vfma(_vload(xs, start + o0), g, s0), _vfma(_vload(xs, start + o1), g, s1)
                s2, s3 = _vfma(_vload(xs, start + o2), g, s2), _vfma(_vload(xs, start + o3), g, s3)
                s4, s5 = _vfma(_vload(xs, start + o4), g, s4), _vfma(_vload(xs, start + o5), g, s5)
                s6, s7 = _vfma(_vload(xs, start + o6), g, s6), _vfma(_vload(xs, start + o7), g, s7)
                s8 = _vfma(_vload(xs, start + o8), g, s8)
            for i, total in enumerate((s0, s1, s2, s3, s4, s5, s6, s7, s8)):
                if t0 + i < taps:
                    _vstore(sums, (t0 + i) * c_pad + c0, total)
    return partial
