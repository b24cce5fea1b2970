"""Strided transposed convolutions as stride-1 ones, one per output phase.

A transposed convolution at stride ``s`` adds input ``i`` times tap ``t`` into output
``o = i * s - p + t * d``. The outputs of one phase ``r`` (``o = r + s * q``) therefore see
only the taps with ``t * d = r + p (mod s)``: every ``s / gcd(d, s)``-th tap from the first such
``t0``. Over those taps the phase is a stride-1 transposed convolution of the whole input:

    y[r + s*q] = sum_j x[q + e - (d / gcd(d, s)) * j] * w[t0 + (s / gcd(d, s)) * j],
    e = (r + p - d * t0) / s,

with a sub-kernel of about ``k / s`` taps per axis. A 3x3 kernel at stride 2 splits into
kernels of 1x1, 1x2, 2x1 and 2x2 taps, a 1x1 downsample into one pointwise convolution and
three phases no tap reaches (bias alone). Each phase is computed by the stride-1 ways (vectors
of filters, of groups, ...); no product is skipped or added, so NaN and Inf come out as from
the definition. The phases' results are then interleaved into the output in one parallel pass
per phase.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from typing import NamedTuple

import numpy as np

from . import _numba_kernels as K


class AxisPhase(NamedTuple):
    """One output phase along one axis: outputs ``start::stride`` (``size`` of them) come from
    taps ``first::step`` (``taps`` of them, 0 where none reaches the phase) at ``dilation``
    apart, as a stride-1 transposed convolution with padding ``pad`` of the input from
    ``crop`` on (the inputs below it meet none of the phase's taps)."""

    start: int
    size: int
    first: int
    step: int
    taps: int
    dilation: int
    pad: int
    crop: int


def axis_phases(size_in, kernel, stride, pad, dilation, size_out):
    """The output phases of one axis (see the module's docstring), one per residue
    ``0 <= r < stride`` that has outputs."""
    if stride == 1:
        return [AxisPhase(0, size_out, 0, 1, kernel, dilation, pad, 0)]
    common = math.gcd(dilation, stride)
    step, sub_dilation = stride // common, dilation // common
    phases = []
    for r in range(min(stride, size_out)):
        size = -(-(size_out - r) // stride)
        first = next((t for t in range(step) if (t * dilation - r - pad) % stride == 0),
                     None)
        taps = 0 if first is None else max(0, -(-(kernel - first) // step))
        if taps == 0:
            phases.append(AxisPhase(r, size, 0, step, 0, sub_dilation, 0, 0))
            continue
        e = (r + pad - dilation * first) // stride
        crop = max(0, e - sub_dilation * (taps - 1))  # below it no tap of the phase reads
        if crop >= size_in:
            taps = 0
        phases.append(AxisPhase(r, size, first, step, taps, sub_dilation, e - crop, crop))
    return phases


def largest_phase(kernel, stride, dilation, out_size):
    """The kernel, output size and dilation of the largest phase (the most taps on every
    axis)."""
    common = [math.gcd(d, s) for s, d in zip(stride, dilation)]
    return (tuple(-(-k * c // s) for k, c, s in zip(kernel, common, stride)),
            tuple(-(-o // s) for o, s in zip(out_size, stride)),
            tuple(d // c for d, c in zip(dilation, common)))


def _shared_reads(in_size, per_axis):
    """Per axis (its phases ``per_axis``), the padding and extent of one padded copy of the
    whole input (as a stride-1 convolution reads it) that holds what every phase reads: a
    phase whose convolution pads by ``p`` reads its padded input from ``padding - p`` on.
    Phases that crop the input (they read a copy of their own) and those no tap reaches are
    left out."""
    padding, extent = [], []
    for size, axis in zip(in_size, per_axis):
        # as a convolution: padding dilation * (taps - 1) - pad, reading this much of it
        reads = [(a.dilation * (a.taps - 1) - a.pad, (a.size - 1) + a.dilation * (a.taps - 1)
                  + 1) for a in axis if a.taps and not a.crop]
        most = max([0, *(p for p, _ in reads)])
        padding.append(most)
        extent.append(max([size + most, *(most - p + e for p, e in reads)]))
    return tuple(padding), tuple(extent)


def transposed_by_phases(x, w, bias, stride, pad_lo, dilation, groups, out_size, transposed,
                         one_copy=contextlib.nullcontext):
    """The transposed convolution of ``x`` and ``w`` (5-D) at ``stride``, as one stride-1
    transposed convolution per output phase, each computed by ``transposed(x, w, stride,
    pad_lo, dilation, groups, out_size, bias)``, all within ``one_copy(x, padding, extent)``:
    a context in which the way may read every phase's padded input from one copy of ``x``,
    padded by ``padding`` into ``extent`` (:func:`_shared_reads`)."""
    y = np.empty((x.shape[0], w.shape[1] * groups, *out_size), dtype=x.dtype)
    bias_array = K._bias_array(bias, x.dtype)
    empty = np.empty(0, dtype=x.dtype)
    per_axis = [axis_phases(*a) for a in zip(x.shape[2:], w.shape[2:], stride, pad_lo,
                                             dilation, out_size)]
    with one_copy(x, *_shared_reads(x.shape[2:], per_axis)):
        for phase in itertools.product(*per_axis):
            start = tuple(a.start for a in phase)
            if any(a.taps == 0 for a in phase):
                K._put_phase(empty, bias_array, y, start, stride)
                continue
            sub_w = np.ascontiguousarray(w[(slice(None), slice(None))
                                           + tuple(slice(a.first, a.first + a.step * a.taps, a.step)
                                                   for a in phase)])
            sub_x = x
            if any(a.crop for a in phase):
                sub_x = np.ascontiguousarray(x[(slice(None), slice(None))
                                               + tuple(slice(a.crop, None) for a in phase)])
            part = transposed(sub_x, sub_w, (1, 1, 1), tuple(a.pad for a in phase),
                              tuple(a.dilation for a in phase), groups,
                              tuple(a.size for a in phase), bias)
            K._put_phase(part, bias_array, y, start, stride)
    return y
