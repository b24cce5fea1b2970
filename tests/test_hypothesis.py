"""Hypothesis-drawn cases that mix every argument, against PyTorch, forward and backward."""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from helpers import (
    assert_close,
    autograd,
    bias_grad_scale,
    pairs_of,
    randn,
    torch_conv,
    weight_grad_scale,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastconv as fc

# the backend fixture only enters a context manager, so sharing it across examples is safe
shared_fixture = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


def axes(draw, nd, lo, hi):
    return tuple(draw(st.integers(lo, hi)) for _ in range(nd))


@st.composite
def conv_cases(draw):
    nd = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 3))
    c, k = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel = axes(draw, nd, 1, 4)
    stride = axes(draw, nd, 1, 3)
    dilation = axes(draw, nd, 1, 3)
    size = axes(draw, nd, 1, 10 if nd < 3 else 6)
    kind = draw(st.sampled_from(["int", "tuple", "pairs", "same", "valid"]))
    if kind == "same":  # any stride: TensorFlow's rule, PyTorch's at stride 1
        pairs, padding = pairs_of("same", nd, kernel, dilation, size, stride), "same"
    elif kind == "valid":
        pairs, padding = [(0, 0)] * nd, "valid"
    elif kind == "int":
        p = draw(st.integers(0, 3))
        pairs, padding = [(p, p)] * nd, p
    elif kind == "tuple":
        padding = axes(draw, nd, 0, 3)
        pairs = [(p, p) for p in padding]
    else:
        pairs = [tuple(axes(draw, 2, 0, 3)) for _ in range(nd)]
        padding = tuple(pairs)
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    if mode == "reflect":
        assume(all(max(p) < s for p, s in zip(pairs, size)))
    if mode == "circular":
        assume(all(max(p) <= s for p, s in zip(pairs, size)))
    out = [(s + lo + hi - d * (kk - 1) - 1) // st_ + 1
           for s, (lo, hi), d, kk, st_ in zip(size, pairs, dilation, kernel, stride)]
    assume(all(o > 0 for o in out))
    return {
        "nd": nd, "n": draw(st.integers(0, 3)), "c": c, "k": k, "size": size,
        "kernel": kernel, "bias": draw(st.booleans()),
        "dtype": draw(st.sampled_from([np.float64, np.float32])),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "kwargs": {"stride": stride, "padding": padding, "dilation": dilation,
                   "groups": groups, "padding_mode": mode},
    }


@shared_fixture
@given(case=conv_cases())
def test_conv_drawn(case, backend):
    rng = np.random.default_rng(case["seed"])
    nd, dtype, kw = case["nd"], np.dtype(case["dtype"]), case["kwargs"]
    x = randn(rng, (case["n"], case["c"], *case["size"]), dtype)
    w = randn(rng, (case["k"], case["c"] // kw["groups"], *case["kernel"]), dtype)
    b = randn(rng, (case["k"],), dtype) if case["bias"] else None
    y_t, _, gy, (gx_t, gw_t, gb_t) = autograd(torch_conv(nd, **kw), [x, w, b], rng)
    assert_close(getattr(fc, f"conv{nd}d")(x, w, b, **kw), y_t, dtype, "forward")
    gx, gw, gb = getattr(fc, f"conv{nd}d_backward")(gy, x, w, **kw)
    assert_close(gx, gx_t, dtype, "grad_x")
    if case["n"]:  # with an empty batch PyTorch's weight gradient is zeros; ours too, below
        assert_close(gw, gw_t, dtype, "grad_weight",
                     weight_grad_scale(lambda x, w: torch_conv(nd, **kw)(x, w, None), x, w, gy))
    else:
        assert not gw.any() and gw.shape == w.shape
    if b is not None:
        assert_close(gb, gb_t, dtype, "grad_bias", bias_grad_scale(gy))


@st.composite
def conv_transpose_cases(draw):
    nd = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 3))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel = axes(draw, nd, 1, 4)
    stride = axes(draw, nd, 1, 3)
    dilation = axes(draw, nd, 1, 3)
    padding = axes(draw, nd, 0, 3)
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1))
                           for s, d in zip(stride, dilation))
    size = axes(draw, nd, 1, 7 if nd < 3 else 4)
    out = [(i - 1) * s - 2 * p + d * (kk - 1) + op + 1 for i, s, p, d, kk, op in
           zip(size, stride, padding, dilation, kernel, output_padding)]
    assume(all(o > 0 for o in out))
    return {
        "nd": nd, "n": draw(st.integers(0, 3)), "c_in": c_in, "c_out": c_out, "size": size,
        "kernel": kernel, "bias": draw(st.booleans()),
        "dtype": draw(st.sampled_from([np.float64, np.float32])),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "kwargs": {"stride": stride, "padding": padding, "output_padding": output_padding,
                   "groups": groups, "dilation": dilation},
    }


@shared_fixture
@given(case=conv_transpose_cases())
def test_conv_transpose_drawn(case, backend):
    rng = np.random.default_rng(case["seed"])
    nd, dtype, kw = case["nd"], np.dtype(case["dtype"]), case["kwargs"]
    x = randn(rng, (case["n"], case["c_in"], *case["size"]), dtype)
    w = randn(rng, (case["c_in"], case["c_out"] // kw["groups"], *case["kernel"]), dtype)
    b = randn(rng, (case["c_out"],), dtype) if case["bias"] else None
    torch_op = getattr(F, f"conv_transpose{nd}d")
    y_t, _, gy, (gx_t, gw_t, gb_t) = autograd(lambda x, w, b: torch_op(x, w, b, **kw),
                                              [x, w, b], rng)
    assert_close(getattr(fc, f"conv_transpose{nd}d")(x, w, b, **kw), y_t, dtype, "forward")
    gx, gw, gb = getattr(fc, f"conv_transpose{nd}d_backward")(gy, x, w, **kw)
    assert_close(gx, gx_t, dtype, "grad_x")
    if case["n"]:
        assert_close(gw, gw_t, dtype, "grad_weight",
                     weight_grad_scale(lambda x, w: torch_op(x, w, None, **kw), x, w, gy))
    if b is not None:
        assert_close(gb, gb_t, dtype, "grad_bias", bias_grad_scale(gy))


def _has_empty_window(size, kernel, stride, padding, dilation, out):
    """A max-pool window that lies wholly in the padding (PyTorch's backward is undefined)."""
    for o in range(out):
        start = o * stride - padding
        if not any(0 <= start + r * dilation < size for r in range(kernel)):
            return True
    return False


@st.composite
def pool_cases(draw):
    nd = draw(st.integers(1, 3))
    kernel = axes(draw, nd, 1, 4)
    stride = axes(draw, nd, 1, 4)
    padding = tuple(draw(st.integers(0, kk // 2)) for kk in kernel)
    dilation = axes(draw, nd, 1, 3)
    size = axes(draw, nd, 1, 11 if nd < 3 else 6)
    ceil_mode = draw(st.booleans())
    return {
        "nd": nd, "n": draw(st.integers(0, 2)), "c": draw(st.integers(1, 3)), "size": size,
        "dtype": draw(st.sampled_from([np.float64, np.float32])),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "kwargs": {"kernel_size": kernel, "stride": stride, "padding": padding,
                   "ceil_mode": ceil_mode},
        "dilation": dilation,
        "count_include_pad": draw(st.booleans()),
        "divisor_override": draw(st.one_of(st.none(), st.integers(1, 9))),
    }


def _pool_sizes(case, dilation):
    kw = case["kwargs"]
    return [fc._params.pool_output_size(s, k, st_, p, d, kw["ceil_mode"])
            for s, k, st_, p, d in zip(case["size"], kw["kernel_size"], kw["stride"],
                                       kw["padding"], dilation)]


@shared_fixture
@given(case=pool_cases())
def test_max_pool_drawn(case, backend):
    kw = dict(case["kwargs"], dilation=case["dilation"])
    out = _pool_sizes(case, case["dilation"])
    assume(all(o > 0 for o in out))
    assume(not any(_has_empty_window(s, k, st_, p, d, o) for s, k, st_, p, d, o in zip(
        case["size"], kw["kernel_size"], kw["stride"], kw["padding"], kw["dilation"], out)))
    rng = np.random.default_rng(case["seed"])
    nd, dtype = case["nd"], np.dtype(case["dtype"])
    x = randn(rng, (case["n"], case["c"], *case["size"]), dtype)
    torch_op = getattr(F, f"max_pool{nd}d")
    y_t, idx_t, gy, (gx_t,) = autograd(lambda x: torch_op(x, **kw, return_indices=True),
                                       [x], rng)
    y, idx = getattr(fc, f"max_pool{nd}d")(x, **kw, return_indices=True)
    assert_close(y, y_t, dtype, "forward")
    np.testing.assert_array_equal(idx, idx_t)
    assert_close(getattr(fc, f"max_pool{nd}d_backward")(gy, x, **kw), gx_t, dtype, "grad_x")


@shared_fixture
@given(case=pool_cases())
def test_avg_pool_drawn(case, backend):
    kw = dict(case["kwargs"], count_include_pad=case["count_include_pad"])
    nd = case["nd"]
    if nd > 1:
        kw["divisor_override"] = case["divisor_override"]
    assume(all(o > 0 for o in _pool_sizes(case, (1,) * nd)))
    if nd == 3:  # PyTorch's avg_pool3d rejects an unpadded input smaller than the kernel
        assume(all(s >= k for s, k in zip(case["size"], kw["kernel_size"])))
    rng = np.random.default_rng(case["seed"])
    dtype = np.dtype(case["dtype"])
    x = randn(rng, (case["n"], case["c"], *case["size"]), dtype)
    torch_op = getattr(F, f"avg_pool{nd}d")
    y_t, _, gy, (gx_t,) = autograd(lambda x: torch_op(x, **kw), [x], rng)
    assert_close(getattr(fc, f"avg_pool{nd}d")(x, **kw), y_t, dtype, "forward")
    assert_close(getattr(fc, f"avg_pool{nd}d_backward")(gy, x, **kw), gx_t, dtype, "grad_x")
