"""NaN and Inf as PyTorch propagates them, on every backend and every way of computing.

One NaN in an input reaches exactly the outputs whose window covers it; an infinity gives
+-inf there, NaN only where +inf and -inf meet; padding never enters a product (``0 * inf``
would be NaN). Each output and gradient is compared position by position with PyTorch (in
float32): its sets of NaN, +inf and -inf, and its finite values.

One exception: the weight gradient when ``grad_output`` (or a transposed convolution's input)
holds NaN or Inf. PyTorch's answer there depends on the algorithm it picks: its oneDNN
kernels leave the padding out of the sums (the large float32 case below), its im2col and
vol2col kernels (float64, and small, dilated, grouped or 3-D float32 problems) multiply the
materialised zeros and give NaN. fastconv leaves the padding out on every path; the oracle
there is that definition, computed below by gathering the in-bounds positions.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from helpers import NUMBA_WAYS, bias_grad_scale, force_numba_way, randn

import fastconv as fc

# (name, op, input shape, weight shape or None, keyword arguments)
CASES = [
    ("3x3", "conv2d", (3, 4, 9, 11), (6, 4, 3, 3), {"padding": 1}),
    ("5x5", "conv2d", (3, 4, 9, 11), (6, 4, 5, 5), {"padding": 2}),
    ("dilated-grouped", "conv2d", (3, 4, 9, 11), (6, 2, 3, 3),
     {"padding": 2, "dilation": 2, "groups": 2}),
    ("depthwise", "conv2d", (3, 4, 9, 11), (4, 1, 3, 3), {"padding": 1, "groups": 4}),
    ("stride-2", "conv2d", (3, 4, 9, 11), (6, 4, 3, 3), {"padding": 1, "stride": 2}),
    ("3d", "conv3d", (2, 4, 5, 6, 7), (6, 4, 3, 3, 3), {"padding": 1}),
    ("1d", "conv1d", (3, 4, 17), (6, 4, 3), {"padding": 1}),
    ("transposed", "conv_transpose2d", (3, 4, 6, 7), (4, 6, 3, 3), {"padding": 1}),
    ("transposed-s2", "conv_transpose2d", (3, 4, 6, 7), (4, 3, 4, 4),
     {"stride": 2, "padding": 1}),
    ("avg-pool", "avg_pool2d", (3, 4, 9, 11), None,
     {"kernel_size": 3, "stride": 2, "padding": 1}),
    ("max-pool", "max_pool2d", (3, 4, 9, 11), None,
     {"kernel_size": 3, "stride": 2, "padding": 1}),
]
# where the non-finite values go, and which: a corner (its windows reach into the padding),
# an edge and the interior; "mixed" puts +inf and -inf side by side and a NaN elsewhere
PATTERNS = ["nan", "inf", "-inf", "mixed"]


def _spoil(a, pattern, rng):
    """``a`` with non-finite values at a corner, an edge and an interior position."""
    a = a.copy()
    spatial = a.shape[2:]
    corner = (0, 0) + (0,) * len(spatial)
    edge = (a.shape[0] - 1, a.shape[1] - 1, *(s // 2 for s in spatial[:-1]), spatial[-1] - 1)
    inner = (rng.integers(a.shape[0]), rng.integers(a.shape[1]),
             *(s // 2 for s in spatial))
    values = {"nan": [np.nan] * 3, "inf": [np.inf] * 3, "-inf": [-np.inf] * 3,
              "mixed": [np.nan, np.inf, -np.inf]}[pattern]
    for where, value in zip((corner, edge, inner), values):
        a[where] = value
    if pattern == "mixed":  # +inf and -inf in neighbouring positions: NaN where both reach
        a[inner[:-1] + (max(inner[-1] - 1, 0),)] = np.inf
    return a


def _torch_results(case, x, w, gy):
    """PyTorch's forward and every gradient, in float32."""
    _, op, _, _, kw = case
    tx = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    args = [tx]
    if w is not None:
        args += [torch.tensor(w, dtype=torch.float32, requires_grad=True),
                 torch.zeros(_channels_out(case), dtype=torch.float32, requires_grad=True)]
    y = getattr(torch.nn.functional, op)(*args, **kw)
    y.backward(torch.tensor(gy, dtype=torch.float32))
    return [t.detach().numpy() for t in [y] + [a.grad for a in args]]


def _channels_out(case):
    _, op, _, w_shape, kw = case
    return w_shape[0] if not op.startswith("conv_transpose") else w_shape[1] * kw.get("groups", 1)


def _fastconv_results(case, x, w, gy):
    _, op, _, _, kw = case
    f = getattr(fc, op)
    if w is None:
        return [f(x, **kw), getattr(fc, f"{op}_backward")(gy, x, **kw)]
    b = np.zeros(_channels_out(case), x.dtype)
    return [f(x, w, b, **kw), *getattr(fc, f"{op}_backward")(gy, x, w, **kw)]


def _data(case, where, pattern, dtype, rng):
    _, _, x_shape, w_shape, _ = case
    x = randn(rng, x_shape, dtype)
    w = None if w_shape is None else randn(rng, w_shape, dtype)
    gy = randn(rng, _out_shape(case), dtype)
    if where == "input":
        x = _spoil(x, pattern, rng)
    else:
        gy = _spoil(gy, pattern, rng)
    return x, w, gy


def _out_shape(case):
    _, op, x_shape, w_shape, kw = case
    if op.startswith("conv_transpose"):
        return fc.conv_transpose_output_shape(x_shape, w_shape, **kw)
    if op.startswith("conv"):
        return fc.conv_output_shape(x_shape, w_shape, **kw)
    return fc.pool_output_shape(x_shape, **kw)


def _assert_same_nonfinite(got, expected, what, scale=None):
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, what
    for name, test in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        wrong = np.argwhere(test(got) != test(expected))
        assert wrong.size == 0, (
            f"{what}: {name} at {len(wrong)} positions where PyTorch differs, e.g. "
            f"{tuple(wrong[0])}: fastconv {got[tuple(wrong[0])]}, "
            f"PyTorch {expected[tuple(wrong[0])]}")
    finite = np.isfinite(expected)
    err = np.linalg.norm(got[finite] - expected[finite])
    if scale is None:
        scale = np.linalg.norm(expected[finite])
    assert err <= 1e-4 * max(scale, 1e-30), f"{what}: finite values off by {err:.3g}"


def _weight_grad_in_bounds(x, gy, kernel, stride=1, padding=0, dilation=1, groups=1):
    """The definition: ``gw[k, c, r]`` sums ``gy[n, k, o] * x[n, g*Cg + c, i]`` over ``n``
    and the outputs ``o`` whose position ``i = o*stride - padding + r*dilation`` is in
    bounds. In float64."""
    nd = x.ndim - 2
    stride, padding, dilation = (v if isinstance(v, tuple) else (v,) * nd
                                 for v in (stride, padding, dilation))
    x, gy = x.astype(np.float64), gy.astype(np.float64)
    k_out, cg = gy.shape[1], x.shape[1] // groups
    kg = k_out // groups
    gw = np.zeros((k_out, cg, *kernel))
    for tap in np.ndindex(*kernel):
        pos = [np.arange(o) * s - p + r * d for o, s, p, r, d
               in zip(gy.shape[2:], stride, padding, tap, dilation)]
        valid = functools.reduce(np.logical_and.outer,
                                 [(i >= 0) & (i < n) for i, n in zip(pos, x.shape[2:])])
        gathered = x[np.ix_(range(x.shape[0]), range(x.shape[1]),
                            *[np.clip(i, 0, n - 1) for i, n in zip(pos, x.shape[2:])])]
        for g in range(groups):
            prod = gy[:, g * kg:(g + 1) * kg, None] * gathered[:, None, g * cg:(g + 1) * cg]
            gw[(slice(g * kg, (g + 1) * kg), slice(None)) + tap] = np.where(
                valid, prod, 0).sum(axis=(0, *range(3, 3 + nd)))
    return gw


def _check(case, where, pattern, dtype, rng):
    x, w, gy = _data(case, where, pattern, dtype, rng)
    expected = _torch_results(case, x, w, gy)
    _, op, _, _, kw = case
    transposed = op.startswith("conv_transpose")
    if transposed and where == "input":  # x plays gy's part in its weight gradient
        expected[2] = _weight_grad_in_bounds(gy, x, w.shape[2:], **kw)
    elif op.startswith("conv") and not transposed and where == "grad_output":
        expected[2] = _weight_grad_in_bounds(x, gy, w.shape[2:], **kw)
    got = _fastconv_results(case, x, w, gy)
    if not (op.startswith("max") and pattern == "-inf"):  # a window's max passes over -inf
        assert any(not np.isfinite(e).all() for e in expected), "no output is non-finite"
    # a bias gradient sums terms that cancel: its rounding scales with the terms
    scales = [None, None, None, bias_grad_scale(np.where(np.isfinite(gy), gy, 0))]
    for g, e, what, scale in zip(got, expected, ("output", "grad_input", "grad_weight",
                                                 "grad_bias"), scales):
        _assert_same_nonfinite(g, e, what, scale)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("where", ["input", "grad_output"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_nonfinite_like_torch(case, where, pattern, backend, dtype, rng):
    """Every backend, each choosing its way as it does for a user."""
    _check(case, where, pattern, dtype, rng)


CONV_CASES = [c for c in CASES if c[1].startswith("conv")]


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("where", ["input", "grad_output"])
@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
@pytest.mark.parametrize("way", NUMBA_WAYS)
def test_nonfinite_every_numba_way(way, case, where, pattern, dtype, rng, monkeypatch):
    """The Numba backend with each way to compute forced where it fits: a way whose arithmetic
    mixes neighbours (Winograd) steps aside for non-finite operands; padding never meets a
    non-finite gradient in a product."""
    force_numba_way(way, monkeypatch)
    with fc.use_backend("numba"):
        _check(case, where, pattern, dtype, rng)


def test_large_float32_like_torch_onednn(rng):
    """The weight gradient's definition is what PyTorch's oneDNN kernels compute: the issue's
    example, an infinity in ``grad_output`` (and a NaN) at padded positions, float32."""
    case = ("large", "conv2d", (8, 16, 32, 32), (32, 16, 3, 3), {"padding": 1})
    x, w, gy = _data(case, "grad_output", "mixed", np.dtype(np.float32), rng)
    expected = _torch_results(case, x, w, gy)
    _assert_same_nonfinite(_weight_grad_in_bounds(x, gy, (3, 3), padding=1), expected[2],
                           "the definition against PyTorch")
    for got, e, what in zip(_fastconv_results(case, x, w, gy), expected,
                            ("output", "grad_input", "grad_weight", "grad_bias")):
        _assert_same_nonfinite(got, e, what)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("where", ["input", "grad_output"])
def test_nonfinite_padding_modes_like_torch(mode, where, backend, dtype, rng):
    """A padding mode's gradient adds each padded element back into the one it copied: a NaN
    or an infinity there reaches that element only (a matrix product with a one-hot fold
    spread it over the whole row)."""
    x = randn(rng, (2, 3, 7, 8), dtype)
    w = randn(rng, (4, 3, 3, 3), dtype)
    pads = ((2, 1), (1, 2))
    gy = randn(rng, fc.conv_output_shape(x.shape, w.shape, padding=pads), dtype)
    spoiled = _spoil(x if where == "input" else gy, "mixed", rng)
    x, gy = (spoiled, gy) if where == "input" else (x, spoiled)
    tx = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    tw = torch.tensor(w, dtype=torch.float32, requires_grad=True)
    padded = torch.nn.functional.pad(tx, (1, 2, 2, 1), mode=mode)
    ty = torch.nn.functional.conv2d(padded, tw)
    ty.backward(torch.tensor(gy, dtype=torch.float32))
    y = fc.conv2d(x, w, padding=pads, padding_mode=mode)
    gx, gw, _ = fc.conv2d_backward(gy, x, w, padding=pads, padding_mode=mode)
    for got, want, what in ((y, ty, "output"), (gx, tx.grad, "grad_input"),
                            (gw, tw.grad, "grad_weight")):
        _assert_same_nonfinite(got, want.detach().numpy(), what)
