"""Bad input gets a clear ValueError/TypeError naming the function and the argument."""

from __future__ import annotations

import numpy as np
import pytest

import fastconv as fc

f64 = np.float64
x4 = np.random.default_rng(0).standard_normal((2, 4, 8, 8))
w4 = np.random.default_rng(1).standard_normal((6, 4, 3, 3))
w_t = np.random.default_rng(2).standard_normal((4, 3, 3, 3))  # transposed: (C_in, C_out, k)

# (id, call, exception type, words the message must contain)
CASES = [
    ("input_ndim", lambda: fc.conv2d(x4[0, 0], w4), ValueError, ["conv2d", "input", "(8, 8)"]),
    ("weight_ndim", lambda: fc.conv2d(x4, w4[0]), ValueError, ["conv2d", "weight", "(4, 3, 3)"]),
    ("pool_ndim", lambda: fc.max_pool2d(x4[0, 0, 0], 2), ValueError, ["max_pool2d", "input"]),
    ("channels", lambda: fc.conv2d(x4[:, :3], w4), ValueError,
     ["conv2d", "3 channels", "(6, 4, 3, 3)"]),
    ("channels_transpose", lambda: fc.conv_transpose2d(x4[:, :3], w_t), ValueError,
     ["conv_transpose2d", "3 channels", "weight"]),
    ("groups_divide", lambda: fc.conv2d(x4, w4[:, :2], groups=3), ValueError,
     ["conv2d", "groups=3", "divide"]),
    ("groups_out_divide", lambda: fc.conv2d(x4, w4[:5, :2], groups=2), ValueError,
     ["conv2d", "groups=2", "output channels (5)"]),
    ("groups_zero", lambda: fc.conv2d(x4, w4, groups=0), ValueError, ["conv2d", "groups"]),
    ("groups_float", lambda: fc.conv2d(x4, w4, groups=1.5), TypeError, ["conv2d", "groups"]),
    ("stride_zero", lambda: fc.conv2d(x4, w4, stride=0), ValueError, ["conv2d", "stride"]),
    ("stride_negative", lambda: fc.conv1d(x4[..., 0], w4[..., 0], stride=-1), ValueError,
     ["conv1d", "stride", "positive"]),
    ("stride_len", lambda: fc.conv2d(x4, w4, stride=(1, 2, 3)), ValueError,
     ["conv2d", "stride", "tuple of 2"]),
    ("stride_type", lambda: fc.conv2d(x4, w4, stride=1.0), TypeError, ["conv2d", "stride"]),
    ("dilation_zero", lambda: fc.conv3d(x4[:, :, None], w4[:, :, None], dilation=0), ValueError,
     ["conv3d", "dilation"]),
    ("pool_dilation_zero", lambda: fc.max_pool2d(x4, 2, dilation=(1, 0)), ValueError,
     ["max_pool2d", "dilation"]),
    ("padding_negative", lambda: fc.conv2d(x4, w4, padding=-1), ValueError,
     ["conv2d", "padding", "non-negative"]),
    ("padding_pair_negative", lambda: fc.conv2d(x4, w4, padding=((0, -1), (0, 0))), ValueError,
     ["conv2d", "padding"]),
    ("pool_padding_negative", lambda: fc.avg_pool2d(x4, 2, padding=-1), ValueError,
     ["avg_pool2d", "padding"]),
    ("transpose_padding_negative", lambda: fc.conv_transpose2d(x4, w_t, padding=-1), ValueError,
     ["conv_transpose2d", "padding"]),
    ("kernel_too_large", lambda: fc.conv2d(x4[..., :2, :2], w4), ValueError,
     ["conv2d", "output would be empty", "(2, 4, 2, 2)"]),
    ("pool_kernel_too_large", lambda: fc.max_pool2d(x4, 9), ValueError,
     ["max_pool2d", "output would be empty"]),
    ("transpose_output_empty", lambda: fc.conv_transpose2d(x4[..., :1, :1], w_t, padding=2),
     ValueError, ["conv_transpose2d", "output would be empty"]),
    ("pool_padding_half", lambda: fc.max_pool2d(x4, 2, padding=2), ValueError,
     ["max_pool2d", "padding", "half of kernel_size"]),
    ("avg_pool_padding_half", lambda: fc.avg_pool1d(x4[..., 0], 3, padding=2), ValueError,
     ["avg_pool1d", "padding", "half"]),
    ("output_padding", lambda: fc.conv_transpose2d(x4, w_t, stride=2, output_padding=2),
     ValueError, ["conv_transpose2d", "output_padding", "stride or dilation"]),
    ("padding_string", lambda: fc.conv2d(x4, w4, padding="full"), ValueError,
     ["conv2d", "padding", "'full'"]),
    ("same_transpose", lambda: fc.conv_transpose2d(x4, w_t, padding="same"), ValueError,
     ["conv_transpose2d", "padding", "'same'"]),
    ("int_input", lambda: fc.conv2d(x4.astype(np.int64), w4), TypeError,
     ["conv2d", "input", "int64"]),
    ("bool_input", lambda: fc.max_pool2d(x4 > 0, 2), TypeError, ["max_pool2d", "input", "bool"]),
    ("complex_weight", lambda: fc.conv2d(x4, w4.astype(np.complex128)), TypeError,
     ["conv2d", "weight", "complex128"]),
    ("float16", lambda: fc.avg_pool2d(x4.astype(np.float16), 2), TypeError,
     ["avg_pool2d", "float32 or float64"]),
    ("mixed_dtypes", lambda: fc.conv2d(x4, w4.astype(np.float32)), TypeError,
     ["conv2d", "weight", "float32", "float64"]),
    ("bias_dtype", lambda: fc.conv2d(x4, w4, np.zeros(6, np.float32)), TypeError,
     ["conv2d", "bias", "float32"]),
    ("bias_shape", lambda: fc.conv2d(x4, w4, np.ones(5)), ValueError, ["conv2d", "bias", "(5,)"]),
    ("bias_shape_transpose", lambda: fc.conv_transpose2d(x4, w_t, np.ones(4)), ValueError,
     ["conv_transpose2d", "bias", "(3,)"]),
    ("padding_mode", lambda: fc.conv2d(x4, w4, padding=1, padding_mode="mirror"), ValueError,
     ["conv2d", "padding_mode", "'mirror'", "reflect"]),
    ("reflect_too_wide", lambda: fc.conv2d(x4, w4, padding=8, padding_mode="reflect"), ValueError,
     ["conv2d", "reflect", "padding"]),
    ("circular_too_wide", lambda: fc.conv2d(x4, w4, padding=9, padding_mode="circular"),
     ValueError, ["conv2d", "circular", "padding"]),
    ("weight_zero_dim", lambda: fc.conv2d(x4, np.ones((0, 4, 3, 3))), ValueError,
     ["conv2d", "weight", "zero dimension"]),
    ("weight_zero_kernel", lambda: fc.conv2d(x4, np.ones((6, 4, 0, 3))), ValueError,
     ["conv2d", "weight", "zero dimension"]),
    ("empty_spatial_axis", lambda: fc.conv2d(x4[:, :, :0], w4, padding=2), ValueError,
     ["conv2d", "only the batch axis", "(2, 4, 0, 8)"]),
    ("empty_channels_pool", lambda: fc.avg_pool2d(x4[:, :0], 2), ValueError,
     ["avg_pool2d", "only the batch axis", "(2, 0, 8, 8)"]),
    ("kernel_size_zero", lambda: fc.max_pool2d(x4, (0, 2)), ValueError,
     ["max_pool2d", "kernel_size", "positive"]),
    ("not_an_array", lambda: fc.conv2d(x4.tolist(), w4), TypeError, ["conv2d", "input", "list"]),
    ("grad_output_shape", lambda: fc.conv2d_backward(np.ones((2, 6, 5, 5)), x4, w4), ValueError,
     ["conv2d_backward", "grad_output", "(2, 6, 6, 6)", "(2, 6, 5, 5)"]),
    ("grad_output_dtype", lambda: fc.avg_pool2d_backward(np.ones((2, 4, 4, 4), np.float32), x4, 2),
     TypeError, ["avg_pool2d_backward", "grad_output", "float32"]),
    ("indices_shape", lambda: fc.max_pool2d_backward(np.ones((2, 4, 4, 4)), x4, 2,
                                                    indices=np.zeros((2, 4, 4), np.int64)),
     ValueError, ["max_pool2d_backward", "indices"]),
    ("indices_dtype", lambda: fc.max_pool2d_backward(np.ones((2, 4, 4, 4)), x4, 2,
                                                    indices=np.zeros((2, 4, 4, 4))),
     ValueError, ["max_pool2d_backward", "indices", "float64"]),
    ("divisor_zero", lambda: fc.avg_pool2d(x4, 2, divisor_override=0), ValueError,
     ["avg_pool2d", "divisor_override"]),
    ("avg_pool3d_small_input", lambda: fc.avg_pool3d(x4[:, :, :1], 2, padding=1), ValueError,
     ["avg_pool3d", "kernel_size"]),
    ("corr2d_ndim", lambda: fc.corr2d(np.ones(3), np.ones((1, 1))), ValueError, ["corr2d", "X"]),
    ("corr2d_kernel_large", lambda: fc.corr2d(np.ones((2, 2)), np.ones((3, 1))), ValueError,
     ["corr2d", "K", "(3, 1)", "(2, 2)"]),
    ("corr2d_complex", lambda: fc.corr2d(np.ones((2, 2)), np.ones((1, 1), complex)), TypeError,
     ["corr2d", "K"]),
    ("output_shape_helper", lambda: fc.conv_output_shape((1, 3, 8, 8), (4, 4, 3, 3)), ValueError,
     ["conv_output_shape", "3 channels"]),
]


@pytest.mark.parametrize("call, exc, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_message(call, exc, words, backend):
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"


def test_unknown_backend_names_the_valid_ones():
    for call in (lambda: fc.set_backend("torch"), lambda: fc.use_backend("gpu").__enter__()):
        with pytest.raises(ValueError, match="auto, numpy, numba"):
            call()


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
def test_nan_and_inf_propagate(op, backend):
    x = np.ones((1, 1, 4, 4))
    x[0, 0, 0, 0], x[0, 0, 3, 3] = np.nan, np.inf
    y = getattr(fc, op)(x, 2)
    assert np.isnan(y[0, 0, 0, 0]) and np.isinf(y[0, 0, 1, 1])
    w = np.ones((1, 1, 2, 2))
    c = fc.conv2d(x, w, stride=2)
    assert np.isnan(c[0, 0, 0, 0]) and np.isinf(c[0, 0, 1, 1]) and c[0, 0, 0, 1] == 4
