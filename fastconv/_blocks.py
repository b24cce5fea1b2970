"""Block geometry along one axis: which source elements each block of a result needs.

A chunked array (Dask) computes an op block by block. Along each spatial axis the result is
cut into blocks ``[o0, o1)``, and each block is computed by the in-memory op from a *region*
``[start, stop)`` of a source array with a local ``pad`` (the padding in front of the region
that the block's first window or scatter sees). Two relations cover every op:

- **gather**: result element ``o`` reads source elements ``o * stride - pad + r * dilation``
  for taps ``r < kernel`` (convolution, pooling, and the input gradient of a transposed
  convolution);
- **scatter**: source element ``i`` adds into result elements ``i * stride - pad + r *
  dilation`` (transposed convolution, and the input gradient of a convolution or a pooling).

Everything here is integer arithmetic on Python ints: no arrays, no Dask.
"""

from __future__ import annotations

from typing import NamedTuple


class AxisBlock(NamedTuple):
    """One block of a result along one axis, and the source region that computes it."""

    origin: int  # the block's first element in the result
    size: int  # its length in the result
    start: int  # the source region [start, stop)
    stop: int
    pad: int  # the local padding in front of the region (the in-memory op's pad_lo)
    empty: bool  # no source element reaches the block: it holds the op's constant (0 or bias)


def chunk_bounds(chunks):
    """``[0, c0, c0 + c1, ..., n]`` from one axis' chunk sizes."""
    bounds = [0]
    for c in chunks:
        bounds.append(bounds[-1] + int(c))
    return bounds


def gather_bounds(source_bounds, kernel, stride, pad, dilation, out_size):
    """The result's block boundaries for a gather: result element ``o`` goes to the block of
    the source chunk that holds its window's centre tap (``o * stride - pad + dilation *
    (kernel - 1) // 2``; windows centred in the padding go to the first or last block), so a
    'same' convolution keeps the source's chunks. Empty blocks are dropped."""
    centre = dilation * (kernel - 1) // 2
    cuts = {min(max(-(-(b + pad - centre) // stride), 0), out_size)
            for b in source_bounds[1:-1]}
    return sorted(cuts | {0, out_size})


def scatter_bounds(source_bounds, kernel, stride, pad, dilation, out_size):
    """The result's block boundaries for a scatter: source chunk ``[b0, b1)`` maps to the
    result elements from its first element's centre tap, ``b0 * stride - pad + dilation *
    (kernel - 1) // 2``. Empty blocks are dropped."""
    centre = dilation * (kernel - 1) // 2
    cuts = {min(max(b * stride - pad + centre, 0), out_size) for b in source_bounds[1:-1]}
    return sorted(cuts | {0, out_size})


def _block(origin, size, start, stop, pad, n):
    if start < stop:
        return AxisBlock(origin, size, start, stop, pad, False)
    # an empty region still gets one element, so that every block has a source chunk;
    # the block's function knows it is empty and reads nothing
    first = min(max(start, 0), n - 1)
    return AxisBlock(origin, size, first, first + 1, 0, True)


def gather_plan(bounds, kernel, stride, pad, dilation, n):
    """Per result block ``[o0, o1)`` of a gather over a source of ``n`` elements: the region
    from the first window's start to the last window's end, clipped to the source."""
    plan = []
    for o0, o1 in zip(bounds[:-1], bounds[1:]):
        first = o0 * stride - pad
        end = (o1 - 1) * stride - pad + dilation * (kernel - 1) + 1
        start, stop = max(first, 0), min(end, n)
        plan.append(_block(o0, o1 - o0, start, stop, start - first, n))
    return tuple(plan)


def scatter_plan(bounds, kernel, stride, pad, dilation, n):
    """Per result block ``[o0, o1)`` of a scatter from a source of ``n`` elements: the source
    elements whose windows reach the block. The region starts early enough that its local
    padding is not negative (elements before the block add only outside it)."""
    plan = []
    reach = dilation * (kernel - 1)
    for o0, o1 in zip(bounds[:-1], bounds[1:]):
        first = min(-(-(o0 + pad - reach) // stride), (o0 + pad) // stride)
        start, stop = max(first, 0), min((o1 - 1 + pad) // stride + 1, n)
        plan.append(_block(o0, o1 - o0, start, stop, pad + o0 - start * stride, n))
    return tuple(plan)
