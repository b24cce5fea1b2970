"""NumPy reference backend: short, vectorised, obviously right.

Every backend implements the same eight primitives on 5-D arrays ``(N, C, D, H, W)`` with
canonical arguments (three-int tuples, low-side padding only; the high side is implied by the
output size). ``fastconv.functional`` composes everything else from them:

- ``conv_forward``: cross-correlation, weight ``(K, C // groups, *kernel)``;
- ``conv_transpose_forward``: its adjoint, weight ``(C_in, C_out // groups, *kernel)``, which is
  also the convolution's input gradient;
- ``conv_weight_grad``: the weight gradient, shared by both directions; ``bias_grad``;
- ``avg_pool_forward`` (window sums over their divisors) and ``avg_pool_backward``;
- ``max_pool_forward`` (values and, when asked, flat per-plane indices) and
  ``max_pool_backward``;
- for ``fastconv.nn``'s activation: ``sigmoid_forward`` and ``sigmoid_backward``.
"""

from __future__ import annotations

import itertools

import numpy as np
from numpy.lib.stride_tricks import as_strided

name = "numpy"


def _padded(x, pad_lo, extent, fill=0):
    """A copy of ``x`` padded by ``pad_lo`` and padded or cut at the end to ``extent``."""
    out = np.full(x.shape[:2] + tuple(extent), fill, dtype=x.dtype)
    dst, src = [slice(None)] * 2, [slice(None)] * 2
    for size, lo, ext in zip(x.shape[2:], pad_lo, extent):
        n = max(0, min(size, ext - lo))
        dst.append(slice(lo, lo + n))
        src.append(slice(0, n))
    out[tuple(dst)] = x[tuple(src)]
    return out


def _extent(out_size, kernel, stride, dilation):
    """How far along each axis the windows of a convolution reach."""
    return [(o - 1) * s + d * (k - 1) + 1 for o, k, s, d in zip(out_size, kernel, stride, dilation)]


def _windows(x, kernel, stride, dilation, out_size, groups=1):
    """Read-only view ``(N, groups, C // groups, *out_size, *kernel)`` of the windows of ``x``."""
    n, c = x.shape[:2]
    sn, sc, *ss = x.strides
    shape = (n, groups, c // groups, *out_size, *kernel)
    strides = (sn, sc * (c // groups), sc, *(a * s for a, s in zip(ss, stride)),
               *(a * d for a, d in zip(ss, dilation)))
    return as_strided(x, shape, strides, writeable=False)


def conv_forward(x, w, stride, pad_lo, dilation, groups, out_size, bias=None):
    """``y[n, k, o] = sum_{c, r} x[n, g*Cg + c, o*stride - pad + r*dilation] * w[k, c, r]``,
    plus ``bias[k]`` unless ``bias`` is ``None``."""
    kernel = w.shape[2:]
    xp = _padded(x, pad_lo, _extent(out_size, kernel, stride, dilation))
    win = _windows(xp, kernel, stride, dilation, out_size, groups)
    kg = w.shape[0] // groups
    y = np.empty((x.shape[0], w.shape[0], *out_size), dtype=x.dtype)
    for g in range(groups):
        wg = w[g * kg:(g + 1) * kg]
        prod = np.tensordot(win[:, g], wg, axes=([1, 5, 6, 7], [1, 2, 3, 4]))
        y[:, g * kg:(g + 1) * kg] = np.moveaxis(prod, -1, 1)
    return _with_bias(y, bias)


def _with_bias(y, bias):
    if bias is not None:
        y += bias.reshape(1, -1, 1, 1, 1)
    return y


def conv_transpose_forward(x, w, stride, pad_lo, dilation, groups, out_size, bias=None):
    """The adjoint of :func:`conv_forward`: each input element scatters ``x * w`` on its window
    (then ``bias``, if given, is added per output channel)."""
    n, c_in = x.shape[:2]
    cig, cog = c_in // groups, w.shape[1]
    in_size = x.shape[2:]
    reach = _extent(in_size, w.shape[2:], stride, dilation)
    full = [max(r, lo + o) for r, lo, o in zip(reach, pad_lo, out_size)]
    buf = np.zeros((n, cog * groups, *full), dtype=x.dtype)
    for g, offset in itertools.product(range(groups), np.ndindex(*w.shape[2:])):
        xg = x[:, g * cig:(g + 1) * cig]
        wg = w[g * cig:(g + 1) * cig, :, offset[0], offset[1], offset[2]]
        contrib = np.moveaxis(np.tensordot(xg, wg, axes=([1], [0])), -1, 1)
        where = tuple(slice(r * d, r * d + (i - 1) * s + 1, s)
                      for r, d, i, s in zip(offset, dilation, in_size, stride))
        buf[(slice(None), slice(g * cog, (g + 1) * cog)) + where] += contrib
    crop = tuple(slice(lo, lo + o) for lo, o in zip(pad_lo, out_size))
    return _with_bias(np.ascontiguousarray(buf[(slice(None), slice(None)) + crop]), bias)


def bias_grad(gy):
    """The bias gradient: ``gy`` summed over everything but the channel axis."""
    return gy.sum(axis=(0, 2, 3, 4))


def conv_weight_grad(x, gy, stride, pad_lo, dilation, groups, kernel):
    """``gw[k, c, r] = sum_{n, o} gy[n, k, o] * x[n, g*Cg + c, o*stride - pad + r*dilation]``,
    summed over the outputs ``o`` whose input position is in bounds: the padding never enters
    a product (as in PyTorch, where ``0 * inf`` would make NaN of an infinite ``gy``)."""
    k, cg = gy.shape[1], x.shape[1] // groups
    kg = k // groups
    gw = np.zeros((k, cg, *kernel), dtype=x.dtype)
    for tap in np.ndindex(*kernel):
        boxes = [_in_bounds(r, o_n, size, s, p, d) for r, o_n, size, s, p, d
                 in zip(tap, gy.shape[2:], x.shape[2:], stride, pad_lo, dilation)]
        if any(box is None for box in boxes):
            continue  # every output of this tap reads padding
        outs, ins = zip(*boxes)
        for g in range(groups):
            gw[(slice(g * kg, (g + 1) * kg), slice(None)) + tap] = np.tensordot(
                gy[(slice(None), slice(g * kg, (g + 1) * kg)) + outs],
                x[(slice(None), slice(g * cg, (g + 1) * cg)) + ins],
                axes=([0, 2, 3, 4], [0, 2, 3, 4]))
    return gw


def _in_bounds(r, out_n, size, stride, pad, dilation):
    """Along one axis, for tap ``r``: the slices of outputs ``o`` with ``0 <= o*stride - pad +
    r*dilation < size`` and of the input positions they read, or ``None`` if there are none."""
    offset = r * dilation - pad
    lo, hi = max(0, -(offset // stride)), min(out_n, (size - 1 - offset) // stride + 1)
    if hi <= lo:
        return None
    start = lo * stride + offset
    return slice(lo, hi), slice(start, start + (hi - lo - 1) * stride + 1, stride)


def _first_valid(out, size, kernel, stride, pad, dilation):
    """Per axis, the first in-bounds position of each window (PyTorch's default argmax)."""
    start = np.arange(out) * stride - pad
    skip = np.maximum(0, -(start // dilation))  # steps of `dilation` needed to reach 0
    return start + skip * dilation


def avg_pool_forward(x, kernel, stride, pad_lo, out_size, divisor):
    """Each window's sum (zero padding included), divided by ``divisor`` (shape ``out_size``):
    a depthwise convolution with a kernel of ones."""
    channels = x.shape[1]
    sums = conv_forward(x, _ones(channels, kernel, x.dtype), stride, pad_lo, (1, 1, 1),
                        channels, out_size)
    sums /= divisor
    return sums


def avg_pool_backward(gy, kernel, stride, pad_lo, in_size, divisor):
    """The adjoint of :func:`avg_pool_forward`: the transposed depthwise convolution of
    ``gy / divisor`` with a kernel of ones."""
    channels = gy.shape[1]
    return conv_transpose_forward(gy / divisor, _ones(channels, kernel, gy.dtype), stride,
                                  pad_lo, (1, 1, 1), channels, in_size)


def _ones(channels, kernel, dtype):
    """The depthwise weight that turns a convolution into window sums."""
    return np.ones((channels, 1, *kernel), dtype=dtype)


def max_pool_forward(x, kernel, stride, pad_lo, dilation, out_size, indices=True):
    """Max over each window and the flat per-plane index of the element taken.

    Backends may skip the indices when ``indices`` is false (and return ``None`` for them);
    this reference always computes them, as its one definition of the rules.

    PyTorch's rule: the first maximum wins, any NaN beats every number and the last NaN wins,
    and a window of only ``-inf`` (or, degenerately, of padding only) points at its first
    in-bounds position.
    """
    n, c = x.shape[:2]
    size = x.shape[2:]
    extent = _extent(out_size, kernel, stride, dilation)
    values = _windows(_padded(x, pad_lo, extent, -np.inf), kernel, stride, dilation, out_size)
    taps = int(np.prod(kernel))  # explicit: -1 cannot be inferred for an empty batch
    values = values.reshape(n, c, *out_size, taps)
    flat = np.arange(np.prod(size), dtype=np.int64).reshape(1, 1, *size)
    where = _windows(_padded(flat, pad_lo, extent, -1), kernel, stride, dilation, out_size)
    where = where.reshape(*out_size, taps)

    valid = where >= 0
    nan = np.isnan(values) & valid
    finite = np.where(valid & ~nan, values, -np.inf)
    best = finite.max(axis=-1, keepdims=True)
    first_max = np.argmax((finite == best) & valid, axis=-1)
    last_nan = nan.shape[-1] - 1 - np.argmax(nan[..., ::-1], axis=-1)
    pick = np.where(nan.any(axis=-1), last_nan, first_max)

    y = np.take_along_axis(values, pick[..., None], axis=-1)[..., 0]
    idx = np.take_along_axis(np.broadcast_to(where, values.shape), pick[..., None], axis=-1)[..., 0]
    starts = [_first_valid(o, s, k, st, p, d)
              for o, s, k, st, p, d in zip(out_size, size, kernel, stride, pad_lo, dilation)]
    default = (starts[0][:, None, None] * size[1] + starts[1][None, :, None]) * size[2] \
        + starts[2][None, None, :]
    only_ninf = (best[..., 0] == -np.inf) & ~nan.any(axis=-1)
    idx = np.where(only_ninf, default, idx)
    return np.ascontiguousarray(y), (np.ascontiguousarray(idx) if indices else None)


def max_pool_backward(gy, idx, in_size, window):
    """Scatter-add ``gy`` into the positions ``idx`` of each input plane.

    ``window`` is the forward's ``(kernel, stride, pad_lo, dilation)``; a scatter does not need
    it (the ``cupy`` backend gathers over the windows that cover each input position)."""
    n, c = gy.shape[:2]
    plane = int(np.prod(in_size))
    rows = np.arange(n * c).reshape(n, c, 1, 1, 1) * plane
    keep = (idx >= 0) & (idx < plane)  # only a window of padding points outside its plane
    flat = (rows + idx)[keep]
    gx = np.bincount(flat, weights=gy[keep], minlength=n * c * plane)
    return gx.astype(gy.dtype).reshape(n, c, *in_size)


# The activations of fastconv.nn (not used by the convolution ops): any shape.

def sigmoid_forward(x):
    """``1 / (1 + exp(-x))``, in place on one buffer (each temporary of a large activation
    costs its pages' first touch). ``exp(-x)`` overflows to inf below -88 in float32, and
    ``1 / (1 + inf)`` is the right 0."""
    y = np.negative(x)
    with np.errstate(over="ignore"):
        np.exp(y, out=y)
    y += 1
    np.reciprocal(y, out=y)
    return y


def sigmoid_backward(y, gy):
    """``gy * y * (1 - y)`` from the forward's output ``y``."""
    g = 1 - y
    g *= y
    g *= gy
    return g
