"""Non-zero padding modes (reflect, replicate, circular) and their gradient.

Each mode is an index map per axis: padded position ``j`` reads input position ``source[j]``.
Padding is then a ``take`` along each axis, and its gradient adds each padded slice back into
the slice it copied, so both work unchanged on NumPy and CuPy arrays.
"""

from __future__ import annotations

import numpy as np

from ._params import array_module


def source_index(size, lo, hi, mode):
    """Input position read by each of the ``lo + size + hi`` padded positions (NumPy ints)."""
    j = np.arange(-lo, size + hi)
    if mode == "reflect":
        # one reflection suffices: validation keeps the padding below the size
        j = np.abs(j)
        return np.where(j >= size, 2 * (size - 1) - j, j)
    if mode == "replicate":
        return np.clip(j, 0, size - 1)
    if mode == "circular":
        return np.mod(j, size)
    raise ValueError(f"unknown padding mode {mode!r}")


def pad(x, padding, mode):
    """Pad the trailing spatial axes of ``x`` by ``padding`` ``(lo, hi)`` pairs in ``mode``."""
    xp = array_module(x)
    first = x.ndim - len(padding)
    for axis, (lo, hi) in enumerate(padding, start=first):
        if lo or hi:
            idx = xp.asarray(source_index(x.shape[axis], lo, hi, mode))
            x = xp.take(x, idx, axis=axis)
    return xp.ascontiguousarray(x)


def pad_backward(grad_padded, padding, mode):
    """Gradient of :func:`pad`: every padded position adds into the input position it read.

    The pads are added one slice at a time (a pad is narrower than the input), so a NaN or an
    infinity reaches only the position it was copied from, as in PyTorch."""
    xp = array_module(grad_padded)
    g = grad_padded
    first = g.ndim - len(padding)
    for axis, (lo, hi) in enumerate(padding, start=first):
        if lo or hi:
            size = g.shape[axis] - lo - hi
            src = source_index(size, lo, hi, mode)
            moved = xp.moveaxis(g, axis, 0)
            folded = moved[lo:lo + size].copy()
            for j in (*range(lo), *range(lo + size, lo + size + hi)):
                folded[src[j]] += moved[j]
            g = xp.moveaxis(folded, 0, axis)
    return xp.ascontiguousarray(g)
