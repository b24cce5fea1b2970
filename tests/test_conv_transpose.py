"""conv_transpose{1,2,3}d and their backward against PyTorch."""

from __future__ import annotations

import pytest
import torch.nn.functional as F
from helpers import assert_close, autograd, bias_grad_scale, randn
from test_conv import SIZES, per_axis

import fastconv as fc

# Base case: N=2, C_in=4, C_out=6, kernel 3, the input sizes of SIZES.
CASES = {
    "base": {},
    "bias": {"bias": True},
    "stride2": {"stride": 2},
    "stride2_pad1": {"stride": 2, "padding": 1, "bias": True},
    "output_padding": {"stride": 2, "padding": 1, "output_padding": 1},
    "output_padding_asym": {"stride": (3, 2, 2), "output_padding": (2, 0, 1)},
    "output_padding_by_dilation": {"dilation": 3, "output_padding": 2},
    "dilation": {"dilation": (2, 1, 2), "padding": 1},
    "groups2": {"groups": 2, "bias": True},
    "depthwise": {"groups": 4, "c_out": 4, "stride": 2},
    "kernel_4x4_s2_p1": {"kernel": (4, 4, 4), "stride": 2, "padding": 1},
    "kernel_asym": {"kernel": (1, 3, 2), "stride": (2, 1, 3)},
    "everything": {"kernel": (3, 2, 3), "stride": (2, 3, 2), "padding": (1, 0, 2),
                   "output_padding": (1, 2, 0), "dilation": (1, 2, 2), "groups": 2,
                   "bias": True},
}


def make_case(case, nd, dtype, rng):
    c_in, groups = 4, case.get("groups", 1)
    c_out = case.get("c_out", 6)
    kernel = per_axis(case.get("kernel", (3, 3, 3)), nd)
    x = randn(rng, (2, c_in, *SIZES[nd]), dtype)
    w = randn(rng, (c_in, c_out // groups, *kernel), dtype)
    b = randn(rng, (c_out,), dtype) if case.get("bias") else None
    kwargs = {key: per_axis(case[key], nd) for key in
              ("stride", "padding", "output_padding", "dilation") if key in case}
    kwargs["groups"] = groups
    return x, w, b, kwargs


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_conv_transpose_matches_torch(case, nd, dtype, backend, rng):
    x, w, b, kwargs = make_case(CASES[case], nd, dtype, rng)
    torch_op = getattr(F, f"conv_transpose{nd}d")
    y_t, _, gy, (gx_t, gw_t, gb_t) = autograd(lambda x, w, b: torch_op(x, w, b, **kwargs),
                                              [x, w, b], rng)
    y = getattr(fc, f"conv_transpose{nd}d")(x, w, b, **kwargs)
    assert_close(y, y_t, dtype, "forward")
    gx, gw, gb = getattr(fc, f"conv_transpose{nd}d_backward")(gy, x, w, **kwargs)
    assert_close(gx, gx_t, dtype, "grad_x")
    assert_close(gw, gw_t, dtype, "grad_weight")
    if b is not None:
        assert_close(gb, gb_t, dtype, "grad_bias", bias_grad_scale(gy))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv_transpose_is_the_adjoint_of_conv(nd, backend, rng):
    """<conv(x), y> == <x, conv_transpose(y)> for the same weight: the defining identity."""
    x = randn(rng, (2, 6, *SIZES[nd]), "float64")
    w = randn(rng, (4, 3, *(3,) * nd), "float64")
    kwargs = {"stride": 2, "padding": 1, "dilation": 2, "groups": 2}
    y = getattr(fc, f"conv{nd}d")(x, w, **kwargs)
    r = randn(rng, y.shape, "float64")
    out_pad = tuple(a - b for a, b in zip(x.shape[2:], fc.conv_transpose_output_shape(
        r.shape, w.shape, **kwargs)[2:]))
    back = getattr(fc, f"conv_transpose{nd}d")(r, w, output_padding=out_pad, **kwargs)
    assert back.shape == x.shape
    assert abs((y * r).sum() - (x * back).sum()) <= 1e-10 * abs((y * r).sum())
