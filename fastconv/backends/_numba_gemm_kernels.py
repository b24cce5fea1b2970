"""The GEMM path's kernels: per task, pack (im2col), multiply (BLAS, on the calling thread:
:mod:`._numba_blas`), then unpack or scatter (col2im).

Each kernel runs a list of tasks, the rows of an int64 array, on Numba's threads: thread
``slot`` takes every ``threads``-th task from the ``slot``-th, so the assignment, and any sum a
thread keeps, is the same on every run. ``cols``, ``prod`` and ``grads`` hold one workspace row
per thread. Weight gradients add into the thread's own ``partial[slot]``; the caller adds those
in thread order.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _numba_cache  # noqa: F401  (first: the kernels' cache stamp)
from ._numba_band import _jit
from ._numba_blas import NO_TRANSPOSE, TRANSPOSE, _gemm
from ._numba_packing import _col2im, _im2col, _pack_rows, _unpack_rows


@njit(cache=True, nogil=True)
def _fill_bias(bias, yf, start, rows, p0, p1, row_len):
    """``y[k, p0:p1] = bias[k]`` for ``rows`` rows of ``row_len`` elements from flat index
    ``start`` (row ``k`` at ``start + k * row_len``)."""
    for k in range(rows):
        b = bias[k]
        row = start + k * row_len
        for p in range(p0, p1):
            yf[np.uintp(row + p)] = b


@njit(**_jit)
def _pointwise(blas, w, w_transposed, x, bias, tasks, threads, step, y):
    """A 1x1 convolution at stride 1 without padding, or its transpose: per task
    ``(n, p0, p1, k0, k1)`` and group ``g``, ``y[n, g*kg + k0:g*kg + k1, p0:p1] = W_g[k0:k1]
    @ x[n, g*cg:(g + 1)*cg, p0:p1]`` (+ bias), ``x`` and ``y`` of shape (N, C, positions), in
    products of at most ``step`` positions. ``W_g`` is ``w[g]`` of (groups, kg, cg), or with
    ``w_transposed`` the transpose of ``w[g]`` of (groups, cg, kg)."""
    groups = w.shape[0]
    kg, cg = (w.shape[2], w.shape[1]) if w_transposed else (w.shape[1], w.shape[2])
    c_in, positions = x.shape[1], x.shape[2]
    k_out = y.shape[1]
    wf, xf, yf = w.reshape(w.size), x.reshape(x.size), y.reshape(y.size)
    for slot in prange(threads):
        for t in range(slot, tasks.shape[0], threads):
            n, p0, p1, k0, k1 = tasks[t, 0], tasks[t, 1], tasks[t, 2], tasks[t, 3], tasks[t, 4]
            for q0 in range(p0, p1, step):
                q1 = min(q0 + step, p1)
                for g in range(groups):
                    out = (n * k_out + g * kg + k0) * positions
                    src = (n * c_in + g * cg) * positions + q0
                    # The bias goes in first and BLAS adds the product to it (beta 1): with
                    # beta 0 OpenBLAS zeroes C in a pass of its own, and a bias added after is
                    # one more pass over C (WaveNet's 32 -> 256 skip layer: 2.85 -> 2.6 ms)
                    beta = 0.0
                    if bias.size:
                        _fill_bias(bias[g * kg + k0:], yf, out, k1 - k0, q0, q1, positions)
                        beta = 1.0
                    if w_transposed:
                        _gemm(blas, TRANSPOSE, NO_TRANSPOSE, k1 - k0, q1 - q0, cg,
                              wf[g * cg * kg + k0:], kg, xf[src:], positions, beta,
                              yf[out + q0:], positions)
                    else:
                        _gemm(blas, NO_TRANSPOSE, NO_TRANSPOSE, k1 - k0, q1 - q0, cg,
                              wf[(g * kg + k0) * cg:], cg, xf[src:], positions, beta,
                              yf[out + q0:], positions)


@njit(**_jit)
def _packed_forward(blas, x, w, bias, kernel, stride, pad, dilation, out_size, tasks,
                    threads, cols, prod, y):
    """A convolution by im2col and GEMM: per task ``(n0, n1, r0, r1)`` (images, output rows)
    and group, pack the inputs (``cols``), multiply by ``w`` of (groups, kg, cg x taps) into
    ``prod``, and unpack into ``y`` of (N, K, positions) with the bias."""
    groups, kg, ck = w.shape
    cg = x.shape[1] // groups
    ow = out_size[2]
    wf = w.reshape(w.size)
    for slot in prange(threads):
        for t in range(slot, tasks.shape[0], threads):
            n0, n1, r0, r1 = tasks[t, 0], tasks[t, 1], tasks[t, 2], tasks[t, 3]
            span = (n1 - n0) * (r1 - r0) * ow
            packed = cols[slot][:ck * span].reshape((ck, span))
            product = prod[slot][:kg * span].reshape((kg, span))
            for g in range(groups):
                _im2col(x, g * cg, cg, kernel, stride, pad, dilation, out_size, n0, n1, r0, r1,
                        packed)
                _gemm(blas, NO_TRANSPOSE, NO_TRANSPOSE, kg, span, ck, wf[g * kg * ck:], ck,
                      packed, span, 0.0, product, span)
                _unpack_rows(product, bias, y, g * kg, n0, n1, r0 * ow, r1 * ow)


@njit(**_jit)
def _pointwise_weight_grad(blas, x, gy, groups, tasks, threads, partial):
    """The weight gradient of a pointwise convolution: per task ``(n, p0, p1, k0, k1)`` and
    group, ``partial[slot, g*kg + k0:g*kg + k1] += gy[n, rows, p0:p1] @ x[n, g's channels,
    p0:p1].T``, ``x`` and ``gy`` of shape (N, C, positions), ``partial`` of (threads, K, cg)."""
    c_in, positions = x.shape[1], x.shape[2]
    k_out = gy.shape[1]
    cg, kg = c_in // groups, k_out // groups
    xf, gf = x.reshape(x.size), gy.reshape(gy.size)
    for slot in prange(threads):
        pf = partial[slot].reshape(k_out * cg)
        for t in range(slot, tasks.shape[0], threads):
            n, p0, p1, k0, k1 = tasks[t, 0], tasks[t, 1], tasks[t, 2], tasks[t, 3], tasks[t, 4]
            for g in range(groups):
                _gemm(blas, NO_TRANSPOSE, TRANSPOSE, k1 - k0, cg, p1 - p0,
                      gf[(n * k_out + g * kg + k0) * positions + p0:], positions,
                      xf[(n * c_in + g * cg) * positions + p0:], positions, 1.0,
                      pf[(g * kg + k0) * cg:], cg)


@njit(**_jit)
def _packed_weight_grad(blas, x, gy, groups, kernel, stride, pad, dilation, out_size, tasks,
                        threads, cols, grads, partial):
    """A weight gradient by im2col and GEMM: per task ``(n0, n1, r0, r1, k0, k1)`` and group,
    pack the inputs (``cols``) and the output gradient's rows of filters ``k0 .. k1`` of the
    group (``grads``) and add their product into the thread's partial sum of (K, cg x taps),
    ``partial[slot]``, or into ``partial[0]`` where it holds one sum for all (tasks that split
    the filters write apart); ``gy`` of shape (N, K, positions)."""
    k_out, ck = partial.shape[1], partial.shape[2]
    cg, kg = x.shape[1] // groups, k_out // groups
    ow = out_size[2]
    for slot in prange(threads):
        part = np.int64(slot) if partial.shape[0] > 1 else np.int64(0)
        pf = partial[part].reshape(k_out * ck)
        for t in range(slot, tasks.shape[0], threads):
            n0, n1, r0, r1 = tasks[t, 0], tasks[t, 1], tasks[t, 2], tasks[t, 3]
            k0, k1 = tasks[t, 4], tasks[t, 5]
            span = (n1 - n0) * (r1 - r0) * ow
            packed = cols[slot][:ck * span].reshape((ck, span))
            rows = grads[slot][:(k1 - k0) * span].reshape((k1 - k0, span))
            for g in range(groups):
                _im2col(x, g * cg, cg, kernel, stride, pad, dilation, out_size, n0, n1, r0, r1,
                        packed)
                _pack_rows(gy, g * kg + k0, k1 - k0, n0, n1, r0 * ow, r1 * ow, rows)
                _gemm(blas, NO_TRANSPOSE, TRANSPOSE, k1 - k0, ck, span, rows, span, packed,
                      span, 1.0, pf[(g * kg + k0) * ck:], ck)


@njit(**_jit)
def _scattered_transpose(blas, x, w, bias, in_size, kernel, stride, pad, dilation, tasks,
                         threads, cols, y):
    """A transposed convolution by GEMM and col2im: per task ``(n, g, c0, c1)`` (image, group,
    output channels of the group), multiply those channels' taps of ``w`` (groups, cig,
    cog x taps) by the image's inputs into ``cols`` ((c1 - c0) x taps, positions), then scatter
    them into ``y`` with the bias; ``x`` of shape (N, C, positions), ``in_size`` its
    positions' shape."""
    groups, cig, cogt = w.shape
    c_in, positions = x.shape[1], x.shape[2]
    taps = kernel[0] * kernel[1] * kernel[2]
    cog = cogt // taps
    wf, xf = w.reshape(w.size), x.reshape(x.size)
    for slot in prange(threads):
        for t in range(slot, tasks.shape[0], threads):
            n, g, c0, c1 = tasks[t, 0], tasks[t, 1], tasks[t, 2], tasks[t, 3]
            product = cols[slot][:(c1 - c0) * taps * positions].reshape(((c1 - c0) * taps,
                                                                        positions))
            _gemm(blas, TRANSPOSE, NO_TRANSPOSE, (c1 - c0) * taps, positions, cig,
                  wf[g * cig * cogt + c0 * taps:], cogt, xf[(n * c_in + g * cig) * positions:],
                  positions, 0.0, product, positions)
            _col2im(product, bias, y, n, g * cog + c0, g * cog + c1, in_size, kernel, stride,
                    pad, dilation)
