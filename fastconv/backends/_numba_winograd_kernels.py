"""Winograd kernels: the channels-last copies and the tile transforms of F(4x4, 3x3).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _numba_cache  # noqa: F401  (first: the kernels' cache stamp)
from ._numba_band import _jit, _valid_range
from ._numba_blas import NO_TRANSPOSE, _gemm

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
def _f43_weights(w, idx, coef, u):
    """``u[g, (i, j), r * cg + c, k] = (G w[g * kg + k, c, r] G^T)[i, j]`` for the 3x3 taps
    of every filter (``w`` ``(K, cg, kd * 9)``), ``G``'s rows as the sparse ``idx``, ``coef``
    (float64; the sums too, rounded once into ``u``'s dtype).

    A task is one group, depth tap and input channel: its filters' nine taps gathered into a
    row per tap (filters innermost), then ``G w`` (18 rows) and ``(G w) G^T`` (36), each row
    one vectorised loop over the filters. (One float64 BLAS product of ``G (x) G`` with
    transposed copies of the weights took 5.3 ms for 256 x 256 channels, this 0.46; for 512
    x 512, 38.7 and 7.0, the 38 MB written past the L3 cache.)"""
    groups, kdcg, kg = u.shape[0], u.shape[2], u.shape[3]
    cg = w.shape[1]
    kd = kdcg // cg
    for task in prange(groups * kd * cg):
        c = task % cg
        r = (task // cg) % kd
        g = task // (cg * kd)
        taps = np.empty((9, kg), dtype=np.float64)
        for k in range(kg):
            for t in range(9):
                taps[t, k] = w[g * kg + k, c, r * 9 + t]
        gw = np.empty((18, kg), dtype=np.float64)  # (G w)[i, col]: G's row i on tap column col
        for i in range(6):
            for col in range(3):
                _g_row(gw[i * 3 + col], idx[i], coef[i], taps[col::3])
        for i in range(6):  # (G w) G^T [i, j]: G's row j on (G w)'s row i
            for j in range(6):
                _g_row(u[g, i * 6 + j, r * cg + c], idx[j], coef[j], gw[i * 3:i * 3 + 3])
    return u


@njit(cache=True, inline="always")
def _g_row(out, idx, coef, rows):
    """``out = sum_e coef[e] * rows[idx[e]]``: one sparse row of ``G`` (three terms) applied
    to ``rows``, vectorised over their filters."""
    a0, a1, a2 = coef[0], coef[1], coef[2]
    x0, x1, x2 = rows[idx[0]], rows[idx[1]], rows[idx[2]]
    for k in range(out.size):
        out[k] = a0 * x0[k] + a1 * x1[k] + a2 * x2[k]


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


@njit(**_jit)
def _winograd43(blas, x, u, bias, pad, dilation, out_size, tasks, row_starts, cols, wp,
                in_idx, in_coef, out_idx, out_coef, threads, x_copy, v_copy, m_copy, y_copy, y):
    """F(4x4, 3x3) over tasks ``(n, od0, od1, s0, s1)``: image ``n``, output depth slices
    ``od0:od1``, the tiles of rows ``row_starts[s0:s1]`` (of one class modulo the dilation)
    and columns ``cols`` (copied ``wp`` columns wide). Per group, the input tiles transformed
    (``v``), then per output slice 36 GEMMs with the transformed weights ``u`` (groups, 36,
    kd x cg, kg) into ``m``, whose output transform fills a channels-last block of ``y``
    (``yb``), put back with the bias at the end. The ``*_copy`` arrays hold one workspace row
    per thread."""
    c_in = x.shape[1]
    groups, kdcg, kg = u.shape[0], u.shape[2], u.shape[3]
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
                                  in_coef, v)
                for od in range(od0, od1):
                    lo = (od - od0) * cg
                    for i in range(36):
                        _gemm(blas, NO_TRANSPOSE, NO_TRANSPOSE, n_tiles, kg, kd * cg,
                              vf[i * n_tiles * width + lo:], width,
                              uf[(g * 36 + i) * kdcg * kg:], kg, 0.0,
                              mf[i * n_tiles * kg:], kg)
                    _winograd43_output(m, step, rows, cols, (out_size[1], out_size[2]),
                                       g * kg, out_idx, out_coef, yb[od - od0])
            for od in range(od0, od1):
                _channels_first(yb[od - od0], rows, step[0], bias, y, n, od)
