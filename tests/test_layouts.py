"""Memory layouts, dtypes, empty batches: the input's form never changes the answer."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import randn

import fastconv as fc

OPS = {
    "conv2d": lambda x, w: fc.conv2d(x, w, padding=1, stride=(1, 2)),
    "conv_transpose2d": lambda x, w: fc.conv_transpose2d(x, w[:, :2], stride=2),
    "max_pool2d": lambda x, w: fc.max_pool2d(x, 3, 2, 1, return_indices=True),
    "avg_pool2d": lambda x, w: fc.avg_pool2d(x, 2, ceil_mode=True),
    "conv2d_backward": lambda x, w: fc.conv2d_backward(
        np.ones(fc.conv_output_shape(x.shape, w.shape), x.dtype), x, w),
}


def views(x):
    """The same values as ``x`` in several layouts: strided, transposed, reversed."""
    big = np.zeros((x.shape[0], x.shape[1], 2 * x.shape[2], 3 * x.shape[3]), x.dtype)
    big[:, :, ::2, ::3] = x
    yield "strided", big[:, :, ::2, ::3]
    yield "fortran", np.asfortranarray(x)
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    yield "channels_last", nhwc.transpose(0, 3, 1, 2)
    flipped = np.ascontiguousarray(x[:, :, ::-1, ::-1])
    yield "negative_strides", flipped[:, :, ::-1, ::-1]


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("op", OPS)
def test_layouts_give_identical_results(op, dtype, backend, rng):
    x = randn(rng, (2, 4, 7, 8), dtype)
    w = randn(rng, (4, 4, 3, 3), dtype)
    expected = as_tuple(OPS[op](x, w))
    for name, view in views(x):
        assert not view.flags.c_contiguous and np.array_equal(view, x)
        for a, b in zip(as_tuple(OPS[op](view, np.asfortranarray(w))), expected):
            assert np.array_equal(a, b), f"{op} differs for a {name} input"
            assert a.dtype == b.dtype


@pytest.mark.parametrize("op", OPS)
def test_inputs_are_not_modified(op, backend, rng):
    x = randn(rng, (2, 4, 7, 8), np.float64)
    w = randn(rng, (4, 4, 3, 3), np.float64)
    x0, w0 = x.copy(), w.copy()
    OPS[op](x, w)
    assert np.array_equal(x, x0) and np.array_equal(w, w0)


@pytest.mark.parametrize("op", OPS)
def test_empty_batch(op, dtype, backend, rng):
    """N = 0 gives empty batched outputs of the right shape, and zero weight/bias gradients."""
    w = randn(rng, (4, 4, 3, 3), dtype)
    one = as_tuple(OPS[op](randn(rng, (1, 4, 7, 8), dtype), w))
    empty = as_tuple(OPS[op](randn(rng, (0, 4, 7, 8), dtype), w))
    batched = (True, False, False) if op == "conv2d_backward" else (True,) * len(one)
    for e, o, has_batch in zip(empty, one, batched, strict=True):
        assert e.shape == ((0,) + o.shape[1:] if has_batch else o.shape)
        assert e.dtype == o.dtype
        if not has_batch:
            assert not e.any()


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_float32_stays_float32(nd, backend, rng):
    x = randn(rng, (2, 3, *(6,) * nd), np.float32)
    w = randn(rng, (4, 3, *(3,) * nd), np.float32)
    b = randn(rng, (4,), np.float32)
    y = getattr(fc, f"conv{nd}d")(x, w, b)
    grads = getattr(fc, f"conv{nd}d_backward")(np.ones_like(y), x, w)
    assert y.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
    for op in ("max_pool", "avg_pool"):
        out = getattr(fc, f"{op}{nd}d")(x, 2)
        assert out.dtype == np.float32
        assert getattr(fc, f"{op}{nd}d_backward")(np.ones_like(out), x, 2).dtype == np.float32
