"""Direct convolution kernels: the banded ``prange`` kernels (forward, transposed, weight
gradient), the register-blocked forward, the exact weight gradient of a non-finite
``grad_output``, the bias gradient, and the finiteness check.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _numba_cache  # noqa: F401  (first: the kernels' cache stamp)
from ._numba_band import _band_geometry, _band_height, _fill_band, _jit, _tap_start, _valid_range
from ._numba_simd import VECTOR_BYTES, _vfma, _vload, _vsplat, _vstore


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
@njit(**_jit)
def _transposed_as_conv_weights(w, groups, out):
    """A transposed convolution's weights ``w`` ``(groups * cig, cog, taps)`` as the weights of
    the convolution it is at stride 1, into ``out`` ``(groups * cog, cig, taps)``: the kernel
    flipped and the two channel axes swapped per group. Tasks of 16 output rows, which read
    16 contiguous kernels at a time (NumPy's copy of the flipped, transposed view ran at 2-3
    GB/s; one row per task read one float per cache line for a 1x1 kernel)."""
    c_in, cog, taps = w.shape
    cig = c_in // groups
    blocks = (cog + 15) // 16
    wf = w.reshape(w.size)
    of = out.reshape(out.size)
    for task in prange(groups * blocks):
        g, co0 = task // blocks, (task % blocks) * 16
        for ci in range(cig):
            for co in range(co0, min(cog, co0 + 16)):
                src = ((g * cig + ci) * cog + co) * taps + taps - 1
                dst = ((g * cog + co) * cig + ci) * taps
                for t in range(taps):
                    of[np.uintp(dst + t)] = wf[np.uintp(src - t)]
    return out


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


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _frame_finite(g, p0, p1, lo, hi):
    """Whether planes ``p0:p1`` of ``g`` (planes, D, H, W) are finite outside the box
    ``lo:hi`` (per axis): whole rows where depth or row is outside it, else only the
    columns outside it. (:func:`_all_finite`'s sum of ``v - v``, on the frame only.)"""
    acc = g[p0, 0, 0, 0] - g[p0, 0, 0, 0] if p1 > p0 else 0.0
    d_n, h_n, w_n = g.shape[1:]
    for p in range(p0, p1):
        for d in range(d_n):
            for h in range(h_n):
                if d < lo[0] or d >= hi[0] or h < lo[1] or h >= hi[1]:
                    for w in range(w_n):
                        acc += g[p, d, h, w] - g[p, d, h, w]
                else:
                    for w in range(lo[2]):
                        acc += g[p, d, h, w] - g[p, d, h, w]
                    for w in range(hi[2], w_n):
                        acc += g[p, d, h, w] - g[p, d, h, w]
    return acc == 0


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _all_finite(flat, start, stop):
    """Whether every element of ``flat[start:stop]`` is finite. ``v - v`` is 0 for a finite
    ``v`` and NaN otherwise, so the sum of it is 0 exactly when all are finite: a sum that
    vectorises (reassoc lets it; without ``nnan`` LLVM may not fold ``v - v`` to 0)."""
    if stop <= start:
        return True
    acc = flat[np.uintp(start)] - flat[np.uintp(start)]  # a sum in the array's dtype
    for i in range(start + 1, stop):
        v = flat[np.uintp(i)]
        acc += v - v
    return acc == 0


@njit(**_jit)
def _all_finite_parallel(flat, threads):
    """:func:`_all_finite` over all of ``flat``, a contiguous range per thread."""
    finite = np.empty(threads, dtype=np.bool_)
    for part in prange(threads):
        finite[part] = _all_finite(flat, flat.size * part // threads,
                                   flat.size * (part + 1) // threads)
    return finite.all()


@njit(**_jit)
def _frame_finite_parallel(g, lo, hi, threads):
    """:func:`_frame_finite` over all planes of ``g``, a contiguous range of planes per
    thread."""
    planes = g.shape[0]
    finite = np.empty(threads, dtype=np.bool_)
    for part in prange(threads):
        finite[part] = _frame_finite(g, planes * part // threads,
                                     planes * (part + 1) // threads, lo, hi)
    return finite.all()


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
