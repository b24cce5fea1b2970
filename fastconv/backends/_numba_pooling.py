"""Pooling kernels: average and max pooling, forward and backward.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _numba_cache  # noqa: F401  (first: the kernels' cache stamp)
from ._numba_band import (
    _band_geometry,
    _band_height,
    _fill_band,
    _jit,
    _share,
    _tap_start,
    _valid_range,
)
from ._numba_simd import VECTOR_BYTES, _vfma, _vload, _vsum


@njit(cache=True, inline="always")
def _column_ranges(ow_n, sw, kw, pad_w, w_in):
    """Per window column ``rw``, the output columns whose input column is inside the row."""
    ranges = np.empty((kw, 2), dtype=np.int64)
    for rw in range(kw):
        ranges[rw, 0], ranges[rw, 1] = _valid_range(ow_n, sw, rw - pad_w, w_in)
    return ranges


@njit(cache=True, inline="always")
def _run_sums(xf, start, step, count, runs):
    """The sums of the first ``runs`` (at most four) of the runs ``xf[start + i * step:][:count]``,
    each as a vector of partial sums over whole vectors, added pairwise at the end, then the
    last few elements (eight interleaved scalar sums took 20 ns a plane of 49, ResNet-18's
    global average pooling). The four are interleaved: one run's sum is a chain of dependent
    additions, four keep the adder busy (one at a time: ~15 ns a plane of 49). Runs past
    ``runs`` read the last one again."""
    vec = VECTOR_BYTES // xf.itemsize
    whole = count - count % vec
    s0 = start
    s1 = start + min(1, runs - 1) * step
    s2 = start + min(2, runs - 1) * step
    s3 = start + min(3, runs - 1) * step
    t0 = t1 = t2 = t3 = xf.dtype.type(0)
    one = xf.dtype.type(1)
    if whole:
        a0, a1, a2, a3 = _vload(xf, s0), _vload(xf, s1), _vload(xf, s2), _vload(xf, s3)
        for i in range(vec, whole, vec):
            a0, a1 = _vfma(one, _vload(xf, s0 + i), a0), _vfma(one, _vload(xf, s1 + i), a1)
            a2, a3 = _vfma(one, _vload(xf, s2 + i), a2), _vfma(one, _vload(xf, s3 + i), a3)
        t0, t1, t2, t3 = _vsum(a0), _vsum(a1), _vsum(a2), _vsum(a3)
    for i in range(whole, count):
        t0 += xf[np.uintp(s0 + i)]
        t1 += xf[np.uintp(s1 + i)]
        t2 += xf[np.uintp(s2 + i)]
        t3 += xf[np.uintp(s3 + i)]
    return t0, t1, t2, t3


@njit(**_jit)
def _avg_pool_forward(x, kernel, stride, pad, out_size, divisor, threads, y):
    """Average pooling, a contiguous run of (image, channel) planes per thread: per output row
    the window's input rows are summed first (contiguous, vectorised), then each window's
    columns of that sum, divided by ``divisor[od, oh, ow]``. The sum runs rows first, not in
    raster order. Windows of two columns at stride two without padding (the common 2x2 pool)
    take a loop of their own whose constant stride vectorises. Windows of whole rows (global
    pooling) sum each depth slice's rows as one contiguous run, four planes at a time
    (:func:`_run_sums`)."""
    n_batch, c_in, d_in, h_in, w_in = x.shape
    od_n, oh_n, ow_n = out_size
    kd, kh, kw = kernel
    sw = stride[2]
    plane_in, plane_out = d_in * h_in * w_in, od_n * oh_n * ow_n
    pairs = kw == 2 and sw == 2 and pad[2] == 0 and 2 * ow_n <= w_in
    whole_rows = kw == w_in and pad[2] == 0 and ow_n == 1  # one window per row of output
    columns = _column_ranges(ow_n, sw, kw, pad[2], w_in)
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    df = divisor.reshape(divisor.size)
    if whole_rows:
        for part in prange(threads):
            p0, p1 = _share(n_batch * c_in, part, threads)
            for od in range(od_n):
                for oh in range(oh_n):
                    h_lo = max(0, oh * stride[1] - pad[1])
                    h_hi = min(h_in, oh * stride[1] - pad[1] + kh)
                    out = od * oh_n + oh
                    for p in range(p0, p1, 4):  # four planes at a time (see _run_sums)
                        t0 = t1 = t2 = t3 = xf.dtype.type(0)
                        for rd in range(kd):
                            i_d = od * stride[0] - pad[0] + rd
                            if 0 <= i_d < d_in and h_lo < h_hi:
                                a0, a1, a2, a3 = _run_sums(
                                    xf, p * plane_in + (i_d * h_in + h_lo) * w_in, plane_in,
                                    (h_hi - h_lo) * w_in, min(4, p1 - p))
                                t0, t1, t2, t3 = t0 + a0, t1 + a1, t2 + a2, t3 + a3
                        d = df[np.uintp(out)]
                        for i, total in enumerate((t0, t1, t2, t3)):
                            if p + i < p1:
                                yf[np.uintp((p + i) * plane_out + out)] = total / d
        return y
    for part in prange(threads):
        rows = np.empty(w_in, dtype=x.dtype)
        p0, p1 = _share(n_batch * c_in, part, threads)
        for p in range(p0, p1):
            for od in range(od_n):
                for oh in range(oh_n):
                    for q in range(w_in):
                        rows[np.uintp(q)] = 0
                    for rd in range(kd):
                        i_d = od * stride[0] - pad[0] + rd
                        if i_d < 0 or i_d >= d_in:
                            continue
                        for rh in range(kh):
                            i_h = oh * stride[1] - pad[1] + rh
                            if i_h < 0 or i_h >= h_in:
                                continue
                            src = p * plane_in + (i_d * h_in + i_h) * w_in
                            for q in range(w_in):
                                rows[np.uintp(q)] += xf[np.uintp(src + q)]
                    out = (od * oh_n + oh) * ow_n
                    dst = p * plane_out + out
                    if pairs:
                        for ow in range(ow_n):
                            yf[np.uintp(dst + ow)] = ((rows[np.uintp(2 * ow)]
                                                       + rows[np.uintp(2 * ow + 1)])
                                                      / df[np.uintp(out + ow)])
                        continue
                    for ow in range(ow_n):
                        yf[np.uintp(dst + ow)] = 0
                    for rw in range(kw):
                        for ow in range(columns[rw, 0], columns[rw, 1]):
                            yf[np.uintp(dst + ow)] += rows[np.uintp(ow * sw + rw - pad[2])]
                    for ow in range(ow_n):
                        yf[np.uintp(dst + ow)] /= df[np.uintp(out + ow)]
    return y


@njit(**_jit)
def _avg_pool_backward(gy, kernel, stride, pad, in_size, divisor, threads, gx):
    """The adjoint of :func:`_avg_pool_forward`, a contiguous run of (image, channel) planes
    per thread: each output row's gradient over its divisors is spread across its windows'
    columns, then added to each of the windows' input rows (output rows in order, so the sums
    are repeatable). Windows of whole rows (global pooling) add their one value to each depth
    slice's rows as one contiguous run: ResNet-18's 512 x 7x7 at batch 16 took 193 us
    building and adding rows of seven."""
    n_batch, c_in, od_n, oh_n, ow_n = gy.shape
    d_in, h_in, w_in = in_size
    kd, kh, kw = kernel
    sw = stride[2]
    plane_in, plane_out = d_in * h_in * w_in, od_n * oh_n * ow_n
    pairs = kw == 2 and sw == 2 and pad[2] == 0 and 2 * ow_n <= w_in
    whole_rows = kw == w_in and pad[2] == 0 and ow_n == 1  # one window per row of output
    columns = _column_ranges(ow_n, sw, kw, pad[2], w_in)
    gxf = gx.reshape(gx.size)
    gf = gy.reshape(gy.size)
    df = divisor.reshape(divisor.size)
    for part in prange(threads):
        row = np.empty(w_in, dtype=gy.dtype)
        p0, p1 = _share(n_batch * c_in, part, threads)
        for q in range(w_in):
            row[np.uintp(q)] = 0
        for p in range(p0, p1):
            for i in range(p * plane_in, (p + 1) * plane_in):  # zeroed here: then in cache
                gxf[np.uintp(i)] = 0
            for od in range(od_n):
                for oh in range(oh_n):
                    out = (od * oh_n + oh) * ow_n
                    src = p * plane_out + out
                    if whole_rows:
                        g = gf[np.uintp(src)] / df[np.uintp(out)]
                        h_lo = max(0, oh * stride[1] - pad[1])
                        h_hi = min(h_in, oh * stride[1] - pad[1] + kh)
                        for rd in range(kd):
                            i_d = od * stride[0] - pad[0] + rd
                            if 0 <= i_d < d_in:
                                at = p * plane_in + (i_d * h_in + h_lo) * w_in
                                for i in range(at, at + max(0, h_hi - h_lo) * w_in):
                                    gxf[np.uintp(i)] += g
                        continue
                    if pairs:  # columns past 2 * ow_n stay zero
                        for ow in range(ow_n):
                            g = gf[np.uintp(src + ow)] / df[np.uintp(out + ow)]
                            row[np.uintp(2 * ow)] = g
                            row[np.uintp(2 * ow + 1)] = g
                    else:
                        for q in range(w_in):
                            row[np.uintp(q)] = 0
                        for rw in range(kw):
                            for ow in range(columns[rw, 0], columns[rw, 1]):
                                row[np.uintp(ow * sw + rw - pad[2])] += (
                                    gf[np.uintp(src + ow)] / df[np.uintp(out + ow)])
                    for rd in range(kd):
                        i_d = od * stride[0] - pad[0] + rd
                        if i_d < 0 or i_d >= d_in:
                            continue
                        for rh in range(kh):
                            i_h = oh * stride[1] - pad[1] + rh
                            if i_h < 0 or i_h >= h_in:
                                continue
                            dst = p * plane_in + (i_d * h_in + i_h) * w_in
                            for q in range(w_in):
                                gxf[np.uintp(dst + q)] += row[np.uintp(q)]
    return gx


@njit(cache=True, inline="always")
def _first_in_bounds(o_pos, stride, pad, dilation):
    """The first window position at or after ``o_pos * stride - pad`` that is not negative
    (PyTorch's default argmax, which it keeps when nothing beats -inf)."""
    start = o_pos * stride - pad
    if start < 0:
        start += ((-start + dilation - 1) // dilation) * dilation
    return start


@njit(cache=True, inline="always")
def _band_max(buf, src, span, tap, with_indices, best, won):
    """One tap's candidates ``buf[src:src + span]`` against the band's ``best`` so far: each
    taken when larger or NaN (so the first maximum and the last NaN win), and, with indices,
    ``tap`` recorded in ``won`` where taken."""
    if with_indices:
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


@njit(**_jit)
def _max_pool_forward(x, kernel, stride, pad, dilation, out_size, with_indices, threads, y,
                      idx):
    """Max pooling, a contiguous run of (image, channel) planes per thread (its scratch
    allocated once, not per plane: at batch 1 the allocations cost as much as small planes),
    each plane in bands of rows (as the convolution).

    Taps run in the window's raster order and a candidate replaces the current best when it is
    larger or NaN, so the first maximum and the last NaN win, as in PyTorch; padding reads as
    ``-inf``, which never replaces. The winning tap is kept per element and turned into a flat
    input index only when the band is written out, and only ``with_indices``. Writes ``y``
    (N, C, OD, OH, OW) and, ``with_indices``, ``idx`` (the same shape, int64).
    """
    n_batch, c_in, d_in, h_in, w_in = x.shape
    od_n, oh_n, ow_n = out_size
    kd, kh, kw = kernel
    sh, sw = stride[1], stride[2]
    band, pitch = _band_geometry((oh_n, ow_n), (sh, sw), (kh, kw), (dilation[1], dilation[2]))
    hb_most = _band_height(band, sh, kh, dilation[1])
    plane_in = d_in * h_in * w_in
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
    for part in prange(threads):
        buf = np.empty(sh * sw * hb_most * pitch, dtype=x.dtype)
        best = np.empty(band * pitch, dtype=x.dtype)
        won = np.empty(band * pitch, dtype=np.int32)
        t0, t1 = _share(n_batch * c_in, part, threads)
        for task in range(t0, t1):
            for od in range(od_n):
                d0 = _first_in_bounds(od, stride[0], pad[0], dilation[0])
                for oh0 in range(0, oh_n, band):
                    rows = min(band, oh_n - oh0)
                    hb = _band_height(rows, sh, kh, dilation[1])
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
                            for rw in range(kw):
                                _band_max(buf, _tap_start(rh, rw, dilation, sh, sw, hb, pitch),
                                          span, np.int32((rd * kh + rh) * kw + rw),
                                          with_indices, best, won)
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
def _max_pool_backward(gy, idx, gx):
    # planes are independent, so a plane-per-thread scatter is race-free and deterministic;
    # each task zeroes its own plane first, so that plane is in cache for the scatter
    rows, outs = gy.shape
    plane = gx.shape[1]
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
