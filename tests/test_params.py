"""Output-size rules and the public shape helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import fastconv as fc
from fastconv import _params as P
from fastconv._params import conv_output_size, pool_output_size

ints = st.integers


@given(size=ints(1, 60), k=ints(1, 9), s=ints(1, 5), lo=ints(0, 4), hi=ints(0, 4), d=ints(1, 4))
def test_conv_output_size_defining_inequality(size, k, s, lo, hi, d):
    """``out`` windows fit in the padded input and one more would not."""
    out = conv_output_size(size, k, s, lo, hi, d)
    span = d * (k - 1) + 1
    padded = size + lo + hi
    if out > 0:
        assert (out - 1) * s + span <= padded < out * s + span
    else:
        assert padded < span


@given(size=ints(1, 40), k=ints(1, 6), s=ints(1, 4), d=ints(1, 3), data=st.data())
def test_pool_output_size_matches_torch(size, k, s, d, data):
    p = data.draw(ints(0, k // 2))
    for ceil_mode in (False, True):
        out = pool_output_size(size, k, s, p, d, ceil_mode)
        try:
            expected = F.max_pool1d(torch.zeros(1, 1, size), k, s, p, d, ceil_mode).shape[-1]
        except RuntimeError:
            expected = 0  # PyTorch rejects an empty output
        assert max(out, 0) == expected


def test_shape_helpers_match_the_ops(rng):
    x = rng.standard_normal((3, 4, 11, 9))
    w = rng.standard_normal((6, 2, 3, 2))
    kw = {"stride": (2, 1), "padding": ((1, 0), (2, 2)), "dilation": (1, 2), "groups": 2}
    assert fc.conv_output_shape(x.shape, w.shape, **kw) == fc.conv2d(x, w, **kw).shape
    wt = rng.standard_normal((4, 3, 3, 3))
    kt = {"stride": 2, "padding": 1, "output_padding": (1, 0), "groups": 2}
    assert (fc.conv_transpose_output_shape(x.shape, wt.shape, **kt)
            == fc.conv_transpose2d(x, wt, **kt).shape)
    assert fc.pool_output_shape(x.shape, 3, 2, 1, ceil_mode=True) == fc.max_pool2d(
        x, 3, 2, 1, ceil_mode=True).shape
    assert fc.pool_output_shape(x[0].shape, (2, 2)) == fc.avg_pool2d(x[0], 2).shape


@pytest.mark.parametrize("shape, weight, kw, expected", [
    ((256, 1, 28, 28), (6, 1, 5, 5), {"padding": 2}, (256, 6, 28, 28)),
    ((32, 128, 28, 28), (256, 128, 3, 3), {"stride": 2, "padding": 1}, (32, 256, 14, 14)),
    ((4, 32, 16, 56, 56), (64, 32, 3, 3, 3), {"padding": 1}, (4, 64, 16, 56, 56)),
    ((8, 3, 100), (5, 3, 7), {"padding": "same", "dilation": 3}, (8, 5, 100)),
])
def test_known_conv_shapes(shape, weight, kw, expected):
    assert fc.conv_output_shape(shape, weight, **kw) == expected
    assert tuple(getattr(F, f"conv{len(shape) - 2}d")(
        torch.zeros(shape), torch.zeros(weight), **kw).shape) == expected


def test_padding_normalisation():
    from fastconv._params import conv_padding
    assert conv_padding("f", 1, 2, (3, 3), (1, 1), (1, 1), (9, 9)) == ((1, 1), (1, 1))
    assert conv_padding("f", (1, 2), 2, (3, 3), (1, 1), (1, 1), (9, 9)) == ((1, 1), (2, 2))
    assert conv_padding("f", ((0, 1), (2, 3)), 2, (3, 3), (1, 1), (1, 1), (9, 9)) == (
        (0, 1), (2, 3))
    assert conv_padding("f", "same", 2, (4, 3), (1, 1), (1, 3), (9, 9)) == ((1, 2), (3, 3))
    assert conv_padding("f", "valid", 3, (4, 3, 1), (2, 2, 2), (1, 1, 1), (9, 9, 9)) == (
        (0, 0),) * 3
    assert conv_padding("f", np.int64(2), 1, (3,), (1,), (1,), (9,)) == ((2, 2),)


@pytest.mark.parametrize("size, kernel, stride, dilation, pairs", [
    # TensorFlow's "same" for strides above 1: out = ceil(in / stride), the smaller half low
    (224, 7, 2, 1, (2, 3)),    # 112 outputs: 111 * 2 + 7 - 224 = 5
    (225, 7, 2, 1, (3, 3)),    # 113 outputs: 112 * 2 + 7 - 225 = 6
    (8, 1, 2, 1, (0, 0)),      # a 1x1 at stride 2 needs no padding
    (9, 3, 4, 1, (1, 1)),      # 3 outputs: 2 * 4 + 3 - 9 = 2
    (9, 4, 4, 1, (1, 2)),      # an odd total: the extra element on the high side
    (10, 3, 3, 2, (2, 2)),     # 4 outputs: 3 * 3 + 5 - 10 = 4
])
def test_same_padding_any_stride(size, kernel, stride, dilation, pairs):
    from fastconv._params import conv_padding
    assert conv_padding("f", "same", 1, (kernel,), (stride,), (dilation,), (size,)) == (pairs,)
    shape = fc.conv_output_shape((1, 1, size), (1, 1, kernel), stride=stride, padding="same",
                                 dilation=dilation)
    assert shape[-1] == -(-size // stride)


def test_specs_are_kept_per_signature(rng):
    """A second call of one signature gets the spec of the first (kept, not validated again),
    and the kept spec is the one validation gives."""
    x = rng.standard_normal((2, 3, 9, 8))
    w = rng.standard_normal((4, 3, 3, 3))
    args = ("conv2d", 2, x, w, None, 2, "same", 1, 1, "zeros")
    first = P.conv_spec(*args)
    assert P.conv_spec(*args) is first
    assert P.conv_spec(*args[:2], x.copy(), w.copy(), *args[4:]) is first  # same shapes
    assert P.conv_spec.__wrapped__(*args) == first
    spec, divisor = P.avg_pool_setup("avg_pool2d", 2, x, 3, 2, 1, True, False, None)
    assert P.avg_pool_setup("avg_pool2d", 2, x, 3, 2, 1, True, False, None)[0] is spec
    # a different dtype, shape or parameter is another signature
    assert P.conv_spec(*args[:2], x.astype(np.float32), *args[3:]) is not first
    assert P.conv_spec(*args[:2], x[:, :, :8], *args[3:]).out_size == (1, 4, 4)
    assert P.pool_spec("max_pool2d", 2, x, 3, None, 1, 1, True).out_size == (1, 4, 3)
    assert P.pool_spec("max_pool2d", 2, x, 3, None, 1, 1, False).out_size == (1, 3, 3)


@pytest.mark.parametrize("good, bad, error", [
    ({"stride": 1}, {"stride": True}, TypeError),  # True == 1, but not an int here
    ({"stride": 2}, {"stride": 2.0}, TypeError),
    ({"stride": (2, 1)}, {"stride": (2.0, 1)}, TypeError),
    ({"padding": 1}, {"padding": -1}, ValueError),
    ({"groups": 1}, {"groups": 1.0}, TypeError),
])
def test_a_kept_spec_never_lets_bad_arguments_through(good, bad, error, rng):
    """Arguments equal to a kept signature's in value but not in type are still checked; and
    a call that failed is checked again."""
    x = rng.standard_normal((1, 3, 8, 8))
    w = rng.standard_normal((4, 3, 3, 3))
    fc.conv2d(x, w, **good)
    for _ in range(2):
        with pytest.raises(error, match="conv2d"):
            fc.conv2d(x, w, **bad)
    with pytest.raises(TypeError, match="ceil_mode|kernel_size"):
        fc.max_pool2d(x, 2.0)
    fc.max_pool2d(x, 2, ceil_mode=True)
    with pytest.raises(TypeError, match="kernel_size"):
        fc.max_pool2d(x, 2.0, ceil_mode=True)


def test_parameters_given_as_arrays_are_never_keys(rng):
    """A parameter with a shape is not taken for an array (two strides of one shape would
    share a key): it is validated, and refused, every time."""
    x = rng.standard_normal((1, 3, 8, 8))
    w = rng.standard_normal((4, 3, 3, 3))
    for stride in (np.array(1), np.array(2)):
        with pytest.raises(TypeError, match="conv2d: stride"):
            fc.conv2d(x, w, stride=stride)
        with pytest.raises(TypeError, match="max_pool2d: kernel_size"):
            fc.max_pool2d(x, stride)
    assert P._signature((x, w, None, np.array(2), 1), 3) is None
    assert P._signature((x, w, None, 2, 1), 3) != P._signature((x, w, None, 3, 1), 3)
