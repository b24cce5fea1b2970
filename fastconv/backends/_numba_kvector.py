"""The direct convolution vectorised over output channels (``kvector``), the way oneDNN's and
libxsmm's direct kernels work: the input copied channels last and padded, the weights in
blocks of four vectors of output channels (64 float32 or 32 float64 filters), and a register
block of six output positions x four vectors of output channels. Each step of the sum (one
input channel at one tap) loads four weight vectors and six input values, each value
broadcast into four fused multiply-adds: 24 of them, whose sums never leave the registers
until every channel and tap of a block of input channels is done.

Any stride, dilation, padding, group count and 1-D to 3-D shape is the same loop: an output
position is an offset into the channels-last copy, a tap another offset. Positions are
numbered across the whole batch, so six consecutive positions may span rows and images and
only the very last block of a task computes a few spare positions. Where the padding holds
enough of the windows, the positions are grouped six at a time by the taps that read the
input, and each block skips the taps that read only padding.
"""

from __future__ import annotations

import numpy as np
from numba import get_thread_id, njit, prange

from . import _numba_cache  # noqa: F401  (first: the kernels' cache stamp)
from ._numba_band import _jit
from ._numba_simd import (
    VECTOR_BYTES,
    _copy_transposed,
    _vcount,
    _vector_scratch,
    _vfma,
    _vload,
    _vstore,
    _vtranspose,
)

# Output positions held in registers per block (times four vectors of output channels: 24 of
# the 32 vector registers; with twelve positions x two vectors, the twelve input addresses
# did not fit the general-purpose registers and the loop spilled them)
KVECTOR_POSITIONS = 6
# Vectors of filters per block (the other side of the register block).
KVECTOR_VECTORS = 4


def block_filters(itemsize):
    """Filters per block (and per weight-gradient block): four 512-bit vectors' worth."""
    return KVECTOR_VECTORS * VECTOR_BYTES // itemsize


# Columns of one row per task of the channels-last copy: a 1-D signal is one long row.
_COPY_COLUMNS = 256


@njit(**_jit)
def _channels_last_padded(x, pad, xp):
    """``x`` ``(N, C, D, H, W)`` into ``xp`` ``(N, Dp, Hp, Wp, C)``: channels last, shifted by
    ``pad`` along each spatial axis (zeros where that falls outside ``x``; a negative pad
    crops)."""
    n_b, c_n, d_n, h_n, w_n = x.shape
    _, dp_n, hp_n, wp_n, _ = xp.shape
    xf = x.reshape(x.size)
    pieces = (wp_n + _COPY_COLUMNS - 1) // _COPY_COLUMNS
    for task in prange(n_b * dp_n * hp_n * pieces):
        at = np.empty(VECTOR_BYTES // x.itemsize, dtype=np.int64)
        w0 = (task % pieces) * _COPY_COLUMNS
        hp = (task // pieces) % hp_n
        dp = (task // (pieces * hp_n)) % dp_n
        n = task // (pieces * hp_n * dp_n)
        row = xp[n, dp, hp].reshape(wp_n * c_n)
        d, h = dp - pad[0], hp - pad[1]
        if not (0 <= d < d_n and 0 <= h < h_n):
            row[w0 * c_n:min(wp_n, w0 + _COPY_COLUMNS) * c_n] = 0
            continue
        plane = d_n * h_n * w_n
        src = (((n * c_n) * d_n + d) * h_n + h) * w_n - pad[2]  # column wp at src + wp
        w1 = min(wp_n, w0 + _COPY_COLUMNS)
        lo = min(max(w0, pad[2]), w1)  # the columns lo .. hi read x, the others are zeros
        hi = max(min(w1, pad[2] + w_n), lo)
        row[w0 * c_n:lo * c_n] = 0
        row[hi * c_n:w1 * c_n] = 0
        # channel c of column j at row[j * c_n + c], from src + c * plane + j
        _copy_transposed(xf, src + lo, plane, row, lo * c_n, c_n, c_n, hi - lo, at)
    return xp


@njit(cache=True, nogil=True)
def _weight_block(wf, w_shape, groups, transposed, g, kblock, kb, channel_major, block):
    """Group ``g``'s filters ``kblock * kb`` onwards of the flat weights ``wf`` into ``block``,
    flat: per input channel and tap, ``kb`` consecutive filters, zero filters past the
    group's last; ``(cg, taps, kb)`` with ``channel_major``, else ``(taps, cg, kb)`` (see
    :func:`_block_strides`).

    ``w_shape`` is a convolution's ``(K, cg, taps)``, or with ``transposed`` a transposed
    convolution's ``(groups * cg, kg, taps)``, read as the convolution it is at stride 1: the
    kernel flipped and the two channel axes swapped per group (one pass, not a flipped copy
    first). Tiles of 16 (channel, tap) columns x ``kb`` filters are read from the cache, not
    memory, each read along its contiguous axis: reading a convolution's filters one column
    at a time touched ``kb`` pages per column (512 x 512 x 3x3x3: 7.0 ms before, 3.0 now)."""
    taps = w_shape[2]
    cg, kg = (w_shape[0] // groups, w_shape[1]) if transposed else (w_shape[1],
                                                                     w_shape[0] // groups)
    c_stride, t_stride = _block_strides(cg, taps, kb, channel_major)
    depth = cg * taps
    # where filter k, channel c, tap t of group g is: g * group_step + k * k_step
    # + c * c_step + t (or taps - 1 - t, flipped)
    k_step, c_step = (taps, kg * taps) if transposed else (depth, taps)
    k0 = kblock * kb
    filters = min(kb, kg - k0)
    base = g * kg * depth + k0 * k_step
    # a convolution's filters, a vector's worth at a time: squares of (filter, channel x tap)
    # transposed in registers (ResNet-18's 512 x 512 x 3x3 at 7x7, batch 1: the whole call
    # 1.51-1.58 -> 1.19-1.24 ms against this copy element by element)
    count = VECTOR_BYTES // block.itemsize
    whole = 0 if transposed else filters - filters % count
    if whole:
        at = np.empty(count, dtype=np.int64)
        square = depth - depth % count
        for kk in range(0, whole, count):
            c = t = 0  # column j0's channel and tap, stepped (a division each cost more)
            for j0 in range(0, square, count):
                for j in range(count):
                    at[j] = c * c_stride + t * t_stride + kk
                    t += 1
                    if t == taps:
                        c, t = c + 1, 0
                _vtranspose(wf, base + kk * k_step + j0, k_step, block, at)
            for j in range(square, depth):
                dst = (j // taps) * c_stride + (j % taps) * t_stride
                for f in range(kk, kk + count):
                    block[np.uintp(dst + f)] = wf[np.uintp(base + f * k_step + j)]
    # the rest (a transposed convolution's filters, or past the last whole vector) one by one
    for c0 in range(0, cg, 16):
        for t in range(taps):
            tap = taps - 1 - t if transposed else t
            for c in range(c0, min(cg, c0 + 16)):
                dst = c * c_stride + t * t_stride
                src = base + c * c_step + tap
                for kk in range(whole, filters):
                    block[np.uintp(dst + kk)] = wf[np.uintp(src + kk * k_step)]
                block[dst + filters:dst + kb] = 0


@njit(cache=True, inline="always")
def _block_strides(cg, taps, kb, channel_major):
    """How far apart a weight block's channels and taps are: ``(channel, tap)`` strides.

    Tap-major, each tap's channels are one run, which the sums read in order. Channel-major,
    as a convolution's filters run, the squares :func:`_weight_block` transposes from them are
    written one after the other, where tap-major sends each square's columns to nine places
    a tap plane apart: 512 x 512 x 3x3 on one thread 0.75 -> 0.40 ms; but then the sums read
    their weights 2.3 KB apart, 1-4% slower (ResNet-18's layer3 at batch 16). The caller
    picks channel-major where a block is copied for few positions."""
    return (taps * kb, kb) if channel_major else (kb, cg * kb)


@njit(cache=True, inline="always")
def _fma_step(x, block, wi, vec, s):
    """One step of the register block ``s`` (:func:`_load_block`'s order): four vectors from
    ``block[wi:]``, ``vec`` apart, each multiplied by each of the six inputs ``x`` (scalars,
    broadcast, or vectors) and added to its sum: 24 fused multiply-adds."""
    w0, w1 = _vload(block, wi), _vload(block, wi + vec)
    w2, w3 = _vload(block, wi + 2 * vec), _vload(block, wi + 3 * vec)
    x0, x1, x2, x3, x4, x5 = x
    return (_vfma(x0, w0, s[0]), _vfma(x0, w1, s[1]), _vfma(x0, w2, s[2]), _vfma(x0, w3, s[3]),
            _vfma(x1, w0, s[4]), _vfma(x1, w1, s[5]), _vfma(x1, w2, s[6]), _vfma(x1, w3, s[7]),
            _vfma(x2, w0, s[8]), _vfma(x2, w1, s[9]), _vfma(x2, w2, s[10]),
            _vfma(x2, w3, s[11]),
            _vfma(x3, w0, s[12]), _vfma(x3, w1, s[13]), _vfma(x3, w2, s[14]),
            _vfma(x3, w3, s[15]),
            _vfma(x4, w0, s[16]), _vfma(x4, w1, s[17]), _vfma(x4, w2, s[18]),
            _vfma(x4, w3, s[19]),
            _vfma(x5, w0, s[20]), _vfma(x5, w1, s[21]), _vfma(x5, w2, s[22]),
            _vfma(x5, w3, s[23]))


@njit(cache=True, inline="always")
def _elements(xf, q, o):
    """The six inputs ``xf[q[i] + o]``, each one element (for :func:`_fma_step` to
    broadcast)."""
    return (xf[np.uintp(q[0] + o)], xf[np.uintp(q[1] + o)], xf[np.uintp(q[2] + o)],
            xf[np.uintp(q[3] + o)], xf[np.uintp(q[4] + o)], xf[np.uintp(q[5] + o)])


@njit(cache=True, inline="always")
def _vectors(xf, q, o):
    """The six inputs ``xf[q[i] + o:]``, each one vector."""
    return (_vload(xf, q[0] + o), _vload(xf, q[1] + o), _vload(xf, q[2] + o),
            _vload(xf, q[3] + o), _vload(xf, q[4] + o), _vload(xf, q[5] + o))


@njit(cache=True, inline="always")
def _load_block(sums, a, vec):
    """The register block's 24 vectors (six rows of four) from ``sums[a:]``."""
    return (_vload(sums, a + 0 * vec), _vload(sums, a + 1 * vec),
            _vload(sums, a + 2 * vec), _vload(sums, a + 3 * vec),
            _vload(sums, a + 4 * vec), _vload(sums, a + 5 * vec),
            _vload(sums, a + 6 * vec), _vload(sums, a + 7 * vec),
            _vload(sums, a + 8 * vec), _vload(sums, a + 9 * vec),
            _vload(sums, a + 10 * vec), _vload(sums, a + 11 * vec),
            _vload(sums, a + 12 * vec), _vload(sums, a + 13 * vec),
            _vload(sums, a + 14 * vec), _vload(sums, a + 15 * vec),
            _vload(sums, a + 16 * vec), _vload(sums, a + 17 * vec),
            _vload(sums, a + 18 * vec), _vload(sums, a + 19 * vec),
            _vload(sums, a + 20 * vec), _vload(sums, a + 21 * vec),
            _vload(sums, a + 22 * vec), _vload(sums, a + 23 * vec))


@njit(cache=True, inline="always")
def _store_block(sums, a, vec, s):
    """The register block ``s``'s 24 vectors into ``sums[a:]``, in :func:`_load_block`'s order."""
    _vstore(sums, a + 0 * vec, s[0])
    _vstore(sums, a + 1 * vec, s[1])
    _vstore(sums, a + 2 * vec, s[2])
    _vstore(sums, a + 3 * vec, s[3])
    _vstore(sums, a + 4 * vec, s[4])
    _vstore(sums, a + 5 * vec, s[5])
    _vstore(sums, a + 6 * vec, s[6])
    _vstore(sums, a + 7 * vec, s[7])
    _vstore(sums, a + 8 * vec, s[8])
    _vstore(sums, a + 9 * vec, s[9])
    _vstore(sums, a + 10 * vec, s[10])
    _vstore(sums, a + 11 * vec, s[11])
    _vstore(sums, a + 12 * vec, s[12])
    _vstore(sums, a + 13 * vec, s[13])
    _vstore(sums, a + 14 * vec, s[14])
    _vstore(sums, a + 15 * vec, s[15])
    _vstore(sums, a + 16 * vec, s[16])
    _vstore(sums, a + 17 * vec, s[17])
    _vstore(sums, a + 18 * vec, s[18])
    _vstore(sums, a + 19 * vec, s[19])
    _vstore(sums, a + 20 * vec, s[20])
    _vstore(sums, a + 21 * vec, s[21])
    _vstore(sums, a + 22 * vec, s[22])
    _vstore(sums, a + 23 * vec, s[23])


@njit(cache=True, inline="always")
def _tap_steps(xf, q, block, o_tap, tap, c0, c_end, c_pairs, c_stride, t_stride, vec, s):
    """The steps of one tap (its input at ``o_tap`` from each position's start) over input
    channels ``c0 .. c_end - 1`` (``c_pairs``: where the pairs end), into the register block
    ``s``. Channels two at a time: LLVM gives each of the six inputs a pointer of its own,
    one add a step, which the pair shares."""
    for c in range(c0, c_pairs, 2):
        o, wi = o_tap + c, c * c_stride + tap * t_stride
        s = _fma_step(_elements(xf, q, o), block, wi, vec, s)
        s = _fma_step(_elements(xf, q, o + 1), block, wi + c_stride, vec, s)
    if c_pairs < c_end:
        s = _fma_step(_elements(xf, q, o_tap + c_pairs), block,
                      c_pairs * c_stride + tap * t_stride, vec, s)
    return s


@njit(cache=True, inline="always")
def _first_position(p, out_size):
    """Position ``p``'s coordinates ``(n, od, oh, ow)`` (numbered across the batch)."""
    ow = p % out_size[2]
    oh = (p // out_size[2]) % out_size[1]
    od = (p // (out_size[2] * out_size[1])) % out_size[0]
    return p // (out_size[2] * out_size[1] * out_size[0]), od, oh, ow


@njit(cache=True, inline="always")
def _next_position(n, od, oh, ow, out_size):
    """The coordinates of the position after ``(n, od, oh, ow)``: stepped, not divided out
    of its number (three divisions a position were a third of the kernel's time in thin
    layers, WaveNet's 32 x 2 taps at batch 1)."""
    ow += 1
    if ow == out_size[2]:
        ow = 0
        oh += 1
        if oh == out_size[1]:
            oh = 0
            od += 1
            if od == out_size[0]:
                od = 0
                n += 1
    return n, od, oh, ow


@njit(cache=True, inline="always")
def _position_starts(p_lo, last, channel, stride, out_size, shape, starts):
    """Where output positions ``p_lo``, ``p_lo + 1``, ... (numbered across the batch; past
    ``last``, ``last`` again) read their first tap's input channel ``channel`` in the
    channels-last copy of shape ``shape``, into ``starts``."""
    _, dp_n, hp_n, wp_n, c_n = shape
    n, od, oh, ow = _first_position(p_lo, out_size)
    at = 0
    for i in range(starts.size):
        if p_lo + i <= last:
            at = ((((n * dp_n + od * stride[0]) * hp_n + oh * stride[1]) * wp_n
                   + ow * stride[2]) * c_n + channel)
            n, od, oh, ow = _next_position(n, od, oh, ow, out_size)
        starts[i] = at


@njit(cache=True, inline="always")
def _tap_offset(tap, kernel, dilation, shape):
    """How far tap ``tap`` (raster order over ``kernel``) reads from a position's first tap in
    the channels-last copy of shape ``shape``."""
    _, _, hp_n, wp_n, c_n = shape
    rw = tap % kernel[2]
    rh = (tap // kernel[2]) % kernel[1]
    rd = tap // (kernel[2] * kernel[1])
    return ((rd * dilation[0] * hp_n + rh * dilation[1]) * wp_n + rw * dilation[2]) * c_n


@njit(cache=True, inline="always")
def _tap_range(first, dilation, k, lo, hi):
    """The taps ``r`` (``0 <= r < k``) along one axis whose input ``first + r * dilation``
    lies in ``[lo, hi)``, the input's place in the padded copy: ``(r0, r1)``, empty where
    none does."""
    r0 = 0 if first >= lo else (lo - first + dilation - 1) // dilation
    r1 = 0 if first >= hi else min(k, (hi - first + dilation - 1) // dilation)
    return min(r0, r1), r1


@njit(cache=True)
def _tap_ranges(stride, dilation, kernel, out_size, data_lo, data_hi):
    """Per axis and output coordinate ``o``, the taps of its window that read the input (in
    ``[data_lo, data_hi)`` of the padded copy, not the padding; :func:`_tap_range`), as a
    number: ``r0 * (k + 1) + k - r1``, 0 for the whole kernel. ``(3, max(out_size))``."""
    ranges = np.zeros((3, max(out_size)), dtype=np.int64)
    for axis in range(3):
        k = kernel[axis]
        for o in range(out_size[axis]):
            r0, r1 = _tap_range(o * stride[axis], dilation[axis], k, data_lo[axis],
                                data_hi[axis])
            ranges[axis, o] = r0 * (k + 1) + k - r1
    return ranges


@njit(cache=True, inline="always")
def _position_windows(p_lo, channel, stride, kernel, out_size, shape, ranges, starts, keys):
    """For output positions ``p_lo``, ``p_lo + 1``, ... (``keys.size`` of them, numbered
    across the batch): where each reads its first tap's input channel ``channel`` in the
    channels-last copy of shape ``shape`` (``starts``), and its window's taps that read the
    input (``keys``: the numbers of :func:`_tap_ranges` of its three axes, in one number
    that orders them lexicographically, 0 for the whole kernel). Returns how many positions'
    windows reach into the padding. Coordinates are stepped, as in :func:`_position_starts`."""
    _, dp_n, hp_n, wp_n, c_n = shape
    span_h, span_w = (kernel[1] + 1) ** 2, (kernel[2] + 1) ** 2
    n, od, oh, ow = _first_position(p_lo, out_size)
    edges = 0
    for i in range(keys.size):
        starts[i] = ((((n * dp_n + od * stride[0]) * hp_n + oh * stride[1]) * wp_n
                      + ow * stride[2]) * c_n + channel)
        key = (ranges[0, od] * span_h + ranges[1, oh]) * span_w + ranges[2, ow]
        keys[i] = key
        edges += key != 0
        n, od, oh, ow = _next_position(n, od, oh, ow, out_size)
    return edges


@njit(cache=True, inline="always")
def _key_box(key, kernel, box):
    """Widen ``box`` ``(d0, d1, h0, h1, w0, w1)`` to hold the taps of ``key``
    (:func:`_position_windows`)."""
    if key == 0:  # the whole kernel
        box[0], box[2], box[4] = 0, 0, 0
        box[1], box[3], box[5] = kernel
        return
    for axis in range(2, -1, -1):
        k = kernel[axis]
        part = key % ((k + 1) * (k + 1))
        key //= (k + 1) * (k + 1)
        box[2 * axis] = min(box[2 * axis], part // (k + 1))
        box[2 * axis + 1] = max(box[2 * axis + 1], k - part % (k + 1))


@njit(cache=True, inline="always")
def _position_blocks(keys, kernel, starts, edges):
    """Blocks of six positions with like taps (``keys``, :func:`_position_windows`; ``edges``
    of them not the whole kernel): the positions whose windows lie inside the input in their
    order, then the others by their taps (a stable sort, of those few only: sorting a whole
    chunk cost thin layers a third of their time), six at a time, the last block's spare
    places repeating its last position. ``starts`` are reordered alike. Returns
    ``(members, runs)``: block ``b``'s positions at ``members[6 * b:6 * b + 6]``, and per
    block the smallest box ``(d0, d1, h0, h1, w0, w1)`` of taps that holds each of its
    positions' (the taps outside a position's own read zeros) as runs (:func:`_box_runs`)."""
    count = keys.size
    n_blocks = (count + KVECTOR_POSITIONS - 1) // KVECTOR_POSITIONS
    members = np.empty(n_blocks * KVECTOR_POSITIONS, dtype=np.int64)
    if edges:
        inside, e = 0, count - edges
        edge = np.empty(edges, dtype=np.int64)
        for i in range(count):
            if keys[i] == 0:
                members[inside] = i
                inside += 1
            else:
                edge[i - inside] = i
        order = np.argsort(keys[edge], kind="mergesort")
        for j in range(edges):
            members[e + j] = edge[order[j]]
        in_order = starts.copy()
        for i in range(count):
            starts[i] = in_order[members[i]]
    else:
        for i in range(count):
            members[i] = i
    for i in range(count, members.size):
        members[i] = members[count - 1]
        starts[i] = starts[count - 1]
    runs = np.empty((n_blocks, 4), dtype=np.int64)
    box = np.empty(6, dtype=np.int64)
    for b in range(n_blocks):
        box[0], box[2], box[4] = kernel
        box[1] = box[3] = box[5] = 0
        for i in range(b * KVECTOR_POSITIONS, (b + 1) * KVECTOR_POSITIONS):
            _key_box(keys[members[i]], kernel, box)
        _box_runs(box, kernel, runs[b])
    return members, runs


@njit(cache=True, inline="always")
def _box_runs(box, kernel, runs):
    """The box of taps ``(d0, d1, h0, h1, w0, w1)`` as runs of consecutive taps (raster
    order), ``runs``: ``(first, slices, rows, length)``, run ``(i, j)`` from ``first + i * kh
    * kw + j * kw``. Whole rows make one run of a slice's rows, whole slices one run of all:
    the whole kernel is one run, one loop over the taps as where none are skipped."""
    d0, d1, h0, h1, w0, w1 = box[0], box[1], box[2], box[3], box[4], box[5]
    kh, kw = kernel[1], kernel[2]
    slices, rows, length = max(0, d1 - d0), max(0, h1 - h0), max(0, w1 - w0)
    if length == kw:
        length, rows = rows * kw, 1
        if length == kh * kw:
            length, slices = slices * kh * kw, 1
    runs[0] = (d0 * kh + h0) * kw + w0
    runs[1], runs[2], runs[3] = slices, rows, length


@njit(cache=True, inline="always")
def _forward_geometry(xp, w, y, groups, transposed, out_size, chunk):
    """The forward kernels' sizes: ``(taps, k_out, kg, cg, kb, kblocks, positions, total,
    chunks)``, ``kb`` filters a block, ``total`` positions in the batch in ``chunks`` chunks
    of ``chunk``."""
    taps = w.shape[2]
    k_out = y.shape[1]
    kg = k_out // groups
    cg = w.shape[0] // groups if transposed else w.shape[1]
    kb = KVECTOR_VECTORS * _vcount(y)
    positions = out_size[0] * out_size[1] * out_size[2]
    total = xp.shape[0] * positions
    return (taps, k_out, kg, cg, kb, (kg + kb - 1) // kb, positions, total,
            (total + chunk - 1) // chunk)


@njit(cache=True, inline="always")
def _tap_offsets(taps, kernel, dilation, shape):
    """:func:`_tap_offset` of every tap, once a call (the tasks share them)."""
    tap_at = np.empty(taps, dtype=np.int64)
    for tap in range(taps):
        tap_at[tap] = _tap_offset(tap, kernel, dilation, shape)
    return tap_at


@njit(cache=True, inline="always")
def _forward_task(task, chunks, kblocks, chunk, total, held, blocks, wf, w_shape, groups,
                  transposed, kb, channel_major):
    """A forward task's share: ``(g, kblock, p_lo, p_hi, block)``, its group, block of
    filters, positions and its thread's row of ``blocks`` holding that block of weights
    (copied unless ``held`` says the row holds it already)."""
    p_lo = (task % chunks) * chunk
    kblock = (task // chunks) % kblocks
    g = task // (chunks * kblocks)
    thread = get_thread_id()
    block = blocks[thread]
    if held[thread] != g * kblocks + kblock:
        _weight_block(wf, w_shape, groups, transposed, g, kblock, kb, channel_major, block)
        held[thread] = g * kblocks + kblock
    return g, kblock, p_lo, min(total, p_lo + chunk), block


@njit(cache=True, inline="always")
def _bias_sums(bias, at, rows, kb, like):
    """``rows`` rows of ``kb`` sums, each starting at ``bias[at:at + kb]``."""
    sums = _vector_scratch(rows * kb, like)
    for p in range(rows):
        sums[p * kb:(p + 1) * kb] = bias[at:at + kb]
    return sums


@njit(cache=True, inline="always")
def _forward_out(sums, kb, vec, p_lo, p_hi, positions, k_out, k0, filters, yf):
    """The sums of positions ``p_lo .. p_hi - 1`` (position ``p``'s at ``(p - p_lo) * kb``),
    filters ``k0 .. k0 + filters - 1``, into ``yf`` ``(N, k_out, positions)``: image by
    image, a vector's worth of filters at a time (each filter's positions are a contiguous
    row of its output plane)."""
    rows_at = np.empty(vec, dtype=np.int64)
    p = p_lo
    while p < p_hi:
        n = p // positions
        end = min(p_hi, (n + 1) * positions)
        dst = (n * k_out + k0) * positions - n * positions  # filter kk, position q at
        for kk in range(0, filters, vec):                   # dst + kk * positions + q
            _sums_out(sums, kb, kk, min(vec, filters - kk), p_lo, p, end, yf,
                      dst + kk * positions, positions, rows_at)
        p = end


@njit(**_jit)
def _conv_forward_kvector(xp, w, groups, transposed, bias, stride, dilation, kernel, out_size,
                          chunk, c_block, channel_major, blocks, y):
    """Convolution of the channels-last copy ``xp`` (see :func:`_channels_last_padded`) with
    the weights ``w`` into ``y`` ``(N, K, OD, OH, OW)``; ``w`` as :func:`_weight_block` reads
    it, ``bias`` ``(groups * kblocks * kb,)`` with ``kb`` filters per block.

    A task is one group, one block of filters and ``chunk`` positions of the batch. Its block
    of weights is copied into its thread's row of ``blocks`` ``(threads, taps * cg * kb)``
    (:func:`_weight_block`; laid out ``channel_major`` or not, :func:`_block_strides`),
    unless that row holds it already: a thread's tasks are
    consecutive, so each block is copied about once, by the thread that uses it, and read
    back from its cache (copying every block first, in a pass of its own, wrote them all to
    memory and read them back: at batch 1 as long as the sums). Per output element the sum
    starts at the bias and runs over blocks of ``c_block`` input channels, in each over taps,
    then channels (fused multiply-adds); a block's weights stay in the cache while every
    position of the chunk reads them, the sums kept in a buffer between blocks. Every block
    of positions runs every tap (:func:`_conv_forward_kvector_skipping` skips those that
    read only padding).
    """
    taps, k_out, kg, cg, kb, kblocks, positions, total, chunks = _forward_geometry(
        xp, w, y, groups, transposed, out_size, chunk)
    vec = _vcount(y)  # a compile-time constant (an array's itemsize is read at run time)
    c_stride, t_stride = _block_strides(cg, taps, kb, channel_major)
    xf, wf, yf = xp.reshape(xp.size), w.reshape(w.size), y.reshape(y.size)
    held = np.full(blocks.shape[0], -1, dtype=np.int64)  # the block in each thread's row
    tap_at = _tap_offsets(taps, kernel, dilation, xp.shape)
    for task in prange(groups * kblocks * chunks):
        g, kblock, p_lo, p_hi, block = _forward_task(task, chunks, kblocks, chunk, total, held,
                                                     blocks, wf, w.shape, groups, transposed,
                                                     kb, channel_major)
        sums = _bias_sums(bias, (g * kblocks + kblock) * kb, chunk + KVECTOR_POSITIONS, kb, y)
        # where each position of the chunk starts reading (the last repeated past the end)
        starts = np.empty(p_hi - p_lo + KVECTOR_POSITIONS, dtype=np.int64)
        _position_starts(p_lo, p_hi - 1, g * cg, stride, out_size, xp.shape, starts)
        for c0 in range(0, cg, c_block):
            c_end = min(cg, c0 + c_block)
            c_pairs = c0 + (c_end - c0) // 2 * 2
            for p0 in range(p_lo, p_hi, KVECTOR_POSITIONS):
                a = (p0 - p_lo) * kb
                q = (starts[p0 - p_lo + 0], starts[p0 - p_lo + 1], starts[p0 - p_lo + 2],
                     starts[p0 - p_lo + 3], starts[p0 - p_lo + 4], starts[p0 - p_lo + 5])
                s = _load_block(sums, a, vec)
                for tap in range(taps):
                    s = _tap_steps(xf, q, block, tap_at[tap], tap, c0, c_end, c_pairs,
                                   c_stride, t_stride, vec, s)
                _store_block(sums, a, vec, s)
        k0 = g * kg + kblock * kb
        _forward_out(sums, kb, vec, p_lo, p_hi, positions, k_out, k0,
                     min(kb, (g + 1) * kg - k0), yf)
    return y


@njit(**_jit)
def _conv_forward_kvector_skipping(xp, w, groups, transposed, bias, stride, dilation, kernel,
                                   out_size, data_lo, data_hi, chunk, c_block, channel_major,
                                   blocks, y):
    """:func:`_conv_forward_kvector`, each register block of six positions running only the
    taps that read the input for one of them (``[data_lo, data_hi)`` per axis of the copy),
    as oneDNN's direct kernels leave the padding out: the chunk's positions whose windows
    lie inside the input first, in their order, then the others sorted by their windows'
    taps (:func:`_position_blocks`), their sums in that order and put back after. (A kernel
    of its own: in one kernel with the loop over every tap, that loop ran 2-5% slower on
    thin layers, WaveNet's and M5's conv2.)"""
    taps, k_out, kg, cg, kb, kblocks, positions, total, chunks = _forward_geometry(
        xp, w, y, groups, transposed, out_size, chunk)
    vec = _vcount(y)  # a compile-time constant (an array's itemsize is read at run time)
    c_stride, t_stride = _block_strides(cg, taps, kb, channel_major)
    xf, wf, yf = xp.reshape(xp.size), w.reshape(w.size), y.reshape(y.size)
    held = np.full(blocks.shape[0], -1, dtype=np.int64)  # the block in each thread's row
    tap_at = _tap_offsets(taps, kernel, dilation, xp.shape)
    ranges = _tap_ranges(stride, dilation, kernel, out_size, data_lo, data_hi)
    for task in prange(groups * kblocks * chunks):
        g, kblock, p_lo, p_hi, block = _forward_task(task, chunks, kblocks, chunk, total, held,
                                                     blocks, wf, w.shape, groups, transposed,
                                                     kb, channel_major)
        sums = _bias_sums(bias, (g * kblocks + kblock) * kb, chunk + KVECTOR_POSITIONS, kb, y)
        # where each position of the chunk starts reading and the taps that read its input;
        # the positions in blocks of six with like taps, their sums in the blocks' order
        n_pos = p_hi - p_lo
        ordered = np.empty(n_pos + KVECTOR_POSITIONS, dtype=np.int64)
        keys = np.empty(n_pos, dtype=np.int64)
        edges = _position_windows(p_lo, g * cg, stride, kernel, out_size, xp.shape, ranges,
                                  ordered, keys)
        members, block_runs = _position_blocks(keys, kernel, ordered, edges)
        for c0 in range(0, cg, c_block):
            c_end = min(cg, c0 + c_block)
            c_pairs = c0 + (c_end - c0) // 2 * 2
            for b in range(block_runs.shape[0]):
                i = b * KVECTOR_POSITIONS
                q = (ordered[i], ordered[i + 1], ordered[i + 2], ordered[i + 3],
                     ordered[i + 4], ordered[i + 5])
                s = _load_block(sums, i * kb, vec)
                # only the block's box of taps: the others read the padding's zeros for each
                # of its positions (3x3 kernels on 7x7 images with padding 1: 18% of the
                # multiply-adds)
                first, slices = block_runs[b, 0], block_runs[b, 1]
                rows, length = block_runs[b, 2], block_runs[b, 3]
                for i_d in range(slices):
                    for i_h in range(rows):
                        run = first + (i_d * kernel[1] + i_h) * kernel[2]
                        for tap in range(run, run + length):
                            s = _tap_steps(xf, q, block, tap_at[tap], tap, c0, c_end,
                                           c_pairs, c_stride, t_stride, vec, s)
                _store_block(sums, i * kb, vec, s)
        if edges:  # the sums back in the positions' order
            blocked = sums
            sums = _vector_scratch((chunk + KVECTOR_POSITIONS) * kb, y)
            for i in range(n_pos):
                sums[members[i] * kb:(members[i] + 1) * kb] = blocked[i * kb:(i + 1) * kb]
        k0 = g * kg + kblock * kb
        _forward_out(sums, kb, vec, p_lo, p_hi, positions, k_out, k0,
                     min(kb, (g + 1) * kg - k0), yf)
    return y


@njit(cache=True, inline="always")
def _sums_out(sums, kb, column, columns, p_lo, q, end, yf, dst, column_step, rows_at):
    """Columns ``column .. column + columns - 1`` of the sums of positions ``q .. end`` (position
    ``i``'s ``kb`` sums at ``(i - p_lo) * kb``) into ``yf``, column ``j`` of position ``i`` at
    ``dst + j * column_step + i`` (:func:`_copy_transposed`)."""
    _copy_transposed(sums, (q - p_lo) * kb + column, kb, yf, dst + q, column_step, end - q,
                     columns, rows_at)



@njit(**_jit)
def _grad_channels_last(gy, groups, kblocks, kb, gyc):
    """``gy`` ``(N, K, OD, OH, OW)`` into ``gyc`` ``(N * positions, groups * kblocks * kb)``:
    per position, each group's filters in blocks of ``kb``, zeros past the group's last.

    A task is ``_COPY_COLUMNS`` positions of one image and group, whose rows stay in the
    cache while squares of a vector's worth of filters x positions are transposed in
    registers (:func:`_vtranspose`); the last few filters and positions one by one. (Each
    filter's plane scattered across every row in turn wrote a whole image's rows from memory
    once per filter: VGG-16's conv3_2 at batch 4, 12.8 MB, took 9.9 ms.)"""
    n_b, k_out = gy.shape[:2]
    positions = gy.size // max(1, n_b * k_out)
    kg = k_out // groups
    gf = gy.reshape(gy.size)
    width = groups * kblocks * kb
    tiles = (positions + _COPY_COLUMNS - 1) // _COPY_COLUMNS
    for task in prange(n_b * groups * tiles):
        at = np.empty(VECTOR_BYTES // gy.itemsize, dtype=np.int64)
        p0 = (task % tiles) * _COPY_COLUMNS
        g = (task // tiles) % groups
        n = task // (tiles * groups)
        p1 = min(positions, p0 + _COPY_COLUMNS)
        dst = n * positions * width + g * kblocks * kb  # position p's row at dst + p * width
        src = (n * k_out + g * kg) * positions  # filter k's plane at src + k * positions
        for p in range(p0, p1):
            for kk in range(kg, kblocks * kb):
                gyc[np.uintp(dst + p * width + kk)] = 0
        _copy_transposed(gf, src + p0, positions, gyc, dst + p0 * width, width, kg, p1 - p0, at)
    return gyc


@njit(cache=True, inline="always")
def _grad_task(task, kblocks, parts, ranges, cblocks, total):
    """Task ``task`` of the vectorised weight gradients: ``(block, kblock, cb0, cb1, q_lo, q_hi,
    at_range)``, its block of groups, block of filters, blocks of channels ``cb0 .. cb1`` (one
    of ``parts`` near-equal ranges of ``cblocks``) and positions ``q_lo .. q_hi`` (range
    ``at_range`` of ``ranges`` over ``total``); the ranges of positions vary fastest."""
    at_range = task % ranges
    part = (task // ranges) % parts
    kblock = (task // (ranges * parts)) % kblocks
    block = task // (ranges * parts * kblocks)
    return (block, kblock, part * cblocks // parts, (part + 1) * cblocks // parts,
            at_range * total // ranges, (at_range + 1) * total // ranges, at_range)


@njit(**_jit)
def _conv_weight_grad_kvector(xp, gyc, stride, dilation, kernel, groups, kblocks, cg, kg,
                              out_size, chunk, parts, gw):
    """The weight gradient from the channels-last copy ``xp`` of the input (see
    :func:`_channels_last_padded`; at least ``KVECTOR_POSITIONS`` readable elements past its
    last) and ``gyc`` (:func:`_grad_channels_last`), into ``gw`` ``(P, K, cg, taps)``: one
    partial sum per range of positions, ``P`` of them, for the caller to add in order.

    A task is one group, one block of filters, one of ``parts`` ranges of input channels and
    one of the ``P`` ranges of the batch's positions: its sums (six input channels x four
    vectors of filters in registers) run over the range's positions in order, in chunks of
    ``chunk`` positions whose gradient vectors stay in the L1 cache while every tap and block
    of six channels reads them (a task per tap streamed the whole gradient once per tap).
    """
    taps = kernel[0] * kernel[1] * kernel[2]
    total = xp.shape[0] * out_size[0] * out_size[1] * out_size[2]
    width = gyc.size // max(1, total)
    vec = _vcount(gyc)  # a compile-time constant, as in the forward
    kb = KVECTOR_VECTORS * vec
    cblocks = (cg + KVECTOR_POSITIONS - 1) // KVECTOR_POSITIONS
    xf = xp.reshape(xp.size)
    gwf = gw.reshape(gw.size)
    ranges = gw.shape[0]
    for task in prange(groups * kblocks * parts * ranges):
        g, kblock, cb0, cb1, q_lo, q_hi, at_range = _grad_task(task, kblocks, parts, ranges,
                                                               cblocks, total)
        out = at_range * gw[0].size
        starts = np.empty(chunk, dtype=np.int64)
        # per tap, the part's channels x kb filters
        tap_sums = (cb1 - cb0) * KVECTOR_POSITIONS * kb
        sums = _vector_scratch(max(1, taps * tap_sums), xp)
        sums[:] = 0
        g_at = (g * kblocks + kblock) * kb
        for q0 in range(q_lo, q_hi, chunk):
            q1 = min(q_hi, q0 + chunk)
            _position_starts(q0, q1 - 1, g * cg, stride, out_size, xp.shape, starts[:q1 - q0])
            for tap in range(taps):
                tap_at = _tap_offset(tap, kernel, dilation, xp.shape)
                for cblock in range(cb0, cb1):
                    c0 = cblock * KVECTOR_POSITIONS + tap_at
                    a = tap * tap_sums + (cblock - cb0) * KVECTOR_POSITIONS * kb
                    s = _load_block(sums, a, vec)
                    for q in range(q0, q1):  # six consecutive channels x four vectors
                        s = _fma_step(_elements(xf, (0, 1, 2, 3, 4, 5), starts[q - q0] + c0),
                                      gyc, q * width + g_at, vec, s)
                    _store_block(sums, a, vec, s)
        k0 = g * kg + kblock * kb
        for kk in range(min(kb, (g + 1) * kg - k0)):
            for c in range(cb0 * KVECTOR_POSITIONS, min(cg, cb1 * KVECTOR_POSITIONS)):
                for tap in range(taps):
                    gwf[out + ((k0 + kk) * cg + c) * taps + tap] = sums[
                        tap * tap_sums + (c - cb0 * KVECTOR_POSITIONS) * kb + kk]
    return gw
