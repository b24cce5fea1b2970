"""conv{1,2,3}d and their backward against PyTorch over a grid that varies each argument."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, autograd, bias_grad_scale, randn, torch_conv

import fastconv as fc

SIZES = {1: (13,), 2: (9, 8), 3: (6, 5, 7)}


def per_axis(values, nd):
    """A per-axis tuple from a 3-axis template (last axes kept), or the value itself."""
    return tuple(values[-nd:]) if isinstance(values, tuple) else values


# Each case changes a few arguments from the base case: N=2, C=4, K=6, kernel 3.
CASES = {
    "base": {},
    "bias": {"bias": True},
    "stride2": {"stride": 2, "bias": True},
    "stride_asym": {"stride": (1, 2, 3)},
    "pad1": {"padding": 1},
    "pad_tuple": {"padding": (2, 0, 1)},
    "pad_pairs": {"padding": ((0, 2), (1, 0), (2, 1))},
    "same": {"padding": "same"},
    "same_even_kernel": {"padding": "same", "kernel": (2, 4, 2), "dilation": (1, 1, 3)},
    "same_strided": {"padding": "same", "stride": (2, 3, 1), "kernel": (3, 4, 2)},
    "same_strided_dilated": {"padding": "same", "stride": 2, "dilation": (2, 1, 3),
                             "padding_mode": "reflect"},
    "valid": {"padding": "valid"},
    "dilation2": {"dilation": 2, "padding": 1},
    "dilation_asym": {"dilation": (2, 1, 2), "stride": (1, 2, 1)},
    "groups2": {"groups": 2, "bias": True},
    "depthwise": {"groups": 4, "k_out": 8, "padding": 1},
    "kernel_asym": {"kernel": (3, 1, 2), "padding": (1, 0, 1)},
    "pointwise": {"kernel": (1, 1, 1)},
    "reflect": {"padding": 2, "padding_mode": "reflect", "bias": True},
    "replicate": {"padding": (1, 2, 3), "padding_mode": "replicate", "stride": 2},
    "circular": {"padding": 2, "padding_mode": "circular"},
    "reflect_pairs": {"padding": ((1, 0), (0, 2), (2, 1)), "padding_mode": "reflect"},
    "everything": {"padding": 2, "stride": (2, 1, 2), "dilation": (1, 2, 2), "groups": 2,
                   "bias": True, "padding_mode": "circular", "kernel": (2, 3, 2)},
}


def make_case(case, nd, dtype, rng, n=2):
    c, k_out = 4, case.get("k_out", 6)
    groups = case.get("groups", 1)
    kernel = per_axis(case.get("kernel", (3, 3, 3)), nd)
    x = randn(rng, (n, c, *SIZES[nd]), dtype)
    w = randn(rng, (k_out, c // groups, *kernel), dtype)
    b = randn(rng, (k_out,), dtype) if case.get("bias") else None
    kwargs = {key: per_axis(case[key], nd) for key in
              ("stride", "padding", "dilation", "padding_mode") if key in case}
    if isinstance(kwargs.get("padding"), tuple) and isinstance(kwargs["padding"][0], tuple):
        kwargs["padding"] = tuple(kwargs["padding"])
    kwargs["groups"] = groups
    return x, w, b, kwargs


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_conv_matches_torch(case, nd, dtype, backend, rng):
    x, w, b, kwargs = make_case(CASES[case], nd, dtype, rng)
    y_t, _, gy, (gx_t, gw_t, gb_t) = autograd(torch_conv(nd, **kwargs), [x, w, b], rng)

    conv = getattr(fc, f"conv{nd}d")
    backward = getattr(fc, f"conv{nd}d_backward")
    assert_close(conv(x, w, b, **kwargs), y_t, dtype, "forward")
    gx, gw, gb = backward(gy, x, w, **kwargs)
    assert_close(gx, gx_t, dtype, "grad_x")
    assert_close(gw, gw_t, dtype, "grad_weight")
    if b is not None:
        assert_close(gb, gb_t, dtype, "grad_bias", bias_grad_scale(gy))
    else:
        assert_close(gb, gy.sum(axis=tuple(i for i in range(gy.ndim) if i != 1)), dtype,
                     "grad_bias")


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_unbatched_input(nd, backend, rng):
    x, w, b, kwargs = make_case({"bias": True, "padding": 1}, nd, np.float64, rng, n=1)
    conv = getattr(fc, f"conv{nd}d")
    y = conv(x[0], w, b, **kwargs)
    assert_close(y, conv(x, w, b, **kwargs)[0], np.float64, "unbatched forward")
    gx, gw, gb = getattr(fc, f"conv{nd}d_backward")(np.ones_like(y), x[0], w, **kwargs)
    assert gx.shape == x[0].shape and gw.shape == w.shape and gb.shape == b.shape


def test_backward_without_input_gradient(backend, rng):
    """``input_grad=False`` returns None for the input's gradient and the same other two."""
    x = randn(rng, (3, 2, 7, 6), np.float64)
    w = randn(rng, (4, 2, 3, 3), np.float64)
    gy = randn(rng, fc.conv_output_shape(x.shape, w.shape, padding=1), np.float64)
    gx, gw, gb = fc.conv2d_backward(gy, x, w, padding=1)
    none, gw2, gb2 = fc.conv2d_backward(gy, x, w, padding=1, input_grad=False)
    assert none is None and gx is not None
    np.testing.assert_array_equal(gw2, gw)
    np.testing.assert_array_equal(gb2, gb)
