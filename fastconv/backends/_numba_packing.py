"""Packing kernels of the GEMM path: im2col / col2im and the copies of GEMM operands and
results.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _numba_cache  # noqa: F401  (first: the kernels' cache stamp)
from ._numba_band import _jit, _valid_range

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


def _bias_array(bias, dtype):
    """The bias as the kernels take it: contiguous, and empty for none."""
    return np.empty(0, dtype) if bias is None else np.ascontiguousarray(bias)


# --------------------------------------------------------------------------- output phases
# A strided transposed convolution is computed as one stride-1 convolution per output phase
# (numba_cpu._phases); this kernel puts each phase's result in its place.


@njit(**_jit)
def _put_phase(part, bias, y, start, stride):
    """``y[:, :, start[0]::stride[0], start[1]::stride[1], start[2]::stride[2]] = part``,
    one (image, channel) plane per task; an empty ``part`` (a phase no tap reaches) writes
    the bias there, or zeros."""
    n_batch, channels = y.shape[0], y.shape[1]
    od_n, oh_n, ow_n = y.shape[2], y.shape[3], y.shape[4]
    qd_n = (od_n - start[0] + stride[0] - 1) // stride[0]
    qh_n = (oh_n - start[1] + stride[1] - 1) // stride[1]
    qw_n = (ow_n - start[2] + stride[2] - 1) // stride[2]
    sw = stride[2]
    pf = part.reshape(part.size)
    yf = y.reshape(y.size)
    for plane in prange(n_batch * channels):
        value = bias[plane % channels] if bias.size else y.dtype.type(0)
        for qd in range(qd_n):
            for qh in range(qh_n):
                src = ((plane * qd_n + qd) * qh_n + qh) * qw_n
                dst = ((plane * od_n + start[0] + qd * stride[0]) * oh_n
                       + start[1] + qh * stride[1]) * ow_n + start[2]
                if pf.size:
                    for q in range(qw_n):
                        yf[np.uintp(dst + q * sw)] = pf[np.uintp(src + q)]
                else:
                    for q in range(qw_n):
                        yf[np.uintp(dst + q * sw)] = value
