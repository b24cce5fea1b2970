"""Numba CPU backend: the six primitives of the reference backend, fast.

Two ways to compute, chosen per call (see ``_gemm_worthwhile``):

- direct ``prange`` kernels (depthwise convolutions, hence average pooling; max pooling; small
  convolutions), one output plane, or one weight-gradient entry, per task;
- packing (im2col / col2im, serial GIL-free Numba kernels) plus BLAS, run as tasks on a few
  Python threads, each task owning its outputs.

Either way each output element is written by one task in a fixed order: no atomics, and
results are bitwise repeatable for a fixed thread count. Direct kernels accumulate in the
output's dtype, as BLAS does; the direct weight gradient accumulates in float64. Kernels trust
their inputs (contiguous 5-D arrays, canonical tuples); ``fastconv.functional`` guarantees that.
All ``@njit`` functions live in this one module, because Numba's cache tracks one source file.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit, prange

name = "numba"

# No `fastmath`: it would break NaN propagation, which must match PyTorch.
_jit = {"cache": True, "parallel": True, "nogil": True}


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


@njit(cache=True, nogil=True)
def _fill_pair(buf, xf, dst, odd, src, m, col0, w_in, fill):
    col = col0 + 2 * m
    buf[np.uintp(dst + m)] = xf[np.uintp(src + 2 * m)] if 0 <= col < w_in else fill
    buf[np.uintp(odd + m)] = xf[np.uintp(src + 2 * m + 1)] if 0 <= col + 1 < w_in else fill


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
                lo0, hi0 = _valid_range(pitch, 2, col0, w_in)
                lo1, hi1 = _valid_range(pitch, 2, col0 + 1, w_in)
                lo, hi = max(lo0, lo1), max(min(hi0, hi1), max(lo0, lo1))
                odd = dst + hb * pitch
                for m in range(lo, hi):
                    buf[np.uintp(dst + m)] = xf[np.uintp(src + 2 * m)]
                    buf[np.uintp(odd + m)] = xf[np.uintp(src + 2 * m + 1)]
                for m in range(lo):
                    _fill_pair(buf, xf, dst, odd, src, m, col0, w_in, fill)
                for m in range(hi, pitch):
                    _fill_pair(buf, xf, dst, odd, src, m, col0, w_in, fill)
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


@njit(cache=True, nogil=True)
def _conv_taps(acc, buf, base, span, w_row, rh, rw, count, dilation, sh, sw, hb, pitch):
    """Add taps ``rw:rw+count`` (at most 3) of kernel row ``rh`` into ``acc``, one pass.

    A pass per three taps loads and stores ``acc`` a third as often; the sum order per element
    stays tap by tap.
    """
    s0 = base + _tap_start(rh, rw, dilation, sh, sw, hb, pitch)
    w0 = w_row[rw]
    if count == 1:
        for i in range(span):
            acc[np.uintp(i)] += w0 * buf[np.uintp(s0 + i)]
        return
    s1 = base + _tap_start(rh, rw + 1, dilation, sh, sw, hb, pitch)
    w1 = w_row[rw + 1]
    if count == 2:
        for i in range(span):
            acc[np.uintp(i)] = (acc[np.uintp(i)] + w0 * buf[np.uintp(s0 + i)]
                                + w1 * buf[np.uintp(s1 + i)])
        return
    s2 = base + _tap_start(rh, rw + 2, dilation, sh, sw, hb, pitch)
    w2 = w_row[rw + 2]
    for i in range(span):
        acc[np.uintp(i)] = (acc[np.uintp(i)] + w0 * buf[np.uintp(s0 + i)]
                            + w1 * buf[np.uintp(s1 + i)] + w2 * buf[np.uintp(s2 + i)])


@njit(**_jit)
def _conv_forward(x, w, bias, stride, pad, dilation, groups, out_size, k_chunk):
    """Direct convolution in bands of output rows; a task is one image, one group and up to
    ``k_chunk`` of its output channels, which share the band's input copies.

    Per output element the sum starts at the bias (``bias`` may be empty) and runs over
    channels, then taps in raster order.
    """
    n_batch, c_in, d_in, h_in, w_in = x.shape
    k_out, cg, kd, kh, kw = w.shape
    od_n, oh_n, ow_n = out_size
    kg = k_out // groups
    chunks = (kg + k_chunk - 1) // k_chunk
    sh, sw = stride[1], stride[2]
    band, pitch = _band_geometry((oh_n, ow_n), (sh, sw), (kh, kw), (dilation[1], dilation[2]))
    slice_len = sh * sw * (((band - 1) * sh + (kh - 1) * dilation[1] + sh) // sh) * pitch
    plane_in = d_in * h_in * w_in
    plane_out = od_n * oh_n * ow_n
    y = np.empty((n_batch, k_out, od_n, oh_n, ow_n), dtype=x.dtype)
    yf = y.reshape(y.size)
    xf = x.reshape(x.size)
    for task in prange(n_batch * groups * chunks):
        n, g, chunk = task // (groups * chunks), (task // chunks) % groups, task % chunks
        k0 = g * kg + chunk * k_chunk
        k1 = min(g * kg + kg, k0 + k_chunk)
        bufs = np.empty(cg * kd * slice_len, dtype=x.dtype)
        acc = np.empty(band * pitch, dtype=x.dtype)
        for od in range(od_n):
            for oh0 in range(0, oh_n, band):
                rows = min(band, oh_n - oh0)
                hb = ((rows - 1) * sh + (kh - 1) * dilation[1] + sh) // sh
                span = (rows - 1) * pitch + ow_n
                for c in range(cg):
                    for rd in range(kd):
                        i_d = od * stride[0] - pad[0] + rd * dilation[0]
                        if 0 <= i_d < d_in:
                            plane = (n * c_in + g * cg + c) * plane_in + i_d * h_in * w_in
                            _fill_band(bufs, (c * kd + rd) * slice_len, xf, plane, h_in, w_in,
                                       oh0 * sh - pad[1], -pad[2], sh, sw, hb, pitch, 0)
                for k in range(k0, k1):
                    start = bias[k] if bias.size else 0
                    for i in range(span):
                        acc[np.uintp(i)] = start
                    for c in range(cg):
                        for rd in range(kd):
                            i_d = od * stride[0] - pad[0] + rd * dilation[0]
                            if i_d < 0 or i_d >= d_in:
                                continue
                            for rh in range(kh):
                                for rw in range(0, kw, 3):
                                    _conv_taps(acc, bufs, (c * kd + rd) * slice_len, span,
                                               w[k, c, rd, rh], rh, rw, min(3, kw - rw),
                                               dilation, sh, sw, hb, pitch)
                    for r in range(rows):
                        dst = (n * k_out + k) * plane_out + (od * oh_n + oh0 + r) * ow_n
                        for ow in range(ow_n):
                            yf[np.uintp(dst + ow)] = acc[np.uintp(r * pitch + ow)]
    return y


def _direct_conv(x, w, bias, stride, pad, dilation, groups, out_size):
    """:func:`_conv_forward` with output channels chunked so that there are enough tasks."""
    tasks = x.shape[0] * groups
    kg = w.shape[0] // groups
    chunks = min(kg, -(-4 * numba.get_num_threads() // max(tasks, 1)))
    return _conv_forward(x, w, _bias_array(bias, x.dtype), stride, pad, dilation, groups,
                         out_size, -(-kg // max(chunks, 1)))


def _bias_array(bias, dtype):
    """The bias as the kernels take it: contiguous, and empty for none."""
    return np.empty(0, dtype) if bias is None else np.ascontiguousarray(bias)


@njit(**_jit)
def _conv_transpose_forward(x, w, bias, stride, pad, dilation, groups, out_size):
    """Direct transposed convolution, one (image, output channel) plane per task.

    Each input row, times a tap's weight, is added into the output row it lands on; a task
    owns its plane, so the scatter is race-free and its order fixed.
    """
    n_batch, c_in, d_in, h_in, w_in = x.shape
    _, cog, kd, kh, kw = w.shape
    od_n, oh_n, ow_n = out_size
    c_out = cog * groups
    cig = c_in // groups
    sw = stride[2]
    y = np.empty((n_batch, c_out, od_n, oh_n, ow_n), dtype=x.dtype)
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    for task in prange(n_batch * c_out):
        n, co = task // c_out, task % c_out
        ci0, cc = (co // cog) * cig, co % cog
        y_plane = task * od_n * oh_n * ow_n
        start = bias[co] if bias.size else 0
        for i in range(od_n * oh_n * ow_n):
            yf[np.uintp(y_plane + i)] = start
        for ci in range(ci0, ci0 + cig):
            x_plane = (n * c_in + ci) * d_in
            for rd in range(kd):
                for rh in range(kh):
                    for rw in range(kw):
                        wv = w[ci, cc, rd, rh, rw]
                        off = rw * dilation[2] - pad[2]
                        lo, hi = _valid_range(w_in, sw, off, ow_n)
                        for i_d in range(d_in):
                            o_d = i_d * stride[0] - pad[0] + rd * dilation[0]
                            if o_d < 0 or o_d >= od_n:
                                continue
                            for i_h in range(h_in):
                                o_h = i_h * stride[1] - pad[1] + rh * dilation[1]
                                if o_h < 0 or o_h >= oh_n:
                                    continue
                                dst = y_plane + (o_d * oh_n + o_h) * ow_n + off
                                src = ((x_plane + i_d) * h_in + i_h) * w_in
                                if sw == 1:
                                    for iw in range(lo, hi):
                                        yf[np.uintp(dst + iw)] += wv * xf[np.uintp(src + iw)]
                                else:
                                    for iw in range(lo, hi):
                                        yf[np.uintp(dst + iw * sw)] += wv * xf[np.uintp(src + iw)]
    return y


# reassoc lets the row dot products vectorise; NaN and Inf still propagate through any order
@njit(cache=True, parallel=True, nogil=True, fastmath={"reassoc", "contract"})
def _conv_weight_grad(x, gy, stride, pad, dilation, groups, kernel):
    """Direct weight gradient, one (output channel, input channel) pair per task.

    Image by image and band by band (the input band copied as for the forward kernel, so the
    taps need no bounds checks), so that what a task reads stays in cache across the taps.
    Each tap sums a band into a row of lanes in the input's dtype, one per output column (a
    horizontal sum per output row cost more than the multiply-adds), added after each band to
    float64 lanes, summed once at the end.
    """
    n_batch, c_in, d_in, h_in, w_in = x.shape
    _, k_out, od_n, oh_n, ow_n = gy.shape
    kd, kh, kw = kernel
    kg, cg = k_out // groups, c_in // groups
    sh, sw = stride[1], stride[2]
    band, pitch = _band_geometry((oh_n, ow_n), (sh, sw), (kh, kw), (dilation[1], dilation[2]))
    slice_len = sh * sw * (((band - 1) * sh + (kh - 1) * dilation[1] + sh) // sh) * pitch
    gw = np.empty((k_out, cg, kd, kh, kw), dtype=x.dtype)
    xf = x.reshape(x.size)
    gf = gy.reshape(gy.size)
    for task in prange(k_out * cg):
        k, c = task // cg, task % cg
        ci = (k // kg) * cg + c
        buf = np.empty(slice_len, dtype=x.dtype)
        lanes = np.zeros(kd * kh * kw * ow_n)
        band_lanes = np.empty(kd * kh * kw * ow_n, dtype=x.dtype)
        for n in range(n_batch):
            for od in range(od_n):
                g_plane = ((n * k_out + k) * od_n + od) * oh_n * ow_n
                for oh0 in range(0, oh_n, band):
                    rows = min(band, oh_n - oh0)
                    hb = ((rows - 1) * sh + (kh - 1) * dilation[1] + sh) // sh
                    for i in range(band_lanes.size):
                        band_lanes[np.uintp(i)] = 0
                    for rd in range(kd):
                        i_d = od * stride[0] - pad[0] + rd * dilation[0]
                        if i_d < 0 or i_d >= d_in:
                            continue
                        plane = ((n * c_in + ci) * d_in + i_d) * h_in * w_in
                        _fill_band(buf, 0, xf, plane, h_in, w_in, oh0 * sh - pad[1], -pad[2],
                                   sh, sw, hb, pitch, 0)
                        for rh in range(kh):
                            for rw in range(kw):
                                src = _tap_start(rh, rw, dilation, sh, sw, hb, pitch)
                                lane = ((rd * kh + rh) * kw + rw) * ow_n
                                for r in range(rows):
                                    g_row = g_plane + (oh0 + r) * ow_n
                                    b_row = src + r * pitch
                                    for ow in range(ow_n):
                                        band_lanes[np.uintp(lane + ow)] += (
                                            gf[np.uintp(g_row + ow)] * buf[np.uintp(b_row + ow)])
                    for i in range(band_lanes.size):
                        lanes[np.uintp(i)] += band_lanes[np.uintp(i)]
        for t in range(kd * kh * kw):
            gw[k, c, t // (kh * kw), (t // kw) % kh, t % kw] = lanes[t * ow_n:(t + 1) * ow_n].sum()
    return gw


@njit(cache=True, parallel=True, nogil=True, fastmath={"reassoc"})
def _bias_grad(gy):
    """``gy.sum(axis=(0, 2, 3, 4))`` in float64, one channel per task."""
    n_batch, k_out = gy.shape[:2]
    plane = gy.size // max(n_batch * k_out, 1)
    gf = gy.reshape(gy.size)
    gb = np.empty(k_out, dtype=gy.dtype)
    for k in prange(k_out):
        acc = 0.0
        for n in range(n_batch):
            start = (n * k_out + k) * plane
            for i in range(start, start + plane):
                acc += gf[np.uintp(i)]
        gb[k] = acc
    return gb


@njit(cache=True, inline="always")
def _first_in_bounds(o_pos, stride, pad, dilation):
    """The first window position at or after ``o_pos * stride - pad`` that is not negative
    (PyTorch's default argmax, which it keeps when nothing beats -inf)."""
    start = o_pos * stride - pad
    if start < 0:
        start += ((-start + dilation - 1) // dilation) * dilation
    return start


@njit(**_jit)
def _max_pool_forward(x, kernel, stride, pad, dilation, out_size, with_indices):
    """Max pooling, one (image, channel) plane per task, in bands of rows (as the convolution).

    Taps run in the window's raster order and a candidate replaces the current best when it is
    larger or NaN, so the first maximum and the last NaN win, as in PyTorch; padding reads as
    ``-inf``, which never replaces. The winning tap is kept per element and turned into a flat
    input index only when the band is written out, and only ``with_indices``.
    """
    n_batch, c_in, d_in, h_in, w_in = x.shape
    od_n, oh_n, ow_n = out_size
    kd, kh, kw = kernel
    sh, sw = stride[1], stride[2]
    band, pitch = _band_geometry((oh_n, ow_n), (sh, sw), (kh, kw), (dilation[1], dilation[2]))
    hb_most = ((band - 1) * sh + (kh - 1) * dilation[1] + sh) // sh
    plane_in = d_in * h_in * w_in
    y = np.empty((n_batch, c_in, od_n, oh_n, ow_n), dtype=x.dtype)
    idx_shape = (n_batch, c_in, od_n, oh_n, ow_n) if with_indices else (0, 0, 0, 0, 0)
    idx = np.empty(idx_shape, dtype=np.int64)
    # flat input offset of each tap, relative to the window's corner
    tap_offset = np.empty(kd * kh * kw, dtype=np.int64)
    for rd in range(kd):
        for rh in range(kh):
            for rw in range(kw):
                tap_offset[(rd * kh + rh) * kw + rw] = (
                    (rd * dilation[0] * h_in + rh * dilation[1]) * w_in + rw * dilation[2])
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    idf = idx.reshape(idx.size)
    lowest = x.dtype.type(-np.inf)
    for task in prange(n_batch * c_in):
        buf = np.empty(sh * sw * hb_most * pitch, dtype=x.dtype)
        best = np.empty(band * pitch, dtype=x.dtype)
        won = np.empty(band * pitch, dtype=np.int32)
        for od in range(od_n):
            d0 = _first_in_bounds(od, stride[0], pad[0], dilation[0])
            for oh0 in range(0, oh_n, band):
                rows = min(band, oh_n - oh0)
                hb = ((rows - 1) * sh + (kh - 1) * dilation[1] + sh) // sh
                span = (rows - 1) * pitch + ow_n
                for i in range(span):
                    best[np.uintp(i)] = lowest
                    won[np.uintp(i)] = -1
                for rd in range(kd):
                    i_d = od * stride[0] - pad[0] + rd * dilation[0]
                    if i_d < 0 or i_d >= d_in:
                        continue
                    _fill_band(buf, 0, xf, task * plane_in + i_d * h_in * w_in, h_in, w_in,
                               oh0 * sh - pad[1], -pad[2], sh, sw, hb, pitch, lowest)
                    for rh in range(kh):
                        eh = rh * dilation[1]
                        for rw in range(kw):
                            ew = rw * dilation[2]
                            src = (((eh % sh) * sw + ew % sw) * hb + eh // sh) * pitch
                            src += ew // sw
                            if with_indices:
                                tap = np.int32((rd * kh + rh) * kw + rw)
                                for i in range(span):
                                    v = buf[np.uintp(src + i)]
                                    b = best[np.uintp(i)]
                                    take = (v > b) | (v != v)
                                    best[np.uintp(i)] = v if take else b
                                    won[np.uintp(i)] = tap if take else won[np.uintp(i)]
                            else:
                                for i in range(span):
                                    v = buf[np.uintp(src + i)]
                                    b = best[np.uintp(i)]
                                    best[np.uintp(i)] = v if (v > b) | (v != v) else b
                for r in range(rows):
                    oh = oh0 + r
                    dst = ((task * od_n + od) * oh_n + oh) * ow_n
                    for ow in range(ow_n):
                        yf[np.uintp(dst + ow)] = best[np.uintp(r * pitch + ow)]
                    if with_indices:
                        h0 = _first_in_bounds(oh, stride[1], pad[1], dilation[1])
                        corner = ((od * stride[0] - pad[0]) * h_in
                                  + oh * stride[1] - pad[1]) * w_in - pad[2]
                        for ow in range(ow_n):
                            t = won[np.uintp(r * pitch + ow)]
                            if t >= 0:
                                idf[np.uintp(dst + ow)] = corner + ow * sw + tap_offset[t]
                            else:
                                w0 = _first_in_bounds(ow, sw, pad[2], dilation[2])
                                idf[np.uintp(dst + ow)] = (d0 * h_in + h0) * w_in + w0
    return y, idx



@njit(**_jit)
def _max_pool_backward(gy, idx, plane):
    # planes are independent, so a plane-per-thread scatter is race-free and deterministic;
    # each task zeroes its own plane first, so that plane is in cache for the scatter
    rows, outs = gy.shape
    gx = np.empty((rows, plane), dtype=gy.dtype)
    gxf = gx.reshape(gx.size)
    gyf = gy.reshape(gy.size)
    idf = idx.reshape(idx.size)
    for r in prange(rows):
        base = r * plane
        for i in range(plane):
            gxf[np.uintp(base + i)] = 0
        for o in range(r * outs, (r + 1) * outs):
            i = idf[np.uintp(o)]
            if 0 <= i < plane:
                gxf[np.uintp(base + i)] += gyf[np.uintp(o)]
    return gx


# --------------------------------------------------------------------------- packing for GEMM
# GEMM-shaped convolutions are packed (im2col) by serial, GIL-free Numba kernels and multiplied
# by BLAS, on a few Python threads, each task owning its own outputs. BLAS must not be called
# inside `prange` (Numba's and OpenBLAS's thread pools spin against each other); here BLAS runs
# one thread per task instead.


@njit(cache=True, nogil=True)
def _im2col(x, c0, cg, kernel, stride, pad, dilation, out_size, n0, n1, r0, r1, cols):
    """Pack input channels ``c0:c0+cg`` of images ``n0:n1``, output rows ``r0:r1``.

    ``cols[(c, tap), (n, row, ow)]`` holds the input element that tap multiplies for that
    output position (zero in the padding). Rows enumerate ``(od, oh)``. Flat views indexed
    with unsigned ints spare Numba its negative-index checks, which kept the copies scalar
    (measured 2-3x slower).
    """
    c_all, d_in, h_in, w_in = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    kd, kh, kw = kernel
    oh_n, ow_n = out_size[1], out_size[2]
    sw = stride[2]
    span = (r1 - r0) * ow_n
    xf = x.reshape(x.size)
    cf = cols.reshape(cols.size)
    width = cols.shape[1]
    for c in range(cg):
        for rd in range(kd):
            for rh in range(kh):
                for rw in range(kw):
                    row = ((c * kd + rd) * kh + rh) * kw + rw
                    off = rw * dilation[2] - pad[2]
                    lo, hi = _valid_range(ow_n, sw, off, w_in)
                    for n in range(n0, n1):
                        plane = (n * c_all + c0 + c) * d_in
                        od, oh = r0 // oh_n, r0 % oh_n
                        base = row * width + (n - n0) * span
                        for _ in range(r0, r1):
                            i_d = od * stride[0] - pad[0] + rd * dilation[0]
                            i_h = oh * stride[1] - pad[1] + rh * dilation[1]
                            if i_d < 0 or i_d >= d_in or i_h < 0 or i_h >= h_in:
                                for ow in range(ow_n):
                                    cf[np.uintp(base + ow)] = 0
                            else:
                                for ow in range(lo):
                                    cf[np.uintp(base + ow)] = 0
                                src = ((plane + i_d) * h_in + i_h) * w_in + off
                                if sw == 1:
                                    for ow in range(lo, hi):
                                        cf[np.uintp(base + ow)] = xf[np.uintp(src + ow)]
                                else:
                                    for ow in range(lo, hi):
                                        cf[np.uintp(base + ow)] = xf[np.uintp(src + ow * sw)]
                                for ow in range(hi, ow_n):
                                    cf[np.uintp(base + ow)] = 0
                            base += ow_n
                            oh += 1
                            if oh == oh_n:
                                oh, od = 0, od + 1


@njit(cache=True, nogil=True)
def _unpack_rows(prod, bias, y, k0, n0, n1, o0, o1):
    """``y[n, k0 + k, o0:o1] = prod[k, (n - n0, o)] (+ bias[k0 + k])``: a GEMM result back to
    (N, K, O)."""
    span = o1 - o0
    for n in range(n0, n1):
        for k in range(prod.shape[0]):
            b = bias[k0 + k] if bias.size else 0
            for o in range(span):
                y[n, k0 + k, o0 + o] = prod[k, (n - n0) * span + o] + b


@njit(cache=True, nogil=True)
def _pack_rows(g, k0, kg, n0, n1, o0, o1, dst):
    """The inverse of :func:`_unpack_rows`: ``dst[k, (n - n0, o)] = g[n, k0 + k, o0:o1]``."""
    span = o1 - o0
    for k in range(kg):
        for n in range(n0, n1):
            dst[k, (n - n0) * span:(n - n0 + 1) * span] = g[n, k0 + k, o0:o1]


@njit(cache=True, nogil=True)
def _col2im(cols, bias, y, n, c0, c1, in_size, kernel, stride, pad, dilation):
    """Add each tap's row of ``cols`` (columns: input positions) into output channels ``c0:c1``.

    ``y[n, c, i*stride - pad + r*dilation] += cols[(c - c0, r), i]``: the scatter of a
    transposed convolution, serial within a task, so the sum order is fixed.
    """
    d_in, h_in, w_in = in_size
    kd, kh, kw = kernel
    c_all, od_n, oh_n, ow_n = y.shape[1], y.shape[2], y.shape[3], y.shape[4]
    sw = stride[2]
    for c in range(c0, c1):
        y[n, c] = bias[c] if bias.size else 0
    yf = y.reshape(y.size)
    cf = cols.reshape(cols.size)
    width = cols.shape[1]
    for c in range(c0, c1):
        plane = (n * c_all + c) * od_n
        for rd in range(kd):
            for rh in range(kh):
                for rw in range(kw):
                    row = (((c - c0) * kd + rd) * kh + rh) * kw + rw
                    off = rw * dilation[2] - pad[2]
                    lo, hi = _valid_range(w_in, sw, off, ow_n)
                    for i_d in range(d_in):
                        o_d = i_d * stride[0] - pad[0] + rd * dilation[0]
                        if o_d < 0 or o_d >= od_n:
                            continue
                        for i_h in range(h_in):
                            o_h = i_h * stride[1] - pad[1] + rh * dilation[1]
                            if o_h < 0 or o_h >= oh_n:
                                continue
                            dst = ((plane + o_d) * oh_n + o_h) * ow_n + off
                            src = row * width + (i_d * h_in + i_h) * w_in
                            for i_w in range(lo, hi):
                                yf[np.uintp(dst + i_w * sw)] += cf[np.uintp(src + i_w)]

# --------------------------------------------------------------------------- Winograd
# 3x3 convolutions at stride 1 as Winograd's F(2x2, 3x3): each 2x2 block of outputs takes
# 16 multiplies per channel pair instead of 36, as 16 GEMMs (one per transformed position)
# between the transformed weights U = G g G^T and the transformed input tiles V = B^T d B;
# the output is A^T M A. Transforms run row-wise so that they vectorise across tiles.


@njit(cache=True, nogil=True)
def _winograd_input(x, n, c0, cg, i_d, pad_h, pad_w, th0, th1, tiles_w, v, v0, step, offset,
                    size):
    """``v[(i, j), v0 + c, tile] = (B^T d B)[i, j]`` for the 4x4 input patch ``d`` of each tile
    of tile rows ``th0:th1`` of depth slice ``i_d`` of channel ``c0 + c`` of image ``n`` (zero
    outside the input).

    The input is the sub-lattice ``x[..., offset[0]::step[0], offset[1]::step[1]]`` of size
    ``size`` (the whole plane at step 1): a dilated convolution is an undilated one on each.
    """
    h_in, w_in = size
    row_len = x.shape[4]
    wp = 2 * tiles_w + 2
    rows = np.empty(4 * wp, dtype=x.dtype)  # the tile row's four input rows, padded
    t = np.empty(4 * wp, dtype=x.dtype)  # B^T applied down the columns
    lo, hi = _valid_range(wp, 1, -pad_w, w_in)
    xf = x.reshape(x.size)
    vf = v.reshape(v.size)
    span = v.shape[2]
    plane_v = v.shape[1] * span
    for c in range(cg):
        plane = ((n * x.shape[1] + c0 + c) * x.shape[2] + i_d) * x.shape[3] * row_len
        for th in range(th0, th1):
            for i in range(4):
                r = 2 * th - pad_h + i
                for q in range(wp):
                    rows[np.uintp(i * wp + q)] = 0
                if 0 <= r < h_in:
                    src = plane + (step[0] * r + offset[0]) * row_len + offset[1]
                    src -= step[1] * pad_w
                    for q in range(lo, hi):
                        rows[np.uintp(i * wp + q)] = xf[np.uintp(src + step[1] * q)]
            for q in range(wp):
                d0, d1 = rows[np.uintp(q)], rows[np.uintp(wp + q)]
                d2, d3 = rows[np.uintp(2 * wp + q)], rows[np.uintp(3 * wp + q)]
                t[np.uintp(q)] = d0 - d2
                t[np.uintp(wp + q)] = d1 + d2
                t[np.uintp(2 * wp + q)] = d2 - d1
                t[np.uintp(3 * wp + q)] = d1 - d3
            base = (v0 + c) * span + (th - th0) * tiles_w
            for i in range(4):
                row = i * wp
                out = 4 * i * plane_v + base
                for tw in range(tiles_w):
                    a0, a1 = t[np.uintp(row + 2 * tw)], t[np.uintp(row + 2 * tw + 1)]
                    a2, a3 = t[np.uintp(row + 2 * tw + 2)], t[np.uintp(row + 2 * tw + 3)]
                    vf[np.uintp(out + tw)] = a0 - a2
                    vf[np.uintp(out + plane_v + tw)] = a1 + a2
                    vf[np.uintp(out + 2 * plane_v + tw)] = a2 - a1
                    vf[np.uintp(out + 3 * plane_v + tw)] = a1 - a3


@njit(cache=True, nogil=True)
def _winograd_output(m, bias, y, n, k0, od, th0, th1, tiles_w, step, offset, size):
    """``y[n, k0 + k, od]`` rows ``2*th0:2*th1`` from ``m[(i, j), k, tile]``: ``A^T M A`` per tile,
    plus the bias; rows and columns past the output are dropped. As in
    :func:`_winograd_input`, the output may be a sub-lattice of ``y``."""
    kg, span = m.shape[1], m.shape[2]
    oh_n, ow_n = size
    row_len = y.shape[4]
    plane_m = kg * span
    s = np.empty(8 * tiles_w, dtype=m.dtype)  # A^T along each patch row: s[i, j, tile]
    mf = m.reshape(m.size)
    yf = y.reshape(y.size)
    pairs = ow_n // 2
    for k in range(kg):
        b = bias[k0 + k] if bias.size else 0
        y_plane = ((n * y.shape[1] + k0 + k) * y.shape[2] + od) * y.shape[3] * row_len
        y_plane += offset[1]
        for th in range(th0, th1):
            base = k * span + (th - th0) * tiles_w
            for i in range(4):
                src = 4 * i * plane_m + base
                for tw in range(tiles_w):
                    m0, m1 = mf[np.uintp(src + tw)], mf[np.uintp(src + plane_m + tw)]
                    m2 = mf[np.uintp(src + 2 * plane_m + tw)]
                    m3 = mf[np.uintp(src + 3 * plane_m + tw)]
                    s[np.uintp((2 * i) * tiles_w + tw)] = m0 + m1 + m2
                    s[np.uintp((2 * i + 1) * tiles_w + tw)] = m1 - m2 - m3
            for r in range(min(2, oh_n - 2 * th)):
                dst = y_plane + (step[0] * (2 * th + r) + offset[0]) * row_len
                sign = 1 - 2 * r  # row 0: s0 + s1 + s2; row 1: s1 - s2 - s3
                first = 0 if r == 0 else 2
                for tw in range(pairs):
                    for j in range(2):
                        lead = s[np.uintp((first + j) * tiles_w + tw)] if r == 0 else 0
                        tail = -s[np.uintp((6 + j) * tiles_w + tw)] if r == 1 else 0
                        yf[np.uintp(dst + step[1] * (2 * tw + j))] = (
                            lead + s[np.uintp((2 + j) * tiles_w + tw)]
                            + sign * s[np.uintp((4 + j) * tiles_w + tw)] + tail + b)
                if ow_n % 2:
                    tw = pairs
                    lead = s[np.uintp(first * tiles_w + tw)] if r == 0 else 0
                    tail = -s[np.uintp(6 * tiles_w + tw)] if r == 1 else 0
                    yf[np.uintp(dst + step[1] * 2 * tw)] = (
                        lead + s[np.uintp(2 * tiles_w + tw)]
                        + sign * s[np.uintp(4 * tiles_w + tw)] + tail + b)


@njit(cache=True, nogil=True)
def _winograd_grad_tiles(gy, n, k0, od, th0, th1, tiles_w, wt, step, offset, size):
    """``wt[(i, j), k, tile] = (A g A^T)[i, j]`` for the 2x2 block ``g`` of ``gy[n, k0 + k, od]``
    that tile ``(th, tw)`` produced (zero past the output; sub-lattices as in
    :func:`_winograd_output`): the weight gradient is ``G^T (sum over tiles V * W) G``."""
    kg, span = wt.shape[1], wt.shape[2]
    oh_n, ow_n = size
    row_len = gy.shape[4]
    plane_w = kg * span
    wp = 2 * tiles_w
    rows = np.empty(2 * wp, dtype=gy.dtype)  # the tile row's two gradient rows, zero-padded
    gf = gy.reshape(gy.size)
    wf = wt.reshape(wt.size)
    for k in range(kg):
        plane = ((n * gy.shape[1] + k0 + k) * gy.shape[2] + od) * gy.shape[3] * row_len
        plane += offset[1]
        for th in range(th0, th1):
            for r in range(2):
                oh = 2 * th + r
                for q in range(wp):
                    rows[np.uintp(r * wp + q)] = 0
                if oh < oh_n:
                    src = plane + (step[0] * oh + offset[0]) * row_len
                    for q in range(ow_n):
                        rows[np.uintp(r * wp + q)] = gf[np.uintp(src + step[1] * q)]
            out = k * span + (th - th0) * tiles_w
            # four passes of four output streams each (sixteen at once thrash the L1 cache)
            for i in range(4):
                o = out + 4 * i * plane_w
                for tw in range(tiles_w):
                    g00, g01 = rows[np.uintp(2 * tw)], rows[np.uintp(2 * tw + 1)]
                    g10, g11 = rows[np.uintp(wp + 2 * tw)], rows[np.uintp(wp + 2 * tw + 1)]
                    # row i of A (4x2) down the columns: g0, g0 + g1, g0 - g1, -g1
                    a = g00 if i == 0 else (g00 + g10 if i == 1 else (g00 - g10 if i == 2
                                                                        else -g10))
                    b = g01 if i == 0 else (g01 + g11 if i == 1 else (g01 - g11 if i == 2
                                                                        else -g11))
                    wf[np.uintp(o + tw)] = a
                    wf[np.uintp(o + plane_w + tw)] = a + b
                    wf[np.uintp(o + 2 * plane_w + tw)] = a - b
                    wf[np.uintp(o + 3 * plane_w + tw)] = -b


# Numba's workqueue threading layer (used where neither OpenMP nor TBB is available) aborts the
# process when two Python threads launch parallel kernels at once. Launches are serialised;
# each one still uses every Numba thread.
_launch_lock = threading.Lock()


def _serialised(kernel_call):
    @functools.wraps(kernel_call)
    def call(*args):
        with _launch_lock:
            return kernel_call(*args)

    return call


# --------------------------------------------------------------------------- GEMM driver

# Packed columns per task: small enough to stay in cache and to bound the extra memory of a
# call (one buffer per thread), large enough that BLAS runs near its peak.
_TASK_BYTES = 4 << 20
# Below this much work per output element (out-channels x in-channels x taps per group), the
# packing costs more than BLAS saves: direct kernels.
_GEMM_MIN_WORK = 32


def _enough_work(k_per_group, c_per_group, kernel):
    """Whether each output element takes enough multiply-adds for BLAS to pay for packing."""
    return k_per_group * c_per_group * int(np.prod(kernel)) >= _GEMM_MIN_WORK


def _gemm_worthwhile(k_per_group, c_per_group, kernel):
    """Whether packing + BLAS beats the direct kernels, for ``c_per_group`` packed channels.

    With one packed channel per group (depthwise convolutions, hence average pooling, and
    LeNet's first layer) packing only multiplies the memory traffic by the number of taps;
    measured, the direct kernels win there (LeNet c1 forward 2.6 ms direct vs 3.8 ms packed).
    """
    return c_per_group > 1 and _enough_work(k_per_group, c_per_group, kernel)


@functools.cache
def _pool():
    return ThreadPoolExecutor(max_workers=numba.config.NUMBA_NUM_THREADS,
                              thread_name_prefix="fastconv")


@functools.cache
def _blas_threads():
    """The loaded BLAS libraries, to run them one thread per task while tasks run in parallel."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - a dependency; without it BLAS keeps its threads
        return None
    return ThreadpoolController().select(user_api="blas")


def _split(count, item_bytes, threads):
    """Contiguous ranges over ``count`` items, each within ``_TASK_BYTES`` where an item allows,
    as many as a multiple of ``threads`` so that the threads get equal shares."""
    if count == 0:
        return []
    most = max(1, _TASK_BYTES // max(item_bytes, 1))
    n_tasks = -(-count // most)
    n_tasks = min(count, -(-n_tasks // threads) * threads)
    per = -(-count // n_tasks)
    return [(s, min(count, s + per)) for s in range(0, count, per)]


def _image_row_tasks(n_images, rows, row_bytes, threads):
    """Tasks ``(n0, n1, r0, r1)``: whole images where they fit a task, else rows of one image."""
    if rows * row_bytes <= _TASK_BYTES:
        return [(n0, n1, 0, rows) for n0, n1 in _split(n_images, rows * row_bytes, threads)]
    return [(n, n + 1, r0, r1) for n in range(n_images)
            for r0, r1 in _split(rows, row_bytes, threads)]


def _run(tasks, work):
    """Call ``work(slot, *task)`` for every task; thread ``slot`` takes every slot-th task.

    The assignment is static, so a thread's share, and any sum it keeps, is the same on every
    run. With several threads, BLAS runs one thread in each.
    """
    threads = min(numba.get_num_threads(), len(tasks))
    if threads <= 1:
        for task in tasks:
            work(0, *task)
        return max(threads, 1)

    def share(slot):
        for task in tasks[slot::threads]:
            work(slot, *task)

    blas = _blas_threads()
    with blas.limit(limits=1) if blas is not None else contextlib.nullcontext():
        list(_pool().map(share, range(threads)))
    return threads


def _is_pointwise(kernel, stride, pad):
    """A 1x1 kernel at stride 1 without padding: each image's (C, positions) block is already
    the GEMM operand, so nothing needs packing."""
    return all(k == 1 for k in kernel) and all(s == 1 for s in stride) and not any(pad)


def _conv_forward_gemm(x, w, bias, stride, pad, dilation, groups, out_size):
    n_b, c_in = x.shape[:2]
    k_out, kernel = w.shape[0], w.shape[2:]
    cg, kg = c_in // groups, k_out // groups
    ck = cg * int(np.prod(kernel))
    rows, ow = out_size[0] * out_size[1], out_size[2]
    w2 = w.reshape(groups, kg, ck)
    y = np.empty((n_b, k_out, rows * ow), dtype=x.dtype)
    threads = numba.get_num_threads()
    if _is_pointwise(kernel, stride, pad):
        x3 = x.reshape(n_b, c_in, rows * ow)

        def per_image(slot, n0, n1):
            for n in range(n0, n1):
                for g in range(groups):
                    np.matmul(w2[g], x3[n, g * cg:(g + 1) * cg], out=y[n, g * kg:(g + 1) * kg])
                if bias is not None:
                    y[n] += bias[:, None]  # while the image's output is in cache

        _run(_split(n_b, 0, threads), per_image)
        return y.reshape(n_b, k_out, *out_size)
    bias = _bias_array(bias, x.dtype)

    def work(slot, n0, n1, r0, r1):
        cols = np.empty((ck, (n1 - n0) * (r1 - r0) * ow), dtype=x.dtype)
        for g in range(groups):
            _im2col(x, g * cg, cg, kernel, stride, pad, dilation, out_size, n0, n1, r0, r1, cols)
            _unpack_rows(w2[g] @ cols, bias, y, g * kg, n0, n1, r0 * ow, r1 * ow)

    _run(_image_row_tasks(n_b, rows, ck * ow * x.itemsize, threads), work)
    return y.reshape(n_b, k_out, *out_size)


def _conv_weight_grad_gemm(x, gy, stride, pad, dilation, groups, kernel):
    n_b, c_in = x.shape[:2]
    k_out, out_size = gy.shape[1], gy.shape[2:]
    cg, kg = c_in // groups, k_out // groups
    ck = cg * int(np.prod(kernel))
    rows, ow = out_size[0] * out_size[1], out_size[2]
    gy3 = gy.reshape(n_b, k_out, rows * ow)
    threads = numba.get_num_threads()
    partial = np.zeros((threads, k_out, ck), dtype=x.dtype)  # one sum per thread, fixed order

    if _is_pointwise(kernel, stride, pad):
        x3 = x.reshape(n_b, c_in, rows * ow)

        def per_image(slot, n0, n1):
            for n in range(n0, n1):
                for g in range(groups):
                    partial[slot, g * kg:(g + 1) * kg] += (
                        gy3[n, g * kg:(g + 1) * kg] @ x3[n, g * cg:(g + 1) * cg].T)

        used = _run(_split(n_b, 0, threads), per_image)
        return _sum_slots(partial, used).reshape(k_out, cg, *kernel)

    def work(slot, n0, n1, r0, r1):
        span = (n1 - n0) * (r1 - r0) * ow
        cols = np.empty((ck, span), dtype=x.dtype)
        grads = np.empty((kg, span), dtype=x.dtype)
        for g in range(groups):
            _im2col(x, g * cg, cg, kernel, stride, pad, dilation, out_size, n0, n1, r0, r1, cols)
            _pack_rows(gy3, g * kg, kg, n0, n1, r0 * ow, r1 * ow, grads)
            partial[slot, g * kg:(g + 1) * kg] += grads @ cols.T

    used = _run(_image_row_tasks(n_b, rows, ck * ow * x.itemsize, threads), work)
    return _sum_slots(partial, used).reshape(k_out, cg, *kernel)


def _sum_slots(partial, used):
    """Add the per-thread partial sums, always in thread order."""
    total = partial[0]
    for slot in range(1, used):
        total += partial[slot]
    return total


def _conv_transpose_forward_gemm(x, w, bias, stride, pad, dilation, groups, out_size):
    n_b, c_in = x.shape[:2]
    cig, cog, kernel = c_in // groups, w.shape[1], w.shape[2:]
    taps, in_size = int(np.prod(kernel)), x.shape[2:]
    positions = int(np.prod(in_size))
    w_t = w.reshape(groups, cig, cog * taps).transpose(0, 2, 1)  # (groups, cog * taps, cig)
    x3 = x.reshape(n_b, c_in, positions)
    y = np.empty((n_b, cog * groups, *out_size), dtype=x.dtype)
    if _is_pointwise(kernel, stride, pad):
        y3 = y.reshape(n_b, cog * groups, positions)

        def per_image(slot, n0, n1):
            for n in range(n0, n1):
                for g in range(groups):
                    np.matmul(w_t[g], x3[n, g * cig:(g + 1) * cig],
                              out=y3[n, g * cog:(g + 1) * cog])
                if bias is not None:
                    y3[n] += bias[:, None]

        _run(_split(n_b, 0, numba.get_num_threads()), per_image)
        return y
    bias = _bias_array(bias, x.dtype)

    def work(slot, n, g, c0, c1):
        cols = w_t[g, c0 * taps:c1 * taps] @ x3[n, g * cig:(g + 1) * cig]
        _col2im(cols, bias, y, n, g * cog + c0, g * cog + c1, in_size, kernel, stride, pad,
                dilation)

    blocks = _split(cog, taps * positions * x.itemsize, 1)
    _run([(n, g, c0, c1) for n in range(n_b) for g in range(groups) for c0, c1 in blocks],
         work)
    return y


# Winograd pays once a GEMM has enough channels on both sides
_WINOGRAD_MIN_CHANNELS = 16
# output depth slices per task of a 3-D Winograd convolution
_WINOGRAD_DEPTH_BLOCK = 8
# F(2x2, 3x3)'s kernel transform (its input and output transforms are written out in kernels)
_WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])


def _winograd_fits(kernel, stride, c_per_group, k_per_group):
    """3x3 kernels (any depth) at stride 1 with enough channels per group."""
    return (tuple(kernel[1:]) == (3, 3) and tuple(stride) == (1, 1, 1)
            and min(c_per_group, k_per_group) >= _WINOGRAD_MIN_CHANNELS)


def _sub_lattices(in_size, out_size, pad, dilation):
    """The undilated problems a dilated convolution splits into, per axis: for each class
    ``a`` of output positions modulo the dilation, ``(out offset, out size, in offset,
    in size, padding)``: output ``a + d*u`` reads input ``b + d*(u - pad' + r)``."""
    axes = []
    for size, o_n, p, d in zip(in_size, out_size, pad, dilation):
        classes = []
        for a in range(min(d, o_n)):
            b = (a - p) % d
            classes.append((a, len(range(a, o_n, d)), b, len(range(b, size, d)),
                            -((a - p - b) // d)))
        axes.append(classes)
    return [(h, w) for h in axes[0] for w in axes[1]]


def _winograd_weights(w, groups):
    """``U[g, (i, j), k, (r, c)] = (G w[k, c, r] G^T)[i, j]``: for each depth tap ``r`` a
    block of columns, so that one GEMM sums over the depth taps too."""
    g_mat = _WINOGRAD_G.astype(w.dtype)
    k_out, cg, kd = w.shape[:3]
    u = np.einsum("ia,kcrab,jb->ijkrc", g_mat, w, g_mat, optimize=True)
    return np.ascontiguousarray(
        u.reshape(16, groups, k_out // groups, kd * cg).transpose(1, 0, 2, 3))


def _conv_forward_winograd(x, w, bias, pad, dilation, groups, out_size):
    n_b, c_in = x.shape[:2]
    k_out, kd = w.shape[0], w.shape[2]
    cg, kg = c_in // groups, k_out // groups
    u = _winograd_weights(w, groups)
    bias = _bias_array(bias, x.dtype)
    y = np.empty((n_b, k_out, *out_size), dtype=x.dtype)
    step = (dilation[1], dilation[2])
    # consecutive output slices share the transforms of the input slices they overlap on
    od_block = _WINOGRAD_DEPTH_BLOCK if dilation[0] == 1 else 1

    def work(slot, n, od0, od1, lattice, th0, th1):
        (a_h, o_h, *_), (a_w, o_w, *_) = lattice
        for g, od, taps, m in _winograd_steps(x, n, od0, od1, lattice, th0, th1, kd, groups,
                                              kg, pad, dilation):
            np.matmul(u[g], taps, out=m)
            _winograd_output(m, bias, y, n, g * kg, od, th0, th1, -(-o_w // 2), step,
                             (a_h, a_w), (o_h, o_w))

    _run(_winograd_tasks(x.shape[2:], out_size, pad, step, n_b, od_block, kd, cg, kg,
                         x.itemsize), work)
    return y


def _conv_weight_grad_winograd(x, gy, pad, dilation, groups, kernel):
    """The weight gradient of a Winograd-shaped convolution, by the transpose of F(2x2, 3x3):
    per transformed position a GEMM of gradient tiles (``A g A^T``) against input tiles
    (``B^T d B``), summed over all tiles, then ``G^T M G``."""
    n_b, c_in = x.shape[:2]
    k_out, out_size = gy.shape[1], gy.shape[2:]
    kd = kernel[0]
    cg, kg = c_in // groups, k_out // groups
    step = (dilation[1], dilation[2])
    od_block = _WINOGRAD_DEPTH_BLOCK if dilation[0] == 1 else 1
    threads = numba.get_num_threads()
    partial = np.zeros((threads, groups, 16, kg, kd * cg), dtype=x.dtype)

    def work(slot, n, od0, od1, lattice, th0, th1):
        (a_h, o_h, *_), (a_w, o_w, *_) = lattice
        for g, od, taps, wt in _winograd_steps(x, n, od0, od1, lattice, th0, th1, kd, groups,
                                               kg, pad, dilation):
            _winograd_grad_tiles(gy, n, g * kg, od, th0, th1, -(-o_w // 2), wt, step,
                                 (a_h, a_w), (o_h, o_w))
            partial[slot, g] += wt @ taps.transpose(0, 2, 1)

    used = _run(_winograd_tasks(x.shape[2:], out_size, pad, step, n_b, od_block, kd, cg, kg,
                                x.itemsize), work)
    m = _sum_slots(partial, used)  # (groups, 16, kg, kd * cg)
    g_mat = _WINOGRAD_G.astype(x.dtype)
    m = m.reshape(groups, 4, 4, kg, kd, cg)
    gw = np.einsum("ia,gijkrc,jb->gkcrab", g_mat, m, g_mat, optimize=True)
    return np.ascontiguousarray(gw.reshape(k_out, cg, kd, 3, 3))


def _winograd_steps(x, n, od0, od1, lattice, th0, th1, kd, groups, kg, pad, dilation):
    """One task's steps: per group and output depth slice ``od``, ``(g, od, taps, out)`` with
    ``taps`` the transformed input tiles ``od`` needs, ``(16, kd * cg, tiles)``, and ``out`` a
    ``(16, kg, tiles)`` buffer.

    Input slice ``s`` (a block of ``cg`` rows) is depth ``od0 - pad + s * dilation``, so
    consecutive output slices share it; with a depth dilation a task has one output slice.
    """
    cg = x.shape[1] // groups
    span = (th1 - th0) * -(-lattice[1][1] // 2)
    slices = (od1 - od0 - 1) + kd
    v = np.empty((16, slices * cg, span), dtype=x.dtype)
    out = np.empty((16, kg, span), dtype=x.dtype)
    for g in range(groups):
        _winograd_input_slices(x, n, g * cg, cg, od0, slices, pad, dilation, lattice, th0, th1,
                               v)
        for od in range(od0, od1):
            lo = (od - od0) * cg
            yield g, od, v[:, lo:lo + kd * cg], out


def _winograd_input_slices(x, n, c0, cg, od0, slices, pad, dilation, lattice, th0, th1, v):
    """Input tiles of the depth slices ``od0 - pad + s * dilation``: slice ``s`` fills rows
    ``s * cg:(s + 1) * cg`` of ``v`` (zeros in the depth padding)."""
    (_, _, b_h, i_h, p_h), (_, o_w, b_w, i_w, p_w) = lattice
    for s_i in range(slices):
        i_d = od0 - pad[0] + s_i * dilation[0]
        if 0 <= i_d < x.shape[2]:
            _winograd_input(x, n, c0, cg, i_d, p_h, p_w, th0, th1, -(-o_w // 2), v, s_i * cg,
                            (dilation[1], dilation[2]), (b_h, b_w), (i_h, i_w))
        else:
            v[:, s_i * cg:(s_i + 1) * cg] = 0


def _winograd_tasks(in_size, out_size, pad, step, n_b, od_block, kd, cg, kg, itemsize):
    """Tasks ``(n, od0, od1, lattice, th0, th1)`` of a Winograd convolution, each within
    ``_TASK_BYTES`` of transformed tiles where a tile row allows."""
    tasks = []
    for lattice in _sub_lattices(in_size[1:], out_size[1:], pad[1:], step):
        (_, o_h, *_), (_, o_w, *_) = lattice
        row_bytes = 16 * max((od_block + kd - 1) * cg, kg) * -(-o_w // 2) * itemsize
        blocks = _split(-(-o_h // 2), row_bytes, 1)
        tasks += [(n, od0, min(od0 + od_block, out_size[0]), lattice, th0, th1)
                  for n in range(n_b) for od0 in range(0, out_size[0], od_block)
                  for th0, th1 in blocks]
    return tasks

# --------------------------------------------------------------------------- primitives


@_serialised
def conv_forward(x, w, stride, pad_lo, dilation, groups, out_size, bias=None):
    if _winograd_fits(w.shape[2:], stride, w.shape[1], w.shape[0] // groups):
        return _conv_forward_winograd(x, w, bias, pad_lo, dilation, groups, out_size)
    if _gemm_worthwhile(w.shape[0] // groups, w.shape[1], w.shape[2:]):
        return _conv_forward_gemm(x, w, bias, stride, pad_lo, dilation, groups, out_size)
    return _direct_conv(x, w, bias, stride, pad_lo, dilation, groups, out_size)


@_serialised
def conv_transpose_forward(x, w, stride, pad_lo, dilation, groups, out_size, bias=None):
    if all(s == 1 for s in stride):
        as_conv = _as_conv(w, bias, pad_lo, dilation, groups)
        if _winograd_fits(w.shape[2:], stride, w.shape[1], x.shape[1] // groups):
            w_c, b_c, _, pad_c = as_conv
            return _conv_forward_winograd(x, w_c, b_c, pad_c, dilation, groups, out_size)
    if _gemm_worthwhile(x.shape[1] // groups, w.shape[1], w.shape[2:]):
        return _conv_transpose_forward_gemm(x, w, bias, stride, pad_lo, dilation, groups,
                                            out_size)
    if all(s == 1 for s in stride):
        return _direct_conv(x, *_as_conv(w, bias, pad_lo, dilation, groups), dilation, groups,
                            out_size)
    return _conv_transpose_forward(x, w, _bias_array(bias, x.dtype), stride, pad_lo, dilation,
                                   groups, out_size)


def _as_conv(w, bias, pad_lo, dilation, groups):
    """At stride 1 a transposed convolution is a convolution: kernel flipped, its two channel
    axes swapped per group, padding ``dilation * (k - 1) - pad`` (negative means a crop).
    Returns ``(weight, bias, stride, padding)`` for :func:`_conv_forward`, whose banded kernel
    outruns the scatter kernel (depthwise input gradient 23 -> 19 ms)."""
    c_in, cog, kernel = w.shape[0], w.shape[1], w.shape[2:]
    cig = c_in // groups
    flipped = w.reshape(groups, cig, cog, *kernel)[..., ::-1, ::-1, ::-1]
    weight = np.ascontiguousarray(flipped.transpose(0, 2, 1, 3, 4, 5))
    pad = tuple(d * (k - 1) - p for d, k, p in zip(dilation, kernel, pad_lo))
    return weight.reshape(groups * cog, cig, *kernel), bias, (1, 1, 1), pad


@_serialised
def conv_weight_grad(x, gy, stride, pad_lo, dilation, groups, kernel):
    if _winograd_fits(kernel, stride, x.shape[1] // groups, gy.shape[1] // groups):
        return _conv_weight_grad_winograd(x, gy, pad_lo, dilation, groups, kernel)
    # packed even with one channel per group: LeNet c1's weight gradient 6.2 ms vs 10.2 direct
    if _enough_work(gy.shape[1] // groups, x.shape[1] // groups, kernel):
        return _conv_weight_grad_gemm(x, gy, stride, pad_lo, dilation, groups, kernel)
    return _conv_weight_grad(x, gy, stride, pad_lo, dilation, groups, kernel)


@_serialised
def bias_grad(gy):
    return _bias_grad(gy)


@_serialised
def max_pool_forward(x, kernel, stride, pad_lo, dilation, out_size, indices=True):
    y, idx = _max_pool_forward(x, kernel, stride, pad_lo, dilation, out_size, indices)
    return y, (idx if indices else None)


@_serialised
def max_pool_backward(gy, idx, in_size):
    n, c = gy.shape[:2]
    plane = int(np.prod(in_size))
    outs = int(np.prod(gy.shape[2:]))  # explicit: -1 cannot be inferred for an empty batch
    gx = _max_pool_backward(gy.reshape(n * c, outs), idx.reshape(n * c, outs), plane)
    return gx.reshape(n, c, *in_size)
