"""Batch-lane convolutions for the ``numba`` backend: many small images at stride 1.

On a small image a row of output is too short for the vector units (LeNet's second layer: 10
columns) and too small a GEMM for BLAS to run near its peak (16 x 150 x 100 per image). With
the batch laid innermost, in groups of ``lanes`` images, a kernel row applied to an output row
becomes one multiply-add over ``OW * lanes`` contiguous elements, with four output channels
sharing every load (:func:`._numba_lane_kernels._lane_conv`). The copies in and out of that layout
move a few bytes per multiply-add, which small images can afford; the forward copies its
output out block by block, while it is in cache (:func:`._numba_lane_kernels._lane_conv_nchw`).
"""

from __future__ import annotations

import numba
import numpy as np

from . import _numba_lane_kernels
from . import _numba_tasks as tasks
from ._numba_lane_kernels import LANE_SKEW, _to_lanes

# Output positions per image up to which lanes are used. Measured faster than the other paths
# on LeNet's planes (784 and 100 positions) and on 16x16 and 8x8 planes with 32 and 64
# channels (batch 128: forward 6.4 vs 10.6 ms and 11.6 vs 14.3 ms, weight gradient 5.5 vs
# 10.1 ms and 8.3 vs 19.2 ms); larger planes stay on the other paths, where rows are long.
LANE_MAX_PLANE = 1024
LANE_MIN_BATCH = 16  # the batch it needs to fill its lanes
# Lanes pay where a layer has few channels (LeNet: 1 -> 6 -> 16); with many, packing + BLAS
# or Winograd win (zoo suite, forward + backward at batch 16: ResNet-18's 128-channel 3x3
# layer 45 ms on lanes, 35-39 ms the others; 512 channels at 7x7: 63 ms lanes, 44 ms GEMM)
LANE_MAX_CHANNELS = 16
# The lane copies of one call stay within this (or within the output's size, if larger).
LANE_MAX_BYTES = 64 << 20


def _has_avx512():
    import llvmlite.binding as llvm

    return llvm.get_host_cpu_features().get("avx512f", False)


# Whether the lane convolutions use explicit 512-bit vectors (on CPUs with 32 such registers);
# elsewhere their 256-bit loops, whose sums do not fit the registers.
WIDE_VECTORS = _has_avx512()


def lane_kernel(name):
    """The kernel ``name`` of ``_numba_lane_kernels``, or its ``_wide`` twin (explicit 512-bit
    vectors) where ``WIDE_VECTORS``; only the one taken is ever compiled."""
    return getattr(_numba_lane_kernels, name + "_wide" if WIDE_VECTORS else name)


def lane_buffer(size, dtype):
    """Memory for a flat lane array of ``size`` elements, 64-byte aligned: the 512-bit
    kernels' vectors then never straddle two cache lines."""
    return tasks.aligned_empty(size, dtype)


def lane_width(n_batch):
    """Images per lane group: long rows, yet few lanes wasted on a short last group."""
    return 64 if n_batch >= 192 else (32 if n_batch >= 64 else 16)


def lanes_fit(x_shape, k_out, kernel, stride, pad, dilation, groups, out_size):
    """Whether a convolution of ``x_shape`` (5-D) to ``k_out`` channels runs on batch lanes:
    2-D (or 1-D), stride 1, one group, a batch of at least ``LANE_MIN_BATCH`` small images,
    at most ``LANE_MAX_CHANNELS`` input channels, at least four output channels (the kernel
    computes them in fours: LeNet c1's input gradient, one channel, took 3.2 ms there, 2.0 ms
    direct)."""
    n_b, c_in, d_in = x_shape[:3]
    if (groups != 1 or d_in != 1 or kernel[0] != 1 or out_size[0] != 1 or pad[0] != 0
            or any(s != 1 for s in stride) or n_b < LANE_MIN_BATCH or k_out < 4
            or c_in > LANE_MAX_CHANNELS
            or kernel[1] * kernel[2] == 1 or out_size[1] * out_size[2] > LANE_MAX_PLANE):
        return False
    images = _groups(n_b) * lane_width(n_b)
    hp, wp = _lane_size(kernel, dilation, out_size)
    # elements of the input's and the output's (or gradient's) lane copies, counted at 8 bytes
    copies = images * (c_in * hp * wp + k_held(k_out) * out_size[1] * out_size[2])
    return copies <= max(LANE_MAX_BYTES // 8, n_b * k_out * out_size[1] * out_size[2])


def lane_pitch(out_size, lanes):
    """Elements from one output plane of :func:`._numba_lane_kernels._lane_conv` to the next."""
    return out_size[0] * out_size[1] * lanes + LANE_SKEW


def _groups(n_batch):
    """Lane groups for a batch (the last one may be part empty)."""
    return -(-n_batch // lane_width(n_batch))


def _k_lanes(k_out):
    """Output channels rounded up to the fours the lane kernels compute in (rows of their
    weights)."""
    return -(-k_out // 4) * 4


def k_held(k_out):
    """Planes of output channels the lane kernels write per group: rounded up to even (the
    kernels compute in fours, and in twos for a last pair)."""
    return k_out + k_out % 2


def lane_weights(weight, bias=None):
    """A (K, C, KH, KW) weight and its bias (zeros for none) as the lane kernels take them:
    output channels rounded up to four with zeros."""
    k_out, k_lanes = weight.shape[0], _k_lanes(weight.shape[0])
    w4 = np.zeros((k_lanes, *weight.shape[1:]), dtype=weight.dtype)
    w4[:k_out] = weight
    b4 = np.zeros(k_lanes, dtype=weight.dtype)
    if bias is not None:
        b4[:k_out] = bias
    return w4, b4


def _lane_size(kernel, dilation, out_size):
    """(H, W) of the padded input that a stride-1 output of ``out_size`` reads."""
    return (out_size[1] + dilation[1] * (kernel[1] - 1),
            out_size[2] + dilation[2] * (kernel[2] - 1))


def lanes_size(n_batch, planes, plane_elements, lanes, slack=0):
    """Elements of a flat lane array: ``planes`` planes per group of images, ``plane_elements``
    apart, then ``slack``."""
    return -(-n_batch // lanes) * planes * plane_elements + slack


def conv_out_size(n_batch, k_out, out_size, lanes, slack=0):
    """Elements of :func:`._numba_lane_kernels._lane_conv`'s output."""
    return lanes_size(n_batch, k_held(k_out), lane_pitch(out_size, lanes), lanes, slack)


def conv_forward_lanes(x, w, bias, pad, dilation, out_size):
    n_b, c_in = x.shape[:2]
    k_out, kernel = w.shape[0], w.shape[2:]
    lanes = lane_width(n_b)
    size = _lane_size(kernel, dilation, out_size)
    w4, b4 = lane_weights(w[:, :, 0], bias)
    plane = size[0] * size[1] * lanes
    xl = _to_lanes(x, lanes, c_in, (pad[1], pad[2]), size, plane, 0,
                   tasks.workspace("input", lanes_size(n_b, c_in, plane, lanes), x.dtype))
    # the rows and columns of the copy that hold input (the rest is padding)
    window = (pad[1], pad[1] + x.shape[3], pad[2], pad[2] + x.shape[4])
    threads = numba.config.NUMBA_NUM_THREADS
    block = 4 * lane_pitch(out_size[1:], lanes)
    scratch = tasks.workspace("output", threads * block, x.dtype).reshape(threads, block)
    y = np.empty((n_b, k_out, 1, *out_size[1:]), dtype=x.dtype)
    return lane_kernel("_lane_conv_nchw")(xl, plane, c_in, w4, b4, k_out, c_in, size, window,
                                          (dilation[1], dilation[2]), out_size[1:], lanes,
                                          scratch, y)


def conv_weight_grad_lanes(x, gy, pad, dilation, kernel):
    n_b, c_in = x.shape[:2]
    k_out, out_size = gy.shape[1], gy.shape[2:]
    lanes = lane_width(n_b)
    size = _lane_size(kernel, dilation, out_size)
    plane = size[0] * size[1] * lanes
    # slack for the third tap of a short last triple of taps (see _lane_weight_grad)
    slack = 2 * dilation[2] * lanes
    xl = _to_lanes(x, lanes, c_in, (pad[1], pad[2]), size, plane, slack,
                   tasks.workspace("input", lanes_size(n_b, c_in, plane, lanes, slack), x.dtype))
    held, g_plane = k_held(k_out), out_size[1] * out_size[2] * lanes
    gl = _to_lanes(gy, lanes, held, (0, 0), out_size[1:], g_plane, 0,
                   tasks.workspace("output", lanes_size(n_b, held, g_plane, lanes), x.dtype))
    gw = lane_kernel("_lane_weight_grad")(xl, plane, c_in, gl, g_plane, held, _groups(n_b),
                                          c_in, size, (dilation[1], dilation[2]), kernel[1:],
                                          lanes)
    return np.ascontiguousarray(gw[:k_out]).reshape(k_out, c_in, *kernel)
