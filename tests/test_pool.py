"""max_pool and avg_pool in 1-D/2-D/3-D, forward (with indices) and backward, against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, autograd, randn
from test_conv import per_axis

import fastconv as fc

SIZES = {1: (15,), 2: (11, 10), 3: (7, 6, 9)}

MAX_CASES = {
    "k2": {"kernel_size": 2},
    "k3s2p1": {"kernel_size": 3, "stride": 2, "padding": 1},
    "stride1": {"kernel_size": 3, "stride": 1},
    "asym": {"kernel_size": (3, 2, 4), "stride": (1, 2, 3), "padding": (1, 0, 2)},
    "dilation": {"kernel_size": 3, "dilation": 2, "padding": 1},
    "ceil": {"kernel_size": 2, "stride": 2, "ceil_mode": True},
    "ceil_pad": {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True},
    "ceil_drop_last": {"kernel_size": 2, "stride": 3, "padding": 1, "ceil_mode": True},
    "ceil_dilation": {"kernel_size": (2, 3, 2), "stride": (3, 2, 2), "dilation": (2, 1, 3),
                      "ceil_mode": True},
}

AVG_CASES = {
    "k2": {"kernel_size": 2},
    "k3s2p1": {"kernel_size": 3, "stride": 2, "padding": 1},
    "exclude_pad": {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False},
    "asym": {"kernel_size": (3, 2, 4), "stride": (1, 2, 3), "padding": (1, 0, 2)},
    "ceil": {"kernel_size": 2, "stride": 2, "ceil_mode": True},
    "ceil_pad": {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True},
    "ceil_exclude": {"kernel_size": (3, 2, 3), "stride": (2, 3, 2), "padding": 1,
                     "ceil_mode": True, "count_include_pad": False},
    "divisor": {"kernel_size": 3, "stride": 2, "padding": 1, "divisor_override": 7},
    "divisor_ceil": {"kernel_size": 2, "stride": 3, "ceil_mode": True, "divisor_override": 3},
}


def kwargs_for(case, nd):
    return {key: per_axis(value, nd) for key, value in case.items()}


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("case", MAX_CASES, ids=str)
def test_max_pool_matches_torch(case, nd, dtype, backend, rng):
    kwargs = kwargs_for(MAX_CASES[case], nd)
    x = randn(rng, (2, 3, *SIZES[nd]), dtype)
    torch_op = getattr(F, f"max_pool{nd}d")
    y_t, idx_t, gy, (gx_t,) = autograd(lambda x: torch_op(x, **kwargs, return_indices=True),
                                       [x], rng)
    y, idx = getattr(fc, f"max_pool{nd}d")(x, **kwargs, return_indices=True)
    assert_close(y, y_t, dtype, "forward")
    np.testing.assert_array_equal(idx, idx_t)
    assert idx.dtype == np.int64
    assert_close(getattr(fc, f"max_pool{nd}d")(x, **kwargs), y_t, dtype, "without indices")
    backward = getattr(fc, f"max_pool{nd}d_backward")
    assert_close(backward(gy, x, **kwargs), gx_t, dtype, "grad_x (recomputed indices)")
    assert_close(backward(gy, x, **kwargs, indices=idx), gx_t, dtype, "grad_x (given indices)")


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("case", AVG_CASES, ids=str)
def test_avg_pool_matches_torch(case, nd, dtype, backend, rng):
    kwargs = kwargs_for(AVG_CASES[case], nd)
    if nd == 1:
        kwargs.pop("divisor_override", None)  # PyTorch's avg_pool1d has no divisor_override
    x = randn(rng, (2, 3, *SIZES[nd]), dtype)
    torch_op = getattr(F, f"avg_pool{nd}d")
    y_t, _, gy, (gx_t,) = autograd(lambda x: torch_op(x, **kwargs), [x], rng)
    assert_close(getattr(fc, f"avg_pool{nd}d")(x, **kwargs), y_t, dtype, "forward")
    gx = getattr(fc, f"avg_pool{nd}d_backward")(gy, x, **kwargs)
    assert_close(gx, gx_t, dtype, "grad_x")


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("case", ["global", "rows", "rows_exclude"])
def test_avg_pool_of_whole_rows_matches_torch(case, nd, dtype, backend, rng):
    """Windows as wide as the input (global pooling, ResNet's head) are summed as contiguous
    runs, with NaN and Inf among the values; padded and clipped rows too."""
    size = SIZES[nd]
    # 15 planes: on two threads, planes four at a time with a partial last group
    x = randn(rng, (3, 5, *size), dtype)
    x.reshape(-1)[rng.choice(x.size, size=6, replace=False)] = [np.nan, np.inf, -np.inf] * 2
    x[1, 2] = np.inf
    if case == "global":
        kwargs = {"kernel_size": size}
    else:
        kernel = (*[2] * (nd - 1), size[-1])
        kwargs = {"kernel_size": kernel, "stride": (*[2] * (nd - 1), 1),
                  "padding": (*[1] * (nd - 1), 0), "ceil_mode": True,
                  "count_include_pad": case == "rows"}
    torch_op = getattr(F, f"avg_pool{nd}d")
    y_t, _, gy, (gx_t,) = autograd(lambda x: torch_op(x, **kwargs), [x], rng)
    y = getattr(fc, f"avg_pool{nd}d")(x, **kwargs)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_t))
    np.testing.assert_array_equal(np.isinf(y) * np.sign(y), np.isinf(y_t) * np.sign(y_t))
    finite = np.isfinite(y_t)
    # a mean of a whole plane of random values sums terms that cancel: the budget scales with
    # the terms (the means of |x|), not the result (2 of 300 seeds were past that)
    terms = torch_op(torch.from_numpy(np.abs(np.where(np.isfinite(x), x, 0))), **kwargs)
    assert_close(y[finite], y_t[finite], dtype, "forward",
                 scale=np.linalg.norm(terms.numpy()[finite].astype(np.float64)))
    gx = getattr(fc, f"avg_pool{nd}d_backward")(gy, x, **kwargs)
    assert_close(gx, gx_t, dtype, "grad_x")


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_divisor_override_scales_the_window_sum(nd, backend, rng):
    """Checked against the plain average (PyTorch has no divisor_override in 1-D)."""
    x = randn(rng, (2, 3, *SIZES[nd]), np.float64)
    op = getattr(fc, f"avg_pool{nd}d")
    plain = op(x, 3, 2, 1, count_include_pad=True)
    # padding 1, kernel 3, no ceil_mode: every window counts 3**nd cells, padding included
    scaled = op(x, 3, 2, 1, divisor_override=5)
    assert_close(scaled, plain * 3**nd / 5, np.float64, "divisor_override")


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_unbatched_pooling(nd, backend, rng):
    x = randn(rng, (3, *SIZES[nd]), np.float64)
    for op in ("max_pool", "avg_pool"):
        f = getattr(fc, f"{op}{nd}d")
        assert_close(f(x, 2), f(x[None], 2)[0], np.float64, op)
        g = getattr(fc, f"{op}{nd}d_backward")(np.ones_like(f(x, 2)), x, 2)
        assert g.shape == x.shape


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_max_pool_nan_and_inf_like_torch(nd, dtype, backend, rng):
    """NaN wins (the last NaN's index), -inf windows point at their first valid cell."""
    x = randn(rng, (2, 3, *SIZES[nd]), dtype)
    flat = x.reshape(-1)
    picks = rng.choice(flat.size, size=flat.size // 4, replace=False)
    flat[picks[: len(picks) // 2]] = np.nan
    flat[picks[len(picks) // 2:]] = -np.inf
    x[0, 0] = -np.inf  # a whole plane of -inf
    kwargs = {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}
    torch_op = getattr(F, f"max_pool{nd}d")
    y_t, idx_t, gy, (gx_t,) = autograd(lambda x: torch_op(x, **kwargs, return_indices=True),
                                       [x], rng)
    y, idx = getattr(fc, f"max_pool{nd}d")(x, **kwargs, return_indices=True)
    np.testing.assert_array_equal(y, y_t)  # equal NaN positions and values
    np.testing.assert_array_equal(idx, idx_t)
    gx = getattr(fc, f"max_pool{nd}d_backward")(gy, x, **kwargs)
    assert_close(gx, gx_t, dtype, "grad_x")  # sums of several gradients: rounding order varies
