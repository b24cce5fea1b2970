"""The Numba kernels of the ``numba`` backend: every ``@njit`` function, in one module because
Numba's on-disk cache tracks one source file (a kernel cached against a helper in another file
would not see that helper change).

Kernels trust their inputs (contiguous 5-D arrays, canonical tuples); ``fastconv.functional``
guarantees that. Indices are unsigned (``np.uintp``) on flat views wherever a loop should
vectorise: with signed ones Numba adds negative-index handling that kept the loops scalar.

Kernels write their outputs into arrays the caller allocated with NumPy, which asks Linux
for transparent huge pages on large arrays where Numba's allocator does not: a fresh 100 MB
output filled in parallel took 25 ms allocated in Numba, 8 ms allocated by NumPy (4 ms
reused); max pooling's backward 31 -> 13 ms. Inside are allocated only scratch and
weight-sized results (weight and bias gradients).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import get_thread_id, njit, prange
from numba.core import cgutils, types
from numba.extending import intrinsic, models, register_model

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


@njit(cache=True, inline="always")
def _band_height(rows, sh, kh, dh):
    """Rows per stride phase of the input copy that ``rows`` output rows read."""
    return ((rows - 1) * sh + (kh - 1) * dh + sh) // sh


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
def _conv_forward(x, w, bias, stride, pad, dilation, groups, out_size, k_chunk, y):
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
    slice_len = sh * sw * _band_height(band, sh, kh, dilation[1]) * pitch
    plane_in = d_in * h_in * w_in
    plane_out = od_n * oh_n * ow_n
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
                hb = _band_height(rows, sh, kh, dilation[1])
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


@njit(**_jit)
def _conv_transpose_forward(x, w, bias, stride, pad, dilation, groups, out_size, y):
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
    slice_len = sh * sw * _band_height(band, sh, kh, dilation[1]) * pitch
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
                    hb = _band_height(rows, sh, kh, dilation[1])
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


@njit(cache=True, parallel=True, nogil=True)
def _conv_weight_grad_exact(x, gy, stride, pad, dilation, groups, kernel):
    """The weight gradient summed over in-bounds positions only, one weight per task.

    The way for a ``gy`` holding NaN or Inf: the other ways multiply it by the padding's zeros
    (``0 * inf`` is NaN), where PyTorch never lets padding enter a product. Per tap the
    in-bounds outputs are a box (:func:`_valid_range` per axis), so the loops need no checks;
    float64 sums, in raster order.
    """
    n_batch, c_in, d_in, h_in, w_in = x.shape
    _, k_out, od_n, oh_n, ow_n = gy.shape
    kd, kh, kw = kernel
    kg, cg, taps = k_out // groups, c_in // groups, kd * kh * kw
    gw = np.empty((k_out, cg, kd, kh, kw), dtype=x.dtype)
    for task in prange(k_out * cg * taps):
        t, c, k = task % taps, (task // taps) % cg, task // (taps * cg)
        rd, rh, rw = t // (kh * kw), (t // kw) % kh, t % kw
        ci = (k // kg) * cg + c
        off_d = rd * dilation[0] - pad[0]
        off_h = rh * dilation[1] - pad[1]
        off_w = rw * dilation[2] - pad[2]
        d0, d1 = _valid_range(od_n, stride[0], off_d, d_in)
        h0, h1 = _valid_range(oh_n, stride[1], off_h, h_in)
        w0, w1 = _valid_range(ow_n, stride[2], off_w, w_in)
        acc = 0.0
        for n in range(n_batch):
            for od in range(d0, d1):
                for oh in range(h0, h1):
                    i_h = oh * stride[1] + off_h
                    for ow in range(w0, w1):
                        acc += gy[n, k, od, oh, ow] * x[n, ci, od * stride[0] + off_d, i_h,
                                                        ow * stride[2] + off_w]
        gw[k, c, rd, rh, rw] = acc
    return gw


_FINITE_CHUNK = 1 << 16


@njit(cache=True, parallel=True, nogil=True, fastmath={"reassoc"})
def _all_finite(flat):
    """Whether every element of ``flat`` is finite. ``v - v`` is 0 for a finite ``v`` and NaN
    otherwise, so a chunk's sum of it is 0 exactly when the chunk is finite: a sum that
    vectorises (reassoc lets it; without ``nnan`` LLVM may not fold ``v - v`` to 0)."""
    n = flat.size
    chunks = (n + _FINITE_CHUNK - 1) // _FINITE_CHUNK
    sums = np.zeros(chunks)
    for t in prange(chunks):
        start = t * _FINITE_CHUNK
        acc = flat[np.uintp(start)] - flat[np.uintp(start)]  # a sum in the array's dtype
        for i in range(start + 1, min(n, start + _FINITE_CHUNK)):
            v = flat[np.uintp(i)]
            acc += v - v
        sums[t] = acc
    return sums.sum() == 0


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
def _share(count, part, parts):
    """The ``part``-th of ``parts`` near-equal contiguous ranges of ``range(count)``."""
    return count * part // parts, count * (part + 1) // parts


@njit(cache=True, inline="always")
def _column_ranges(ow_n, sw, kw, pad_w, w_in):
    """Per window column ``rw``, the output columns whose input column is inside the row."""
    ranges = np.empty((kw, 2), dtype=np.int64)
    for rw in range(kw):
        ranges[rw, 0], ranges[rw, 1] = _valid_range(ow_n, sw, rw - pad_w, w_in)
    return ranges


@njit(**_jit)
def _avg_pool_forward(x, kernel, stride, pad, out_size, divisor, threads, y):
    """Average pooling, a contiguous run of (image, channel) planes per thread: per output row
    the window's input rows are summed first (contiguous, vectorised), then each window's
    columns of that sum, divided by ``divisor[od, oh, ow]``. The sum runs rows first, not in
    raster order. Windows of two columns at stride two without padding (the common 2x2 pool)
    take a loop of their own whose constant stride vectorises."""
    n_batch, c_in, d_in, h_in, w_in = x.shape
    od_n, oh_n, ow_n = out_size
    kd, kh, kw = kernel
    sw = stride[2]
    plane_in, plane_out = d_in * h_in * w_in, od_n * oh_n * ow_n
    pairs = kw == 2 and sw == 2 and pad[2] == 0 and 2 * ow_n <= w_in
    columns = _column_ranges(ow_n, sw, kw, pad[2], w_in)
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    df = divisor.reshape(divisor.size)
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
    are repeatable)."""
    n_batch, c_in, od_n, oh_n, ow_n = gy.shape
    d_in, h_in, w_in = in_size
    kd, kh, kw = kernel
    sw = stride[2]
    plane_in, plane_out = d_in * h_in * w_in, od_n * oh_n * ow_n
    pairs = kw == 2 and sw == 2 and pad[2] == 0 and 2 * ow_n <= w_in
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


@njit(**_jit)
def _max_pool_forward(x, kernel, stride, pad, dilation, out_size, with_indices, y, idx):
    """Max pooling, one (image, channel) plane per task, in bands of rows (as the convolution).

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
    for task in prange(n_batch * c_in):
        buf = np.empty(sh * sw * hb_most * pitch, dtype=x.dtype)
        best = np.empty(band * pitch, dtype=x.dtype)
        won = np.empty(band * pitch, dtype=np.int32)
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
    k_all, o_all = y.shape[1], y.shape[2]
    yf = y.reshape(y.size)
    pf = prod.reshape(prod.size)
    width = prod.shape[1]
    for n in range(n0, n1):
        for k in range(prod.shape[0]):
            b = bias[k0 + k] if bias.size else prod.dtype.type(0)
            dst = (n * k_all + k0 + k) * o_all + o0
            src = k * width + (n - n0) * span
            for o in range(span):  # flat, unsigned: a loop that vectorises
                yf[np.uintp(dst + o)] = pf[np.uintp(src + o)] + b


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
    transposed convolution, serial within a task, so the sum order is fixed (the bias, then
    taps in raster order). A channel is summed in a copy whose rows are split by column
    phase (output column ``j * sw + p`` at ``[row, p, j]``), where each tap's row adds to
    contiguous columns however large the stride, then interleaved into ``y`` (the bench's 4x4
    stride-2 case: forward 28 -> 25 ms, of which 19 ms BLAS).
    """
    d_in, h_in, w_in = in_size
    kd, kh, kw = kernel
    c_all, od_n, oh_n, ow_n = y.shape[1], y.shape[2], y.shape[3], y.shape[4]
    sw = stride[2]
    wq = -(-ow_n // sw)  # columns per phase
    rows = od_n * oh_n
    acc = np.empty(rows * sw * wq, dtype=y.dtype)
    yf = y.reshape(y.size)
    cf = cols.reshape(cols.size)
    width = cols.shape[1]
    for c in range(c0, c1):
        start = bias[c] if bias.size else y.dtype.type(0)
        for i in range(acc.size):
            acc[np.uintp(i)] = start
        for rd in range(kd):
            for rh in range(kh):
                for rw in range(kw):
                    row = (((c - c0) * kd + rd) * kh + rh) * kw + rw
                    off = rw * dilation[2] - pad[2]
                    phase = off % sw
                    shift = (off - phase) // sw  # column in the phase of input column 0
                    lo, hi = _valid_range(w_in, sw, off, ow_n)
                    for i_d in range(d_in):
                        o_d = i_d * stride[0] - pad[0] + rd * dilation[0]
                        if o_d < 0 or o_d >= od_n:
                            continue
                        for i_h in range(h_in):
                            o_h = i_h * stride[1] - pad[1] + rh * dilation[1]
                            if o_h < 0 or o_h >= oh_n:
                                continue
                            dst = ((o_d * oh_n + o_h) * sw + phase) * wq + shift
                            src = row * width + (i_d * h_in + i_h) * w_in
                            for i_w in range(lo, hi):
                                acc[np.uintp(dst + i_w)] += cf[np.uintp(src + i_w)]
        plane = (n * c_all + c) * rows * ow_n
        for r in range(rows):
            for p in range(sw):
                a0 = (r * sw + p) * wq
                for j in range(-(-(ow_n - p) // sw)):
                    yf[np.uintp(plane + r * ow_n + j * sw + p)] = acc[np.uintp(a0 + j)]

# ------------------------------------------------------------------ Winograd forward
# Winograd F(4x4, 3x3), channels last, for the forward pass. A task copies the input slices it
# needs to a padded (slices, H, W, C) block. Then every transform step is a sum of a few channel
# vectors scaled by the transform's coefficients, one contiguous loop over channels per
# transformed element: loops that LLVM vectorises (a loop storing to one array and loading from
# at most five stays within its alias checks). The transforms (Lavin & Gray, 2016) are sparse:
# each row of B^T has at most four nonzero entries and each row of A^T at most five; the
# kernels take them as index and coefficient tables (see _numba_winograd), the coefficients in
# the data's dtype so that nothing is promoted to float64.


@njit(cache=True, nogil=True)
def _channels_last(x, n, d_lo, d_step, r_lo, r_step, pad_h, pad_w, out):
    """``out[s, r, q, c] = x[n, c, d_lo + s * d_step, r_lo + r * r_step - pad_h, q - pad_w]``,
    zero outside ``x``: the input block of one task, padded, channels innermost."""
    c_in, d_in, h_in, w_in = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    slices, hp, wp = out.shape[0], out.shape[1], out.shape[2]
    of = out.reshape(out.size)
    xf = x.reshape(x.size)
    lo, hi = _valid_range(wp, 1, -pad_w, w_in)
    c_pitch = d_in * h_in * w_in
    for s in range(slices):
        d = d_lo + s * d_step
        for pr in range(hp):
            r = r_lo + pr * r_step - pad_h
            base = (s * hp + pr) * wp * c_in
            if d < 0 or d >= d_in or r < 0 or r >= h_in:
                for q in range(wp * c_in):
                    of[np.uintp(base + q)] = 0
                continue
            for q in range(lo * c_in):
                of[np.uintp(base + q)] = 0
            for q in range(hi * c_in, wp * c_in):
                of[np.uintp(base + q)] = 0
            # four channels at a time: each output element's four stores are adjacent (one
            # vector store), where one channel at a time stored every 4 or 8 bytes once per
            # channel row (a task's copy 0.21 -> 0.13 ms for 64 channels of 64x64)
            row = ((n * c_in * d_in + d) * h_in + r) * w_in - pad_w
            fours = c_in - c_in % 4
            for c in range(0, fours, 4):
                src = row + c * c_pitch
                for q in range(lo, hi):
                    o = base + q * c_in + c
                    v0, v1 = xf[np.uintp(src + q)], xf[np.uintp(src + c_pitch + q)]
                    v2 = xf[np.uintp(src + 2 * c_pitch + q)]
                    v3 = xf[np.uintp(src + 3 * c_pitch + q)]
                    of[np.uintp(o)], of[np.uintp(o + 1)] = v0, v1
                    of[np.uintp(o + 2)], of[np.uintp(o + 3)] = v2, v3
            for c in range(fours, c_in):
                src = row + c * c_pitch
                for q in range(lo, hi):
                    of[np.uintp(base + q * c_in + c)] = xf[np.uintp(src + q)]


@njit(cache=True, nogil=True)
def _winograd43_input(xb, step, rows, cols, c0, cg, idx, coef, v):
    """``v[(i, j), t, s * cg + c] = (B^T d B)[i, j]``, ``d`` the 6x6 patch of channel
    ``c0 + c`` of slice ``s`` of the block ``xb`` that tile ``t`` reads.

    Tile ``t`` is (``rows[t // cols.size]``, ``cols[t % cols.size]``): the block position of
    its first input, whose patch takes every ``step``-th row and column (the dilation).
    """
    slices, hp, wp, c_all = xb.shape
    n_cols = cols.size
    n_tiles, width = v.shape[1], v.shape[2]
    plane = n_tiles * width
    xf = xb.reshape(xb.size)
    vf = v.reshape(v.size)
    tb = np.empty(36 * cg, dtype=xb.dtype)  # B^T d: tb[i, j, c]
    sh = step[0] * wp * c_all
    sw = step[1] * c_all
    for t in range(n_tiles):
        for s in range(slices):
            p = ((s * hp + rows[t // n_cols]) * wp + cols[t % n_cols]) * c_all + c0
            for i in range(6):
                k0, k1, k2, k3 = coef[i, 0], coef[i, 1], coef[i, 2], coef[i, 3]
                for j in range(6):
                    a0 = p + j * sw + idx[i, 0] * sh
                    a1 = p + j * sw + idx[i, 1] * sh
                    a2 = p + j * sw + idx[i, 2] * sh
                    a3 = p + j * sw + idx[i, 3] * sh
                    dst = (i * 6 + j) * cg
                    for c in range(cg):
                        tb[np.uintp(dst + c)] = (
                            k0 * xf[np.uintp(a0 + c)] + k1 * xf[np.uintp(a1 + c)]
                            + k2 * xf[np.uintp(a2 + c)] + k3 * xf[np.uintp(a3 + c)])
            o = t * width + s * cg
            for i in range(6):
                for j in range(6):
                    k0, k1, k2, k3 = coef[j, 0], coef[j, 1], coef[j, 2], coef[j, 3]
                    a0 = (i * 6 + idx[j, 0]) * cg
                    a1 = (i * 6 + idx[j, 1]) * cg
                    a2 = (i * 6 + idx[j, 2]) * cg
                    a3 = (i * 6 + idx[j, 3]) * cg
                    dst = (i * 6 + j) * plane + o
                    for c in range(cg):
                        vf[np.uintp(dst + c)] = (
                            k0 * tb[np.uintp(a0 + c)] + k1 * tb[np.uintp(a1 + c)]
                            + k2 * tb[np.uintp(a2 + c)] + k3 * tb[np.uintp(a3 + c)])


@njit(cache=True, nogil=True)
def _winograd43_output(m, step, rows, cols, out_size, k0, idx, coef, yb):
    """``yb[4 * tr + a, ow, k0 + k] = (A^T M A)[a, b]`` for tile ``t`` (tile row ``tr``),
    ``M = m[:, t, k]``, at output column ``ow = cols[..] + b * step[1]``; rows and columns
    past ``out_size`` (output rows ``rows[tr] + a * step[0]``) are left out."""
    n_tiles, kg = m.shape[1], m.shape[2]
    out_w, k_all = yb.shape[1], yb.shape[2]
    n_cols = cols.size
    plane = n_tiles * kg
    mf = m.reshape(m.size)
    yf = yb.reshape(yb.size)
    s = np.empty(24 * kg, dtype=m.dtype)  # A^T M: s[a, j, k]
    for t in range(n_tiles):
        tr = t // n_cols
        col = cols[t % n_cols]
        q = t * kg
        for a in range(4):
            if rows[tr] + a * step[0] >= out_size[0]:
                break
            c_0, c_1, c_2, c_3, c_4 = coef[a, 0], coef[a, 1], coef[a, 2], coef[a, 3], coef[a, 4]
            for j in range(6):
                p0 = q + (6 * idx[a, 0] + j) * plane
                p1 = q + (6 * idx[a, 1] + j) * plane
                p2 = q + (6 * idx[a, 2] + j) * plane
                p3 = q + (6 * idx[a, 3] + j) * plane
                p4 = q + (6 * idx[a, 4] + j) * plane
                dst = (a * 6 + j) * kg
                for k in range(kg):
                    s[np.uintp(dst + k)] = (
                        c_0 * mf[np.uintp(p0 + k)] + c_1 * mf[np.uintp(p1 + k)]
                        + c_2 * mf[np.uintp(p2 + k)] + c_3 * mf[np.uintp(p3 + k)]
                        + c_4 * mf[np.uintp(p4 + k)])
            for b in range(4):
                if col + b * step[1] >= out_size[1]:
                    break
                c_0, c_1, c_2, c_3, c_4 = coef[b, 0], coef[b, 1], coef[b, 2], coef[b, 3], coef[b, 4]
                src = a * 6 * kg
                p0 = src + idx[b, 0] * kg
                p1 = src + idx[b, 1] * kg
                p2 = src + idx[b, 2] * kg
                p3 = src + idx[b, 3] * kg
                p4 = src + idx[b, 4] * kg
                o = ((4 * tr + a) * out_w + col + b * step[1]) * k_all + k0
                for k in range(kg):
                    yf[np.uintp(o + k)] = (
                        c_0 * s[np.uintp(p0 + k)] + c_1 * s[np.uintp(p1 + k)]
                        + c_2 * s[np.uintp(p2 + k)] + c_3 * s[np.uintp(p3 + k)]
                        + c_4 * s[np.uintp(p4 + k)])


@njit(cache=True, nogil=True)
def _channels_first(yb, rows, step_h, bias, y, n, od):
    """``y[n, k, od, rows[tr] + a * step_h] = yb[4 * tr + a, :, k] + bias[k]`` for the rows
    inside ``y``: a task's output block back in the output's layout."""
    k_all, d_out, h_out, w_out = y.shape[1], y.shape[2], y.shape[3], y.shape[4]
    yf = y.reshape(y.size)
    bf = yb.reshape(yb.size)
    for tr in range(rows.size):
        for a in range(4):
            oh = rows[tr] + a * step_h
            if oh >= h_out:
                break
            src = (4 * tr + a) * w_out * k_all
            for k in range(k_all):
                b = bias[k]
                dst = (((n * k_all + k) * d_out + od) * h_out + oh) * w_out
                for q in range(w_out):
                    yf[np.uintp(dst + q)] = bf[np.uintp(src + q * k_all + k)] + b


# ------------------------------------------------------------------ Winograd weight gradient
# The weight gradients of 3x3 convolutions at stride 1 by Winograd's F(2x2, 3x3): 16 GEMMs
# (one per transformed position) between transformed gradient tiles A g A^T and transformed
# input tiles V = B^T d B, summed over tiles, then G^T M G. Transforms run row-wise so that
# they vectorise across tiles. (The forward pass uses F(4x4, 3x3), channels last, above.)


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
def _winograd_grad_tiles(gy, n, k0, od, th0, th1, tiles_w, wt, step, offset, size):
    """``wt[(i, j), k, tile] = (A g A^T)[i, j]`` for the 2x2 block ``g`` of ``gy[n, k0 + k, od]``
    that tile ``(th, tw)`` produced (zero past the output; sub-lattices as in
    :func:`_winograd_input`): the weight gradient is ``G^T (sum over tiles V * W) G``."""
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



# Explicit SIMD vectors, for kernels whose sums stay in registers over many taps. Numba's LLVM
# keeps its own vectorised loops to 256 bits on CPUs that tune for it (AVX-512 Xeons), but
# lowers explicit 512-bit vector operations to 512-bit instructions there (and splits them
# where the CPU has narrower registers).
VECTOR_BYTES = 64


class _Vector(types.Type):
    """``VECTOR_BYTES`` of one element type, held in a register."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.count = VECTOR_BYTES * 8 // dtype.bitwidth
        super().__init__(name=f"Vector({dtype}x{self.count})")


@register_model(_Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.count))


def _element_pointer(context, builder, array_type, array, index, index_type, vector_type):
    data = context.make_array(array_type)(context, builder, array).data
    at = builder.gep(data, [context.cast(builder, index, index_type, types.intp)])
    return builder.bitcast(at, context.get_value_type(vector_type).as_pointer())


@intrinsic
def _vload(typingctx, array, index):
    """The vector at ``array[index:index + count]`` (1-D, contiguous; no bounds check)."""
    vector = _Vector(array.dtype)

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1],
                               vector)
        return builder.load(ptr, align=array.dtype.bitwidth // 8)

    return vector(array, index), codegen


@intrinsic
def _vstore(typingctx, array, index, value):
    """``array[index:index + count] = value`` (1-D, contiguous; no bounds check)."""

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1],
                               sig.args[2])
        builder.store(args[2], ptr, align=array.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(array, index, value), codegen


def _splat(builder, scalar, vector_type):
    one = builder.insert_element(ir.Constant(vector_type, ir.Undefined), scalar,
                                 ir.Constant(ir.IntType(32), 0))
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), vector_type.count), [0] * vector_type.count)
    return builder.shuffle_vector(one, ir.Constant(vector_type, ir.Undefined), zeros)


@intrinsic
def _vsplat(typingctx, scalar, array):
    """A vector of ``array``'s element type with ``scalar`` in every element."""
    vector = _Vector(array.dtype)

    def codegen(context, builder, sig, args):
        value = context.cast(builder, args[0], sig.args[0], vector.dtype)
        return _splat(builder, value, context.get_value_type(vector))

    return vector(scalar, array), codegen


@intrinsic
def _vfma(typingctx, a, vector, acc):
    """``a * vector + acc``, ``a`` a scalar or a vector, element by element, each with one
    rounding (a fused multiply-add, as the loops compiled with ``contract`` get)."""

    def codegen(context, builder, sig, args):
        vt = args[1].type
        bits = 32 if vt.element == ir.FloatType() else 64
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt] * 3),
                                             f"llvm.fma.v{vt.count}f{bits}")
        if isinstance(sig.args[0], _Vector):
            factor = args[0]
        else:
            scalar = context.cast(builder, args[0], sig.args[0], sig.args[1].dtype)
            factor = _splat(builder, scalar, vt)
        return builder.call(fma, [factor, args[1], args[2]])

    return vector(a, vector, acc), codegen


# Register-blocked direct convolution: the direct kernels' band copy (padded, split by stride
# phase, rows at one pitch, so that a tap reads contiguous positions), and for each run of four
# vectors of band positions the sums of four output channels held in 16 registers over every
# input channel and tap: each input vector is loaded once for four multiply-adds, and the sums
# never go to memory until the run is done (the lane kernels' scheme, on band positions).


_BLOCK_CHANNELS = 16  # input channels (times depth taps) whose band slices one pass reads


@njit(**_jit)
def _conv_forward_blocked(x, w4, bias4, stride, pad, dilation, kg, out_size, band, k_chunk,
                          y):
    """Direct convolution, four output channels x four vectors of positions in registers.

    ``w4`` is ``(groups, kg4, cg, kd, kh, kw)``: each group's ``kg`` filters padded with zero
    filters to ``kg4``, a multiple of four (their sums are computed and dropped), ``bias4``
    ``(groups * kg4,)``. A task is one image, group, depth slice, band of ``band`` output rows
    and chunk of ``k_chunk`` (a multiple of four) output channels. Per output element the sum
    starts at the bias and runs over channels, then taps in raster order (fused multiply-adds).
    """
    n_batch, c_in, d_in, h_in, w_in = x.shape
    groups, kg4, cg, kd, kh, kw = w4.shape
    od_n, oh_n, ow_n = out_size
    k_out = groups * kg
    sh, sw = stride[1], stride[2]
    taps = kd * kh * kw
    pitch = ((ow_n - 1) * sw + (kw - 1) * dilation[2] + sw) // sw
    slice_len = sh * sw * _band_height(band, sh, kh, dilation[1]) * pitch
    vec = VECTOR_BYTES // x.itemsize
    run = 4 * vec
    span_len = ((band - 1) * pitch + ow_n + run - 1) // run * run
    c_block = max(1, _BLOCK_CHANNELS // kd)
    bands = (oh_n + band - 1) // band
    chunks = (kg4 + k_chunk - 1) // k_chunk
    plane_in, plane_out = d_in * h_in * w_in, od_n * oh_n * ow_n
    xf, yf, wf = x.reshape(x.size), y.reshape(y.size), w4.reshape(w4.size)
    for task in prange(n_batch * groups * chunks * od_n * bands):
        oh0 = (task % bands) * band
        od = (task // bands) % od_n
        chunk = (task // (bands * od_n)) % chunks
        g = (task // (bands * od_n * chunks)) % groups
        n = task // (bands * od_n * chunks * groups)
        rows = min(band, oh_n - oh0)
        hb = _band_height(rows, sh, kh, dilation[1])
        span = (rows - 1) * pitch + ow_n
        # a run's last vectors read up to a run past the band: slack, never used
        bufs = np.empty(cg * kd * slice_len + run, dtype=x.dtype)
        acc = np.empty(k_chunk * span_len, dtype=x.dtype)
        offsets = np.empty(kh * kw, dtype=np.int64)
        for rh in range(kh):
            for rw in range(kw):
                offsets[rh * kw + rw] = _tap_start(rh, rw, dilation, sh, sw, hb, pitch)
        depth_ok = np.zeros(kd, dtype=np.bool_)
        for rd in range(kd):
            i_d = od * stride[0] - pad[0] + rd * dilation[0]
            depth_ok[rd] = 0 <= i_d < d_in
            if depth_ok[rd]:
                for c in range(cg):
                    plane = (n * c_in + g * cg + c) * plane_in + i_d * h_in * w_in
                    _fill_band(bufs, (c * kd + rd) * slice_len, xf, plane, h_in, w_in,
                               oh0 * sh - pad[1], -pad[2], sh, sw, hb, pitch, 0)
        k_lo, k_hi = chunk * k_chunk, min(kg4, (chunk + 1) * k_chunk)
        k_step = cg * taps
        # input channels in blocks whose band slices stay in cache while every block of four
        # output channels reads them, each block's weights (4 x c_block x taps) read once for
        # all runs of positions; the sums go to `acc` between blocks of input channels
        for c0 in range(0, cg, c_block):
            for kb in range(k_lo, k_hi, 4):
                for j in range(0, span, run):
                    a = (kb - k_lo) * span_len + j  # channel kb's run in `acc`
                    if c0 == 0:
                        b = g * kg4 + kb
                        a00 = _vsplat(bias4[b], x)
                        a10 = _vsplat(bias4[b + 1], x)
                        a20 = _vsplat(bias4[b + 2], x)
                        a30 = _vsplat(bias4[b + 3], x)
                        a01, a02, a03 = a00, a00, a00
                        a11, a12, a13 = a10, a10, a10
                        a21, a22, a23 = a20, a20, a20
                        a31, a32, a33 = a30, a30, a30
                    else:
                        a00, a01 = _vload(acc, a), _vload(acc, a + vec)
                        a02, a03 = _vload(acc, a + 2 * vec), _vload(acc, a + 3 * vec)
                        a10, a11 = _vload(acc, a + span_len), _vload(acc, a + span_len + vec)
                        a12 = _vload(acc, a + span_len + 2 * vec)
                        a13 = _vload(acc, a + span_len + 3 * vec)
                        a20 = _vload(acc, a + 2 * span_len)
                        a21 = _vload(acc, a + 2 * span_len + vec)
                        a22 = _vload(acc, a + 2 * span_len + 2 * vec)
                        a23 = _vload(acc, a + 2 * span_len + 3 * vec)
                        a30 = _vload(acc, a + 3 * span_len)
                        a31 = _vload(acc, a + 3 * span_len + vec)
                        a32 = _vload(acc, a + 3 * span_len + 2 * vec)
                        a33 = _vload(acc, a + 3 * span_len + 3 * vec)
                    for c in range(c0, min(cg, c0 + c_block)):
                        for rd in range(kd):
                            if not depth_ok[rd]:
                                continue
                            base = (c * kd + rd) * slice_len + j
                            wi = (g * kg4 + kb) * k_step + (c * kd + rd) * kh * kw
                            for t in range(kh * kw):
                                at = base + offsets[t]
                                v0, v1 = _vload(bufs, at), _vload(bufs, at + vec)
                                v2, v3 = _vload(bufs, at + 2 * vec), _vload(bufs, at + 3 * vec)
                                w = wf[np.uintp(wi + t)]
                                a00, a01 = _vfma(w, v0, a00), _vfma(w, v1, a01)
                                a02, a03 = _vfma(w, v2, a02), _vfma(w, v3, a03)
                                w = wf[np.uintp(wi + k_step + t)]
                                a10, a11 = _vfma(w, v0, a10), _vfma(w, v1, a11)
                                a12, a13 = _vfma(w, v2, a12), _vfma(w, v3, a13)
                                w = wf[np.uintp(wi + 2 * k_step + t)]
                                a20, a21 = _vfma(w, v0, a20), _vfma(w, v1, a21)
                                a22, a23 = _vfma(w, v2, a22), _vfma(w, v3, a23)
                                w = wf[np.uintp(wi + 3 * k_step + t)]
                                a30, a31 = _vfma(w, v0, a30), _vfma(w, v1, a31)
                                a32, a33 = _vfma(w, v2, a32), _vfma(w, v3, a33)
                    _vstore(acc, a, a00)
                    _vstore(acc, a + vec, a01)
                    _vstore(acc, a + 2 * vec, a02)
                    _vstore(acc, a + 3 * vec, a03)
                    a += span_len
                    _vstore(acc, a, a10)
                    _vstore(acc, a + vec, a11)
                    _vstore(acc, a + 2 * vec, a12)
                    _vstore(acc, a + 3 * vec, a13)
                    a += span_len
                    _vstore(acc, a, a20)
                    _vstore(acc, a + vec, a21)
                    _vstore(acc, a + 2 * vec, a22)
                    _vstore(acc, a + 3 * vec, a23)
                    a += span_len
                    _vstore(acc, a, a30)
                    _vstore(acc, a + vec, a31)
                    _vstore(acc, a + 2 * vec, a32)
                    _vstore(acc, a + 3 * vec, a33)
        for kk in range(min(k_hi, kg) - k_lo):
            k = g * kg + k_lo + kk
            for r in range(rows):
                dst = (n * k_out + k) * plane_out + (od * oh_n + oh0 + r) * ow_n
                src = kk * span_len + r * pitch
                for ow in range(ow_n):
                    yf[np.uintp(dst + ow)] = acc[np.uintp(src + ow)]
    return y


# Batch-lane kernels, for many small images. The input is copied with the batch innermost, in
# groups of ``lanes`` images: (groups, C, H, W, lanes), padded. Then at stride 1 a kernel row
# applied to an output row is one contiguous multiply-add over ``OW * lanes`` elements, however
# narrow the image, and four output channels share each load.

# The output planes of _lane_conv lie this many elements further apart than their size: four
# rows a multiple of 4 KiB apart made each store stall the next row's loads (LeNet c1's planes
# are 196 KiB; its lane kernel 0.80 -> 0.56 ms with the skew).
LANE_SKEW = 64


@njit(**_jit)
def _to_lanes(x, lanes, c_lanes, pad, size, pitch, slack, out):
    """``x`` (N, C, 1, H, W) as flat lanes, written to ``out`` (of exactly this size): groups
    of ``c_lanes`` planes (size[0], size[1], lanes), ``pitch`` elements apart (zeros between),
    then ``slack`` zeros. Position ``(i, j)`` holds ``x[..., i - pad[0], j - pad[1]]``, zero
    outside ``x``, past image N-1 and past channel C-1. ``pad`` may be negative (a crop)."""
    n_batch, c_in, _, h_in, w_in = x.shape
    hp, wp = size
    for i in range(out.size - slack, out.size):
        out[i] = 0
    xf = x.reshape(x.size)
    plane = h_in * w_in
    # a task writes its plane of the copy in order, lanes innermost; each lane reads its image
    for task in prange(-(-n_batch // lanes) * c_lanes):
        g, c = task // c_lanes, task % c_lanes
        n_in = min(lanes, n_batch - g * lanes) if c < c_in else 0
        src0 = (g * lanes * c_in + c) * plane
        for i in range(hp):
            h = i - pad[0]
            for j in range(wp):
                col = j - pad[1]
                dst = task * pitch + (i * wp + j) * lanes
                n_here = n_in if 0 <= h < h_in and 0 <= col < w_in else 0
                src = src0 + h * w_in + col
                for b in range(n_here):
                    out[np.uintp(dst + b)] = xf[np.uintp(src + b * c_in * plane)]
                for b in range(n_here, lanes):
                    out[np.uintp(dst + b)] = 0
        for i in range(task * pitch + hp * wp * lanes, (task + 1) * pitch):
            out[np.uintp(i)] = 0
    return out


@njit(**_jit)
def _from_lanes(yl, pitch, c_held, lanes, y):
    """Flat lanes (groups, c_held planes ``pitch`` elements apart, OH, OW, lanes) back to
    ``y`` (N, K, 1, OH, OW)."""
    n_batch, k_out, _, oh_n, ow_n = y.shape
    plane = oh_n * ow_n
    groups = -(-n_batch // lanes)
    yf = y.reshape(y.size)
    for task in prange(groups * k_out):
        g, k = task // k_out, task % k_out
        src = (g * c_held + k) * pitch
        for b in range(min(lanes, n_batch - g * lanes)):
            dst = ((g * lanes + b) * k_out + k) * plane
            for p in range(plane):
                yf[np.uintp(dst + p)] = yl[np.uintp(src + p * lanes + b)]
    return y


# contract: fused multiply-adds (one rounding each), twice the throughput; NaN and Inf unchanged
@njit(cache=True, nogil=True, fastmath={"contract"})
def _lane_taps(yf, o0, pl, xf, xs, span, step, w, wi, k_step, count):
    """Add taps ``wi .. wi + count`` (at most 3; ``step`` apart in the input) of four output
    channels (weights ``k_step`` apart) into the rows at ``o0 + i * pl``, tap by tap."""
    o1, o2, o3 = o0 + pl, o0 + 2 * pl, o0 + 3 * pl
    a0, a1 = w[np.uintp(wi)], w[np.uintp(wi + k_step)]
    a2, a3 = w[np.uintp(wi + 2 * k_step)], w[np.uintp(wi + 3 * k_step)]
    if count == 1:
        for j in range(span):
            v = xf[np.uintp(xs + j)]
            yf[np.uintp(o0 + j)] += a0 * v
            yf[np.uintp(o1 + j)] += a1 * v
            yf[np.uintp(o2 + j)] += a2 * v
            yf[np.uintp(o3 + j)] += a3 * v
        return
    b0, b1 = w[np.uintp(wi + 1)], w[np.uintp(wi + k_step + 1)]
    b2, b3 = w[np.uintp(wi + 2 * k_step + 1)], w[np.uintp(wi + 3 * k_step + 1)]
    if count == 2:
        for j in range(span):
            v, u = xf[np.uintp(xs + j)], xf[np.uintp(xs + step + j)]
            yf[np.uintp(o0 + j)] = (yf[np.uintp(o0 + j)] + a0 * v) + b0 * u
            yf[np.uintp(o1 + j)] = (yf[np.uintp(o1 + j)] + a1 * v) + b1 * u
            yf[np.uintp(o2 + j)] = (yf[np.uintp(o2 + j)] + a2 * v) + b2 * u
            yf[np.uintp(o3 + j)] = (yf[np.uintp(o3 + j)] + a3 * v) + b3 * u
        return
    c0, c1 = w[np.uintp(wi + 2)], w[np.uintp(wi + k_step + 2)]
    c2, c3 = w[np.uintp(wi + 2 * k_step + 2)], w[np.uintp(wi + 3 * k_step + 2)]
    for j in range(span):
        v, u = xf[np.uintp(xs + j)], xf[np.uintp(xs + step + j)]
        t = xf[np.uintp(xs + 2 * step + j)]
        yf[np.uintp(o0 + j)] = ((yf[np.uintp(o0 + j)] + a0 * v) + b0 * u) + c0 * t
        yf[np.uintp(o1 + j)] = ((yf[np.uintp(o1 + j)] + a1 * v) + b1 * u) + c1 * t
        yf[np.uintp(o2 + j)] = ((yf[np.uintp(o2 + j)] + a2 * v) + b2 * u) + c2 * t
        yf[np.uintp(o3 + j)] = ((yf[np.uintp(o3 + j)] + a3 * v) + b3 * u) + c3 * t


@njit(cache=True, nogil=True, fastmath={"contract"})
def _lane_taps_pair(yf, o0, pl, xf, xs, span, step, w, wi, k_step, count):
    """:func:`_lane_taps` for two output channels (a block's last two)."""
    o1 = o0 + pl
    a0, a1 = w[np.uintp(wi)], w[np.uintp(wi + k_step)]
    if count == 1:
        for j in range(span):
            v = xf[np.uintp(xs + j)]
            yf[np.uintp(o0 + j)] += a0 * v
            yf[np.uintp(o1 + j)] += a1 * v
        return
    b0, b1 = w[np.uintp(wi + 1)], w[np.uintp(wi + k_step + 1)]
    if count == 2:
        for j in range(span):
            v, u = xf[np.uintp(xs + j)], xf[np.uintp(xs + step + j)]
            yf[np.uintp(o0 + j)] = (yf[np.uintp(o0 + j)] + a0 * v) + b0 * u
            yf[np.uintp(o1 + j)] = (yf[np.uintp(o1 + j)] + a1 * v) + b1 * u
        return
    c0, c1 = w[np.uintp(wi + 2)], w[np.uintp(wi + k_step + 2)]
    for j in range(span):
        v, u = xf[np.uintp(xs + j)], xf[np.uintp(xs + step + j)]
        t = xf[np.uintp(xs + 2 * step + j)]
        yf[np.uintp(o0 + j)] = ((yf[np.uintp(o0 + j)] + a0 * v) + b0 * u) + c0 * t
        yf[np.uintp(o1 + j)] = ((yf[np.uintp(o1 + j)] + a1 * v) + b1 * u) + c1 * t


@njit(cache=True, nogil=True)
def _lane_conv_block(xl, x_pitch, c_held, wf, bias4, g, k0, kc, c_in, size, kernel, window,
                     dilation, out_size, lanes, out, o_first, plane):
    """Output channels ``k0 .. k0 + kc`` of image group ``g`` (see :func:`_lane_conv`), written
    to ``out`` as planes of OH x OW x lanes, the first at ``o_first``, ``plane`` apart."""
    wp = size[1]
    kh, kw = kernel
    oh_n, ow_n = out_size
    span, k_step = ow_n * lanes, c_in * kh * kw
    for oh in range(oh_n):
        o0 = o_first + oh * span
        for i in range(kc):
            start = bias4[k0 + i]
            for j in range(span):
                out[np.uintp(o0 + i * plane + j)] = start
        for c in range(c_in):
            for rh in range(kh):
                row = oh + rh * dilation[0]
                if row < window[0] or row >= window[1]:
                    continue
                xs = (g * c_held + c) * x_pitch + row * wp * lanes
                wi = ((k0 * c_in + c) * kh + rh) * kw
                for rw in range(0, kw, 3):
                    count = min(3, kw - rw)
                    # output columns ow with ow + (rw + t) * dw in the data columns
                    lo = max(0, window[2] - (rw + count - 1) * dilation[1])
                    hi = min(ow_n, window[3] - rw * dilation[1])
                    if hi <= lo:
                        continue
                    at = lo * lanes
                    args = (out, o0 + at, plane, xl, xs + rw * dilation[1] * lanes + at,
                            (hi - lo) * lanes, dilation[1] * lanes, wf, wi + rw, k_step,
                            count)
                    if kc == 2:
                        _lane_taps_pair(*args)
                    else:
                        _lane_taps(*args)


@njit(cache=True, inline="always")
def _lane_taps_used(first, last, kw, dw, window):
    """The taps ``lo:hi`` of a kernel row that read a data column of ``window`` for some output
    column in ``first..last``."""
    lo, hi = 0, kw
    while lo < kw and last + lo * dw < window[2]:
        lo += 1
    while hi > lo and first + (hi - 1) * dw >= window[3]:
        hi -= 1
    return lo, hi


@njit(cache=True, nogil=True)
def _lane_conv_block_wide(xl, x_pitch, c_held, wf, bias4, g, k0, kc, c_in, size, kernel, window,
                          dilation, out_size, lanes, out, o_first, plane):
    """:func:`_lane_conv_block` with explicit 512-bit vectors: for each run of four vectors of
    an output row, the sums of the four channels (16 vectors) stay in registers over every
    tap, each input vector loaded once for four multiply-adds. Same sums in the same order
    (bias, then channels, then taps in raster order, fused multiply-adds), so the same values;
    taps that read padding for a whole run are skipped. LeNet c2's lane kernel 0.81 -> 0.42
    ms (the 256-bit loops of :func:`_lane_taps` ran at their peak)."""
    wp = size[1]
    kh, kw = kernel
    oh_n, ow_n = out_size
    span, k_step = ow_n * lanes, c_in * kh * kw
    vec = VECTOR_BYTES // out.itemsize
    runs_end = span - span % (4 * vec)
    for oh in range(oh_n):
        o0 = o_first + oh * span
        for j in range(0, runs_end, 4 * vec):
            rw_lo, rw_hi = _lane_taps_used(j // lanes, (j + 4 * vec - 1) // lanes, kw,
                                           dilation[1], window)
            a00 = _vsplat(bias4[k0], xl)
            a10 = _vsplat(bias4[k0 + 1], xl)
            a20 = _vsplat(bias4[k0 + 2], xl)
            a30 = _vsplat(bias4[k0 + 3], xl)
            a01, a02, a03 = a00, a00, a00
            a11, a12, a13 = a10, a10, a10
            a21, a22, a23 = a20, a20, a20
            a31, a32, a33 = a30, a30, a30
            for c in range(c_in):
                for rh in range(kh):
                    row = oh + rh * dilation[0]
                    if row < window[0] or row >= window[1]:
                        continue
                    xs = (g * c_held + c) * x_pitch + row * wp * lanes + j
                    wi = ((k0 * c_in + c) * kh + rh) * kw
                    for rw in range(rw_lo, rw_hi):
                        at = xs + rw * dilation[1] * lanes
                        v0, v1 = _vload(xl, at), _vload(xl, at + vec)
                        v2, v3 = _vload(xl, at + 2 * vec), _vload(xl, at + 3 * vec)
                        w = wf[wi + rw]
                        a00, a01 = _vfma(w, v0, a00), _vfma(w, v1, a01)
                        a02, a03 = _vfma(w, v2, a02), _vfma(w, v3, a03)
                        w = wf[wi + k_step + rw]
                        a10, a11 = _vfma(w, v0, a10), _vfma(w, v1, a11)
                        a12, a13 = _vfma(w, v2, a12), _vfma(w, v3, a13)
                        w = wf[wi + 2 * k_step + rw]
                        a20, a21 = _vfma(w, v0, a20), _vfma(w, v1, a21)
                        a22, a23 = _vfma(w, v2, a22), _vfma(w, v3, a23)
                        w = wf[wi + 3 * k_step + rw]
                        a30, a31 = _vfma(w, v0, a30), _vfma(w, v1, a31)
                        a32, a33 = _vfma(w, v2, a32), _vfma(w, v3, a33)
            at = o0 + j
            _vstore(out, at, a00)
            _vstore(out, at + vec, a01)
            _vstore(out, at + 2 * vec, a02)
            _vstore(out, at + 3 * vec, a03)
            at += plane
            _vstore(out, at, a10)
            _vstore(out, at + vec, a11)
            _vstore(out, at + 2 * vec, a12)
            _vstore(out, at + 3 * vec, a13)
            if kc == 4:  # else a block's last two channels: the other two are zero weights
                at += plane
                _vstore(out, at, a20)
                _vstore(out, at + vec, a21)
                _vstore(out, at + 2 * vec, a22)
                _vstore(out, at + 3 * vec, a23)
                at += plane
                _vstore(out, at, a30)
                _vstore(out, at + vec, a31)
                _vstore(out, at + 2 * vec, a32)
                _vstore(out, at + 3 * vec, a33)
        # the row's last vectors (rows are a whole number of vectors: lanes come in 16s)
        for j in range(runs_end, span, vec):
            rw_lo, rw_hi = _lane_taps_used(j // lanes, (j + vec - 1) // lanes, kw, dilation[1],
                                           window)
            a0, a1 = _vsplat(bias4[k0], xl), _vsplat(bias4[k0 + 1], xl)
            a2, a3 = _vsplat(bias4[k0 + 2], xl), _vsplat(bias4[k0 + 3], xl)
            for c in range(c_in):
                for rh in range(kh):
                    row = oh + rh * dilation[0]
                    if row < window[0] or row >= window[1]:
                        continue
                    xs = (g * c_held + c) * x_pitch + row * wp * lanes + j
                    wi = ((k0 * c_in + c) * kh + rh) * kw
                    for rw in range(rw_lo, rw_hi):
                        v = _vload(xl, xs + rw * dilation[1] * lanes)
                        a0 = _vfma(wf[wi + rw], v, a0)
                        a1 = _vfma(wf[wi + k_step + rw], v, a1)
                        a2 = _vfma(wf[wi + 2 * k_step + rw], v, a2)
                        a3 = _vfma(wf[wi + 3 * k_step + rw], v, a3)
            _vstore(out, o0 + j, a0)
            _vstore(out, o0 + plane + j, a1)
            if kc == 4:
                _vstore(out, o0 + 2 * plane + j, a2)
                _vstore(out, o0 + 3 * plane + j, a3)


@njit(**_jit)
def _lane_conv(xl, x_pitch, c_held, w4, bias4, k_held, groups, c_in, size, window, dilation,
               out_size, lanes, slack, wide, y):
    """Stride-1 convolution of flat lanes ``xl`` (groups, ``c_held`` planes of size x lanes
    ``x_pitch`` elements apart, of which the first C are used) by ``w4`` (k_lanes, C, KH, KW),
    k_lanes a multiple of 4 (rows past the real channels zero); out flat lanes (groups,
    ``k_held`` (even) planes of OH x OW x lanes), planes ``LANE_SKEW`` elements apart (zeros
    between), then ``slack`` zeros, written to ``y`` (of exactly that size). A task is one
    group of images and four output channels (a last block of two where ``k_held`` is not a
    multiple of four); each output element sums from the bias over channels, then taps in
    raster order. Only the rows and columns of ``xl`` in ``window`` (first row, end row, first
    column, end column) hold data, the rest padding: kernel rows on padding rows are skipped,
    and each group of taps runs over the output columns where one of its taps reads a data
    column (a transposed convolution's padded input is mostly padding). ``wide``: by
    :func:`_lane_conv_block_wide` (512-bit vectors), else by 256-bit loops."""
    oh_n, ow_n = out_size
    wf = w4.reshape(w4.size)
    plane = oh_n * ow_n * lanes + LANE_SKEW
    blocks = -(-k_held // 4)
    for i in range(y.size - slack, y.size):
        y[i] = 0
    for task in prange(groups * blocks):
        g, k0 = task // blocks, (task % blocks) * 4
        kc = min(4, k_held - k0)
        for i in range(kc):
            gap = (g * k_held + k0 + i + 1) * plane
            for j in range(gap - LANE_SKEW, gap):
                y[np.uintp(j)] = 0
        args = (xl, x_pitch, c_held, wf, bias4, g, k0, kc, c_in, size, w4.shape[2:], window,
                dilation, out_size, lanes, y, (g * k_held + k0) * plane, plane)
        if wide:
            _lane_conv_block_wide(*args)
        else:
            _lane_conv_block(*args)
    return y


@njit(**_jit)
def _lane_conv_nchw(xl, x_pitch, c_held, w4, bias4, k_out, c_in, size, window, dilation,
                    out_size, lanes, wide, scratch, y):
    """:func:`_lane_conv` with its output written straight to ``y`` (N, K, 1, OH, OW): each
    task computes its four channels into the row of ``scratch`` (threads, 4 planes) of the
    thread running it, then copies them out while they are in cache (LeNet c2's forward 1.49
    -> 1.31 ms against a separate pass over the whole lane output)."""
    n_batch = y.shape[0]
    oh_n, ow_n = out_size
    wf = w4.reshape(w4.size)
    yf = y.reshape(y.size)
    positions = oh_n * ow_n
    plane = positions * lanes + LANE_SKEW
    k_held, groups = k_out + k_out % 2, -(-n_batch // lanes)
    blocks = -(-k_held // 4)
    for task in prange(groups * blocks):
        g, k0 = task // blocks, (task % blocks) * 4
        kc = min(4, k_held - k0)
        s = scratch[get_thread_id()]
        args = (xl, x_pitch, c_held, wf, bias4, g, k0, kc, c_in, size, w4.shape[2:], window,
                dilation, out_size, lanes, s, 0, plane)
        if wide:
            _lane_conv_block_wide(*args)
        else:
            _lane_conv_block(*args)
        for i in range(min(kc, k_out - k0)):
            for b in range(min(lanes, n_batch - g * lanes)):
                dst = ((g * lanes + b) * k_out + k0 + i) * positions
                src = i * plane + b
                for p in range(positions):
                    yf[np.uintp(dst + p)] = s[np.uintp(src + p * lanes)]
    return y


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _lane_grad_taps(acc, gf, g0, pl, xf, xs, span, step):
    """``acc[3 * i + t] +=`` the dot product of gradient row ``g0 + i * pl`` with the input row
    at ``xs + t * step``, for four output channels ``i`` and three taps ``t``."""
    g1, g2, g3 = g0 + pl, g0 + 2 * pl, g0 + 3 * pl
    s00 = s01 = s02 = s10 = s11 = s12 = s20 = s21 = s22 = s30 = s31 = s32 = acc.dtype.type(0)
    for j in range(span):
        v, u = xf[np.uintp(xs + j)], xf[np.uintp(xs + step + j)]
        t = xf[np.uintp(xs + 2 * step + j)]
        e0, e1, e2, e3 = (gf[np.uintp(g0 + j)], gf[np.uintp(g1 + j)], gf[np.uintp(g2 + j)],
                          gf[np.uintp(g3 + j)])
        s00 += e0 * v
        s01 += e0 * u
        s02 += e0 * t
        s10 += e1 * v
        s11 += e1 * u
        s12 += e1 * t
        s20 += e2 * v
        s21 += e2 * u
        s22 += e2 * t
        s30 += e3 * v
        s31 += e3 * u
        s32 += e3 * t
    acc[0] += s00
    acc[1] += s01
    acc[2] += s02
    acc[3] += s10
    acc[4] += s11
    acc[5] += s12
    acc[6] += s20
    acc[7] += s21
    acc[8] += s22
    acc[9] += s30
    acc[10] += s31
    acc[11] += s32


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _lane_grad_taps_pair(acc, gf, g0, pl, xf, xs, span, step):
    """:func:`_lane_grad_taps` for two output channels (``acc[0:6]``)."""
    g1 = g0 + pl
    s00 = s01 = s02 = s10 = s11 = s12 = acc.dtype.type(0)
    for j in range(span):
        v, u = xf[np.uintp(xs + j)], xf[np.uintp(xs + step + j)]
        t = xf[np.uintp(xs + 2 * step + j)]
        e0, e1 = gf[np.uintp(g0 + j)], gf[np.uintp(g1 + j)]
        s00 += e0 * v
        s01 += e0 * u
        s02 += e0 * t
        s10 += e1 * v
        s11 += e1 * u
        s12 += e1 * t
    acc[0] += s00
    acc[1] += s01
    acc[2] += s02
    acc[3] += s10
    acc[4] += s11
    acc[5] += s12


@njit(cache=True, nogil=True)
def _lane_grad_taps_wide(sums, at, gf, g0, pl, kc, xf, xs, span, step):
    """:func:`_lane_grad_taps` (``kc`` = 4) or its pair form (``kc`` = 2) on explicit 512-bit
    vectors, the twelve sums kept as vectors: ``sums[at + (3 * i + t) * count:][:count]``,
    added to in memory, so that no call reduces across a vector."""
    vec = VECTOR_BYTES // xf.itemsize
    g1 = g0 + pl
    g2, g3 = (g0 + 2 * pl, g0 + 3 * pl) if kc == 4 else (g1, g1)  # the pair: 2, 3 unused
    s00, s01, s02 = _vload(sums, at), _vload(sums, at + vec), _vload(sums, at + 2 * vec)
    s10, s11 = _vload(sums, at + 3 * vec), _vload(sums, at + 4 * vec)
    s12, s20 = _vload(sums, at + 5 * vec), _vload(sums, at + 6 * vec)
    s21, s22 = _vload(sums, at + 7 * vec), _vload(sums, at + 8 * vec)
    s30, s31 = _vload(sums, at + 9 * vec), _vload(sums, at + 10 * vec)
    s32 = _vload(sums, at + 11 * vec)
    for j in range(0, span, vec):
        v, u = _vload(xf, xs + j), _vload(xf, xs + step + j)
        t = _vload(xf, xs + 2 * step + j)
        e = _vload(gf, g0 + j)
        s00, s01, s02 = _vfma(e, v, s00), _vfma(e, u, s01), _vfma(e, t, s02)
        e = _vload(gf, g1 + j)
        s10, s11, s12 = _vfma(e, v, s10), _vfma(e, u, s11), _vfma(e, t, s12)
        e = _vload(gf, g2 + j)
        s20, s21, s22 = _vfma(e, v, s20), _vfma(e, u, s21), _vfma(e, t, s22)
        e = _vload(gf, g3 + j)
        s30, s31, s32 = _vfma(e, v, s30), _vfma(e, u, s31), _vfma(e, t, s32)
    _vstore(sums, at, s00)
    _vstore(sums, at + vec, s01)
    _vstore(sums, at + 2 * vec, s02)
    _vstore(sums, at + 3 * vec, s10)
    _vstore(sums, at + 4 * vec, s11)
    _vstore(sums, at + 5 * vec, s12)
    _vstore(sums, at + 6 * vec, s20)
    _vstore(sums, at + 7 * vec, s21)
    _vstore(sums, at + 8 * vec, s22)
    _vstore(sums, at + 9 * vec, s30)
    _vstore(sums, at + 10 * vec, s31)
    _vstore(sums, at + 11 * vec, s32)


@njit(**_jit)
def _lane_weight_grad(xl, x_pitch, c_held, gl, g_pitch, k_held, groups, c_in, size,
                      dilation, kernel, lanes, wide):
    """Weight gradient (k_held rounded up to four, C, KH, KW; zeros past ``k_held``) of
    :func:`_lane_conv` from the flat lanes of its input ``xl`` (as there) and of the output
    gradient ``gl`` (``k_held`` (even) planes ``g_pitch`` elements apart per group). A task is
    four output channels (or a last two) and one input channel; each tap's sum runs group by
    group, row by row, in a fixed order. For each output row, the gradient rows are read once
    and stay in cache while every tap uses them (taking the taps outermost read them once per
    tap: ten times the memory traffic).

    Taps go three at a time: the third tap of a short last triple reads slack past the row,
    which ``xl`` must have (``2 * dilation[1] * lanes`` elements at its end) and is dropped.
    ``wide``: the sums run on explicit 512-bit vectors (:func:`_lane_grad_taps_wide`), each
    reduced across its vector once, at the end.
    """
    hp, wp = size
    kh, kw = kernel
    oh_n, ow_n = hp - dilation[0] * (kh - 1), wp - dilation[1] * (kw - 1)
    span = ow_n * lanes
    blocks = -(-k_held // 4)
    triples = -(-kw // 3)
    gw = np.zeros((blocks * 4, c_in, kh, kw), dtype=xl.dtype)
    for task in prange(blocks * c_in):
        k0, c = (task // c_in) * 4, task % c_in
        kc = min(4, k_held - k0)
        acc = np.zeros((kh, triples, 12), dtype=xl.dtype)
        vec = VECTOR_BYTES // xl.itemsize
        sums = np.zeros(kh * triples * 12 * vec if wide else 0, dtype=xl.dtype)
        for g in range(groups):
            for oh in range(oh_n):
                g0 = (g * k_held + k0) * g_pitch + oh * span
                for rh in range(kh):
                    row = (g * c_held + c) * x_pitch + (oh + rh * dilation[0]) * wp * lanes
                    for t3 in range(triples):
                        xs = row + 3 * t3 * dilation[1] * lanes
                        if wide:
                            _lane_grad_taps_wide(sums, (rh * triples + t3) * 12 * vec, gl, g0,
                                                 g_pitch, kc, xl, xs, span, dilation[1] * lanes)
                            continue
                        args = (acc[rh, t3], gl, g0, g_pitch, xl, xs, span, dilation[1] * lanes)
                        if kc == 2:
                            _lane_grad_taps_pair(*args)
                        else:
                            _lane_grad_taps(*args)
        if wide:
            flat = acc.reshape(acc.size)
            for i in range(acc.size):
                for e in range(vec):
                    flat[i] += sums[i * vec + e]
        for i in range(kc):
            for rh in range(kh):
                for rw in range(kw):
                    gw[k0 + i, c, rh, rw] = acc[rh, rw // 3, 3 * i + rw % 3]
    return gw


# Kernels for activations kept in the lane layout between layers (fastconv.nn): planes of
# (H, W, lanes), ``pitch`` elements apart, ``c_held`` planes per group of images.


@njit(**_jit)
def _lanes_padded(xl, pitch, planes, in_size, pad, size, lanes, slack, out):
    """Planes of ``xl`` copied into dense planes of ``size`` (H, W) with ``pad`` (top, left)
    rows and columns of zeros before them and zeros after, plus ``slack`` zeros at the end:
    ``out``, of ``planes * H * W * lanes + slack`` elements."""
    h_in, w_in = in_size
    hp, wp = size
    for i in range(out.size - slack, out.size):
        out[i] = 0
    lo, hi = _valid_range(wp, 1, -pad[1], w_in)
    for p in prange(planes):
        for i in range(hp):
            dst = (p * hp + i) * wp * lanes
            r = i - pad[0]
            if r < 0 or r >= h_in:
                for j in range(wp * lanes):
                    out[np.uintp(dst + j)] = 0
                continue
            src = p * pitch + (r * w_in + lo - pad[1]) * lanes
            for j in range(lo * lanes):
                out[np.uintp(dst + j)] = 0
            for j in range((hi - lo) * lanes):
                out[np.uintp(dst + lo * lanes + j)] = xl[np.uintp(src + j)]
            for j in range(hi * lanes, wp * lanes):
                out[np.uintp(dst + j)] = 0
    return out


@njit(**_jit)
def _lane_avg_pool_forward(xl, pitch, planes, in_size, kernel, stride, pad, out_size, divisor,
                           lanes, out_pitch, slack, y):
    """2-D average pooling of lane planes into planes ``out_pitch`` apart (zeros between, then
    ``slack`` zeros; ``y``, of ``planes * out_pitch + slack`` elements): each window's cells
    summed in raster order over all lanes at once, divided by ``divisor[oh, ow]``."""
    h_in, w_in = in_size
    oh_n, ow_n = out_size
    for i in range(y.size - slack, y.size):
        y[i] = 0
    for p in prange(planes):
        for i in range(p * out_pitch + oh_n * ow_n * lanes, (p + 1) * out_pitch):
            y[np.uintp(i)] = 0
        for oh in range(oh_n):
            for ow in range(ow_n):
                dst = p * out_pitch + (oh * ow_n + ow) * lanes
                for b in range(lanes):
                    y[np.uintp(dst + b)] = 0
                for rh in range(kernel[0]):
                    ih = oh * stride[0] - pad[0] + rh
                    if ih < 0 or ih >= h_in:
                        continue
                    for rw in range(kernel[1]):
                        iw = ow * stride[1] - pad[1] + rw
                        if iw < 0 or iw >= w_in:
                            continue
                        src = p * pitch + (ih * w_in + iw) * lanes
                        for b in range(lanes):
                            y[np.uintp(dst + b)] += xl[np.uintp(src + b)]
                d = divisor[oh, ow]
                for b in range(lanes):
                    y[np.uintp(dst + b)] /= d
    return y


@njit(**_jit)
def _lane_avg_pool_backward(gl, pitch, planes, out_size, kernel, stride, pad, in_size, divisor,
                            lanes, in_pitch, slack, sigmoid_out, gx):
    """The adjoint of :func:`_lane_avg_pool_forward` (input planes ``in_pitch`` apart, written
    to ``gx`` of ``planes * in_pitch + slack`` elements): each
    output cell's gradient over its divisor added to its window's cells, output cells in order
    (repeatable sums). Given the output of a sigmoid before the pooling (``sigmoid_out``, laid
    out as the input; empty for none), each plane is then multiplied by its derivative while it
    is in cache, as :func:`_sigmoid_backward` would."""
    h_in, w_in = in_size
    oh_n, ow_n = out_size
    for i in range(gx.size - slack, gx.size):
        gx[i] = 0
    for p in prange(planes):
        for i in range(p * in_pitch, (p + 1) * in_pitch):
            gx[np.uintp(i)] = 0
        for oh in range(oh_n):
            for ow in range(ow_n):
                src = p * pitch + (oh * ow_n + ow) * lanes
                d = divisor[oh, ow]
                for rh in range(kernel[0]):
                    ih = oh * stride[0] - pad[0] + rh
                    if ih < 0 or ih >= h_in:
                        continue
                    for rw in range(kernel[1]):
                        iw = ow * stride[1] - pad[1] + rw
                        if iw < 0 or iw >= w_in:
                            continue
                        dst = p * in_pitch + (ih * w_in + iw) * lanes
                        for b in range(lanes):
                            gx[np.uintp(dst + b)] += gl[np.uintp(src + b)] / d
        if sigmoid_out.size:
            for i in range(p * in_pitch, p * in_pitch + h_in * w_in * lanes):
                v = sigmoid_out[np.uintp(i)]
                gx[np.uintp(i)] = gx[np.uintp(i)] * v * (1 - v)
    return gx


@njit(cache=True, parallel=True, nogil=True, fastmath={"reassoc"})
def _lane_channel_sums(gl, pitch, c_held, groups, k_out, plane):
    """Per channel ``k < k_out``, the sum of its ``plane`` elements in every group (the bias
    gradient; lanes past the batch hold zeros), one channel per task."""
    gb = np.empty(k_out, dtype=gl.dtype)
    for k in prange(k_out):
        acc = 0.0
        for g in range(groups):
            start = (g * c_held + k) * pitch
            for i in range(start, start + plane):
                acc += gl[np.uintp(i)]
        gb[k] = acc
    return gb


# Element-wise kernels for fastconv.nn's activations: one pass over memory instead of NumPy's
# one per operation, on every thread.
_ELEMENT_CHUNK = 1 << 12
# 2**f on [-1/2, 1/2]: Taylor coefficients ln(2)**k / k!, k = 6 .. 0 (error below 2e-7)
_EXP2_COEFFS = (1.5403530393381609e-4, 1.3333558146428443e-3, 9.6181291076284772e-3,
                5.5504108664821580e-2, 2.4022650695910071e-1, 6.9314718055994531e-1, 1.0)


@njit(**_jit)
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


@njit(**_jit)
def _sigmoid_backward(y, gy, g):
    """``g = gy * y * (1 - y)``, flat, in one pass."""
    n = y.size
    for t in prange(-(-n // _ELEMENT_CHUNK)):
        for i in range(t * _ELEMENT_CHUNK, min(n, (t + 1) * _ELEMENT_CHUNK)):
            v = y[np.uintp(i)]
            g[np.uintp(i)] = gy[np.uintp(i)] * v * (1 - v)
    return g

def _bias_array(bias, dtype):
    """The bias as the kernels take it: contiguous, and empty for none."""
    return np.empty(0, dtype) if bias is None else np.ascontiguousarray(bias)
