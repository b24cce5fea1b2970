"""Numba CPU backend: the five primitives of the reference backend as ``@njit`` kernels.

Every kernel is gather-style: each output element is written by exactly one thread, so results
are deterministic for a fixed thread count and no atomics are needed. Kernels trust their
inputs (contiguous 5-D arrays, canonical tuples); ``fastconv.functional`` guarantees that.
All ``@njit`` functions live in this one module, because Numba's cache tracks one source file.
Sums are accumulated in float64 and rounded once at the end.
"""

from __future__ import annotations

import functools
import threading

import numba
import numpy as np
from numba import njit, prange

name = "numba"

# No `fastmath`: it would break NaN propagation, which must match PyTorch.
_jit = {"cache": True, "parallel": True, "nogil": True}


@njit(**_jit)
def _conv_forward(x, w, stride, pad, dilation, groups, out_size):
    n_batch, c_in, d_in, h_in, w_in = x.shape
    k_out, cg, kd, kh, kw = w.shape
    od_n, oh_n, ow_n = out_size
    kg = k_out // groups
    y = np.empty((n_batch, k_out, od_n, oh_n, ow_n), dtype=x.dtype)
    for task in prange(n_batch * k_out):
        n, k = task // k_out, task % k_out
        c0 = (k // kg) * cg
        for od in range(od_n):
            for oh in range(oh_n):
                for ow in range(ow_n):
                    acc = 0.0
                    for c in range(cg):
                        for rd in range(kd):
                            i_d = od * stride[0] - pad[0] + rd * dilation[0]
                            if i_d < 0 or i_d >= d_in:
                                continue
                            for rh in range(kh):
                                i_h = oh * stride[1] - pad[1] + rh * dilation[1]
                                if i_h < 0 or i_h >= h_in:
                                    continue
                                for rw in range(kw):
                                    i_w = ow * stride[2] - pad[2] + rw * dilation[2]
                                    if i_w < 0 or i_w >= w_in:
                                        continue
                                    acc += x[n, c0 + c, i_d, i_h, i_w] * w[k, c, rd, rh, rw]
                    y[n, k, od, oh, ow] = acc
    return y


@njit(cache=True, inline="always")
def _source(o_pos, r, stride, pad, dilation, size):
    """Input position whose window puts tap ``r`` on ``o_pos``, or -1 if there is none."""
    t = o_pos + pad - r * dilation
    if t < 0 or t % stride:
        return -1
    t //= stride
    return t if t < size else -1


@njit(**_jit)
def _conv_transpose_forward(x, w, stride, pad, dilation, groups, out_size):
    n_batch, c_in, d_in, h_in, w_in = x.shape
    _, cog, kd, kh, kw = w.shape
    od_n, oh_n, ow_n = out_size
    c_out = cog * groups
    cig = c_in // groups
    y = np.empty((n_batch, c_out, od_n, oh_n, ow_n), dtype=x.dtype)
    for task in prange(n_batch * c_out):
        n, co = task // c_out, task % c_out
        ci0, cc = (co // cog) * cig, co % cog
        for od in range(od_n):
            for oh in range(oh_n):
                for ow in range(ow_n):
                    acc = 0.0
                    for rd in range(kd):
                        i_d = _source(od, rd, stride[0], pad[0], dilation[0], d_in)
                        if i_d < 0:
                            continue
                        for rh in range(kh):
                            i_h = _source(oh, rh, stride[1], pad[1], dilation[1], h_in)
                            if i_h < 0:
                                continue
                            for rw in range(kw):
                                i_w = _source(ow, rw, stride[2], pad[2], dilation[2], w_in)
                                if i_w < 0:
                                    continue
                                for ci in range(ci0, ci0 + cig):
                                    acc += x[n, ci, i_d, i_h, i_w] * w[ci, cc, rd, rh, rw]
                    y[n, co, od, oh, ow] = acc
    return y


@njit(**_jit)
def _conv_weight_grad(x, gy, stride, pad, dilation, groups, kernel):
    n_batch, c_in, d_in, h_in, w_in = x.shape
    _, k_out, od_n, oh_n, ow_n = gy.shape
    kd, kh, kw = kernel
    kg, cg = k_out // groups, c_in // groups
    gw = np.empty((k_out, cg, kd, kh, kw), dtype=x.dtype)
    for task in prange(k_out * cg * kd):
        k, rest = task // (cg * kd), task % (cg * kd)
        c, rd = rest // kd, rest % kd
        ci = (k // kg) * cg + c
        for rh in range(kh):
            for rw in range(kw):
                acc = 0.0
                for n in range(n_batch):
                    for od in range(od_n):
                        i_d = od * stride[0] - pad[0] + rd * dilation[0]
                        if i_d < 0 or i_d >= d_in:
                            continue
                        for oh in range(oh_n):
                            i_h = oh * stride[1] - pad[1] + rh * dilation[1]
                            if i_h < 0 or i_h >= h_in:
                                continue
                            for ow in range(ow_n):
                                i_w = ow * stride[2] - pad[2] + rw * dilation[2]
                                if i_w < 0 or i_w >= w_in:
                                    continue
                                acc += gy[n, k, od, oh, ow] * x[n, ci, i_d, i_h, i_w]
                gw[k, c, rd, rh, rw] = acc
    return gw


@njit(cache=True, inline="always")
def _window(o_pos, kernel, stride, pad, dilation, size):
    """First in-bounds position and end of a pooling window (PyTorch's loop bounds)."""
    start = o_pos * stride - pad
    end = min(start + (kernel - 1) * dilation + 1, size)
    while start < 0:
        start += dilation
    return start, end


@njit(**_jit)
def _max_pool_forward(x, kernel, stride, pad, dilation, out_size):
    n_batch, c_in, d_in, h_in, w_in = x.shape
    od_n, oh_n, ow_n = out_size
    y = np.empty((n_batch, c_in, od_n, oh_n, ow_n), dtype=x.dtype)
    idx = np.empty((n_batch, c_in, od_n, oh_n, ow_n), dtype=np.int64)
    for task in prange(n_batch * c_in):
        n, c = task // c_in, task % c_in
        for od in range(od_n):
            d0, d1 = _window(od, kernel[0], stride[0], pad[0], dilation[0], d_in)
            for oh in range(oh_n):
                h0, h1 = _window(oh, kernel[1], stride[1], pad[1], dilation[1], h_in)
                for ow in range(ow_n):
                    w0, w1 = _window(ow, kernel[2], stride[2], pad[2], dilation[2], w_in)
                    best = -np.inf
                    where = (d0 * h_in + h0) * w_in + w0
                    for i_d in range(d0, d1, dilation[0]):
                        for i_h in range(h0, h1, dilation[1]):
                            for i_w in range(w0, w1, dilation[2]):
                                v = x[n, c, i_d, i_h, i_w]
                                # NaN beats everything, and a later NaN beats an earlier one
                                if v > best or np.isnan(v):
                                    best = v
                                    where = (i_d * h_in + i_h) * w_in + i_w
                    y[n, c, od, oh, ow] = best
                    idx[n, c, od, oh, ow] = where
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


@_serialised
def conv_forward(x, w, stride, pad_lo, dilation, groups, out_size):
    return _conv_forward(x, w, stride, pad_lo, dilation, groups, out_size)


@_serialised
def conv_transpose_forward(x, w, stride, pad_lo, dilation, groups, out_size):
    return _conv_transpose_forward(x, w, stride, pad_lo, dilation, groups, out_size)


@_serialised
def conv_weight_grad(x, gy, stride, pad_lo, dilation, groups, kernel):
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


def threads():
    """Threads Numba's parallel loops use."""
    return numba.get_num_threads()
