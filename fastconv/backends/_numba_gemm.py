"""Packing + BLAS for the ``numba`` backend's GEMM-shaped convolutions.

Here the tasks and workspaces are planned; the kernels of :mod:`._numba_gemm_kernels` pack the
operands (im2col / col2im) and call BLAS on Numba's threads. Pointwise convolutions skip the
packing.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from . import _numba_blas as blas
from . import _numba_gemm_kernels as K
from . import _numba_tasks as tasks
from ._numba_packing import _bias_array

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


# Where images are fewer than threads, each image's positions are split over tasks, and each
# task multiplies in products of at most max(POINTWISE_MIN_STEP, POINTWISE_STEP_BYTES / ((C +
# K) x itemsize)) positions, so that a product's operand panel and output block stay in the
# L2 cache between BLAS's passes (packing, its zeroing or our bias, the product). Whole
# calls at batch 1, float32, against products over each task's whole range, alternated
# twice, best ms: U-Net's 64 -> 2 head at 256x256 1.13-1.14 -> 0.36-0.40, WaveNet's 32 -> 256
# skip layer 2.52-2.58 -> 2.18-2.39, 32 -> 64 at 128x128 0.68-0.70 -> 0.45-0.46, 3 -> 32 at
# 224x224 0.36-0.51 -> 0.23-0.25, 16 -> 96 at 112x112 0.33-0.73 -> 0.28-0.30; at 56x56 even
# (MobileNetV2's 24 -> 144 0.170 -> 0.171-0.183, 64 -> 64 0.185-0.207 -> 0.194-0.205). Not
# with whole images per task: there the images stream from memory and short strided
# products lost as often as they won (the kernel alone: 16 -> 96 at 112x112, batch 16, 7.2
# -> 7.8-9.5 ms; 3 -> 32 at 224x224, batch 4, 1.25 -> 2.5).
POINTWISE_MIN_STEP = 256
POINTWISE_STEP_BYTES = 1 << 16


def _pointwise(w3, w_transposed, x, bias, groups, y, threads):
    """:func:`K._pointwise` over :func:`tasks.position_tasks` (``x`` and ``y`` 3-D), in
    products of the positions the rule above gives."""
    n_b, c_in, positions, k_out = x.shape[0], x.shape[1], x.shape[2], y.shape[1]
    task_list = tasks.position_tasks(n_b, positions, k_out // groups, threads)
    step = positions
    if n_b < threads:
        rows = max(k1 - k0 for _, _, _, k0, k1 in task_list)
        fit = POINTWISE_STEP_BYTES // ((c_in // groups + rows) * x.itemsize)
        step = max(POINTWISE_MIN_STEP, fit // 16 * 16)
    with tasks.one_blas_thread():
        K._pointwise(blas.gemm_function(x.dtype), w3, w_transposed, x, _bias_array(bias, x.dtype),
                     tasks.task_array(task_list), min(threads, len(task_list)), step, y)


def conv_forward_gemm(x, w, bias, stride, pad, dilation, groups, out_size):
    n_b, c_in = x.shape[:2]
    k_out, kernel = w.shape[0], w.shape[2:]
    cg, kg = c_in // groups, k_out // groups
    ck = cg * math.prod(kernel)
    rows, ow = out_size[0] * out_size[1], out_size[2]
    w3 = np.ascontiguousarray(w).reshape(groups, kg, ck)
    y = np.empty((n_b, k_out, rows * ow), dtype=x.dtype)
    threads = numba.get_num_threads()
    if is_pointwise(kernel, stride, pad):
        _pointwise(w3, False, x.reshape(n_b, c_in, rows * ow), bias, groups, y, threads)
        return y.reshape(n_b, k_out, *out_size)
    task_list = tasks.image_row_tasks(n_b, rows, ck * ow * x.itemsize, threads)
    span = max(((n1 - n0) * (r1 - r0) * ow for n0, n1, r0, r1 in task_list), default=0)
    threads = min(threads, len(task_list))
    with tasks.one_blas_thread():
        K._packed_forward(blas.gemm_function(x.dtype), x, w3, _bias_array(bias, x.dtype),
                          tuple(kernel), tuple(stride), tuple(pad), tuple(dilation),
                          tuple(out_size), tasks.task_array(task_list), threads,
                          tasks.slot_rows("gemm-cols", threads, ck * span, x.dtype),
                          tasks.slot_rows("gemm-prod", threads, kg * span, x.dtype), y)
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
    ck = cg * math.prod(kernel)
    rows, ow = out_size[0] * out_size[1], out_size[2]
    gy3 = gy.reshape(n_b, k_out, rows * ow)
    threads = numba.get_num_threads()
    gemm = blas.gemm_function(x.dtype)
    if is_pointwise(kernel, stride, pad) and not _packs_images(n_b, rows * ow, threads):
        task_list = tasks.position_tasks(n_b, rows * ow, kg, threads)
        used = max(1, min(threads, len(task_list)))
        partial = np.zeros((used, k_out, ck), dtype=x.dtype)  # one sum per thread, fixed order
        with tasks.one_blas_thread():
            K._pointwise_weight_grad(gemm, x.reshape(n_b, c_in, rows * ow), gy3, groups,
                                     tasks.task_array(task_list), used, partial)
        return tasks.sum_slots(partial, used).reshape(k_out, cg, *kernel)
    if tasks.splits_channels(n_b * rows * ow, kg, threads):
        # few positions: the threads split the filters, each packing the same columns, into
        # one sum, where a partial sum of the whole gradient per thread, zeroed and added,
        # was most of the call (384 -> 768 channels 3x3 at stride 2 on 7x7, batch 1: 16
        # positions, 10.6 MB of gradient)
        task_list = [(0, n_b, 0, rows, k0, k1) for k0, k1 in tasks.split(kg, 0, threads)]
        sums = 1
    else:
        task_list = [(*task, 0, kg)
                     for task in tasks.image_row_tasks(n_b, rows, ck * ow * x.itemsize,
                                                       threads)]
        sums = max(1, min(threads, len(task_list)))
    span = max(((t[1] - t[0]) * (t[3] - t[2]) * ow for t in task_list), default=0)
    used = max(1, min(threads, len(task_list)))
    partial = np.zeros((sums, k_out, ck), dtype=x.dtype)
    with tasks.one_blas_thread():
        K._packed_weight_grad(gemm, x, gy3, groups, tuple(kernel), tuple(stride), tuple(pad),
                              tuple(dilation), tuple(out_size), tasks.task_array(task_list), used,
                              tasks.slot_rows("gemm-cols", used, ck * span, x.dtype),
                              tasks.slot_rows("gemm-grads", used, kg * span, x.dtype), partial)
    return tasks.sum_slots(partial, sums).reshape(k_out, cg, *kernel)


def conv_transpose_forward_gemm(x, w, bias, stride, pad, dilation, groups, out_size):
    n_b, c_in = x.shape[:2]
    cig, cog, kernel = c_in // groups, w.shape[1], w.shape[2:]
    taps, in_size = math.prod(kernel), x.shape[2:]
    positions = math.prod(in_size)
    w3 = np.ascontiguousarray(w).reshape(groups, cig, cog * taps)
    x3 = x.reshape(n_b, c_in, positions)
    y = np.empty((n_b, cog * groups, *out_size), dtype=x.dtype)
    threads = numba.get_num_threads()
    if is_pointwise(kernel, stride, pad):
        _pointwise(w3, True, x3, bias, groups, y.reshape(n_b, cog * groups, positions), threads)
        return y
    blocks = tasks.split(cog, taps * positions * x.itemsize, -(-threads // (n_b * groups)))
    task_list = [(n, g, c0, c1) for n in range(n_b) for g in range(groups) for c0, c1 in blocks]
    rows = max((c1 - c0 for c0, c1 in blocks), default=0) * taps
    threads = min(threads, len(task_list))
    with tasks.one_blas_thread():
        K._scattered_transpose(blas.gemm_function(x.dtype), x3, w3, _bias_array(bias, x.dtype),
                               tuple(in_size), tuple(kernel), tuple(stride), tuple(pad),
                               tuple(dilation), tasks.task_array(task_list), threads,
                               tasks.slot_rows("gemm-cols", threads, rows * positions, x.dtype), y)
    return y
