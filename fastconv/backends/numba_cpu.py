"""Numba CPU backend: the eight primitives of the reference backend, fast.

Nine ways to convolve, chosen per call (each primitive's ``*_ways`` lists them in the order
its rules prefer; the first that is exact for the operands' NaN and Inf is taken):

- batch lanes for many small images with few channels at stride 1 (:mod:`._numba_lanes`);
- the register-blocked direct kernel (``blocked``: four output channels x four vectors of
  positions in registers) for small calls and for few channels per group, forward and
  stride-1 transposed (:func:`_blocked_conv`);
- the direct kernels vectorised over output channels (``kvector``: six positions x 64
  float32 filters in registers, on a channels-last copy) with enough filters: forward and
  stride-1 transposed at stride 1 (above a few hundred million multiply-adds, where Winograd
  does not take them), weight gradients of few positions (:mod:`._numba_kvector`);
- depthwise convolutions on small planes vectorised over channels (``depthwise``), forward,
  stride-1 transposed and weight gradient (:mod:`._numba_depthwise`);
- grouped convolutions vectorised over groups (``grouped``): weight gradients, and the forward
  and stride-1 transposed of deep groups at training batches (:mod:`._numba_grouped`);
- strided transposed convolutions (strided input gradients) as one stride-1 transposed
  convolution per output phase (``phases``, :mod:`._numba_phases`) where those go to
  ``grouped``;
- Winograd F(4x4, 3x3) for 3x3 kernels at stride 1 with enough channels and tiles, forward
  and stride-1 transposed (:mod:`._numba_winograd`);
- packing (im2col / col2im) plus BLAS for the other GEMM-shaped convolutions
  (:mod:`._numba_gemm`);
- direct ``prange`` kernels for the rest (depthwise convolutions on larger planes; one input
  channel per group where lanes do not take them; stride-1 transposed convolutions as
  convolutions), and for pooling (:mod:`._numba_direct`, :mod:`._numba_pooling`;
  :mod:`._numba_kernels` names every kernel).

The BLAS paths run as tasks on Numba's threads, each calling BLAS itself (:mod:`._numba_tasks`,
:mod:`._numba_blas`). Either way each output element is written by one task in a fixed order:
no atomics, and results are bitwise repeatable for a fixed thread count.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
import threading

import numba
import numpy as np

from . import _numba_depthwise as depthwise
from . import _numba_gemm as gemm
from . import _numba_kernels as K
from . import _numba_lanes as lanes
from . import _numba_phases as phases
from . import _numba_tasks as tasks
from . import _numba_tuning as tuning
from . import _numba_winograd as winograd
from . import _small_pages as small_pages
from . import reference
from ._numba_band import _band_height

name = "numba"


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


def _direct_conv(x, w, bias, stride, pad, dilation, groups, out_size):
    """:func:`_conv_forward` with output channels chunked so that there are enough tasks."""
    n_tasks = x.shape[0] * groups
    kg = w.shape[0] // groups
    chunks = min(kg, -(-4 * numba.get_num_threads() // max(n_tasks, 1)))
    y = np.empty((x.shape[0], w.shape[0], *out_size), dtype=x.dtype)
    return K._conv_forward(x, w, K._bias_array(bias, x.dtype), stride, pad, dilation, groups,
                           out_size, -(-kg // max(chunks, 1)), y)


# Every way this backend has, in the order `fastconv bench --ways` lists them.
WAYS = ("lanes", "blocked", "kvector", "depthwise", "grouped", "winograd", "phases", "gemm",
        "direct")

# Ways whose arithmetic mixes neighbouring values (Winograd's transforms): one NaN or Inf
# operand spreads over a whole tile, or meets another as inf - inf, where PyTorch's sums give
# NaN or +-inf at exactly the outputs whose window holds it. They step aside for such operands.
MIXING = frozenset({"winograd"})


# Where the register-blocked direct kernel (`blocked`) is chosen, from the zoo suite's
# layers, each way forced and timed interleaved (forward; docs/benchmarks.md):
# - calls of at most BLOCKED_MAX_MACS multiply-adds, before Winograd: one image, where packing
#   and Winograd's transforms do not pay (ResNet-18's 3x3 layers at batch 1: 0.9-1.3 ms
#   blocked, 1.3-2.2 ms packing + BLAS or Winograd);
# - at most BLOCKED_MAX_DEPTH input channels x taps per group, at any size: few channels or
#   groups of few (ResNet-18's 7x7 stem at batch 16 18 vs 31 ms, ResNeXt's 4 channels per
#   group 4.5 vs 8.9 ms); with more, OpenBLAS's GEMMs run nearer the peak (128 channels x 9
#   taps at stride 2, batch 16: 22.7 ms blocked, 16.9 ms packed);
# - or calls of at most BLOCKED_MAX_POSITIONS output positions (images x positions) however
#   deep, before Winograd: BLAS's products are then too narrow (C3D's conv5a at batch 1, 98
#   positions, 27 taps of 512 channels: 5.2-5.6 ms blocked, 7.4-7.8 packing + BLAS, PyTorch
#   6.0-6.2; 1024 channels at 7x7: 5.9 against 7.0; 512 -> 1024 at 7x7, batch 2: 4.6 against
#   4.8); forward only: the stride-1 transposed convolution lost there (C3D's conv5a input
#   gradient at batch 1: 11.5 against 9.1 ms; 1024 channels at 7x7: 14.8 against 6.2);
# - or calls, forward and stride-1 transposed, of which more than KVECTOR_MAX_PADDED of the
#   multiply-adds read depth padding, whole slices, which this kernel skips (C3D's conv5a,
#   33% in depth, 45% in all: input gradient at batch 2 15.2 ms against 18.0 kvector and 19.3
#   packing + BLAS, at batch 1 8.9 against 9.0 packing + BLAS);
# - never 1x1 kernels (the sums go to memory after every 16 channels) nor fewer than four
#   filters per group (a depthwise convolution would compute four times its work).
BLOCKED = True
BLOCKED_MAX_MACS = 1 << 28
BLOCKED_MAX_POSITIONS = 128
BLOCKED_MAX_DEPTH = 512

# Elements of a band's copy over all of a task's input channels in the blocked direct kernel:
# the copy stays in the L2 cache while every output channel reads it (1 << 16: VGG's conv5_1
# at batch 1 6.3 ms, 1 << 17: 4.3 ms, the weights then read by fewer bands).
BLOCKED_BAND_ELEMS = 1 << 17
# ... but where a group's weights are at most BLOCKED_FEW_WEIGHTS elements, re-reading them per
# band costs little, so a call with too few (image, group, depth slice) tasks for the threads
# is cut into more bands before its output channels are cut into chunks (each chunk copies
# the same band again).
BLOCKED_FEW_WEIGHTS = 1 << 16


def _blocked_fits(n_batch, cg, kg, kernel, out_size, forward=False, padded=0.0):
    """Whether the blocked kernel is the way, by the rules above: ``"small"`` (before
    Winograd), ``"thin"`` (after it), or ``None``; ``forward``: a forward convolution, not a
    stride-1 transposed one; ``padded``: the share of its multiply-adds that read depth
    padding (:func:`_depth_padded_share`), which the blocked kernel skips."""
    taps = math.prod(kernel)
    if not BLOCKED or taps == 1 or kg < 4:
        return None
    positions = n_batch * math.prod(out_size)
    if (positions * kg * cg * taps <= BLOCKED_MAX_MACS
            or (forward and positions <= BLOCKED_MAX_POSITIONS)
            or padded > KVECTOR_MAX_PADDED):
        return "small"
    return "thin" if cg * taps <= BLOCKED_MAX_DEPTH else None


def _blocked_conv(x, w, bias, stride, pad, dilation, groups, out_size):
    """:func:`K._conv_forward_blocked` on a band height and channel chunks that fill the
    threads: bands within ``BLOCKED_BAND_ELEMS``, and output channels split in chunks of
    four when there are fewer tasks than ``4 * threads``."""
    k_out, cg, kernel = w.shape[0], w.shape[1], w.shape[2:]
    kg = k_out // groups
    kg4 = -(-kg // 4) * 4
    w4 = np.ascontiguousarray(w).reshape(groups, kg, cg, *kernel)
    if kg4 != kg:
        w4 = np.concatenate([w4, np.zeros((groups, kg4 - kg, cg, *kernel), x.dtype)], axis=1)
    bias4 = np.zeros((groups, kg4), dtype=x.dtype)
    if bias is not None:
        bias4[:, :kg] = np.asarray(bias, dtype=x.dtype).reshape(groups, kg)
    (kd, kh, kw), (_, sh, sw), (_, dh, dw) = kernel, stride, dilation
    pitch = ((out_size[2] - 1) * sw + (kw - 1) * dw + sw) // sw
    fit = max(1, BLOCKED_BAND_ELEMS // (cg * kd * pitch * sw))
    band = max(1, min(out_size[1], (fit - (kh - 1) * dh - 1) // sh + 1))
    outer = x.shape[0] * groups * out_size[0]  # tasks before bands and chunks
    threads = numba.get_num_threads()
    wanted = 4 * threads
    few_weights = kg4 * cg * math.prod(kernel) <= BLOCKED_FEW_WEIGHTS
    if few_weights and outer * -(-out_size[1] // band) < wanted:
        band, k_chunk = _blocked_split(outer, out_size[1], out_size[2], pitch, band, kg4,
                                       cg * kd, math.prod(kernel), (sh, sw, kh, dh),
                                       4 * K.group_vector(x.itemsize), threads)
    else:
        n_tasks = outer * -(-out_size[1] // band)
        chunks = min(kg4 // 4, -(-wanted // max(n_tasks, 1)))
        k_chunk = 4 * -(-(kg4 // 4) // chunks)
    y = np.empty((x.shape[0], k_out, *out_size), dtype=x.dtype)
    return K._conv_forward_blocked(x, w4, bias4.reshape(-1), stride, pad, dilation, kg,
                                   out_size, band, k_chunk, y)


@functools.lru_cache(maxsize=256)
def _blocked_split(outer, rows, columns, pitch, most, kg4, depth, taps, steps, run, threads):
    """``(band, k_chunk)`` for the blocked kernel's tasks where there are too few images
    (``outer`` tasks before bands and chunks) for the threads and the weights are few: the
    split of ``rows`` output rows into bands of at most ``most`` and of the ``kg4`` filters
    into chunks whose busiest thread's work is least. A task computes its band's rows
    ``pitch`` apart in runs of ``run`` positions, the last run whole, for every filter of its
    chunk (``depth`` channels x slices, ``taps`` taps), after copying the band (``steps``:
    the strides, kernel height and dilation of its rows). Within 3% of the least, the split
    with the most tasks (MobileNetV2's stem keeps its eight bands of 14 rows, 1% more work
    than two of 56). (Bands of a quarter of the rows per thread left the last run of
    each band mostly empty: AlexNet's 11x11 stem at batch 1, 55 rows of 57, kernel alone
    0.78 ms in eight bands of 7, 0.68 in one band and two chunks.)"""
    sh, sw, kh, dh = steps
    costs = []
    for band in range(1, most + 1):
        bands = -(-rows // band)
        span = -(-((band - 1) * pitch + columns) // run) * run
        copy = depth * sh * sw * _band_height.py_func(band, sh, kh, dh) * pitch
        for chunks in range(1, kg4 // 4 + 1):
            k_chunk = 4 * -(-(kg4 // 4) // chunks)
            tasks = outer * bands * -(-kg4 // k_chunk)
            # multiply-adds of a vector (a copied element counted as one)
            work = -(-tasks // threads) * (k_chunk * span * depth * taps // run * 4 + copy)
            costs.append((work, -tasks, band, k_chunk))
    least = min(costs)[0]
    _, _, band, k_chunk = min((c[1], c[0], c[2], c[3]) for c in costs if c[0] <= 1.03 * least)
    return band, k_chunk


# Where the direct kernels vectorised over output channels (`kvector`, :mod:`._numba_kvector`;
# CPUs with AVX-512) are chosen, from the zoo suite's layers, each way forced and timed
# interleaved (docs/benchmarks.md): forward, stride-1 transposed and weight gradient of calls of
# at most KVECTOR_MAX_MACS multiply-adds, ahead of `blocked` (ResNet-18's layer1 to layer3 at
# batch 1: 0.7-1.3 ms against 1.0-1.4 ms blocked; weight gradients 1.1-1.9 against 1.2-3.0
# ms) and of Winograd where it is not ahead (below), given
# - a whole block of filters per group (64 float32, 32 float64: with fewer the zero filler is
#   computed too; ResNeXt's 4-32 per group lost 1.1-10x) and
#   KVECTOR_MIN_CHANNELS input channels per group (each channel is one step of the inner loop:
#   a 3-channel stem lost 0.5x), and KVECTOR_MIN_DEPTH input channels x taps;
# - at most KVECTOR_MAX_PADDED of its multiply-adds reading depth padding, forward and
#   stride-1 transposed: `blocked` skips the depth slices that fall in the padding, kvector
#   computes them (C3D's conv5a, 33% in depth, at batch 2, each way forced and alternated
#   three times, best ms: forward 11.8 blocked against 14.8, input gradient 14.1 against
#   16.8; PyTorch 10.9 and 10.8), and `blocked` takes those calls at any size. Padding of
#   rows and columns does not count: until the thirteenth session it did, and 2-D calls of
#   few positions with 30-40% of their taps in the padding went to `blocked`, which lost
#   2-5x there (forward, forced, best ms, blocked / kvector: 384 -> 768 channels at stride 2
#   on 7x7, batch 1, 1.72 / 0.72; 512 at 4x4, batch 1, 1.54 / 0.62, batch 2 2.87 / 1.00; 512
#   at 3x3, 40%, 1.51 / 0.50; 128 -> 256 5x5 at stride 2 on 9x9 0.57 / 0.33);
# - at least KVECTOR_MIN_POSITIONS output positions in the batch, or (forward) a kernel of
#   more than one tap within that padding limit.
#   Measured at batch 1 (`fastconv bench --ways`, float32, 2 threads), once each thread
#   copies the weights it uses in vector squares: ResNet-18's layer4.0 (stride 2, 7x7, 9%
#   padded) 0.80 ms against 1.18-1.21 blocked, its layer4 (stride 1, 7x7, 18%) 1.32 against
#   1.32 then, 1.49-1.56 against 1.65-1.68 since (alternated, four rounds), C3D's conv5a
#   (depth 2, 45%) 8.2 against 6.0; not 1x1 kernels, which BLAS takes at
#   batch 1 (below: ResNet-50's layer4.conv3 at 7x7 0.99x PyTorch on BLAS, 0.90x on kvector);
# - for 1x1 kernels, only images of at most KVECTOR_THIN_IMAGE positions, whose per-image
#   GEMMs are too thin for BLAS (ResNet-50's 512 -> 2048 at 7x7, batch 16: forward 6.6
#   against 8.5 ms, input gradient 7.7 against 9.2; at 14x14, 1024 -> 256: 7.4 against 6.4).
#   Elsewhere BLAS needs no packing, and the copies in and out of the channels-last layout
#   cost more than its GEMM loses, at batch 1 too since BLAS runs on Numba's threads
#   (ResNet-50's 1x1 layers at batch 1: forward 0.23-0.78 ms against 0.33-1.02 kvector,
#   input gradient 0.24-0.80 against 0.37-1.49; MobileNetV2's 576 -> 96 projection at 14x14
#   even).
# Larger calls (training batches), once the transposed kernel's flip went into the copy of the
# weights, each way forced and timed per primitive on the zoo suite:
# - forward and input gradient at stride 1 where Winograd does not take the call: ResNet-18's
#   layer4 at batch 16 15.1 and 15.2 ms against 16.3 and 20.7 packing + BLAS, VGG's conv5_1
#   13.2 / 12.8 against 14.9 / 15.2, U-Net's bottleneck 35.4 / 36.2 against 37.8 / 37.8,
#   AlexNet's 5x5 24.5 / 27.9 against 33.5 / 30.1. Winograd stays ahead where it takes the
#   call (below: ResNet-18's layer1 at batch 16: 12.3 against 15.1 ms), and the
#   direct kernels for sums of fewer than KVECTOR_LARGE_MIN_DEPTH channels x taps, whose
#   write-out costs as much as their sums (WaveNet's 32-channel kernel-2 layers at batch 8:
#   11.3 against 9.5 ms `blocked`). M5's 128 x 3 at batch 64 lost at first (16.7 against
#   15.1) and wins since the register-transposed copies (training step 51.3-52.7 against
#   53.2-54.6 ms, forward, input and weight gradient kvector against blocked / blocked /
#   gemm, alternated three times in one process): the threshold sits just below it;
# - at stride 2 too, forward and weight gradient, since the copies went by register
#   transposes (each way forced, per primitive, alternated three times in one process
#   without PyTorch calls between, best ms, kvector against packing + BLAS): ResNet-18's
#   layer4.0 at batch 16 9.1 / 10.0 and 10.1 / 10.9, layer2.0 10.0 / 11.1 and 11.6 / 13.1,
#   ResNet-50's layer2.0.conv2 21.1 / 21.9 and 25.0 / 25.9 (packing + BLAS had won there,
#   18.6 against 22.9 forward). Not float64 weight gradients at stride 2, where its blocks
#   hold half the filters: layer2.0.conv2 53.9 / 43.3, layer2.0 27.7 / 22.2 (forward even:
#   41.9 / 43.1, 21.6 / 21.0);
# - weight gradients at stride 1 with more than one tap, the same depth as the forward's
#   (once its tasks took every tap of a chunk of positions, its copy of the output gradient
#   went by register transposes, and ranges of positions evened out its threads' work; each
#   way forced, one process): ResNet-18's layer1 at batch 16 15.3 against 23.1 ms packing +
#   BLAS, layer3 12.9 against 14.4, VGG's conv1_2 at batch 4 66.4 against 90.2, AlexNet's
#   5x5 23.5 against 30.1, C3D's conv3a at batch 2 74.6 against 83.8; below that depth the
#   copies cost as much as the sums or more (WaveNet's 32 x 2: 13.0 against 10.4 ms).
# Winograd, where its rules take a call (_numba_winograd: enough channels and tiles), goes
# ahead of the direct kernels from WINOGRAD_AHEAD_MIN_MACS multiply-adds, 3-D kernels too;
# below, its fixed costs (the kernel's transform, the copies) decide. Forward, each way forced
# and alternated four times, best ms, batch 1 unless said: ResNet-18's layer1 1.10 against
# 1.16 kvector, C3D's conv3a 37.8 against 49.6 (its
# training step at batch 2, forward and input gradient Winograd, 232 against 309 ms all
# kvector), 96 channels at 56x56 2.20 against 3.37, 48 at 112x112 1.83 against 2.52 blocked,
# 64 -> 32 at 56x56 (58 M) 0.49 against 0.65 blocked; 32 at 56x56 (29 M) 0.42 against 0.35.
WINOGRAD_AHEAD_MIN_MACS = 1 << 25

KVECTOR = True
KVECTOR_MAX_MACS = 1 << 28
KVECTOR_THIN_IMAGE = 64
KVECTOR_LARGE_MIN_DEPTH = 384
KVECTOR_MIN_BLOCKS = 1
KVECTOR_MIN_CHANNELS = 16
KVECTOR_MIN_DEPTH = 64
KVECTOR_MIN_POSITIONS = 128
KVECTOR_MAX_PADDED = 0.25
# Positions of one task's chunk (its sums buffer stays in the L2 cache), and weight elements of
# one block of input channels (read from the L2 cache by every position of the chunk).
KVECTOR_CHUNK = 240
KVECTOR_WEIGHT_ELEMS = 1 << 16
# Calls of at most this many positions (the batch's) lay their weight blocks out channel-major
# (K._block_strides): each block is copied for few positions, and that copy is twice as fast
# so (ResNet-18's layer4 at batch 1, forward, one process alternating: 1.48-1.57 -> 1.40-1.43
# ms, layer4.0 0.76-0.77 -> 0.70-0.71); with many its 1-4% slower sums cost more (layer3 at
# batch 16, forward + backward: 54.7 -> 56.8 ms all channel-major).
KVECTOR_CHANNEL_MAJOR_POSITIONS = 512
# The forward of `kvector` (and its stride-1 transposed) skips the taps that read padding,
# block by block of positions sorted by their windows' taps, where the share of (position,
# tap) pairs in the padding times the channels per group comes to at least this many steps
# of the sums a position: the sorting costs a position about a dozen steps. ResNet-18's
# layer4 at batch 1 (18% in the padding, x 512 x 9): 1.38-1.59 -> 1.24-1.30 ms; below the
# line (the 3-channel stems, 1-2%; M5's conv2, 0.1%) the kernel that runs every tap.
KVECTOR_SKIP_MIN_STEPS = 16
# Positions of the weight gradient's chunks (their gradient vectors stay in the L1 cache), and
# the most bytes of sums a task keeps (all its taps' and channels' sums, read and written once
# per chunk: in the L2 cache).
KVECTOR_GRAD_CHUNK = 64
KVECTOR_GRAD_SUMS_BYTES = 1 << 20


def _read_extent(kernel, stride, dilation, out_size):
    """The padded input that ``out_size`` outputs read, per spatial axis."""
    return tuple((o - 1) * s + (k - 1) * d + 1
                 for o, s, k, d in zip(out_size, stride, kernel, dilation))


def _position_chunk(total, blocks, most=KVECTOR_CHUNK):
    """Positions per task of the vectorised direct kernels (``kvector``, ``grouped``) over
    ``total`` positions and ``blocks`` blocks of filters: chunks of at most ``most`` that
    give every thread four tasks, each a multiple of the register block."""
    chunks = max(-(-4 * numba.get_num_threads() // blocks), -(-total // most))
    step = K.KVECTOR_POSITIONS
    return -(-total // chunks // step) * step


def _weight_grad_split(cblocks, blocks, sums_bytes):
    """How the vectorised weight gradients cut their work over ``blocks`` blocks (of filters
    in ``kvector``, of groups in ``grouped``): ``(parts, ranges)``, ranges of ``cblocks``
    blocks of channels that keep a task's sums (``sums_bytes`` in all) within
    KVECTOR_GRAD_SUMS_BYTES, and ranges of positions, each with its own partial sums of the
    whole gradient, that make the tasks a multiple of the threads. Each range of channels
    streams the whole output gradient once more, a range of positions only its share:
    ResNet-18's layer1 at batch 16 (one block of 64 filters, eleven of six channels) took
    12.7 ms in eight ranges of channels, two threads doing 8 and 3 of the blocks, and 10.5 ms
    in one range of channels and two of positions (its kernel alone, one process)."""
    parts = min(cblocks, -(-sums_bytes // KVECTOR_GRAD_SUMS_BYTES))
    threads = numba.get_num_threads()
    return parts, threads // math.gcd(blocks * parts, threads)


def _kvector_input(x, pad, stride, dilation, kernel, out_size):
    """``x`` copied channels last, padded to what ``out_size`` positions read, with
    ``KVECTOR_POSITIONS`` zeros past its end (a block of six channels past a group's last, in
    the weight gradient, reads and drops them)."""
    n_b, c_in = x.shape[:2]
    extent = _read_extent(kernel, stride, dilation, out_size)
    size = n_b * math.prod(extent) * c_in
    flat = tasks.workspace("kvector input", size + K.KVECTOR_POSITIONS, x.dtype)
    flat[size:] = 0
    return K._channels_last_padded(x, pad, flat[:size].reshape(n_b, *extent, c_in))


def _kvector_conv(x, w, bias, stride, pad, dilation, groups, out_size, transposed=False):
    """:func:`K._conv_forward_kvector` on a channels-last copy of ``x``, in chunks of positions
    that give every thread four tasks, each thread copying the blocks of ``w`` it uses (four
    vectors of filters) into its row of a scratch. With ``transposed``, ``w`` is a transposed
    convolution's weights, computed at stride 1 as a convolution (:func:`_as_conv`) whose
    flipped kernel the copy into blocks makes."""
    n_b = x.shape[0]
    kernel = w.shape[2:]
    cg, kg = (w.shape[0] // groups, w.shape[1]) if transposed else (w.shape[1],
                                                                     w.shape[0] // groups)
    k_out, taps = kg * groups, math.prod(kernel)
    kb = K.block_filters(x.itemsize)
    kblocks = -(-kg // kb)
    xp = _kvector_input(x, pad, stride, dilation, kernel, out_size)
    bias_b = np.zeros((groups, kblocks * kb), x.dtype)
    if bias is not None:
        bias_b[:, :kg] = np.asarray(bias, dtype=x.dtype).reshape(groups, kg)
    chunk = _position_chunk(n_b * math.prod(out_size), groups * kblocks)
    c_block = max(1, KVECTOR_WEIGHT_ELEMS // (taps * kb))
    threads = numba.get_num_threads()
    blocks = tasks.workspace("kvector weights", threads * taps * cg * kb,
                             x.dtype).reshape(threads, -1)
    y = np.empty((n_b, k_out, *out_size), dtype=x.dtype)
    channel_major = n_b * math.prod(out_size) <= KVECTOR_CHANNEL_MAJOR_POSITIONS
    wf = np.ascontiguousarray(w).reshape(*w.shape[:2], taps)
    # the taps that read only padding skipped where that saves more than sorting the
    # positions by their windows costs
    padded = _padded_share(x.shape[2:], kernel, stride, pad, dilation, out_size)
    if padded * cg * taps >= KVECTOR_SKIP_MIN_STEPS:
        data_hi = tuple(p + n for p, n in zip(pad, x.shape[2:]))  # where the input ends
        return K._conv_forward_kvector_skipping(xp, wf, groups, transposed, bias_b.reshape(-1),
                                                stride, dilation, kernel, out_size, tuple(pad),
                                                data_hi, chunk, c_block, channel_major, blocks,
                                                y)
    return K._conv_forward_kvector(xp, wf, groups, transposed, bias_b.reshape(-1), stride,
                                   dilation, kernel, out_size, chunk, c_block, channel_major,
                                   blocks, y)


def _kvector_weight_grad(x, gy, stride, pad, dilation, groups, kernel):
    """:func:`K._conv_weight_grad_kvector` on channels-last copies of ``x`` and ``gy``, the
    work cut by :func:`_weight_grad_split`."""
    n_b, c_in = x.shape[:2]
    k_out, out_size = gy.shape[1], gy.shape[2:]
    cg, kg, taps = c_in // groups, k_out // groups, math.prod(kernel)
    kb = K.block_filters(x.itemsize)
    kblocks = -(-kg // kb)
    xp = _kvector_input(x, pad, stride, dilation, kernel, out_size)
    gyc = K._grad_channels_last(gy, groups, kblocks, kb,
                                tasks.workspace("kvector gradient", n_b * math.prod(out_size)
                                                * groups * kblocks * kb, x.dtype))
    cblocks = -(-cg // K.KVECTOR_POSITIONS)
    sums_bytes = taps * cblocks * K.KVECTOR_POSITIONS * kb * x.itemsize
    parts, ranges = _weight_grad_split(cblocks, groups * kblocks, sums_bytes)
    gw = np.empty((ranges, k_out, cg, taps), dtype=x.dtype)
    K._conv_weight_grad_kvector(xp, gyc, stride, dilation, kernel, groups, kblocks, cg, kg,
                                out_size, KVECTOR_GRAD_CHUNK, parts, gw)
    return tasks.sum_slots(gw, ranges).reshape(k_out, cg, *kernel)


# Where depthwise convolutions (one input and one output channel per group) are computed
# vectorised over channels (`depthwise`, :mod:`._numba_depthwise`), each way forced and timed
# against the direct kernels (MobileNetV2's layers, float32): on output planes of at most
# DEPTHWISE_MAX_POSITIONS positions, where the direct kernels' rows are short (960 x 7x7 at
# batch 16: forward 0.78 against 2.7 ms, input gradient 0.84 against 2.7, weight gradient 1.1
# against 3.2; 576 x 14x14: 1.5 / 1.5 / 1.7 against 2.5 / 2.6 / 4.2; 192 x 28x28 at stride 2:
# 1.1 / - / 1.1 against 2.2 / - / 2.7); at 28x28 and more the direct kernels' long rows win
# (192 x 28x28: 2.3 against 1.7 ms forward, 144 x 56x56: 8.1 against 5.6), as they do for
# fewer than DEPTHWISE_MIN_CHANNELS channels (a vector's worth). The limit grows with the
# stride's product: strided rows cost the direct kernels more per output than they cost
# `depthwise` (144 x 56x56 at stride 2, 28x28 out, batch 16: forward 2.7 against 3.1 ms,
# weight gradient 2.9 against 3.6; 96 x 112x112 at stride 2, 56x56 out: 8.4 / 8.3 against
# 8.6 / 8.9, and at batch 1 0.52 / 0.58 against 0.43 / 0.48, so no further).
DEPTHWISE_MAX_POSITIONS = 256
DEPTHWISE_MIN_CHANNELS = 16
# Weight gradients go to `depthwise` on planes of any size, given a vector's worth of channels
# and a task (an image's vector of channels) for every thread: its sums stay in registers over
# every position, where the direct kernel's go to memory per row (weight gradient alone, each
# way forced and alternated three times, best ms: 144 x 56x56 at batch 16 4.1 against 7.6
# direct, batch 1 0.23 against 0.36; 32 x 112x112 at batch 4 0.67 against 0.91, batch 1 0.26
# against 0.29; 240 x 28x28 5x5 at batch 8 0.92 against 3.8; 96 x 112x112 at stride 2, batch
# 8, 2.8 against 3.9). With fewer tasks than threads it lost (16 x 224x224 at batch 1: 0.80
# against 0.41, one task).


def _depthwise_grad_fits(n_batch, channels, cg, kg, out_size, stride, itemsize):
    """Whether ``depthwise`` takes a weight gradient, by the rules above (``None``: it cannot
    compute it)."""
    fits = _depthwise_fits(channels, cg, kg, out_size, stride)
    if fits is None or fits:
        return fits
    tasks_n = n_batch * -(-channels // depthwise.channel_vector(itemsize))
    return channels >= DEPTHWISE_MIN_CHANNELS and tasks_n >= numba.get_num_threads()


def _depthwise_fits(channels, cg, kg, out_size, stride):
    """Whether ``depthwise`` is the way, by the rules above (``None``: it cannot compute the
    call, not a depthwise convolution)."""
    if not (cg == 1 and kg == 1):
        return None
    return (channels >= DEPTHWISE_MIN_CHANNELS
            and math.prod(out_size) <= DEPTHWISE_MAX_POSITIONS * math.prod(stride))


def _depthwise_conv(x, w, bias, stride, pad, dilation, out_size, transposed=False):
    """:func:`K._depthwise_forward`. With ``transposed``, ``w`` is a depthwise transposed
    convolution's weights, computed at stride 1 as the convolution of the flipped kernel
    (``pad`` already the convolution's)."""
    c_n, kernel = x.shape[1], w.shape[2:]
    y = np.empty((x.shape[0], c_n, *out_size), dtype=x.dtype)
    return K._depthwise_forward(x, np.ascontiguousarray(w).reshape(c_n, -1),
                                K._bias_array(bias, x.dtype), transposed, stride, pad,
                                dilation, kernel,
                                _read_extent(kernel, stride, dilation, out_size),
                                numba.get_num_threads(), y)


def _depthwise_weight_grad(x, gy, stride, pad, dilation, kernel):
    """:func:`K._depthwise_weight_grad`'s sums per image, added image by image."""
    n_b, c_n = x.shape[:2]
    taps, vec = math.prod(kernel), depthwise.channel_vector(x.itemsize)
    c_pad = -(-c_n // vec) * vec
    partial = tasks.aligned_empty(n_b * taps * c_pad, x.dtype).reshape(n_b, taps, c_pad)
    K._depthwise_weight_grad(x, gy, stride, pad, dilation, kernel,
                             _read_extent(kernel, stride, dilation, gy.shape[2:]),
                             numba.get_num_threads(), partial)
    return np.ascontiguousarray(partial.sum(axis=0)[:, :c_n].T).reshape(c_n, 1, *kernel)


# Where grouped convolutions are computed vectorised over groups (`grouped`,
# :mod:`._numba_grouped`; CPUs with AVX-512), each way forced and timed on ResNeXt-50's grouped
# layers (32 groups of 4 to 32 channels, float32) and a RegNet-like one (29 groups of 8):
# groups that fill at least GROUPED_MIN_FILL of the vectors of groups (16 groups float32, 8
# float64: 12 groups and more, one vector; empty lanes are computed too), and at least
# GROUPED_MIN_FILTERS filters per group (with fewer, the block's zero filters are); then
# - weight gradients always: 32 groups of 16 at 14x14, batch 16, 3.9 against 11.6 ms packing
#   + BLAS; at batch 1 0.38 against 1.4 ms (`kvector`); 32 groups of 4 at 56x56, batch 16,
#   15.8 against 18.3 ms direct;
# - forward and stride-1 transposed from GROUPED_MIN_DEPTH channels x taps per group, or
#   GROUPED_MIN_CHANNELS channels per group whatever the kernel, in whole vectors of groups:
#   32 groups of 16 at 14x14, batch 16, 3.5 / 4.0 against 6.2 / 5.3 ms `blocked`; 32 of 32
#   at stride 2, batch 4, 1.7 against 2.1 ms; 32 of 32 at 7x7, batch 16, 1x1 1.3 against 1.8
#   ms, 2x2 2.0 against 2.6 (the kernels of a strided input gradient's phases); at 14x14 1x1
#   even (4.9 / 4.9 / 4.7 gemm), 2x2 7.5 against 10.4. Single images too, since the groups-
#   last copies went by register squares (forward, each way forced and alternated four
#   times, best ms: 32 of 16 at 14x14 0.22 against 0.27, at 7x7 0.11 against 0.14; 32 of 32
#   at stride 2 0.31 against 0.40, at 7x7 stride 1 0.29 against 0.28; 48 of 16 at 14x14
#   0.33 against 0.39; 16 of 16 at 14x14 0.157 against 0.145, at 28x28 0.40 against 0.38).
#   A vector partly empty computes its empty lanes too, and loses: 24 groups of 16 at 14x14,
#   batch 1, 0.30 against 0.21 ms, batch 16 3.7 against 3.2; 28x28 0.80 against 0.57. The
#   blocked kernel keeps fewer channels per group (8 x 9 taps, batch 16: 4.5 against 6.2 ms;
#   16 x 1x1 1.4 against 1.8, 16 x 2x2 2.0 against 2.3).
GROUPED = True
GROUPED_MIN_FILL = 0.75
GROUPED_MIN_FILTERS = 4
GROUPED_MIN_DEPTH = 128
GROUPED_MIN_CHANNELS = 32
GROUPED_WHOLE_VECTORS = True
# Positions of one task's chunk: the chunk's input, read by each block of filters in turn
# (a vector of groups' channels a position: 1-2 KB), stays in the L2 cache
GROUPED_CHUNK = 120


def _grouped_fits(groups, cg, kg, itemsize):
    """Whether ``grouped`` can take the call by the rules above (``None``: it cannot compute
    it, one group, or no AVX-512)."""
    if groups == 1 or not (GROUPED and lanes.WIDE_VECTORS):
        return None
    vec = K.group_vector(itemsize)
    return (groups >= GROUPED_MIN_FILL * -(-groups // vec) * vec
            and kg >= GROUPED_MIN_FILTERS and not (cg == 1 and kg == 1))


def _grouped_forward_fits(groups, cg, kg, kernel, itemsize):
    """Whether ``grouped`` takes a convolution (forward, or stride-1 transposed) by the rules
    above (``None``: it cannot compute it)."""
    fits = _grouped_fits(groups, cg, kg, itemsize)
    taps = math.prod(kernel)
    return fits and (cg * taps >= GROUPED_MIN_DEPTH or cg >= GROUPED_MIN_CHANNELS) and (
        groups % K.group_vector(itemsize) == 0 or not GROUPED_WHOLE_VECTORS)


def _unaligned_width(width, itemsize):
    """``width`` elements, one 64-byte vector more where they are a multiple of 512 bytes: rows
    a power of two apart fall into a fraction of the L1 cache's sets (with the copy per vector
    of groups, the gradient's copy for ResNeXt's 32 x 32 filters at 7x7, batch 16: 1.0 -> 0.3
    ms)."""
    return width + (64 // itemsize if width * itemsize % 512 == 0 else 0)


def _grouped_copy(x, pad, groups, extent, role):
    """``x`` copied groups last (:func:`K._groups_last_padded`), shifted by ``pad`` into
    ``extent`` per spatial axis, 64-byte aligned, with a register block's worth of channel
    vectors of zeros past its end (a block of six channels past a group's last, or of four
    filters, in the weight gradient, reads and drops them); kept in the workspace ``role``."""
    n_b, c_in = x.shape[:2]
    vec = K.group_vector(x.itemsize)
    width = _unaligned_width(c_in // groups * vec, x.itemsize)
    size = -(-groups // vec) * n_b * math.prod(extent) * width
    flat = tasks.workspace(role, size + K.GROUPED_POSITIONS * vec, x.dtype)
    flat[size:] = 0
    return K._groups_last_padded(x, pad, groups,
                                 flat[:size].reshape(-(-groups // vec), n_b, *extent, width))


# Within `_one_grouped_copy`, the grouped calls on one array read one copy of it:
# - a strided transposed convolution's phases (_numba_phases) each copied the same input,
#   padded a little differently (ResNeXt's 32 x 32 at stride 2, batch 16: its backward's
#   copies into the groups-last layout, the input's for the weight gradient and the four of
#   the output gradient, 2.96 -> 2.12 ms with one copy for the phases; the input gradient
#   7.7-8.1 -> 7.0-7.4 ms);
# - a convolution's backward (`one_copy_of`) copied the output gradient twice, padded for the
#   input gradient and again for the weight gradient.
# Holds a _SharedCopy, its padding and extent None until a call or an inner block sets them.
_shared_grouped_input = contextvars.ContextVar("fastconv_grouped_input", default=None)


@dataclasses.dataclass
class _SharedCopy:
    """The array a `_one_grouped_copy` block shares, the padding and extent of its copy, the
    copy (None before its first use) and the workspace that holds it."""
    array: object
    pad: tuple | None
    extent: tuple | None
    copy: np.ndarray | None
    role: str


@contextlib.contextmanager
def _one_grouped_copy(x, pad=None, extent=None):
    """Within the block, :func:`_grouped_input` reads ``x`` from one groups-last copy, padded
    by ``pad`` into ``extent`` (or, left None, as the first call that copies it needs),
    wherever that holds what the call reads. Within a block for ``x`` whose padding is not
    set yet, the inner block sets it, and the outer block's later calls read that copy."""
    shared = _shared_grouped_input.get()
    if shared is not None and shared.array is x and shared.pad is None and pad is not None:
        shared.pad, shared.extent = pad, extent
        yield
        return
    # a block within another for a different array: a workspace of its own
    role = "grouped shared input" if shared is None else shared.role + "'"
    token = _shared_grouped_input.set(_SharedCopy(x, pad, extent, None, role))
    try:
        yield
    finally:
        _shared_grouped_input.reset(token)


def one_copy_of(array):
    """A block within which this backend's calls copy ``array`` into a layout of theirs once
    (a convolution's backward: the input gradient and the weight gradient copy the output
    gradient alike)."""
    return _one_grouped_copy(array)


def _grouped_input(x, pad, groups, stride, dilation, kernel, out_size, role="grouped input"):
    """``(copy, origin)``: ``x`` groups last (:func:`_grouped_copy`), padded by ``pad`` to what
    ``out_size`` positions read, from element ``origin`` of each vector of groups' copy on:
    the copy :func:`_one_grouped_copy` shares where it holds those reads, else one of its
    own, in the workspace ``role``."""
    extent = _read_extent(kernel, stride, dilation, out_size)
    shared = _shared_grouped_input.get()
    if shared is not None and shared.array is x:
        if shared.pad is None:  # the first call to copy it: as it needs
            shared.pad, shared.extent = pad, extent
        shift = [s - p for s, p in zip(shared.pad, pad)]
        if all(0 <= d and d + e <= s for d, e, s in zip(shift, extent, shared.extent)):
            if shared.copy is None:
                shared.copy = _grouped_copy(x, shared.pad, groups, shared.extent, shared.role)
            _, _, _, hp_n, wp_n, width = shared.copy.shape
            return shared.copy, ((shift[0] * hp_n + shift[1]) * wp_n + shift[2]) * width
    return _grouped_copy(x, pad, groups, extent, role), 0


def _grouped_conv(x, w, bias, stride, pad, dilation, groups, out_size, transposed=False):
    """:func:`K._conv_forward_grouped` on a groups-last copy of ``x``, in chunks of positions
    that give every thread four tasks. With ``transposed``, ``w`` is a transposed
    convolution's weights, computed at stride 1 as a convolution (:func:`_as_conv`) whose
    flipped kernel the copy of the weights makes."""
    n_b, kernel = x.shape[0], w.shape[2:]
    cg, kg = (w.shape[0] // groups, w.shape[1]) if transposed else (w.shape[1],
                                                                     w.shape[0] // groups)
    taps, vec, f_n = math.prod(kernel), K.group_vector(x.itemsize), K.GROUPED_FILTERS
    gblocks, kblocks = -(-groups // vec), -(-kg // f_n)
    xp, origin = _grouped_input(x, pad, groups, stride, dilation, kernel, out_size)
    wg = K._group_weights(np.ascontiguousarray(w).reshape(w.shape[0], w.shape[1], taps),
                          groups, transposed,
                          tasks.workspace("grouped weights",
                                          gblocks * kblocks * taps * cg * f_n * vec,
                                          x.dtype).reshape(gblocks, kblocks, taps, cg, f_n,
                                                           vec))
    bias_g = np.zeros((gblocks * vec, kblocks * f_n), x.dtype)
    if bias is not None:
        bias_g[:groups, :kg] = np.asarray(bias, dtype=x.dtype).reshape(groups, kg)
    # (gblocks, kblocks, F, vec), as the weights' filters
    bias_g = np.ascontiguousarray(bias_g.reshape(gblocks, vec, kblocks, f_n)
                                  .transpose(0, 2, 3, 1)).reshape(-1)
    chunk = _position_chunk(n_b * math.prod(out_size), gblocks * kblocks, GROUPED_CHUNK)
    c_block = max(1, KVECTOR_WEIGHT_ELEMS // (taps * f_n * vec))
    y = np.empty((n_b, kg * groups, *out_size), dtype=x.dtype)
    return K._conv_forward_grouped(xp, origin, wg, bias_g, stride, dilation, kernel, groups,
                                   kg, out_size, chunk, c_block, y)


def _grouped_weight_grad(x, gy, stride, pad, dilation, groups, kernel):
    """:func:`K._conv_weight_grad_grouped` on groups-last copies of ``x`` and ``gy`` (each
    one shared within :func:`one_copy_of`), the work cut by :func:`_weight_grad_split`."""
    n_b, c_in = x.shape[:2]
    k_out, out_size = gy.shape[1], gy.shape[2:]
    cg, kg, taps = c_in // groups, k_out // groups, math.prod(kernel)
    vec, f_n = K.group_vector(x.itemsize), K.GROUPED_FILTERS
    gblocks, kblocks = -(-groups // vec), -(-kg // f_n)
    xp, origin = _grouped_input(x, pad, groups, stride, dilation, kernel, out_size)
    ones = (1, 1, 1)
    gyp, g_origin = _grouped_input(gy, (0, 0, 0), groups, ones, ones, ones, out_size,
                                   "grouped gradient")
    cblocks = -(-cg // K.GROUPED_POSITIONS)
    # a task's sums: every block of filters, tap and channel (x a vector of groups)
    sums_bytes = kblocks * taps * cblocks * K.GROUPED_POSITIONS * f_n * vec * x.itemsize
    parts, ranges = _weight_grad_split(cblocks, gblocks, sums_bytes)
    gw = np.empty((ranges, k_out, cg, taps), dtype=x.dtype)
    K._conv_weight_grad_grouped(xp, origin, gyp, g_origin, stride, dilation, kernel, groups,
                                cg, kg, out_size, KVECTOR_GRAD_CHUNK, parts, gw)
    return tasks.sum_slots(gw, ranges).reshape(k_out, cg, *kernel)


def _all_finite(*arrays):
    """Whether the arrays hold no NaN or Inf: one parallel pass over each."""
    threads = numba.get_num_threads()
    return all(K._all_finite_parallel(a.reshape(-1), threads) for a in arrays)


def conv_forward_ways(x_shape, w_shape, stride, pad_lo, dilation, groups, out_size,
                      itemsize):
    """The ways to compute this convolution, in the order the rules prefer them: some of
    ``depthwise`` or ``grouped``, ``lanes``, ``winograd`` (where it goes ahead), ``kvector``
    or ``blocked``, ``winograd``, ``blocked``, ``gemm``, then always ``direct``."""
    k_out, cg, kernel = w_shape[0], w_shape[1], w_shape[2:]
    depthwise_fits = _depthwise_fits(k_out, cg, k_out // groups, out_size, stride)
    grouped_fits = _grouped_forward_fits(groups, cg, k_out // groups, kernel, itemsize)
    ways = ["depthwise"] if depthwise_fits else ["grouped"] if grouped_fits else []
    # one input channel: on 256-bit loops the banded direct kernel wins (LeNet c1 forward 1.7
    # vs 2.0 ms lanes, whose copies in and out are as large as the work there), on 512-bit
    # vectors lanes do (2.9 vs 2.2 ms, median of 60, one run)
    if ((cg > 1 or lanes.WIDE_VECTORS)
            and lanes.lanes_fit(x_shape, k_out, kernel, stride, pad_lo, dilation, groups,
                                out_size)):
        ways.append("lanes")
    ways += _direct_and_winograd(
        x_shape[0], groups, cg, k_out // groups, kernel, stride, dilation, out_size,
        _depth_padded_share(x_shape[2:], kernel, stride, pad_lo, dilation, out_size),
        itemsize, forward=True)
    if gemm.gemm_worthwhile(k_out // groups, cg, kernel):
        ways.append("gemm")
    return _listed(ways, ["blocked", *_kvector_capable(), *_winograd_capable(kernel, stride),
                          *(["gemm"] if cg > 1 else []),
                          *(["depthwise"] if depthwise_fits is not None else []),
                          *(["grouped"] if grouped_fits is not None else [])])


def _kvector_fits(n_batch, groups, cg, kg, kernel, out_size, itemsize, large, few=False,
                  padded=0.0):
    """Whether ``kvector`` is the way, by the rules above; ``large``: whether it may take the
    call above KVECTOR_MAX_MACS (1x1 kernels: whether it may take it at all); ``few``:
    whether it may take fewer than KVECTOR_MIN_POSITIONS positions; ``padded``: the share of
    its multiply-adds that read depth padding (:func:`_depth_padded_share`)."""
    positions, taps = n_batch * math.prod(out_size), math.prod(kernel)
    macs = positions * groups * kg * cg * taps
    return (_kvector_available() and kg >= KVECTOR_MIN_BLOCKS * K.block_filters(itemsize)
            and (large or (taps > 1 and macs <= KVECTOR_MAX_MACS))
            and cg >= KVECTOR_MIN_CHANNELS and cg * taps >= KVECTOR_MIN_DEPTH
            and (positions >= KVECTOR_MIN_POSITIONS or few) and padded <= KVECTOR_MAX_PADDED)


def _depth_padded_share(in_size, kernel, stride, pad_lo, dilation, out_size):
    """The share of a convolution's multiply-adds whose depth tap reads padding (whole
    slices, which the blocked kernel skips): :func:`_padded_share` of the depth axis."""
    return _padded_share(in_size[:1], kernel[:1], stride[:1], pad_lo[:1], dilation[:1],
                         out_size[:1])


@functools.lru_cache(maxsize=4096)
def _padded_share(in_size, kernel, stride, pad_lo, dilation, out_size):
    """The share of a convolution's (output position, tap) pairs that read padding: per axis
    and tap, the outputs ``i`` with ``0 <= i * s + r * d - p < n`` are a range. (No outputs:
    no share.) Kept per geometry: `kvector`'s forward asks on every call, and a loop over
    the taps in Python cost a call 2-10 us."""
    if 0 in out_size:
        return 0.0
    inside = 1.0
    for n, k, s, p, d, o in zip(in_size, kernel, stride, pad_lo, dilation, out_size):
        reads = 0
        for r in range(k):
            offset = r * d - p
            reads += max(0, min(o - 1, (n - 1 - offset) // s) - max(0, -(offset // s)) + 1)
        inside *= reads / (o * k)
    return 1.0 - inside


def _kvector_large(cg, kernel, out_size):
    """Whether ``kvector`` takes a convolution (forward, or stride-1 transposed) of any size:
    deep sums at any stride (where Winograd takes them, it goes first), or 1x1 on thin
    images."""
    if math.prod(kernel) == 1:
        return math.prod(out_size) <= KVECTOR_THIN_IMAGE
    return cg * math.prod(kernel) >= KVECTOR_LARGE_MIN_DEPTH


def _direct_and_winograd(n_batch, groups, cg, kg, kernel, stride, dilation, out_size, padded,
                         itemsize, forward):
    """The register-blocked direct kernels and Winograd, in the order the rules prefer them,
    for a convolution (``forward``) or a stride-1 transposed one as the convolution it is:
    ``cg`` channels in and ``kg`` out per group, ``padded`` the share of its multiply-adds
    that read depth padding (:func:`_depth_padded_share`). Winograd goes first from
    WINOGRAD_AHEAD_MIN_MACS multiply-adds, else after ``kvector`` or the small ``blocked``;
    the thin ``blocked`` last."""
    ways = []
    blocked = _blocked_fits(n_batch * groups, cg, kg, kernel, out_size, forward, padded)
    winograd_fits = winograd.fits(kernel, stride, dilation, groups, cg, kg, n_batch, out_size,
                                  itemsize)
    macs = n_batch * math.prod(out_size) * groups * kg * cg * math.prod(kernel)
    ahead = winograd_fits and macs >= WINOGRAD_AHEAD_MIN_MACS
    if ahead:
        ways.append("winograd")
    if _kvector_fits(n_batch, groups, cg, kg, kernel, out_size, itemsize,
                     _kvector_large(cg, kernel, out_size),
                     forward and math.prod(kernel) > 1, padded):
        ways.append("kvector")
    elif blocked == "small":
        ways.append("blocked")
    if winograd_fits and not ahead:
        ways.append("winograd")
    if blocked == "thin":
        ways.append("blocked")
    return ways


def _kvector_available():
    """Whether this CPU runs ``kvector``: its 512-bit register block needs 32 such registers."""
    return KVECTOR and lanes.WIDE_VECTORS


def _kvector_capable():
    return ["kvector"] if _kvector_available() else []


def _winograd_capable(kernel, stride):
    return ["winograd"] if winograd.computes(kernel, stride) else []


# the ways taken, in call order, while `trace_ways` is active (`fastconv bench` shows them)
_trace = None


@contextlib.contextmanager
def trace_ways():
    """Within the block, the list yielded collects the way each convolution primitive took
    (one of :data:`WAYS`, or ``"exact"``), in call order."""
    global _trace
    saved, _trace = _trace, []
    try:
        yield _trace
    finally:
        _trace = saved


@contextlib.contextmanager
def _untraced():
    """Within the block, the ways taken are not traced: a way made of calls of other ways
    (``phases``) is traced once, as itself."""
    global _trace
    saved, _trace = _trace, None
    try:
        yield
    finally:
        _trace = saved


def _taken(way):
    if _trace is not None:
        _trace.append(way)
    return way


_preferred = contextvars.ContextVar("fastconv_numba_way", default=None)


@contextlib.contextmanager
def prefer_way(way):
    """Within the block (context-local), every convolution primitive takes ``way`` wherever it
    can compute the call, and its usual way elsewhere: to measure each way against the one
    the rules choose (``fastconv bench --ways``), and in tests."""
    token = _preferred.set(way)
    try:
        yield
    finally:
        _preferred.reset(token)


def _ordered(ways):
    """``ways`` with the preferred one (:func:`prefer_way`) first, where it is among them."""
    way = _preferred.get()
    return [way, *(w for w in ways if w != way)] if way in ways else ways


def _listed(preferred, capable):
    """The ways the rules prefer, then ``direct``, then the others that can compute the call
    (reached only through :func:`prefer_way`; a way stepping aside for NaN or Inf still falls
    back to ``direct``)."""
    return [*preferred, "direct", *(w for w in capable if w not in preferred)]


def _first_way(ways, *operands):
    """The first of ``ways`` that gives PyTorch's NaN and Inf for these operands."""
    for way in ways:
        if way not in MIXING or _all_finite(*operands):
            return way
    raise AssertionError(f"no way among {ways}")  # pragma: no cover - direct always fits


# The ways the rules give, kept per call key (primitive, shapes, parameters, dtype) by
# `_computed`: the rules read nothing else but the knobs of these modules, and evaluating them
# in Python took 6-7 us a call, against 40-100 us for a whole small call (MobileNetV2's 7x7
# depthwise layer at batch 1). Code that changes a knob calls `forget_rules` (the tests'
# monkeypatch does).
_rule_ways = {}
RULE_WAYS_KEPT = 4096


def forget_rules():
    """Drop the ways kept per call key (after changing one of the knobs)."""
    _rule_ways.clear()


def _computed(key, rules, operands, compute):
    """``(way, compute(way))`` for the way this call takes (``rules()``: the ways the rules
    give, computed once per ``key``, which holds everything they read): the preferred one
    (:func:`prefer_way`), else, where tuning is on, the plan kept for ``key`` and the thread
    count (measured on the first call of the shape, :mod:`._numba_tuning`), else the rules'
    first; each the first after it that is exact for the operands' NaN and Inf (``operands``:
    those a way in ``MIXING`` reads; empty where the caller checks after the fact)."""
    ways = _rule_ways.get(key)
    if ways is None:
        if len(_rule_ways) >= RULE_WAYS_KEPT:
            _rule_ways.clear()
        ways = _rule_ways[key] = tuple(rules())
    ways = _ordered(ways)
    if _preferred.get() is None and tuning.enabled():
        key = (*key, numba.get_num_threads())
        way = tuning.planned(key)
        if way is None:
            # every way that can compute the call, but the direct kernels only where the
            # rules choose them (elsewhere up to a hundred times slower)
            candidates = [w for w in ways if w != "direct"] if ways[0] != "direct" else ways
            if not (operands and any(w in MIXING for w in candidates)
                    and not _all_finite(*operands)):
                return tuning.tune(key, candidates, compute)
        else:  # the plan first (a way in MIXING still steps aside for NaN or Inf)
            ways = [way, *(w for w in ways if w != way)]
    way = _first_way(ways, *operands)
    return way, compute(way)


@_serialised
def conv_forward(x, w, stride, pad_lo, dilation, groups, out_size, bias=None):
    key = ("conv_forward", x.shape, w.shape, stride, pad_lo, dilation, groups, out_size,
           x.dtype.str)
    way, y = _computed(
        key, lambda: conv_forward_ways(x.shape, w.shape, stride, pad_lo, dilation, groups,
                                       out_size, x.itemsize), (x, w),
        lambda way: _forward_by(way, x, w, stride, pad_lo, dilation, groups, out_size, bias))
    _taken(way)
    return y


def _forward_by(way, x, w, stride, pad_lo, dilation, groups, out_size, bias):
    if way == "lanes":
        return lanes.conv_forward_lanes(x, w, bias, pad_lo, dilation, out_size)
    if way == "winograd":
        return winograd.conv_forward_winograd(x, w, bias, pad_lo, dilation, groups, out_size)
    if way == "blocked":
        return _blocked_conv(x, w, bias, stride, pad_lo, dilation, groups, out_size)
    if way == "kvector":
        return _kvector_conv(x, w, bias, stride, pad_lo, dilation, groups, out_size)
    if way == "depthwise":
        return _depthwise_conv(x, w, bias, stride, pad_lo, dilation, out_size)
    if way == "grouped":
        return _grouped_conv(x, w, bias, stride, pad_lo, dilation, groups, out_size)
    if way == "gemm":
        return gemm.conv_forward_gemm(x, w, bias, stride, pad_lo, dilation, groups, out_size)
    return _direct_conv(x, w, bias, stride, pad_lo, dilation, groups, out_size)


def conv_transpose_forward_ways(x_shape, w_shape, stride, pad_lo, dilation, groups, out_size,
                                itemsize):
    """The ways to compute this transposed convolution (a convolution's input gradient), in
    the order the rules prefer them, as :func:`conv_forward_ways` at stride 1 (Winograd as a
    convolution with the kernel flipped), ``phases`` at larger strides, ``gemm``, then
    ``direct``."""
    c_in, cog, kernel = x_shape[1], w_shape[1], w_shape[2:]
    stride_one = all(s == 1 for s in stride)
    depthwise_fits = stride_one and _depthwise_fits(c_in, c_in // groups, cog, out_size,
                                                     stride)
    grouped_fits = stride_one and _grouped_forward_fits(groups, c_in // groups, cog, kernel,
                                                        itemsize)
    ways = ["depthwise"] if depthwise_fits else ["grouped"] if grouped_fits else []
    if (stride_one and c_in > 1
            and lanes.lanes_fit(x_shape, cog * groups, kernel, stride,
                                _as_conv_padding(kernel, pad_lo, dilation), dilation, groups,
                                out_size)):
        ways.append("lanes")
    if stride_one:  # a convolution of the flipped kernel: c_in // groups channels in, cog out
        ways += _direct_and_winograd(
            x_shape[0], groups, c_in // groups, cog, kernel, stride, dilation, out_size,
            _depth_padded_share(x_shape[2:], kernel, stride,
                                _as_conv_padding(kernel, pad_lo, dilation), dilation,
                                out_size),
            itemsize, forward=False)
    if not stride_one and _phases_way(x_shape, w_shape, stride, dilation, groups, out_size,
                                      itemsize):
        ways.append("phases")
    if gemm.transposed_worthwhile(c_in // groups, cog, kernel):
        ways.append("gemm")
    capable = (["blocked", *_kvector_capable(), *_winograd_capable(kernel, stride),
                *(["depthwise"] if depthwise_fits is not None else []),
                *(["grouped"] if grouped_fits is not None else [])]
               if stride_one else ["phases"])
    return _listed(ways, [*capable, *(["gemm"] if c_in // groups > 1 or cog > 1 else [])])


@_serialised
def conv_transpose_forward(x, w, stride, pad_lo, dilation, groups, out_size, bias=None):
    return _transposed(x, w, stride, pad_lo, dilation, groups, out_size, bias)


def _transposed(x, w, stride, pad_lo, dilation, groups, out_size, bias):
    key = ("conv_transpose_forward", x.shape, w.shape, stride, pad_lo, dilation, groups,
           out_size, x.dtype.str)
    way, y = _computed(
        key, lambda: conv_transpose_forward_ways(x.shape, w.shape, stride, pad_lo, dilation,
                                                 groups, out_size, x.itemsize), (x, w),
        lambda way: _transposed_by(way, x, w, stride, pad_lo, dilation, groups, out_size,
                                   bias))
    _taken(way)
    return y


def _transposed_by(way, x, w, stride, pad_lo, dilation, groups, out_size, bias):
    if way == "lanes":
        w_c, b_c, _, pad_c = _as_conv(w, bias, pad_lo, dilation, groups)
        return lanes.conv_forward_lanes(x, w_c, b_c, pad_c, dilation, out_size)
    if way == "winograd":
        w_c, b_c, _, pad_c = _as_conv(w, bias, pad_lo, dilation, groups)
        return winograd.conv_forward_winograd(x, w_c, b_c, pad_c, dilation, groups, out_size)
    if way == "blocked":
        return _blocked_conv(x, *_as_conv(w, bias, pad_lo, dilation, groups), dilation, groups,
                             out_size)
    # the ways that read the transposed weights themselves, as a stride-1 convolution's
    pad_c = _as_conv_padding(w.shape[2:], pad_lo, dilation)
    if way == "kvector":
        return _kvector_conv(x, w, bias, (1, 1, 1), pad_c, dilation, groups, out_size,
                             transposed=True)
    if way == "depthwise":
        return _depthwise_conv(x, w, bias, (1, 1, 1), pad_c, dilation, out_size,
                               transposed=True)
    if way == "grouped":
        return _grouped_conv(x, w, bias, (1, 1, 1), pad_c, dilation, groups, out_size,
                             transposed=True)
    if way == "phases":  # every phase by the way that takes the largest (see _phases_way)
        sub_way = _phases_way(x.shape, w.shape, stride, dilation, groups, out_size, x.itemsize)
        with _untraced(), prefer_way(sub_way):
            return phases.transposed_by_phases(x, w, bias, stride, pad_lo, dilation, groups,
                                               out_size, _transposed, _one_grouped_copy)
    if way == "gemm":
        return gemm.conv_transpose_forward_gemm(x, w, bias, stride, pad_lo, dilation, groups,
                                                out_size)
    if all(s == 1 for s in stride):
        return _direct_conv(x, *_as_conv(w, bias, pad_lo, dilation, groups), dilation, groups,
                            out_size)
    y = np.empty((x.shape[0], w.shape[1] * groups, *out_size), dtype=x.dtype)
    return K._conv_transpose_forward(x, w, K._bias_array(bias, x.dtype), stride, pad_lo,
                                     dilation, groups, out_size, y)


# strided transposed convolutions (input gradients of strided convolutions) as one stride-1
# transposed convolution per output phase, each by the stride-1 rules (_numba_phases)
# Taken where its largest phase goes to one of PHASES_WAYS by the stride-1 rules, and then
# every phase by that way: `grouped` (ResNeXt's 32 x 32 at stride 2, batch 16: 19 against 26
# ms packing + BLAS, whose per-group products are small). Elsewhere the phases' extra passes
# (each phase copies the input into its way's layout, one pass puts it in place) cost more
# than packing saves: ResNet-18's 64 -> 128 3x3 at stride 2, batch 16, 15-30 against 10-14 ms
# (phases by `kvector`), U-Net's 2x2 up-convolutions (`gemm`) 1.3-1.7x slower. And only from
# PHASES_MIN_MACS multiply-adds in the largest phase: below, the phases' passes cost more than
# their sums save (the same layer's input gradient, each way forced and alternated four times,
# best ms: batch 1 1.14 against 0.44 packing + BLAS, batch 2 1.37 against 0.81, batch 4 2.96
# against 1.75; batch 8 2.84 against 3.17, batch 16 5.4 against 6.4).
PHASES_WAYS = ("grouped",)
PHASES_MIN_MACS = 1 << 25


def _phases_way(x_shape, w_shape, stride, dilation, groups, out_size, itemsize):
    """The way that computes the phases of a strided transposed convolution (that of its
    largest phase) where the rule above takes ``phases``, else ``None``."""
    sub_kernel, sub_out, sub_dilation = phases.largest_phase(w_shape[2:], stride, dilation,
                                                             out_size)
    if x_shape[0] * math.prod(sub_out) * w_shape[0] * w_shape[1] * math.prod(sub_kernel) \
            < PHASES_MIN_MACS:
        return None
    way = conv_transpose_forward_ways(x_shape, (*w_shape[:2], *sub_kernel), (1, 1, 1),
                                      (0, 0, 0), sub_dilation, groups, sub_out, itemsize)[0]
    return way if way in PHASES_WAYS else None


def _as_conv(w, bias, pad_lo, dilation, groups):
    """At stride 1 a transposed convolution is a convolution: kernel flipped, its two channel
    axes swapped per group, padding ``dilation * (k - 1) - pad`` (negative means a crop).
    Returns ``(weight, bias, stride, padding)`` for :func:`_conv_forward`, whose banded kernel
    outruns the scatter kernel (depthwise input gradient 23 -> 19 ms)."""
    c_in, cog, kernel = w.shape[0], w.shape[1], w.shape[2:]
    taps = math.prod(kernel)
    weight = K._transposed_as_conv_weights(
        np.ascontiguousarray(w).reshape(c_in, cog, taps), groups,
        np.empty((groups * cog, c_in // groups, taps), w.dtype))
    return (weight.reshape(groups * cog, c_in // groups, *kernel), bias, (1, 1, 1),
            _as_conv_padding(kernel, pad_lo, dilation))


def _as_conv_padding(kernel, pad_lo, dilation):
    return tuple(d * (k - 1) - p for d, k, p in zip(dilation, kernel, pad_lo))


def _frame_finite(gy, in_size, stride, pad_lo, dilation, kernel):
    """Whether ``gy`` is finite at every output whose window reaches into the padding (below
    0, or past the input's end for the last tap): only there can it meet the padding's zeros.
    Reads only that frame, in ranges of planes per thread (depthwise 3x3 at 56x56 with
    padding 1: two rows and two columns of each plane)."""
    lo, hi = [], []
    for size, o_n, s, p, d, k in zip(in_size, gy.shape[2:], stride, pad_lo, dilation, kernel):
        lo.append(min(o_n, -(-p // s)))  # o * s - p < 0 below it
        hi.append(max(lo[-1], min(o_n, -(-(size + p - d * (k - 1)) // s))))  # last tap out
    if all(a == 0 for a in lo) and tuple(hi) == tuple(gy.shape[2:]):
        return True  # no window reaches the padding
    return K._frame_finite_parallel(gy.reshape(-1, *gy.shape[2:]), tuple(lo), tuple(hi),
                                    numba.get_num_threads())


def conv_weight_grad_ways(x_shape, gy_shape, stride, pad_lo, dilation, groups, kernel,
                          itemsize):
    """The ways to compute this weight gradient, in the order the rules prefer them:
    ``lanes``, ``kvector``, ``gemm``, then ``direct``. (``exact`` serves a ``gy`` with NaN
    or Inf, whatever the shapes.)"""
    cg, kg = x_shape[1] // groups, gy_shape[1] // groups
    depthwise_fits = _depthwise_grad_fits(x_shape[0], x_shape[1], cg, kg, gy_shape[2:], stride,
                                          itemsize)
    grouped_fits = _grouped_fits(groups, cg, kg, itemsize)
    ways = ["depthwise"] if depthwise_fits else ["grouped"] if grouped_fits else []
    if lanes.lanes_fit(x_shape, gy_shape[1], kernel, stride, pad_lo, dilation, groups,
                       gy_shape[2:]):
        ways.append("lanes")
    strided_ok = itemsize == 4 or all(s == 1 for s in stride)  # (see the rules above)
    if _kvector_fits(x_shape[0], groups, cg, kg, kernel, gy_shape[2:], itemsize,
                     math.prod(kernel) > 1 and strided_ok
                     and _kvector_large(cg, kernel, gy_shape[2:])):
        ways.append("kvector")
    # the same rule as the forward: LeNet c1's weight gradient 3.4 ms direct vs 5.9 packed,
    # LeNet c2's 4.2 ms packed vs 21 direct
    if gemm.weight_grad_worthwhile(kg, cg, kernel):
        ways.append("gemm")
    return _listed(ways, [*_kvector_capable(), "gemm",
                          *(["depthwise"] if depthwise_fits is not None else []),
                          *(["grouped"] if grouped_fits is not None else [])])


@_serialised
def conv_weight_grad(x, gy, stride, pad_lo, dilation, groups, kernel):
    # the thread count too: the depthwise rule counts tasks against it
    key = ("conv_weight_grad", x.shape, gy.shape, stride, pad_lo, dilation, groups, kernel,
           x.dtype.str, numba.get_num_threads())
    way, gw = _computed(
        key, lambda: conv_weight_grad_ways(x.shape, gy.shape, stride, pad_lo, dilation,
                                           groups, kernel, x.itemsize), (),
        lambda way: _weight_grad_by(way, x, gy, stride, pad_lo, dilation, groups, kernel))
    # Checked after the fact, on the weight-sized result: a NaN or Inf in x or gy always
    # leaves one in gw (inf times a finite number or zero, inf - inf, NaN), so a finite gw
    # needs no second look, and the operands are read again only when gw is not.
    if np.isfinite(gw).all():
        _taken(way)
        return gw
    # every way but `exact` multiplies gy by the padding's zeros (0 * inf is NaN); a NaN or
    # Inf in x meets only gy's finite values there
    if not _frame_finite(gy, x.shape[2:], stride, pad_lo, dilation, kernel):
        _taken("exact")
        return K._conv_weight_grad_exact(x, gy, stride, pad_lo, dilation, groups, kernel)
    _taken(way)
    return gw


def _weight_grad_by(way, x, gy, stride, pad_lo, dilation, groups, kernel):
    if way == "lanes":
        return lanes.conv_weight_grad_lanes(x, gy, pad_lo, dilation, kernel)
    if way == "kvector":
        return _kvector_weight_grad(x, gy, stride, pad_lo, dilation, groups, kernel)
    if way == "depthwise":
        return _depthwise_weight_grad(x, gy, stride, pad_lo, dilation, kernel)
    if way == "grouped":
        return _grouped_weight_grad(x, gy, stride, pad_lo, dilation, groups, kernel)
    if way == "gemm":
        return gemm.conv_weight_grad_gemm(x, gy, stride, pad_lo, dilation, groups, kernel)
    return K._conv_weight_grad(x, gy, stride, pad_lo, dilation, groups, kernel)


@_serialised
def bias_grad(gy):
    return K._bias_grad(gy)


@_serialised
def avg_pool_forward(x, kernel, stride, pad_lo, out_size, divisor):
    y = small_pages.empty((*x.shape[:2], *out_size), dtype=x.dtype)
    return K._avg_pool_forward(x, kernel, stride, pad_lo, out_size, divisor,
                               numba.get_num_threads(), y)


@_serialised
def avg_pool_backward(gy, kernel, stride, pad_lo, in_size, divisor):
    gx = small_pages.empty((*gy.shape[:2], *in_size), dtype=gy.dtype)
    return K._avg_pool_backward(gy, kernel, stride, pad_lo, in_size, divisor,
                                numba.get_num_threads(), gx)


@_serialised
def max_pool_forward(x, kernel, stride, pad_lo, dilation, out_size, indices=True):
    y = small_pages.empty((*x.shape[:2], *out_size), dtype=x.dtype)
    idx = small_pages.empty(y.shape if indices else (0,) * 5, dtype=np.int64)
    K._max_pool_forward(x, kernel, stride, pad_lo, dilation, out_size, indices,
                        numba.get_num_threads(), y, idx)
    return y, (idx if indices else None)


@_serialised
def max_pool_backward(gy, idx, in_size, window):  # a scatter: no use for the window
    n, c = gy.shape[:2]
    plane = math.prod(in_size)
    outs = math.prod(gy.shape[2:])  # explicit: -1 cannot be inferred for an empty batch
    gx = small_pages.empty((n * c, plane), dtype=gy.dtype)
    K._max_pool_backward(gy.reshape(n * c, outs), idx.reshape(n * c, outs), gx)
    return gx.reshape(n, c, *in_size)


@_serialised
def sigmoid_forward(x):
    if x.dtype != np.float32:  # the kernel's exp is accurate to float32 only
        return reference.sigmoid_forward(x)
    y = np.empty(x.shape, dtype=x.dtype)
    K._sigmoid_forward_f32(np.ascontiguousarray(x).reshape(-1), y.reshape(-1))
    return y


@_serialised
def sigmoid_backward(y, gy):
    g = np.empty(y.shape, dtype=y.dtype)
    K._sigmoid_backward(np.ascontiguousarray(y).reshape(-1), np.ascontiguousarray(gy).reshape(-1),
                        g.reshape(-1))
    return g
