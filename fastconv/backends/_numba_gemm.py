"""Packing + BLAS for the ``numba`` backend's GEMM-shaped convolutions.

Serial, GIL-free Numba kernels pack the operands (im2col / col2im) and BLAS multiplies them, in
tasks on the pool of :mod:`._numba_tasks`. Pointwise convolutions skip the packing.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from . import _numba_tasks as tasks
from ._numba_packing import _bias_array, _col2im, _im2col, _pack_rows, _unpack_rows

# Below this much work per output element (out-channels x in-channels x taps per group), the
# packing costs more than BLAS saves: direct kernels.
GEMM_MIN_WORK = 32
# ... and BLAS needs one side of the GEMM wide: with few channels per group on both sides
# (ResNeXt's 4 or 8 per group, 32 groups) the direct kernels win: 128 channels at 56x56,
# batch 16, forward 9.3 ms direct vs 20.9 packed, forward + backward 28 vs 68 ms
GEMM_MIN_CHANNELS = 16


def gemm_worthwhile(k_per_group, c_per_group, kernel):
    """Whether packing + BLAS beats the direct kernels, for ``c_per_group`` packed channels.

    Each output element must take enough multiply-adds for BLAS to pay for the packing. With
    one packed channel per group (depthwise convolutions, LeNet's first layer) packing only
    multiplies the memory traffic by the number of taps; measured, the direct kernels win
    there (LeNet c1 forward 2.6 ms direct vs 3.8 ms packed).
    """
    return (c_per_group > 1
            and k_per_group * c_per_group * math.prod(kernel) >= GEMM_MIN_WORK
            and max(k_per_group, c_per_group) >= GEMM_MIN_CHANNELS)


def transposed_worthwhile(c_in_per_group, c_out_per_group, kernel):
    """Whether multiply-then-scatter (GEMM, col2im) beats the direct kernels for a transposed
    convolution (a convolution's input gradient). Its GEMM sums over the input channels and
    packs nothing, so many input channels suffice even for one output channel per group: M5's
    one-channel 80-tap audio stem at batch 64 took 207 ms as a direct scatter and 20 ms so."""
    return (gemm_worthwhile(c_in_per_group, c_out_per_group, kernel)
            or c_in_per_group >= GEMM_MIN_CHANNELS)


def weight_grad_worthwhile(k_per_group, c_per_group, kernel):
    """Whether packing + BLAS beats the direct kernels for a weight gradient. Its GEMM sums
    over the output positions into filters x (channels x taps), so many filters and taps make
    it wide even for one input channel: M5's one-channel 80-tap audio stem (128 filters) at
    batch 64 took 275 ms direct."""
    return (gemm_worthwhile(k_per_group, c_per_group, kernel)
            or (k_per_group >= GEMM_MIN_CHANNELS
                and k_per_group * c_per_group * math.prod(kernel) >= GEMM_MIN_WORK
                and c_per_group * math.prod(kernel) >= GEMM_MIN_CHANNELS))


def is_pointwise(kernel, stride, pad):
    """A 1x1 kernel at stride 1 without padding: each image's (C, positions) block is already
    the GEMM operand, so nothing needs packing."""
    return all(k == 1 for k in kernel) and all(s == 1 for s in stride) and not any(pad)


def conv_forward_gemm(x, w, bias, stride, pad, dilation, groups, out_size):
    n_b, c_in = x.shape[:2]
    k_out, kernel = w.shape[0], w.shape[2:]
    cg, kg = c_in // groups, k_out // groups
    ck = cg * int(np.prod(kernel))
    rows, ow = out_size[0] * out_size[1], out_size[2]
    w2 = w.reshape(groups, kg, ck)
    y = np.empty((n_b, k_out, rows * ow), dtype=x.dtype)
    threads = numba.get_num_threads()
    if is_pointwise(kernel, stride, pad):
        x3 = x.reshape(n_b, c_in, rows * ow)

        def per_image(slot, n, p0, p1, k0, k1):  # output channels k0:k1 of every group
            for g in range(groups):
                ks = slice(g * kg + k0, g * kg + k1)
                np.matmul(w2[g, k0:k1], x3[n, g * cg:(g + 1) * cg, p0:p1], out=y[n, ks, p0:p1])
                if bias is not None:
                    y[n, ks, p0:p1] += bias[ks, None]  # while the output is in cache

        tasks.run(tasks.position_tasks(n_b, rows * ow, kg, threads), per_image)
        return y.reshape(n_b, k_out, *out_size)
    bias = _bias_array(bias, x.dtype)

    def work(slot, n0, n1, r0, r1):
        cols = tasks.buffer("gemm-cols", slot, (ck, (n1 - n0) * (r1 - r0) * ow), x.dtype)
        for g in range(groups):
            _im2col(x, g * cg, cg, kernel, stride, pad, dilation, out_size, n0, n1, r0, r1, cols)
            _unpack_rows(w2[g] @ cols, bias, y, g * kg, n0, n1, r0 * ow, r1 * ow)

    tasks.run(tasks.image_row_tasks(n_b, rows, ck * ow * x.itemsize, threads), work)
    return y.reshape(n_b, k_out, *out_size)


# Below this many positions per image a pointwise weight gradient packs several images into
# one product (below, as any kernel does): a product per image adds an output-sized partial
# sum per image over a short sum. ResNet-50's 512 -> 2048 at 7x7, batch 16: 8.8 against 12.1
# ms per image; at 14x14 (1024 -> 256) per image still wins, 8.2 against 8.8.
POINTWISE_GRAD_MIN_POSITIONS = 128


def _packs_images(n_b, positions, threads):
    """Whether a pointwise weight gradient packs images (several per task), by the rule
    above."""
    return positions < POINTWISE_GRAD_MIN_POSITIONS and n_b > threads


def conv_weight_grad_gemm(x, gy, stride, pad, dilation, groups, kernel):
    n_b, c_in = x.shape[:2]
    k_out, out_size = gy.shape[1], gy.shape[2:]
    cg, kg = c_in // groups, k_out // groups
    ck = cg * int(np.prod(kernel))
    rows, ow = out_size[0] * out_size[1], out_size[2]
    gy3 = gy.reshape(n_b, k_out, rows * ow)
    threads = numba.get_num_threads()
    partial = np.zeros((threads, k_out, ck), dtype=x.dtype)  # one sum per thread, fixed order

    if is_pointwise(kernel, stride, pad) and not _packs_images(n_b, rows * ow, threads):
        x3 = x.reshape(n_b, c_in, rows * ow)

        def per_image(slot, n, p0, p1, k0, k1):
            for g in range(groups):
                partial[slot, g * kg + k0:g * kg + k1] += (
                    gy3[n, g * kg + k0:g * kg + k1, p0:p1] @ x3[n, g * cg:(g + 1) * cg, p0:p1].T)

        used = tasks.run(tasks.position_tasks(n_b, rows * ow, kg, threads), per_image)
        return tasks.sum_slots(partial, used).reshape(k_out, cg, *kernel)

    def work(slot, n0, n1, r0, r1):
        span = (n1 - n0) * (r1 - r0) * ow
        cols = tasks.buffer("gemm-cols", slot, (ck, span), x.dtype)
        grads = tasks.buffer("gemm-grads", slot, (kg, span), x.dtype)
        for g in range(groups):
            _im2col(x, g * cg, cg, kernel, stride, pad, dilation, out_size, n0, n1, r0, r1, cols)
            _pack_rows(gy3, g * kg, kg, n0, n1, r0 * ow, r1 * ow, grads)
            partial[slot, g * kg:(g + 1) * kg] += grads @ cols.T

    used = tasks.run(tasks.image_row_tasks(n_b, rows, ck * ow * x.itemsize, threads), work)
    return tasks.sum_slots(partial, used).reshape(k_out, cg, *kernel)


def conv_transpose_forward_gemm(x, w, bias, stride, pad, dilation, groups, out_size):
    n_b, c_in = x.shape[:2]
    cig, cog, kernel = c_in // groups, w.shape[1], w.shape[2:]
    taps, in_size = int(np.prod(kernel)), x.shape[2:]
    positions = int(np.prod(in_size))
    w_t = w.reshape(groups, cig, cog * taps).transpose(0, 2, 1)  # (groups, cog * taps, cig)
    x3 = x.reshape(n_b, c_in, positions)
    y = np.empty((n_b, cog * groups, *out_size), dtype=x.dtype)
    if is_pointwise(kernel, stride, pad):
        y3 = y.reshape(n_b, cog * groups, positions)

        def per_image(slot, n, p0, p1, k0, k1):
            for g in range(groups):
                ks = slice(g * cog + k0, g * cog + k1)
                np.matmul(w_t[g, k0:k1], x3[n, g * cig:(g + 1) * cig, p0:p1],
                          out=y3[n, ks, p0:p1])
                if bias is not None:
                    y3[n, ks, p0:p1] += bias[ks, None]

        tasks.run(tasks.position_tasks(n_b, positions, cog, numba.get_num_threads()),
                  per_image)
        return y
    bias = _bias_array(bias, x.dtype)

    def work(slot, n, g, c0, c1):
        cols = tasks.buffer("gemm-cols", slot, ((c1 - c0) * taps, positions), x.dtype)
        np.matmul(w_t[g, c0 * taps:c1 * taps], x3[n, g * cig:(g + 1) * cig], out=cols)
        _col2im(cols, bias, y, n, g * cog + c0, g * cog + c1, in_size, kernel, stride, pad,
                dilation)

    blocks = tasks.split(cog, taps * positions * x.itemsize,
                         -(-numba.get_num_threads() // (n_b * groups)))
    tasks.run([(n, g, c0, c1) for n in range(n_b) for g in range(groups) for c0, c1 in blocks],
              work)
    return y
