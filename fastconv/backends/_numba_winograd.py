"""Winograd convolution for the ``numba`` backend: 3x3 convolutions at stride 1 (any dilation,
any kernel depth) and their input gradients (as convolutions).

F(4x4, 3x3) on channels-last copies of the input (:mod:`._numba_winograd_kernels`): 36 GEMMs
per task, on BLAS called by the Numba thread that runs the task (:mod:`._numba_blas`); a
task is a block of tiles, or, for calls with as many filters as tiles or more, a block of
filters. (A weight gradient by F(2x2, 3x3) existed until measured on the zoo suite: packing +
BLAS or ``kvector`` beat it on every layer it took, by 1.02-1.34x.)
"""

from __future__ import annotations

import math

import numba
import numpy as np

from . import _numba_blas as blas
from . import _numba_tasks as tasks
from . import _numba_winograd_kernels as K

# Winograd pays once a GEMM has enough channels on both sides (ResNeXt's 16 channels per
# group: forward 18.6 ms Winograd, 7.7 ms packing + BLAS at batch 16)
WINOGRAD_MIN_CHANNELS = 32
# ... and enough 4x4 output tiles per call to pay for the kernel's transform (36 * C * K
# values, read by every task): at least this many per channel of the larger side. Forward,
# each way forced and alternated, best ms against kvector (winograd / kvector), since the
# kernel transform is a kernel of its own (256 x 256 channels 5.3 -> 0.46 ms): 256 channels
# at 14x14, batch 16 (1 tile a channel) 12.2 / 17.4, batch 8 (0.5) 6.4 / 8.8, batch 4 (0.25)
# 3.8 / 4.4, batch 2 (0.12) 2.2 / 2.3, batch 1 (0.06) 1.31 / 1.14; 128 at 14x14, batch 2
# (0.25) 0.50 / 0.58, batch 1 (0.12) 0.40 / 0.32; 256 at 28x28, batch 1 (0.19) 3.1 / 4.3;
# 256 -> 512 at 14x14, batch 4 (0.12) 9.6 / 8.7. (Before, with the transform a float64 BLAS
# product, the line was 1.5 tiles a channel.)
WINOGRAD_TILES_PER_CHANNEL = 0.25
# ... unless the transformed kernel is larger than this, which every task then reads from
# memory, not the L3 cache: there the line stays at WINOGRAD_LARGE_TILES_PER_CHANNEL (512
# channels at 7x7, batch 16 (0.12 tiles a channel), 48 / 18.6 ms; at 14x14, batch 16 (0.5)
# 66 / 70, batch 8 (0.25) 34 / 34; at 28x28 it won from 0.19 tiles a channel: 28 / 34)
WINOGRAD_KERNEL_BYTES = 16 << 20
WINOGRAD_LARGE_TILES_PER_CHANNEL = 1.5
# output depth slices per task of a 3-D Winograd convolution (they share input transforms):
# at most WINOGRAD_DEPTH_BLOCK, and as many as keep a tile's transformed input over the
# block's input slices within WINOGRAD_DEPTH_BYTES per each of its 36 points (each GEMM reads
# them for every output slice). Eight slices a block at any channel count lost with many
# channels (forward, best ms, 1, 2, 4, 8 slices: 128 -> 256 channels at 8x28x28, batch 2,
# float32 67.6 / 65.1 / 66.2 / 81.6, float64 145 / 164 / 166 / 197; 64 channels at
# 16x112x112, float32 119 / 110 / 85 / 84, float64 192 / 166 / 161 / 172); the budget gives
# 4 and 1 slices for the first, 8 and 4 for the second.
WINOGRAD_DEPTH_BLOCK = 8
WINOGRAD_DEPTH_BYTES = 3 << 10
# A 2-D, undilated call with at least WINOGRAD_BLOCKS_FILTERS_PER_TILE filters per group a
# tile (1: its transformed kernel, 36 x C x K values, at least its transformed input, 36 x
# tiles x C) goes by blocks of filters (:func:`by_filter_blocks`): the tiles' transforms are
# made once for the batch and each block's kernel transform once, where the tasks of tiles
# read the whole transformed kernel once a task (512 channels at 7x7, batch 16: 37.7 MB, 16
# tasks). Figures measured with a launch of the thread pool per block and step (since, one
# launch for all blocks: 0-10% slower alone, steadier in the bench). Forward, forced and
# alternated, best ms, by blocks / by tasks of tiles: 512 at 7x7, batch 16, 12.1 / 41.8;
# ResNet-18's layer2 at batch 1 (128 at 28x28, 49 tiles) 0.56 / 0.65; 256 at 56x56, batch 1
# (196 tiles) 8.2 / 9.0; 256 at 14x14, batch 16 (256 tiles, as many as filters) 10.6 / 11.0;
# with more tiles than filters the tasks of tiles win: 128 at 56x56 (196 tiles) 3.3 / 3.2,
# batch 4 at 28x28 3.2 / 2.5; 64 at 112x112 4.2 / 2.8. Each block's transformed kernel is
# WINOGRAD_BLOCK_BYTES at most (512 at 7x7, batch 16: blocks of 2, 4, 8, 16 MB 11.8, 11.8,
# 11.5, 12.2 ms). By blocks Winograd takes calls from WINOGRAD_MIN_POSITIONS output positions,
# whatever the channels (against kvector, float32: 512 channels at 16x16, batch 1, 5.4 /
# 5.9, at 14x14 5.4 / 4.6, at 7x7 batch 5 (245 positions) 5.4 / 5.7, batch 8 6.8 / 9.0;
# 256 at 16x16 1.26 / 1.45, at 14x14 1.21 / 1.13; 512 -> 1024 at 16x16 11.3 / 12.0, batch 4
# 27.0 / 44.8; 128 at 16x16 0.35 / 0.44; float64 the same line: 512 at 7x7, batch 4 10.8 /
# 9.2, batch 8 13.9 / 17.8; 256 at 14x14, batch 2, 2.7 / 4.4); with fewer channels kvector
# goes first below WINOGRAD_AHEAD_MIN_MACS (64 at 16x16: 0.16 / 0.14).
WINOGRAD_BLOCKS_FILTERS_PER_TILE = 1
WINOGRAD_BLOCK_BYTES = 4 << 20
WINOGRAD_MIN_POSITIONS = 256


def computes(kernel, stride):
    """Whether these kernels compute the call at all: 3x3 kernels (any depth) at stride 1."""
    return tuple(kernel[1:]) == (3, 3) and tuple(stride) == (1, 1, 1)


def fits(kernel, stride, dilation, groups, c_per_group, k_per_group, n_batch, out_size,
         itemsize):
    """Whether Winograd is the way by its rules: it computes the call, with enough channels
    per group, and by blocks of filters enough output positions, by tasks of tiles enough
    output tiles (``n_batch`` images of ``out_size``) per channel."""
    if not (computes(kernel, stride)
            and min(c_per_group, k_per_group) >= WINOGRAD_MIN_CHANNELS):
        return False
    if by_filter_blocks(n_batch, k_per_group, kernel, dilation, out_size):
        return n_batch * math.prod(out_size) >= WINOGRAD_MIN_POSITIONS
    tiles = n_batch * out_size[0] * math.prod(_tile_grid(out_size))
    kernel_bytes = 36 * kernel[0] * groups * c_per_group * k_per_group * itemsize
    per_channel = (WINOGRAD_TILES_PER_CHANNEL if kernel_bytes <= WINOGRAD_KERNEL_BYTES
                   else WINOGRAD_LARGE_TILES_PER_CHANNEL)
    return tiles >= per_channel * max(c_per_group, k_per_group)


def by_filter_blocks(n_batch, k_per_group, kernel, dilation, out_size):
    """Whether :func:`conv_forward_winograd` takes the call by blocks of filters (by the rules
    above: 2-D, undilated, enough filters per group a tile), else by tasks of tiles."""
    tiles = n_batch * math.prod(_tile_grid(out_size))
    return (kernel[0] == 1 and out_size[0] == 1 and tuple(dilation[1:]) == (1, 1)
            and k_per_group >= WINOGRAD_BLOCKS_FILTERS_PER_TILE * tiles)


def _tile_grid(out_size):
    """Rows and columns of 4x4 output tiles per output slice."""
    return -(-out_size[1] // 4), -(-out_size[2] // 4)


def _sparse_rows(mat, terms):
    """Each row of a sparse transform matrix as ``terms`` (column, coefficient) pairs, short
    rows padded with zero coefficients on a column they already use."""
    idx = np.zeros((mat.shape[0], terms), dtype=np.int64)
    coef = np.zeros((mat.shape[0], terms))
    for i, row in enumerate(mat):
        cols = np.flatnonzero(row)
        idx[i, :cols.size], idx[i, cols.size:] = cols, cols[0]
        coef[i, :cols.size] = row[cols]
    return idx, coef


# F(4x4, 3x3) (Lavin & Gray, 2016), for the forward pass: a 6x6 input tile gives 4x4 outputs
# for 36 multiplications per channel pair where direct convolution takes 144.
F43_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                   [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], float)
F43_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
F43_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                   [0, 1, -1, 8, -8, 1]], float)
F43_IN = _sparse_rows(F43_BT, 4)
F43_OUT = _sparse_rows(F43_AT, 5)


def _tile_starts(out_n, dilation):
    """Per class of output positions modulo the dilation, the first output of each tile along
    an axis: a tile covers outputs ``start + dilation * (0..3)``."""
    return [np.arange(a, out_n, 4 * dilation, dtype=np.int64) for a in range(min(dilation, out_n))]


def _f43_weights(w, groups):
    """``U[g, (r, c), (i, j), k] = (G w[k, c, r] G^T)[i, j]``: per group the right-hand GEMM
    operands, depth taps ``r`` stacked with the channels so that one GEMM sums over both
    (:func:`K._f43_weights`)."""
    k_out, cg, kd = w.shape[:3]
    u = tasks.workspace("winograd weights", groups * 36 * kd * cg * (k_out // groups), w.dtype)
    return K._f43_weights(np.ascontiguousarray(w).reshape(k_out, cg, kd * 9), F43_G,
                          u.reshape(groups, kd * cg, 36, k_out // groups))


def conv_forward_winograd(x, w, bias, pad, dilation, groups, out_size):
    """A 3x3 convolution at stride 1 (any dilation, kernel depth, padding) by F(4x4, 3x3),
    channels last: by blocks of filters where :func:`by_filter_blocks` says, else by tasks
    of tiles. A task is one image, a block of output depth slices and a block of tile
    rows; its 36 GEMMs per group and output slice run on BLAS on the task's thread."""
    n_b, c_in = x.shape[:2]
    k_out, kd = w.shape[0], w.shape[2]
    cg, kg = c_in // groups, k_out // groups
    dtype = x.dtype
    bias = np.zeros(k_out, dtype) if bias is None else np.ascontiguousarray(bias, dtype=dtype)
    if by_filter_blocks(n_b, kg, w.shape[2:], dilation, out_size):
        return _by_filter_blocks(x, w, bias, pad, groups, out_size)
    u = _f43_weights(w, groups)
    in_idx, in_coef = F43_IN[0], F43_IN[1].astype(dtype)
    out_idx, out_coef = F43_OUT[0], F43_OUT[1].astype(dtype)
    y = np.empty((n_b, k_out, *out_size), dtype=dtype)
    step = (dilation[1], dilation[2])
    cols = np.concatenate(_tile_starts(out_size[2], dilation[2]))
    wp = int(cols.max()) + 5 * dilation[2] + 1
    # consecutive output depth slices share the input slices they overlap on (not so with a
    # depth dilation): a task transforms each of its input slices once
    fit = WINOGRAD_DEPTH_BYTES // (cg * x.itemsize) - kd + 1
    od_block = max(1, min(WINOGRAD_DEPTH_BLOCK, fit, out_size[0])) if dilation[0] == 1 else 1
    slices = od_block - 1 + kd
    row_bytes = 36 * (slices * cg + kg) * cols.size * x.itemsize
    # a block of tile rows lies in one class of rows modulo the dilation, and its copy holds
    # only the rows of that class (dilated 3x3 bench case: half the copying)
    # rows in enough blocks for every thread when images and depth blocks are fewer
    per_image = -(-numba.get_num_threads() // (n_b * -(-out_size[0] // od_block)))
    row_blocks = [starts[r0:r1] for starts in _tile_starts(out_size[1], dilation[1])
                  for r0, r1 in tasks.split(starts.size, row_bytes, per_image)]
    bounds = np.cumsum([0] + [rows.size for rows in row_blocks])
    task_list = [(n, od0, min(od0 + od_block, out_size[0]), s0, s1) for n in range(n_b)
                 for od0 in range(0, out_size[0], od_block)
                 for s0, s1 in zip(bounds[:-1], bounds[1:])]
    threads = min(numba.get_num_threads(), len(task_list))
    most_rows = max(rows.size for rows in row_blocks)
    most_tiles = most_rows * cols.size
    tall = max((int(rows[-1]) - int(rows[0])) // step[0] + 6 for rows in row_blocks)
    copies = [tasks.slot_rows(role, threads, size, dtype) for role, size in (
        ("winograd-in", slices * tall * wp * c_in),
        ("winograd-v", 36 * most_tiles * slices * cg),
        ("winograd-m", 36 * most_tiles * kg),
        ("winograd-out", od_block * 4 * most_rows * out_size[2] * k_out))]
    with tasks.one_blas_thread():
        K._winograd43(blas.gemm_function(dtype), x, u, bias, tuple(pad), tuple(dilation),
                      tuple(out_size), tasks.task_array(task_list),
                      np.concatenate(row_blocks), cols, wp, in_idx, in_coef, out_idx, out_coef,
                      threads, *copies, y)
    return y


def filter_blocks(groups, cg, kg, itemsize, threads):
    """Blocks of filters per group for :func:`_by_filter_blocks`: as few as keep each block's
    transformed kernel within WINOGRAD_BLOCK_BYTES, then as many as give the threads equal
    numbers of blocks (all the groups' together), at most one filter a block."""
    blocks = max(1, min(kg, -(-36 * cg * kg * itemsize // WINOGRAD_BLOCK_BYTES)))
    step = threads // math.gcd(groups, threads)  # groups x step blocks: a multiple
    return min(kg, -(-blocks // step) * step)


def _by_filter_blocks(x, w, bias, pad, groups, out_size):
    """:func:`conv_forward_winograd` of a 2-D convolution by blocks of filters: every tile of
    the batch transformed once, then per group and block of filters (their transformed
    kernel within WINOGRAD_BLOCK_BYTES, the blocks a multiple of the threads) the block's
    kernel transform, its 36 GEMMs over all the tiles and its output transform, into a
    channels-last copy of the output that takes the bias on its way back."""
    n_b, c_in = x.shape[:2]
    k_out = w.shape[0]
    cg, kg = c_in // groups, k_out // groups
    dtype = x.dtype
    th, tw = _tile_grid(out_size)
    tiles = n_b * th * tw
    threads = numba.get_num_threads()
    x_copy = tasks.slot_rows("winograd-in", min(threads, n_b * th),
                             6 * (4 * tw + 2) * c_in, dtype)
    v = tasks.workspace("winograd-v", 36 * tiles * c_in, dtype).reshape(36, tiles, c_in)
    K._winograd43_tiles_in(x, tuple(pad), th, tw, F43_IN[0], F43_IN[1].astype(dtype),
                           x_copy.shape[0], x_copy, v)
    blocks = filter_blocks(groups, cg, kg, x.itemsize, threads)
    slots = min(threads, groups * blocks)
    kb = -(-kg // blocks)
    yb = tasks.workspace("winograd-out", n_b * 4 * th * out_size[2] * k_out,
                         dtype).reshape(n_b, 4 * th, out_size[2], k_out)
    with tasks.one_blas_thread():
        K._winograd43_filter_blocks(
            blas.gemm_function(dtype), v, np.ascontiguousarray(w).reshape(k_out, cg, 9), F43_G,
            groups, blocks, th, tw, (out_size[1], out_size[2]), F43_OUT[0],
            F43_OUT[1].astype(dtype), slots,
            tasks.slot_rows("winograd weights", slots, cg * 36 * kb, dtype),
            tasks.slot_rows("winograd-m", slots, 36 * tiles * kb, dtype), yb)
    return K._winograd43_tiles_store(yb, bias, np.empty((n_b, k_out, *out_size), dtype))
