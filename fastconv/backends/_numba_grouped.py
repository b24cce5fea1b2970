"""Grouped convolutions vectorised over groups (``grouped``): the vector runs across one
512-bit vector's worth of groups (16 float32 or 8 float64), each lane its own group, so groups
of any size fill whole vectors: ResNeXt's 32 groups of 4 to 32 channels, where vectors of
filters (:mod:`._numba_kvector`) would hold mostly zero filters and vectors of positions
(the ``blocked`` kernel) short sums.

The input is copied padded with its channels last in the order (channel within the group,
group), so that a channel of a vector of groups is one vector load; the weights in the same
order per filter. The register block is six output positions x four filters of the group, each
a vector of groups: per step of the sum (one channel at one tap) six input vectors and four
weight vectors meet in 24 fused multiply-adds, lane by lane, no broadcast. The weight gradient
runs the same block over (six channels x four filters) per tap, its sums over every position
of the batch, on the output gradient copied the same way (filters in place of channels): the
copy the input gradient reads, padded, where it made one.

Any stride, dilation, padding and 1-D to 3-D shape is the same loop: an output position is
an offset into the copy, a tap another offset (:func:`._numba_kvector._tap_offset`).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _numba_cache  # noqa: F401  (first: the kernels' cache stamp)
from ._numba_band import _jit
from ._numba_kvector import (
    KVECTOR_POSITIONS,
    KVECTOR_VECTORS,
    _fma_step,
    _grad_task,
    _load_block,
    _position_starts,
    _store_block,
    _sums_out,
    _tap_offsets,
    _vectors,
)
from ._numba_simd import VECTOR_BYTES, _vector_scratch, _vtranspose

# The register block: output positions (or, in the weight gradient, input channels) x
# filters, each entry one vector of groups; kvector's block shape, whose loads and stores
# (_load_block, _store_block) it shares.
GROUPED_POSITIONS = KVECTOR_POSITIONS
GROUPED_FILTERS = KVECTOR_VECTORS
# Positions (whole rows of the plane) per task of the input's copy: a few squares each.
_BAND_POSITIONS = 64


def group_vector(itemsize):
    """Groups per vector: one 512-bit vector's worth."""
    return VECTOR_BYTES // itemsize


@njit(**_jit)
def _groups_last_padded(x, pad, groups, xp):
    """``x`` ``(N, C, D, H, W)`` into ``xp`` ``(gblocks, N, Dp, Hp, Wp, width)``, ``width``
    at least ``cg * vec``: per vector of groups, channel ``c`` of its group ``lane`` at
    ``c * vec + lane``, shifted by ``pad`` along each spatial axis; zeros outside ``x``,
    past the last group and past ``cg * vec``.

    A task is a band of output rows of one vector of groups; in it, per channel, squares of
    ``vec`` groups x ``vec`` consecutive positions of the plane (across rows: ResNeXt's rows
    of 14 or 7 hold no whole square) are transposed in registers (:func:`_vtranspose`), each
    column to its own place; the positions of a square that falls partly in the padding, and
    the last few, one by one."""
    n_b, c_n, d_n, h_n, w_n = x.shape
    gblocks, _, dp_n, hp_n, wp_n, width = xp.shape
    vec = VECTOR_BYTES // x.itemsize
    cg = c_n // groups
    plane = h_n * w_n
    step = cg * d_n * plane  # from one group's channel to the next group's
    band = max(1, (_BAND_POSITIONS + w_n - 1) // w_n)  # rows per task
    bands = (hp_n + band - 1) // band
    xf = x.reshape(x.size)
    for task in prange(gblocks * n_b * dp_n * bands):
        hp0 = (task % bands) * band
        dp = (task // bands) % dp_n
        n = (task // (bands * dp_n)) % n_b
        gb = task // (bands * dp_n * n_b)
        hp1 = min(hp_n, hp0 + band)
        out = xp[gb, n, dp].reshape(hp_n * wp_n * width)
        out[hp0 * wp_n * width:hp1 * wp_n * width] = 0
        d = dp - pad[0]
        h_lo, h_hi = max(0, hp0 - pad[1]), min(h_n, hp1 - pad[1])
        if not (0 <= d < d_n) or h_lo >= h_hi:
            continue
        lanes = min(vec, groups - gb * vec)
        at = np.empty(vec, dtype=np.int64)
        for c in range(cg):
            src = ((n * c_n + gb * vec * cg + c) * d_n + d) * plane  # lane at + lane * step
            p, p_end = h_lo * w_n, h_hi * w_n
            while lanes == vec and p + vec <= p_end:
                h, w = p // w_n, p % w_n
                inside = True
                for j in range(vec):
                    wp = w + pad[2]
                    inside = inside and 0 <= wp < wp_n
                    at[j] = ((h + pad[1]) * wp_n + wp) * width + c * vec
                    w += 1
                    if w == w_n:
                        w, h = 0, h + 1
                if inside:
                    _vtranspose(xf, src + p, step, out, at)
                else:
                    _groups_last_positions(xf, src, step, lanes, p, p + vec, w_n, pad,
                                           wp_n, width, c * vec, out)
                p += vec
            _groups_last_positions(xf, src, step, lanes, p, p_end, w_n, pad, wp_n, width,
                                   c * vec, out)
    return xp


@njit(cache=True, inline="always")
def _groups_last_positions(xf, src, step, lanes, p_lo, p_hi, w_n, pad, wp_n, width, at, out):
    """Positions ``p_lo .. p_hi`` of one channel's plane (at ``src``, the next group's
    ``step`` further) to their places in ``out``, the shifted row ``h + pad[1]`` and column
    ``w + pad[2]``, element by element; columns shifted past ``wp_n`` are dropped."""
    for p in range(p_lo, p_hi):
        h, w = p // w_n, p % w_n
        wp = w + pad[2]
        if 0 <= wp < wp_n:
            dst = ((h + pad[1]) * wp_n + wp) * width + at
            for lane in range(lanes):
                out[np.uintp(dst + lane)] = xf[np.uintp(src + lane * step + p)]


@njit(**_jit)
def _group_weights(w, groups, transposed, wg):
    """The convolution's weights into ``wg`` ``(gblocks, kblocks, taps, cg, F, vec)``: per
    vector of groups and block of ``F`` filters, by tap and channel, the ``F`` filters' vectors
    of groups (zeros past the last group and filter).

    ``w`` is a convolution's ``(groups * kg, cg, taps)``, or with ``transposed`` a transposed
    convolution's ``(groups * cg, kg, taps)``, read as the convolution it is at stride 1: the
    kernel flipped and the two channel axes swapped per group."""
    gblocks, kblocks, taps, cg, f_n, vec = wg.shape
    kg = w.shape[1] if transposed else w.shape[0] // groups
    wf = w.reshape(w.size)
    depth = cg * taps
    for task in prange(gblocks * kblocks):
        gb, kblock = task // kblocks, task % kblocks
        block = wg[gb, kblock].reshape(taps * cg * f_n * vec)
        lanes = min(vec, groups - gb * vec)
        filters = min(f_n, kg - kblock * f_n)
        if lanes < vec or filters < f_n:  # else every element is written below
            block[:] = 0
        if lanes == vec and transposed:
            # a transposed convolution's weights, likewise: per channel, the block's filters'
            # taps are one contiguous run (ResNeXt's 1024 x 32 x 3x3 at stride 2 as four
            # phases, element by element: 0.5 ms)
            at = np.empty(vec, dtype=np.int64)
            run = filters * taps
            square = run - run % vec
            for c in range(cg):
                # group gb * vec + i's run at start + i * cg * kg * taps
                start = ((gb * vec * cg + c) * kg + kblock * f_n) * taps
                # the filter and tap of element j0 + j stepped, not divided out (two
                # divisions by `taps` an element cost as much as the squares: ResNeXt's
                # 1024 x 32 x 3x3 convolution's, 70 -> 53 us, alone)
                f, t = 0, 0
                for j0 in range(0, square, vec):
                    for j in range(vec):
                        at[j] = (((taps - 1 - t) * cg + c) * f_n + f) * vec
                        t += 1
                        if t == taps:
                            f, t = f + 1, 0
                    _vtranspose(wf, start + j0, cg * kg * taps, block, at)
                for j in range(square, run):
                    f, t = j // taps, j % taps
                    for lane in range(vec):
                        block[(((taps - 1 - t) * cg + c) * f_n + f) * vec + lane] = wf[
                            start + lane * cg * kg * taps + j]
            continue
        if lanes == vec and not transposed:
            # a convolution's weights, a vector of groups at a time: squares of (group,
            # channel x tap) transposed in registers, so every read is a contiguous run and
            # every write a whole vector (element by element, each write a cache line of its
            # own: ResNeXt's 1024 x 32 x 3x3, 0.34 ms)
            at = np.empty(vec, dtype=np.int64)
            square = depth - depth % vec
            for f in range(filters):
                k = kblock * f_n + f
                start = (gb * vec * kg + k) * depth  # group gb * vec + i at start + i * kg * depth
                c, t = 0, 0  # of element j0 + j, stepped (as above)
                for j0 in range(0, square, vec):
                    for j in range(vec):
                        at[j] = ((t * cg + c) * f_n + f) * vec
                        t += 1
                        if t == taps:
                            c, t = c + 1, 0
                    _vtranspose(wf, start + j0, kg * depth, block, at)
                for j in range(square, depth):
                    c, t = j // taps, j % taps
                    for lane in range(vec):
                        block[((t * cg + c) * f_n + f) * vec + lane] = wf[
                            start + lane * kg * depth + j]
            continue
        for lane in range(lanes):
            g = gb * vec + lane
            for f in range(filters):
                k = kblock * f_n + f
                for c in range(cg):
                    for t in range(taps):
                        if transposed:
                            src = ((g * cg + c) * kg + k) * taps + taps - 1 - t
                        else:
                            src = ((g * kg + k) * cg + c) * taps + t
                        block[((t * cg + c) * f_n + f) * vec + lane] = wf[src]
    return wg


@njit(**_jit)
def _conv_forward_grouped(xp, origin, wg, bias, stride, dilation, kernel, groups, kg, out_size,
                          chunk, c_block, y):
    """Convolution of the groups-last copy ``xp`` (:func:`_groups_last_padded`; the padded
    input read from element ``origin`` of each vector of groups' copy on) with the weights
    ``wg`` (:func:`_group_weights`) into ``y`` ``(N, groups * kg, OD, OH, OW)``; ``bias`` as
    ``wg``'s ``(gblocks, kblocks, F, vec)`` filters.

    A task is one vector of groups, one block of filters and ``chunk`` positions of the batch;
    a chunk's blocks of filters are consecutive tasks, so that a thread's next task reads the
    chunk's input from its cache again (each of ResNeXt's eight blocks of 32 x 32 filters at
    7x7, stride 2, batch 16, streamed it from memory: 2.9 against 2.0 ms). Per output
    element the sum starts at the bias and runs over blocks of ``c_block`` channels of the
    group, in each over taps, then channels; the sums kept in a buffer between blocks.
    """
    n_b = xp.shape[1]
    shape = xp.shape[1:]  # one vector of groups' copy
    gblocks, kblocks, taps, cg, f_n, vec = wg.shape
    kb = f_n * vec
    positions = out_size[0] * out_size[1] * out_size[2]
    total = n_b * positions
    chunks = (total + chunk - 1) // chunk
    k_out = groups * kg
    xf, wf, yf = xp.reshape(xp.size), wg.reshape(wg.size), y.reshape(y.size)
    tap_at = _tap_offsets(taps, kernel, dilation, shape)
    for task in prange(gblocks * kblocks * chunks):
        kblock = task % kblocks
        p_lo = (task // kblocks) % chunks * chunk
        gb = task // (chunks * kblocks)
        p_hi = min(total, p_lo + chunk)
        last = p_hi - 1
        sums = _vector_scratch((chunk + GROUPED_POSITIONS) * kb, y)
        at = (gb * kblocks + kblock) * kb
        for p in range(chunk + GROUPED_POSITIONS):  # every sum starts at its filter's bias
            sums[p * kb:(p + 1) * kb] = bias[at:at + kb]
        w_task = (gb * kblocks + kblock) * taps * cg * kb
        # where each position of the chunk starts reading (the last repeated past the end)
        starts = np.empty(p_hi - p_lo + GROUPED_POSITIONS, dtype=np.int64)
        _position_starts(p_lo, last, gb * xp[0].size + origin, stride, out_size, shape,
                         starts)
        for c0 in range(0, cg, c_block):
            for p0 in range(p_lo, p_hi, GROUPED_POSITIONS):
                a = (p0 - p_lo) * kb
                q = (starts[p0 - p_lo + 0], starts[p0 - p_lo + 1], starts[p0 - p_lo + 2],
                     starts[p0 - p_lo + 3], starts[p0 - p_lo + 4], starts[p0 - p_lo + 5])
                s = _load_block(sums, a, vec)
                for tap in range(taps):
                    w_tap = w_task + tap * cg * kb
                    # one channel a step: in pairs (as kvector's forward) LLVM moved its
                    # input pointers between registers on every pair (32 moves a pair), and
                    # ResNeXt's layers gained nothing
                    for c in range(c0, min(cg, c0 + c_block)):
                        s = _fma_step(_vectors(xf, q, tap_at[tap] + c * vec), wf,
                                      w_tap + c * kb, vec, s)
                _store_block(sums, a, vec, s)
        # out image by image, filter by filter (contiguous rows of each output plane), each a
        # vector of groups
        lanes = min(vec, groups - gb * vec)
        rows_at = np.empty(vec, dtype=np.int64)
        p = p_lo
        while p < p_hi:
            n = p // positions
            end = min(p_hi, (n + 1) * positions)
            for f in range(min(f_n, kg - kblock * f_n)):
                # filter f of group lane: position q at dst + lane * kg * positions + q
                dst = (n * k_out + gb * vec * kg + kblock * f_n + f) * positions - n * positions
                _sums_out(sums, kb, f * vec, lanes, p_lo, p, end, yf, dst, kg * positions,
                          rows_at)
            p = end
    return y


@njit(**_jit)
def _conv_weight_grad_grouped(xp, origin, gyp, g_origin, stride, dilation, kernel, groups, cg,
                              kg, out_size, chunk, parts, gw):
    """The weight gradient from groups-last copies (:func:`_groups_last_padded`) of the input,
    ``xp``, and of the output gradient, ``gyp``, read from elements ``origin`` and
    ``g_origin`` of each vector of groups' copy on (copies shared with the input gradient's
    convolution, or their own), into ``gw`` ``(P, groups * kg, cg, taps)``: one partial sum
    per range of positions, ``P`` of them, for the caller to add in order. Past their last
    position, ``xp`` holds ``GROUPED_POSITIONS`` vectors and ``gyp`` ``GROUPED_FILTERS``
    readable (a block of six channels, or four filters, past a group's last reads them, and
    drops its sums).

    A task is one vector of groups, one of ``parts`` ranges of channels and one of the ``P``
    ranges of the batch's positions; it runs over the range's positions in order, in chunks
    of ``chunk`` positions whose gradient vectors stay in the cache while every block of
    filters, block of channels and tap reads them, its sums (six channels x four filters,
    each a vector of groups) in registers over a chunk. Every block of filters in one task:
    the chunk's input is read from the cache by each in turn (a task per block of filters
    streamed the whole input from memory once per block: ResNeXt's 32 x 32 filters at 7x7,
    stride 2, batch 16, eight blocks, 5.2 against 2.5-3.5 ms).
    """
    taps = kernel[0] * kernel[1] * kernel[2]
    shape = xp.shape[1:]  # one vector of groups' copy
    total = xp.shape[1] * out_size[0] * out_size[1] * out_size[2]
    gblocks = gyp.shape[0]
    vec = VECTOR_BYTES // xp.itemsize
    f_n = GROUPED_FILTERS
    kb = f_n * vec
    kblocks = (kg + f_n - 1) // f_n
    cblocks = (cg + GROUPED_POSITIONS - 1) // GROUPED_POSITIONS
    xf = xp.reshape(xp.size)
    gf = gyp.reshape(gyp.size)
    gwf = gw.reshape(gw.size)
    ranges = gw.shape[0]
    tap_at = _tap_offsets(taps, kernel, dilation, shape)
    for task in prange(gblocks * parts * ranges):
        # one "block of filters" for _grad_task: a task takes them all
        gb, _, cb0, cb1, q_lo, q_hi, at_range = _grad_task(task, 1, parts, ranges, cblocks,
                                                           total)
        out = at_range * gw[0].size
        starts = np.empty(chunk, dtype=np.int64)
        g_starts = np.empty(chunk, dtype=np.int64)  # where each position's gradient starts
        # per block of filters and tap, the part's channels x F filters, each a vector of
        # groups
        tap_sums = (cb1 - cb0) * GROUPED_POSITIONS * kb
        block_sums = taps * tap_sums
        sums = _vector_scratch(max(1, kblocks * block_sums), xp)
        sums[:] = 0
        for q0 in range(q_lo, q_hi, chunk):
            q1 = min(q_hi, q0 + chunk)
            _position_starts(q0, q1 - 1, gb * xp[0].size + origin, stride, out_size, shape,
                             starts[:q1 - q0])
            _position_starts(q0, q1 - 1, gb * gyp[0].size + g_origin, (1, 1, 1), out_size,
                             gyp.shape[1:], g_starts[:q1 - q0])
            # (block of filters, block of channels, tap) as one loop: nested three deep,
            # LLVM shuffled the 24 sums between registers on every position (2.3 against
            # 1.9 ms for ResNeXt's 16 x 16 filters at 14x14, batch 16)
            block_steps = (cb1 - cb0) * taps
            for step in range(kblocks * block_steps):
                kblock = step // block_steps
                cblock = cb0 + (step // taps) % (cb1 - cb0)
                tap = step % taps
                g_at = kblock * kb
                c0 = cblock * GROUPED_POSITIONS * vec + tap_at[tap]
                a = kblock * block_sums + tap * tap_sums + (cblock - cb0) * GROUPED_POSITIONS * kb
                s = _load_block(sums, a, vec)
                for q in range(q0, q1):  # six consecutive channels x four filters
                    s = _fma_step(_vectors(xf, (0, vec, 2 * vec, 3 * vec, 4 * vec, 5 * vec),
                                           starts[q - q0] + c0),
                                  gf, g_starts[q - q0] + g_at, vec, s)
                _store_block(sums, a, vec, s)
        for kblock in range(kblocks):
            for lane in range(min(vec, groups - gb * vec)):
                for f in range(min(f_n, kg - kblock * f_n)):
                    k = (gb * vec + lane) * kg + kblock * f_n + f
                    for c in range(cb0 * GROUPED_POSITIONS, min(cg, cb1 * GROUPED_POSITIONS)):
                        for tap in range(taps):
                            gwf[out + (k * cg + c) * taps + tap] = sums[
                                kblock * block_sums + tap * tap_sums
                                + (c - cb0 * GROUPED_POSITIONS) * kb + f * vec + lane]
    return gw
