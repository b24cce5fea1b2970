"""Winograd kernels: the channels-last copies and the tile transforms of F(4x4, 3x3).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _numba_cache  # noqa: F401  (first: the kernels' cache stamp)
from ._numba_band import _jit, _valid_range
from ._numba_blas import NO_TRANSPOSE, _gemm
from ._numba_simd import VECTOR_BYTES, _vector_scratch, _vfma, _vload, _vsplat, _vstore

# ------------------------------------------------------------------ Winograd forward
# Winograd F(4x4, 3x3), channels last, for the forward pass. A task copies the input slices it
# needs to a padded (slices, H, W, C) block. Then every transform step is a sum of a few channel
# vectors scaled by the transform's coefficients, one contiguous loop over channels per
# transformed element: loops that LLVM vectorises (a loop storing to one array and loading from
# at most five stays within its alias checks). The transforms (Lavin & Gray, 2016) are sparse:
# each row of B^T has at most four nonzero entries and each row of A^T at most five; the
# kernels take them as index and coefficient tables (see _numba_winograd), the coefficients in
# the data's dtype so that nothing is promoted to float64.


@njit(**_jit)
def _f43_weights(w, g_mat, u):
    """``u[g, r * cg + c, (i, j), k] = (G w[g * kg + k, c, r] G^T)[i, j]`` for the 3x3 taps
    of every filter (``w`` ``(K, cg, kd * 9)``, ``G`` ``g_mat``), in ``u``'s dtype: per
    point ``(i, j)`` a GEMM operand whose rows are ``36 * kg`` elements apart. A task is one
    group, depth tap and input channel (:func:`_f43_channel`)."""
    groups, kdcg = u.shape[0], u.shape[1]
    for task in prange(groups * kdcg):
        _f43_channel(w, g_mat, u, task // kdcg, task % kdcg)
    return u


@njit(cache=True, nogil=True)
def _f43_channel(w, g_mat, u, g, rc):
    """:func:`_f43_weights` for group ``g`` and row ``rc`` (depth tap ``r``, channel ``c``):
    its filters' nine taps gathered into a row per tap (filters innermost), then per vector
    of filters ``G w`` and ``(G w) G^T`` in registers (:func:`_g_rows`), 36 vector stores
    into one contiguous run. (A float64 BLAS product with transposed copies of the weights
    took 5.3 ms for 256 x 256 channels; a pass over the filters per row of ``G w`` in
    float64, 0.46 ms, and for 512 x 512 7.0; this 0.29 and 3.7. With the points outermost,
    a task's 36 rows lay a multiple of 4 KB apart, in one set of the L1 cache: 512 x 1024
    channels took 5 ms in some processes, 16 in others.)"""
    kdcg, kg = u.shape[1], u.shape[3]
    cg = w.shape[1]
    kd = kdcg // cg
    c, r = rc % cg, rc // cg
    vec = VECTOR_BYTES // u.itemsize
    padded = (kg + vec - 1) // vec * vec
    wf, uf = w.reshape(w.size), u.reshape(u.size)
    taps = _vector_scratch(9 * padded, u)
    last = _vector_scratch(36 * vec, u)  # the last, partial vector of filters
    zero = _vsplat(0, taps)
    for k in range(kg):
        src = ((g * kg + k) * cg + c) * kd * 9 + r * 9
        for t in range(9):
            taps[t * padded + k] = wf[np.uintp(src + t)]
    for k in range(kg, padded):
        for t in range(9):
            taps[t * padded + k] = 0
    row = (g * kdcg + rc) * 36 * kg  # point 0's row; the next point's kg further
    for k0 in range(0, kg, vec):
        # (G w)'s rows: G on each column (taps s, 3 + s, 6 + s) of the 3x3 kernel
        ga = _g_rows(g_mat, _vload(taps, k0), _vload(taps, 3 * padded + k0),
                     _vload(taps, 6 * padded + k0), zero)
        gb = _g_rows(g_mat, _vload(taps, padded + k0), _vload(taps, 4 * padded + k0),
                     _vload(taps, 7 * padded + k0), zero)
        gc = _g_rows(g_mat, _vload(taps, 2 * padded + k0), _vload(taps, 5 * padded + k0),
                     _vload(taps, 8 * padded + k0), zero)
        whole = k0 + vec <= kg
        out, at, step = (uf, row + k0, kg) if whole else (last, 0, vec)
        _u_row(g_mat, ga[0], gb[0], gc[0], zero, out, at, step)
        _u_row(g_mat, ga[1], gb[1], gc[1], zero, out, at + 6 * step, step)
        _u_row(g_mat, ga[2], gb[2], gc[2], zero, out, at + 12 * step, step)
        _u_row(g_mat, ga[3], gb[3], gc[3], zero, out, at + 18 * step, step)
        _u_row(g_mat, ga[4], gb[4], gc[4], zero, out, at + 24 * step, step)
        _u_row(g_mat, ga[5], gb[5], gc[5], zero, out, at + 30 * step, step)
        if not whole:
            for p in range(36):
                for k in range(kg - k0):
                    uf[np.uintp(row + p * kg + k0 + k)] = last[p * vec + k]


@njit(cache=True, inline="always")
def _g_rows(g_mat, a, b, c, zero):
    """``G (a, b, c)^T``: the six rows of ``G`` on three vectors."""
    return (_g_row(g_mat, 0, a, b, c, zero), _g_row(g_mat, 1, a, b, c, zero),
            _g_row(g_mat, 2, a, b, c, zero), _g_row(g_mat, 3, a, b, c, zero),
            _g_row(g_mat, 4, a, b, c, zero), _g_row(g_mat, 5, a, b, c, zero))


@njit(cache=True, inline="always")
def _g_row(g_mat, i, a, b, c, zero):
    """Row ``i`` of ``G`` on three vectors."""
    return _vfma(g_mat[i, 0], a, _vfma(g_mat[i, 1], b, _vfma(g_mat[i, 2], c, zero)))


@njit(cache=True, inline="always")
def _u_row(g_mat, a, b, c, zero, out, at, step):
    """Row ``i`` of ``(G w) G^T`` from row ``i`` of ``G w`` (``a``, ``b``, ``c``): its six
    vectors to ``out[at + j * step]``."""
    _vstore(out, at, _g_row(g_mat, 0, a, b, c, zero))
    _vstore(out, at + step, _g_row(g_mat, 1, a, b, c, zero))
    _vstore(out, at + 2 * step, _g_row(g_mat, 2, a, b, c, zero))
    _vstore(out, at + 3 * step, _g_row(g_mat, 3, a, b, c, zero))
    _vstore(out, at + 4 * step, _g_row(g_mat, 4, a, b, c, zero))
    _vstore(out, at + 5 * step, _g_row(g_mat, 5, a, b, c, zero))


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
def _winograd43_input(xb, step, rows, cols, c0, cg, idx, coef, v, t0):
    """``v[(i, j), t0 + t, s * cg + c] = (B^T d B)[i, j]``, ``d`` the 6x6 patch of channel
    ``c0 + c`` of slice ``s`` of the block ``xb`` that tile ``t`` reads.

    Tile ``t`` is (``rows[t // cols.size]``, ``cols[t % cols.size]``): the block position of
    its first input, whose patch takes every ``step``-th row and column (the dilation).
    """
    slices, hp, wp, c_all = xb.shape
    n_cols = cols.size
    n_tiles, width = rows.size * n_cols, v.shape[2]
    plane = v.shape[1] * width
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
            o = (t0 + t) * width + s * cg
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
def _winograd43_output(m, step, rows, cols, out_size, k0, idx, coef, yb, t0):
    """``yb[4 * tr + a, ow, k0 + k] = (A^T M A)[a, b]`` for tile ``t`` (tile row ``tr``),
    ``M = m[:, t0 + t, k]``, at output column ``ow = cols[..] + b * step[1]``; rows and
    columns past ``out_size`` (output rows ``rows[tr] + a * step[0]``) are left out."""
    kg = m.shape[2]
    out_w, k_all = yb.shape[1], yb.shape[2]
    n_cols = cols.size
    n_tiles = rows.size * n_cols
    plane = m.shape[1] * kg
    mf = m.reshape(m.size)
    yf = yb.reshape(yb.size)
    s = np.empty(24 * kg, dtype=m.dtype)  # A^T M: s[a, j, k]
    for t in range(n_tiles):
        tr = t // n_cols
        col = cols[t % n_cols]
        q = (t0 + t) * kg
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


@njit(**_jit)
def _winograd43(blas, x, u, bias, pad, dilation, out_size, tasks, row_starts, cols, wp,
                in_idx, in_coef, out_idx, out_coef, threads, x_copy, v_copy, m_copy, y_copy, y):
    """F(4x4, 3x3) over tasks ``(n, od0, od1, s0, s1)``: image ``n``, output depth slices
    ``od0:od1``, the tiles of rows ``row_starts[s0:s1]`` (of one class modulo the dilation)
    and columns ``cols`` (copied ``wp`` columns wide). Per group, the input tiles transformed
    (``v``), then per output slice 36 GEMMs with the transformed weights ``u`` (groups,
    kd x cg, 36, kg) into ``m``, whose output transform fills a channels-last block of ``y``
    (``yb``), put back with the bias at the end. The ``*_copy`` arrays hold one workspace row
    per thread."""
    c_in = x.shape[1]
    groups, kdcg, kg = u.shape[0], u.shape[1], u.shape[3]
    cg = c_in // groups
    kd = kdcg // cg
    k_out, w_out = y.shape[1], y.shape[4]
    step = (dilation[1], dilation[2])
    uf = u.reshape(u.size)
    for slot in prange(threads):
        for t in range(slot, tasks.shape[0], threads):
            n, od0, od1, s0, s1 = tasks[t, 0], tasks[t, 1], tasks[t, 2], tasks[t, 3], tasks[t, 4]
            rows = row_starts[s0:s1]
            r0 = rows[0]
            hp = (rows[rows.size - 1] - r0) // step[0] + 6
            slices = od1 - od0 - 1 + kd
            xb = x_copy[slot][:slices * hp * wp * c_in].reshape((slices, hp, wp, c_in))
            _channels_last(x, n, od0 - pad[0], dilation[0], r0, step[0], pad[1], pad[2], xb)
            n_tiles = rows.size * cols.size
            width = slices * cg
            v = v_copy[slot][:36 * n_tiles * width].reshape((36, n_tiles, width))
            m = m_copy[slot][:36 * n_tiles * kg].reshape((36, n_tiles, kg))
            yb = y_copy[slot][:(od1 - od0) * 4 * rows.size * w_out * k_out].reshape(
                (od1 - od0, 4 * rows.size, w_out, k_out))
            vf, mf = v.reshape(v.size), m.reshape(m.size)
            tile_rows = (rows - r0) // step[0]
            for g in range(groups):
                _winograd43_input(xb, (1, step[1]), tile_rows, cols, g * cg, cg, in_idx,
                                  in_coef, v, 0)
                for od in range(od0, od1):
                    lo = (od - od0) * cg
                    for i in range(36):
                        _gemm(blas, NO_TRANSPOSE, NO_TRANSPOSE, n_tiles, kg, kd * cg,
                              vf[i * n_tiles * width + lo:], width,
                              uf[(g * kdcg * 36 + i) * kg:], 36 * kg, 0.0,
                              mf[i * n_tiles * kg:], kg)
                    _winograd43_output(m, step, rows, cols, (out_size[1], out_size[2]),
                                       g * kg, out_idx, out_coef, yb[od - od0], 0)
            for od in range(od0, od1):
                _channels_first(yb[od - od0], rows, step[0], bias, y, n, od)


# ------------------------------------------------------- Winograd by blocks of filters
# The same transforms in another order, for calls whose transformed kernel outweighs their
# transformed input (many channels, few tiles: ResNet-18's 512 channels at 7x7): every tile of
# the batch transformed once into one matrix per point, then per block of filters the
# kernel's transform (small enough to stay in the cache) and 36 GEMMs over all the tiles, a
# point per task, then the block's output transform. Each transformed value is written and
# read once; the tasks above read the whole transformed kernel once per task.


@njit(**_jit)
def _winograd43_tiles_in(x, pad, th, tw, idx, coef, threads, x_copy, v):
    """``v`` ``(36, N * th * tw, C)``: the input transform of every 4x4 output tile (``th``
    x ``tw`` per image, image by image, rows first) of the 2-D ``x`` ``(N, C, 1, H, W)``
    padded by ``pad``. A task is one row of tiles, its six input rows copied channels last
    into its thread's row of ``x_copy`` first."""
    n_b, c_in = x.shape[0], x.shape[1]
    wp = 4 * tw + 2
    rows = np.zeros(1, dtype=np.int64)
    cols = np.arange(0, 4 * tw, 4)
    for slot in prange(threads):
        for task in range(slot, n_b * th, threads):
            n, tr = task // th, task % th
            xb = x_copy[slot][:6 * wp * c_in].reshape((1, 6, wp, c_in))
            _channels_last(x, n, -pad[0], 1, 4 * tr, 1, pad[1], pad[2], xb)
            _winograd43_input(xb, (1, 1), rows, cols, 0, c_in, idx, coef, v, task * tw)
    return v


@njit(**_jit)
def _winograd43_filter_blocks(blas, v, w, g_mat, groups, blocks, th, tw, out_size, idx, coef,
                              threads, u_copy, m_copy, yb):
    """Per group and each of its ``blocks`` blocks of filters (near-equal; a task each, the
    tasks dealt round the threads): the block's kernel transform (:func:`_f43_channel`) into
    its thread's row of ``u_copy``, 36 GEMMs of ``v`` ``(36, N * th * tw, C)``
    (:func:`_winograd43_tiles_in`) with it into the thread's row of ``m_copy``, on BLAS on the
    thread, and their output transform into the block's filters of ``yb`` ``(N, 4 * th, OW,
    K)``, channels last. One launch for them all: a launch per block and step left each
    waiting on the threads' wake-up, 60 of them a call (twice the time in some processes)."""
    n_tiles, c_all = v.shape[1], v.shape[2]
    k_out, cg = w.shape[0], w.shape[1]
    kg = k_out // groups
    n_b = yb.shape[0]
    cols = np.arange(0, 4 * tw, 4)
    vf = v.reshape(v.size)
    for slot in prange(threads):
        rows = np.zeros(1, dtype=np.int64)  # the thread's own
        for task in range(slot, groups * blocks, threads):
            g, b = task // blocks, task % blocks
            k0 = g * kg + b * kg // blocks
            kb = g * kg + (b + 1) * kg // blocks - k0
            u = u_copy[slot][:cg * 36 * kb].reshape((1, cg, 36, kb))
            for c in range(cg):
                _f43_channel(w[k0:k0 + kb], g_mat, u, 0, c)
            uf = u.reshape(u.size)
            m = m_copy[slot][:36 * n_tiles * kb].reshape((36, n_tiles, kb))
            mf = m.reshape(m.size)
            for i in range(36):
                _gemm(blas, NO_TRANSPOSE, NO_TRANSPOSE, n_tiles, kb, cg,
                      vf[i * n_tiles * c_all + g * cg:], c_all, uf[i * kb:], 36 * kb, 0.0,
                      mf[i * n_tiles * kb:], kb)
            for n in range(n_b):
                for tr in range(th):
                    rows[0] = 4 * tr
                    _winograd43_output(m, (1, 1), rows, cols, out_size, k0, idx, coef,
                                       yb[n, 4 * tr:4 * tr + 4], (n * th + tr) * tw)
    return yb


@njit(**_jit)
def _winograd43_tiles_store(yb, bias, y):
    """``y[n, k, 0, oh, ow] = yb[n, oh, ow, k] + bias[k]``: the channels-last outputs of
    :func:`_winograd43_filter_blocks` in the output's layout; a row of tiles per task."""
    th = yb.shape[1] // 4
    for task in prange(y.shape[0] * th):
        n, tr = task // th, task % th
        rows = np.full(1, 4 * tr, dtype=np.int64)
        _channels_first(yb[n, 4 * tr:4 * tr + 4], rows, 1, bias, y, n, 0)
    return y
