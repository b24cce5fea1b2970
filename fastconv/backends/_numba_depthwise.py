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
from ._numba_band import _share
from ._numba_kvector import _position_starts, _tap_offset
from ._numba_simd import (
    VECTOR_BYTES,
    _copy_transposed,
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


@njit(cache=True, inline="always")
def _task_weights(w2, bias, c0, c_count, flip, wl, bl):
    """Channels ``c0 .. c0 + c_count`` of ``w2`` ``(C, taps)`` into ``wl`` by tap (tap ``t``'s
    vector at ``t * vec``; with ``flip`` the taps reversed, a transposed convolution's kernel)
    and of ``bias`` (empty: none) into ``bl``; zeros past ``c_count``."""
    vec = bl.size
    taps = w2.shape[1]
    for tap in range(taps):
        src = taps - 1 - tap if flip else tap
        for c in range(vec):
            wl[tap * vec + c] = w2[c0 + c, src] if c < c_count else 0
    for c in range(vec):
        bl[c] = bias[c0 + c] if c < c_count and bias.size else 0


@njit(**_jit)
def _depthwise_forward(x, w2, bias, flip, stride, pad, dilation, kernel, extent, threads, y):
    """The depthwise convolution of ``x`` ``(N, C, D, H, W)`` with ``w2`` ``(C, taps)`` (with
    ``flip``, the taps reversed: a depthwise transposed convolution's kernel, computed at
    stride 1) into ``y`` ``(N, C, OD, OH, OW)``; ``bias`` ``(C,)`` or empty. ``extent``: the
    padded input that the outputs read. Per output the sum starts at the bias and takes the
    taps in raster order.

    Each of ``threads`` parts takes a contiguous range of the tasks (channel vectors, each
    over the batch's images), its scratch made once: made per task (five arrays) it was 15% of
    MobileNetV2's 960 x 7x7 at batch 1 (29 -> 25 us). Its weights are copied by tap once per
    vector of channels."""
    n_b, c_n = x.shape[:2]
    vec = VECTOR_BYTES // x.itemsize
    cblocks = (c_n + vec - 1) // vec
    taps = kernel[0] * kernel[1] * kernel[2]
    out_size = y.shape[2:]
    positions = out_size[0] * out_size[1] * out_size[2]
    scratch = (1, extent[0], extent[1], extent[2], vec)  # the shape the scratch is read as
    xf, yf = x.reshape(x.size), y.reshape(y.size)
    for part in prange(threads):
        xs = _vector_scratch(extent[0] * extent[1] * extent[2] * vec, x)
        sums = _vector_scratch(positions * vec, x)
        wl = _vector_scratch(taps * vec, x)
        bl = _vector_scratch(vec, x)
        tap_at = np.empty(taps, dtype=np.int64)
        for tap in range(taps):
            tap_at[tap] = _tap_offset(tap, kernel, dilation, scratch)
        starts = np.empty(positions, dtype=np.int64)
        _position_starts(0, positions - 1, 0, stride, out_size, scratch, starts)
        at = np.empty(vec, dtype=np.int64)
        t_lo, t_hi = _share(cblocks * n_b, part, threads)
        for task in range(t_lo, t_hi):
            n, c0 = task % n_b, task // n_b * vec
            c_count = min(vec, c_n - c0)
            if task == t_lo or n == 0:
                _task_weights(w2, bias, c0, c_count, flip, wl, bl)
            _to_scratch(xf, n, c0, c_count, c_n, x.shape[2:], pad, extent, vec, xs)
            for p in range(positions):
                start = starts[p]
                acc = _vload(bl, 0)
                for tap in range(taps):
                    acc = _vfma(_vload(xs, start + tap_at[tap]), _vload(wl, tap * vec), acc)
                _vstore(sums, p * vec, acc)
            # out by squares of positions x channels transposed in registers (MobileNetV2's
            # 144 channels at stride 2, 28x28 out, batch 1: 141-147 -> 133 us)
            _copy_transposed(sums, 0, vec, yf, (n * c_n + c0) * positions, positions,
                             positions, c_count, at)
    return y


@njit(**_jit)
def _depthwise_weight_grad(x, gy, stride, pad, dilation, kernel, extent, threads, partial):
    """Per image, the depthwise weight gradient's sums ``partial`` ``(N, taps, C')`` (C' a
    whole number of vectors; the caller adds the images in order) from ``x`` ``(N, C, D, H,
    W)`` and ``gy`` ``(N, C, OD, OH, OW)``; ``extent`` and ``threads`` as for
    :func:`_depthwise_forward`. Per image and tap the sum runs over the output positions in
    order."""
    n_b, c_n = x.shape[:2]
    vec = VECTOR_BYTES // x.itemsize
    cblocks = (c_n + vec - 1) // vec
    taps = kernel[0] * kernel[1] * kernel[2]
    out_size = gy.shape[2:]
    positions = out_size[0] * out_size[1] * out_size[2]
    scratch = (1, extent[0], extent[1], extent[2], vec)  # the shape the scratch is read as
    xf, gf = x.reshape(x.size), gy.reshape(gy.size)
    no_pad = (0, 0, 0)
    c_pad = partial.shape[2]
    for part in prange(threads):  # scratch made once a part (see _depthwise_forward)
        xs = _vector_scratch(extent[0] * extent[1] * extent[2] * vec, x)
        gs = _vector_scratch(positions * vec, x)
        starts = np.empty(positions, dtype=np.int64)
        _position_starts(0, positions - 1, 0, stride, out_size, scratch, starts)
        tap_at = np.empty(taps, dtype=np.int64)
        for tap in range(taps):
            tap_at[tap] = _tap_offset(tap, kernel, dilation, scratch)
        zero = _vsplat(0, gs)
        t_lo, t_hi = _share(n_b * cblocks, part, threads)
        for task in range(t_lo, t_hi):
            n, c0 = task // cblocks, (task % cblocks) * vec
            c_count = min(vec, c_n - c0)
            _to_scratch(xf, n, c0, c_count, c_n, x.shape[2:], pad, extent, vec, xs)
            _to_scratch(gf, n, c0, c_count, c_n, out_size, no_pad, out_size, vec, gs)
            sums = partial[n].reshape(taps * c_pad)
            # nine taps' sums held in registers over every position (a 3x3 kernel's all; a sum
            # kept in memory waited on its own store at every position: MobileNetV2's 960
            # channels at 7x7, batch 16, weight gradient 0.94-0.96 -> 0.82-0.87 ms); past the
            # last tap, the last again, not stored
            for t0 in range(0, taps, 9):
                last = taps - 1
                o0, o1, o2 = tap_at[t0], tap_at[min(t0 + 1, last)], tap_at[min(t0 + 2, last)]
                o3, o4, o5 = (tap_at[min(t0 + 3, last)], tap_at[min(t0 + 4, last)],
                              tap_at[min(t0 + 5, last)])
                o6, o7, o8 = (tap_at[min(t0 + 6, last)], tap_at[min(t0 + 7, last)],
                              tap_at[min(t0 + 8, last)])
                s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = zero
                for p in range(positions):
                    start = starts[p]
                    g = _vload(gs, p * vec)
                    s0 = _vfma(_vload(xs, start + o0), g, s0)
                    s1 = _vfma(_vload(xs, start + o1), g, s1)
                    s2 = _vfma(_vload(xs, start + o2), g, s2)
                    s3 = _vfma(_vload(xs, start + o3), g, s3)
                    s4 = _vfma(_vload(xs, start + o4), g, s4)
                    s5 = _vfma(_vload(xs, start + o5), g, s5)
                    s6 = _vfma(_vload(xs, start + o6), g, s6)
                    s7 = _vfma(_vload(xs, start + o7), g, s7)
                    s8 = _vfma(_vload(xs, start + o8), g, s8)
                for i, total in enumerate((s0, s1, s2, s3, s4, s5, s6, s7, s8)):
                    if t0 + i < taps:
                        _vstore(sums, (t0 + i) * c_pad + c0, total)
    return partial
