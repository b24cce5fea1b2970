"""Batch-lane kernels, for many small images with few channels.
"""

from __future__ import annotations

import numpy as np
from numba import get_thread_id, njit, prange

from . import _numba_cache  # noqa: F401  (first: the kernels' cache stamp)
from ._numba_band import _jit_o2, _valid_range
from ._numba_simd import VECTOR_BYTES, _vfma, _vload, _vsplat, _vstore

# Batch-lane kernels, for many small images. The input is copied with the batch innermost, in
# groups of ``lanes`` images: (groups, C, H, W, lanes), padded. Then at stride 1 a kernel row
# applied to an output row is one contiguous multiply-add over ``OW * lanes`` elements, however
# narrow the image, and four output channels share each load.

# The output planes of _lane_conv lie this many elements further apart than their size: four
# rows a multiple of 4 KiB apart made each store stall the next row's loads (LeNet c1's planes
# are 196 KiB; its lane kernel 0.80 -> 0.56 ms with the skew).
LANE_SKEW = 64


@njit(**_jit_o2)
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


@njit(**_jit_o2)
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


# Each kernel that runs the 256-bit block loops has a ``_wide`` twin that runs the explicit
# 512-bit ones (on AVX-512 CPUs; ``_numba_lanes.lane_kernel`` picks). Two kernels rather than a
# flag: Numba compiles every function a kernel calls, taken or not, and the block loops not
# taken cost 4.7 of the 17 s that LeNet's first step spent compiling.


@njit(cache=True, nogil=True)
def _lane_conv_task(task, blocks, k_held, plane, xl, x_pitch, c_held, wf, bias4, c_in, size,
                    kernel, window, dilation, out_size, lanes, y):
    """Task ``task`` of :func:`_lane_conv`: zeros the gaps after its planes of ``y`` and
    returns the arguments of its block call."""
    g, k0 = task // blocks, (task % blocks) * 4
    kc = min(4, k_held - k0)
    for i in range(kc):
        gap = (g * k_held + k0 + i + 1) * plane
        for j in range(gap - LANE_SKEW, gap):
            y[np.uintp(j)] = 0
    return (xl, x_pitch, c_held, wf, bias4, g, k0, kc, c_in, size, kernel, window, dilation,
            out_size, lanes, y, (g * k_held + k0) * plane, plane)


@njit(cache=True, nogil=True)
def _lane_conv_start(w4, k_held, out_size, lanes, slack, y):
    """The flat weights, plane pitch and task blocks of :func:`_lane_conv`; zeros the slack."""
    for i in range(y.size - slack, y.size):
        y[i] = 0
    return w4.reshape(w4.size), out_size[0] * out_size[1] * lanes + LANE_SKEW, -(-k_held // 4)


@njit(**_jit_o2)
def _lane_conv(xl, x_pitch, c_held, w4, bias4, k_held, groups, c_in, size, window, dilation,
               out_size, lanes, slack, y):
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
    column (a transposed convolution's padded input is mostly padding). By 256-bit loops
    (:func:`_lane_conv_block`); :func:`_lane_conv_wide` by 512-bit vectors."""
    wf, plane, blocks = _lane_conv_start(w4, k_held, out_size, lanes, slack, y)
    for task in prange(groups * blocks):
        _lane_conv_block(*_lane_conv_task(task, blocks, k_held, plane, xl, x_pitch, c_held, wf,
                                          bias4, c_in, size, w4.shape[2:], window, dilation,
                                          out_size, lanes, y))
    return y


@njit(**_jit_o2)
def _lane_conv_wide(xl, x_pitch, c_held, w4, bias4, k_held, groups, c_in, size, window,
                    dilation, out_size, lanes, slack, y):
    """:func:`_lane_conv` by :func:`_lane_conv_block_wide` (explicit 512-bit vectors)."""
    wf, plane, blocks = _lane_conv_start(w4, k_held, out_size, lanes, slack, y)
    for task in prange(groups * blocks):
        _lane_conv_block_wide(*_lane_conv_task(task, blocks, k_held, plane, xl, x_pitch, c_held,
                                               wf, bias4, c_in, size, w4.shape[2:], window,
                                               dilation, out_size, lanes, y))
    return y


@njit(cache=True, nogil=True)
def _lane_nchw_start(w4, k_out, out_size, lanes, y):
    """The flat weights, plane pitch, channels held, task blocks and image groups of
    :func:`_lane_conv_nchw`."""
    k_held = k_out + k_out % 2
    return (w4.reshape(w4.size), out_size[0] * out_size[1] * lanes + LANE_SKEW, k_held,
            -(-k_held // 4), -(-y.shape[0] // lanes))


@njit(cache=True, nogil=True)
def _lane_nchw_task(task, blocks, k_held, plane, xl, x_pitch, c_held, wf, bias4, c_in, size,
                    kernel, window, dilation, out_size, lanes, scratch):
    """The arguments of task ``task``'s block call in :func:`_lane_conv_nchw`: its four
    channels go to the row of ``scratch`` of the thread running it."""
    g, k0 = task // blocks, (task % blocks) * 4
    return (xl, x_pitch, c_held, wf, bias4, g, k0, min(4, k_held - k0), c_in, size, kernel,
            window, dilation, out_size, lanes, scratch[get_thread_id()], 0, plane)


@njit(cache=True, nogil=True)
def _lane_nchw_store(s, g, k0, kc, plane, lanes, k_out, y):
    """Copies a task's channels from its scratch row ``s`` to ``y`` (N, K, 1, OH, OW)."""
    n_batch = y.shape[0]
    positions = y.shape[3] * y.shape[4]
    yf = y.reshape(y.size)
    for i in range(min(kc, k_out - k0)):
        for b in range(min(lanes, n_batch - g * lanes)):
            dst = ((g * lanes + b) * k_out + k0 + i) * positions
            src = i * plane + b
            for p in range(positions):
                yf[np.uintp(dst + p)] = s[np.uintp(src + p * lanes)]


@njit(**_jit_o2)
def _lane_conv_nchw(xl, x_pitch, c_held, w4, bias4, k_out, c_in, size, window, dilation,
                    out_size, lanes, scratch, y):
    """:func:`_lane_conv` with its output written straight to ``y`` (N, K, 1, OH, OW): each
    task computes its four channels into the row of ``scratch`` (threads, 4 planes) of the
    thread running it, then copies them out while they are in cache (LeNet c2's forward 1.49
    -> 1.31 ms against a separate pass over the whole lane output)."""
    wf, plane, k_held, blocks, groups = _lane_nchw_start(w4, k_out, out_size, lanes, y)
    for task in prange(groups * blocks):
        args = _lane_nchw_task(task, blocks, k_held, plane, xl, x_pitch, c_held, wf, bias4, c_in,
                               size, w4.shape[2:], window, dilation, out_size, lanes, scratch)
        _lane_conv_block(*args)
        _lane_nchw_store(args[15], args[5], args[6], args[7], plane, lanes, k_out, y)
    return y


@njit(**_jit_o2)
def _lane_conv_nchw_wide(xl, x_pitch, c_held, w4, bias4, k_out, c_in, size, window, dilation,
                         out_size, lanes, scratch, y):
    """:func:`_lane_conv_nchw` by :func:`_lane_conv_block_wide` (explicit 512-bit vectors)."""
    wf, plane, k_held, blocks, groups = _lane_nchw_start(w4, k_out, out_size, lanes, y)
    for task in prange(groups * blocks):
        args = _lane_nchw_task(task, blocks, k_held, plane, xl, x_pitch, c_held, wf, bias4, c_in,
                               size, w4.shape[2:], window, dilation, out_size, lanes, scratch)
        _lane_conv_block_wide(*args)
        _lane_nchw_store(args[15], args[5], args[6], args[7], plane, lanes, k_out, y)
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


@njit(cache=True, nogil=True)
def _lane_grad_task(xl, x_pitch, c_held, gl, g_pitch, k_held, groups, size, dilation, kernel,
                    lanes, k0, c):
    """The sums of one task of :func:`_lane_weight_grad` (output channels ``k0 .. k0 + 4``,
    input channel ``c``) by 256-bit loops: (KH, taps in triples, 12), in a fixed order."""
    wp = size[1]
    kh, kw = kernel
    oh_n, ow_n = size[0] - dilation[0] * (kh - 1), wp - dilation[1] * (kw - 1)
    span, triples = ow_n * lanes, -(-kw // 3)
    kc = min(4, k_held - k0)
    acc = np.zeros((kh, triples, 12), dtype=xl.dtype)
    for g in range(groups):
        for oh in range(oh_n):
            g0 = (g * k_held + k0) * g_pitch + oh * span
            for rh in range(kh):
                row = (g * c_held + c) * x_pitch + (oh + rh * dilation[0]) * wp * lanes
                for t3 in range(triples):
                    args = (acc[rh, t3], gl, g0, g_pitch, xl, row + 3 * t3 * dilation[1] * lanes,
                            span, dilation[1] * lanes)
                    if kc == 2:
                        _lane_grad_taps_pair(*args)
                    else:
                        _lane_grad_taps(*args)
    return acc


@njit(cache=True, nogil=True)
def _lane_grad_task_wide(xl, x_pitch, c_held, gl, g_pitch, k_held, groups, size, dilation,
                         kernel, lanes, k0, c):
    """:func:`_lane_grad_task` on explicit 512-bit vectors (:func:`_lane_grad_taps_wide`),
    each sum reduced across its vector once, at the end."""
    wp = size[1]
    kh, kw = kernel
    oh_n, ow_n = size[0] - dilation[0] * (kh - 1), wp - dilation[1] * (kw - 1)
    span, triples = ow_n * lanes, -(-kw // 3)
    kc = min(4, k_held - k0)
    acc = np.zeros((kh, triples, 12), dtype=xl.dtype)
    vec = VECTOR_BYTES // xl.itemsize
    sums = np.zeros(kh * triples * 12 * vec, dtype=xl.dtype)
    for g in range(groups):
        for oh in range(oh_n):
            g0 = (g * k_held + k0) * g_pitch + oh * span
            for rh in range(kh):
                row = (g * c_held + c) * x_pitch + (oh + rh * dilation[0]) * wp * lanes
                for t3 in range(triples):
                    _lane_grad_taps_wide(sums, (rh * triples + t3) * 12 * vec, gl, g0, g_pitch,
                                         kc, xl, row + 3 * t3 * dilation[1] * lanes, span,
                                         dilation[1] * lanes)
    flat = acc.reshape(acc.size)
    for i in range(acc.size):
        for e in range(vec):
            flat[i] += sums[i * vec + e]
    return acc


@njit(cache=True, nogil=True)
def _lane_grad_store(gw, acc, k0, c, kc):
    """A task's sums (see :func:`_lane_grad_task`) into ``gw``'s taps."""
    kh, kw = gw.shape[2:]
    for i in range(kc):
        for rh in range(kh):
            for rw in range(kw):
                gw[k0 + i, c, rh, rw] = acc[rh, rw // 3, 3 * i + rw % 3]


@njit(**_jit_o2)
def _lane_weight_grad(xl, x_pitch, c_held, gl, g_pitch, k_held, groups, c_in, size,
                      dilation, kernel, lanes):
    """Weight gradient (k_held rounded up to four, C, KH, KW; zeros past ``k_held``) of
    :func:`_lane_conv` from the flat lanes of its input ``xl`` (as there) and of the output
    gradient ``gl`` (``k_held`` (even) planes ``g_pitch`` elements apart per group). A task is
    four output channels (or a last two) and one input channel; each tap's sum runs group by
    group, row by row, in a fixed order. For each output row, the gradient rows are read once
    and stay in cache while every tap uses them (taking the taps outermost read them once per
    tap: ten times the memory traffic).

    Taps go three at a time: the third tap of a short last triple reads slack past the row,
    which ``xl`` must have (``2 * dilation[1] * lanes`` elements at its end) and is dropped.
    By 256-bit loops; :func:`_lane_weight_grad_wide` by 512-bit vectors.
    """
    blocks = -(-k_held // 4)
    gw = np.zeros((blocks * 4, c_in, kernel[0], kernel[1]), dtype=xl.dtype)
    for task in prange(blocks * c_in):
        k0, c = (task // c_in) * 4, task % c_in
        acc = _lane_grad_task(xl, x_pitch, c_held, gl, g_pitch, k_held, groups, size, dilation,
                              kernel, lanes, k0, c)
        _lane_grad_store(gw, acc, k0, c, min(4, k_held - k0))
    return gw


@njit(**_jit_o2)
def _lane_weight_grad_wide(xl, x_pitch, c_held, gl, g_pitch, k_held, groups, c_in, size,
                           dilation, kernel, lanes):
    """:func:`_lane_weight_grad` by :func:`_lane_grad_task_wide` (explicit 512-bit vectors)."""
    blocks = -(-k_held // 4)
    gw = np.zeros((blocks * 4, c_in, kernel[0], kernel[1]), dtype=xl.dtype)
    for task in prange(blocks * c_in):
        k0, c = (task // c_in) * 4, task % c_in
        acc = _lane_grad_task_wide(xl, x_pitch, c_held, gl, g_pitch, k_held, groups, size,
                                   dilation, kernel, lanes, k0, c)
        _lane_grad_store(gw, acc, k0, c, min(4, k_held - k0))
    return gw


# Kernels for activations kept in the lane layout between layers (fastconv.nn): planes of
# (H, W, lanes), ``pitch`` elements apart, ``c_held`` planes per group of images.


@njit(**_jit_o2)
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


@njit(**_jit_o2)
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


@njit(**_jit_o2)
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


@njit(**_jit_o2, fastmath={"reassoc"})
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
