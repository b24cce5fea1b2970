"""Numba CPU backend: the five primitives of the reference backend, fast.

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


@njit(**_jit)
def _conv_forward(x, w, stride, pad, dilation, groups, out_size):
    """Direct convolution, one (image, output channel) plane per task.

    Each tap adds ``weight * input row`` into an output row (in cache), so unit-stride rows
    vectorise; the sum order per element (channels, then taps) is fixed.
    """
    n_batch, c_in, d_in, h_in, w_in = x.shape
    k_out, cg, kd, kh, kw = w.shape
    od_n, oh_n, ow_n = out_size
    kg = k_out // groups
    sw = stride[2]
    y = np.zeros((n_batch, k_out, od_n, oh_n, ow_n), dtype=x.dtype)
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    for task in prange(n_batch * k_out):
        n, k = task // k_out, task % k_out
        c0 = (k // kg) * cg
        y_plane = task * od_n * oh_n * ow_n
        for c in range(cg):
            x_plane = (n * c_in + c0 + c) * d_in
            for rd in range(kd):
                for rh in range(kh):
                    for rw in range(kw):
                        wv = w[k, c, rd, rh, rw]
                        off = rw * dilation[2] - pad[2]
                        lo, hi = _valid_range(ow_n, sw, off, w_in)
                        for od in range(od_n):
                            i_d = od * stride[0] - pad[0] + rd * dilation[0]
                            if i_d < 0 or i_d >= d_in:
                                continue
                            for oh in range(oh_n):
                                i_h = oh * stride[1] - pad[1] + rh * dilation[1]
                                if i_h < 0 or i_h >= h_in:
                                    continue
                                dst = y_plane + (od * oh_n + oh) * ow_n
                                src = ((x_plane + i_d) * h_in + i_h) * w_in + off
                                if sw == 1:
                                    for ow in range(lo, hi):
                                        yf[np.uintp(dst + ow)] += wv * xf[np.uintp(src + ow)]
                                else:
                                    for ow in range(lo, hi):
                                        yf[np.uintp(dst + ow)] += wv * xf[np.uintp(src + ow * sw)]
    return y


@njit(**_jit)
def _conv_transpose_forward(x, w, stride, pad, dilation, groups, out_size):
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
    y = np.zeros((n_batch, c_out, od_n, oh_n, ow_n), dtype=x.dtype)
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    for task in prange(n_batch * c_out):
        n, co = task // c_out, task % c_out
        ci0, cc = (co // cog) * cig, co % cog
        y_plane = task * od_n * oh_n * ow_n
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
    """Direct weight gradient, one (output channel, input channel) pair per task."""
    n_batch, c_in, d_in, h_in, w_in = x.shape
    _, k_out, od_n, oh_n, ow_n = gy.shape
    kd, kh, kw = kernel
    kg, cg = k_out // groups, c_in // groups
    sw = stride[2]
    gw = np.empty((k_out, cg, kd, kh, kw), dtype=x.dtype)
    xf = x.reshape(x.size)
    gf = gy.reshape(gy.size)
    for task in prange(k_out * cg):
        k, c = task // cg, task % cg
        ci = (k // kg) * cg + c
        for rd in range(kd):
            for rh in range(kh):
                for rw in range(kw):
                    off = rw * dilation[2] - pad[2]
                    lo, hi = _valid_range(ow_n, sw, off, w_in)
                    acc = 0.0
                    for n in range(n_batch):
                        x_plane = (n * c_in + ci) * d_in
                        g_plane = (n * k_out + k) * od_n
                        for od in range(od_n):
                            i_d = od * stride[0] - pad[0] + rd * dilation[0]
                            if i_d < 0 or i_d >= d_in:
                                continue
                            for oh in range(oh_n):
                                i_h = oh * stride[1] - pad[1] + rh * dilation[1]
                                if i_h < 0 or i_h >= h_in:
                                    continue
                                g_row = ((g_plane + od) * oh_n + oh) * ow_n
                                src = ((x_plane + i_d) * h_in + i_h) * w_in + off
                                for ow in range(lo, hi):
                                    acc += gf[np.uintp(g_row + ow)] * xf[np.uintp(src + ow * sw)]
                    gw[k, c, rd, rh, rw] = acc
    return gw


@njit(cache=True, inline="always")
def _first_in_bounds(o_pos, stride, pad, dilation):
    """The first window position at or after ``o_pos * stride - pad`` that is not negative
    (PyTorch's default argmax, which it keeps when nothing beats -inf)."""
    start = o_pos * stride - pad
    if start < 0:
        start += ((-start + dilation - 1) // dilation) * dilation
    return start


@njit(**_jit)
def _max_pool_forward(x, kernel, stride, pad, dilation, out_size):
    """Max pooling, one (image, channel) plane per task, a tap at a time over output rows.

    Taps run in the window's raster order and a candidate replaces the current best when it is
    larger or NaN, so the first maximum and the last NaN win, as in PyTorch.
    """
    n_batch, c_in, d_in, h_in, w_in = x.shape
    od_n, oh_n, ow_n = out_size
    kd, kh, kw = kernel
    sw = stride[2]
    y = np.empty((n_batch, c_in, od_n, oh_n, ow_n), dtype=x.dtype)
    idx = np.empty((n_batch, c_in, od_n, oh_n, ow_n), dtype=np.int64)
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    idf = idx.reshape(idx.size)
    plane_in = d_in * h_in * w_in
    for task in prange(n_batch * c_in):
        x_plane = task * plane_in
        for od in range(od_n):
            d0 = _first_in_bounds(od, stride[0], pad[0], dilation[0])
            for oh in range(oh_n):
                h0 = _first_in_bounds(oh, stride[1], pad[1], dilation[1])
                dst = ((task * od_n + od) * oh_n + oh) * ow_n
                for ow in range(ow_n):
                    w0 = _first_in_bounds(ow, sw, pad[2], dilation[2])
                    yf[np.uintp(dst + ow)] = -np.inf
                    idf[np.uintp(dst + ow)] = (d0 * h_in + h0) * w_in + w0
                for rd in range(kd):
                    i_d = od * stride[0] - pad[0] + rd * dilation[0]
                    if i_d < 0 or i_d >= d_in:
                        continue
                    for rh in range(kh):
                        i_h = oh * stride[1] - pad[1] + rh * dilation[1]
                        if i_h < 0 or i_h >= h_in:
                            continue
                        row = (i_d * h_in + i_h) * w_in
                        for rw in range(kw):
                            off = rw * dilation[2] - pad[2]
                            lo, hi = _valid_range(ow_n, sw, off, w_in)
                            for ow in range(lo, hi):
                                where = row + ow * sw + off
                                v = xf[np.uintp(x_plane + where)]
                                best = yf[np.uintp(dst + ow)]
                                if v > best or v != v:
                                    yf[np.uintp(dst + ow)] = v
                                    idf[np.uintp(dst + ow)] = where
    return y, idx


@njit(**_jit)
def _max_pool_backward(gy, idx, plane):
    # planes are independent, so a plane-per-thread scatter is race-free and deterministic
    rows, outs = gy.shape
    gx = np.zeros((rows, plane), dtype=gy.dtype)
    for r in prange(rows):
        for o in range(outs):
            i = idx[r, o]
            if 0 <= i < plane:
                gx[r, i] += gy[r, o]
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
def _unpack_rows(prod, y, k0, n0, n1, o0, o1):
    """``y[n, k0 + k, o0:o1] = prod[k, (n - n0, o)]``: a GEMM result back to (N, K, O)."""
    span = o1 - o0
    for n in range(n0, n1):
        for k in range(prod.shape[0]):
            y[n, k0 + k, o0:o1] = prod[k, (n - n0) * span:(n - n0 + 1) * span]


@njit(cache=True, nogil=True)
def _pack_rows(g, k0, kg, n0, n1, o0, o1, dst):
    """The inverse of :func:`_unpack_rows`: ``dst[k, (n - n0, o)] = g[n, k0 + k, o0:o1]``."""
    span = o1 - o0
    for k in range(kg):
        for n in range(n0, n1):
            dst[k, (n - n0) * span:(n - n0 + 1) * span] = g[n, k0 + k, o0:o1]


@njit(cache=True, nogil=True)
def _col2im(cols, y, n, c0, c1, in_size, kernel, stride, pad, dilation):
    """Add each tap's row of ``cols`` (columns: input positions) into output channels ``c0:c1``.

    ``y[n, c, i*stride - pad + r*dilation] += cols[(c - c0, r), i]``: the scatter of a
    transposed convolution, serial within a task, so the sum order is fixed.
    """
    d_in, h_in, w_in = in_size
    kd, kh, kw = kernel
    c_all, od_n, oh_n, ow_n = y.shape[1], y.shape[2], y.shape[3], y.shape[4]
    sw = stride[2]
    y[n, c0:c1] = 0
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


def _conv_forward_gemm(x, w, stride, pad, dilation, groups, out_size):
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

        _run(_split(n_b, 0, threads), per_image)
        return y.reshape(n_b, k_out, *out_size)

    def work(slot, n0, n1, r0, r1):
        cols = np.empty((ck, (n1 - n0) * (r1 - r0) * ow), dtype=x.dtype)
        for g in range(groups):
            _im2col(x, g * cg, cg, kernel, stride, pad, dilation, out_size, n0, n1, r0, r1, cols)
            _unpack_rows(w2[g] @ cols, y, g * kg, n0, n1, r0 * ow, r1 * ow)

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


def _conv_transpose_forward_gemm(x, w, stride, pad, dilation, groups, out_size):
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

        _run(_split(n_b, 0, numba.get_num_threads()), per_image)
        return y

    def work(slot, n, g, c0, c1):
        cols = w_t[g, c0 * taps:c1 * taps] @ x3[n, g * cig:(g + 1) * cig]
        _col2im(cols, y, n, g * cog + c0, g * cog + c1, in_size, kernel, stride, pad, dilation)

    blocks = _split(cog, taps * positions * x.itemsize, 1)
    _run([(n, g, c0, c1) for n in range(n_b) for g in range(groups) for c0, c1 in blocks],
         work)
    return y


# --------------------------------------------------------------------------- primitives


@_serialised
def conv_forward(x, w, stride, pad_lo, dilation, groups, out_size):
    if _gemm_worthwhile(w.shape[0] // groups, w.shape[1], w.shape[2:]):
        return _conv_forward_gemm(x, w, stride, pad_lo, dilation, groups, out_size)
    return _conv_forward(x, w, stride, pad_lo, dilation, groups, out_size)


@_serialised
def conv_transpose_forward(x, w, stride, pad_lo, dilation, groups, out_size):
    if _gemm_worthwhile(x.shape[1] // groups, w.shape[1], w.shape[2:]):
        return _conv_transpose_forward_gemm(x, w, stride, pad_lo, dilation, groups, out_size)
    return _conv_transpose_forward(x, w, stride, pad_lo, dilation, groups, out_size)


@_serialised
def conv_weight_grad(x, gy, stride, pad_lo, dilation, groups, kernel):
    # packed even with one channel per group: LeNet c1's weight gradient 6.2 ms vs 10.2 direct
    if _enough_work(gy.shape[1] // groups, x.shape[1] // groups, kernel):
        return _conv_weight_grad_gemm(x, gy, stride, pad_lo, dilation, groups, kernel)
    return _conv_weight_grad(x, gy, stride, pad_lo, dilation, groups, kernel)


@_serialised
def max_pool_forward(x, kernel, stride, pad_lo, dilation, out_size):
    return _max_pool_forward(x, kernel, stride, pad_lo, dilation, out_size)


@_serialised
def max_pool_backward(gy, idx, in_size):
    n, c = gy.shape[:2]
    plane = int(np.prod(in_size))
    outs = int(np.prod(gy.shape[2:]))  # explicit: -1 cannot be inferred for an empty batch
    gx = _max_pool_backward(gy.reshape(n * c, outs), idx.reshape(n * c, outs), plane)
    return gx.reshape(n, c, *in_size)
