"""The textbook examples of a CNN chapter, computed with fastconv."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, randn

import fastconv as fc


def edge_image():
    X = np.ones((6, 8))
    X[:, 2:6] = 0
    return X


def test_corr2d_textbook_example(backend):
    X = np.arange(9.0).reshape(3, 3)
    K = np.arange(4.0).reshape(2, 2)
    np.testing.assert_array_equal(fc.corr2d(X, K), [[19, 25], [37, 43]])


def test_corr2d_accepts_integer_lists(backend):
    out = fc.corr2d([[0, 1, 2], [3, 4, 5], [6, 7, 8]], [[0, 1], [2, 3]])
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [[19, 25], [37, 43]])


def test_corr2d_matches_the_textbook_loop(backend, rng):
    X, K = rng.standard_normal((7, 9)), rng.standard_normal((3, 2))
    h, w = K.shape
    loop = np.array([[(X[i:i + h, j:j + w] * K).sum() for j in range(X.shape[1] - w + 1)]
                     for i in range(X.shape[0] - h + 1)])
    assert_close(fc.corr2d(X, K), loop, np.float64)


def test_vertical_edge_detection(backend):
    X = edge_image()
    Y = fc.corr2d(X, np.array([[1.0, -1.0]]))
    expected = np.zeros((6, 7))
    expected[:, 1], expected[:, 5] = 1, -1
    np.testing.assert_array_equal(Y, expected)
    # the transposed image has horizontal edges only, which this kernel cannot see
    np.testing.assert_array_equal(fc.corr2d(X.T, np.array([[1.0, -1.0]])), np.zeros((8, 5)))


def test_learning_the_edge_kernel(backend, rng):
    """Plain gradient descent with fastconv's own backward recovers K = [1, -1]."""
    X = edge_image()[None, None]
    Y = fc.corr2d(X[0, 0], np.array([[1.0, -1.0]]))[None, None]
    w = rng.standard_normal((1, 1, 1, 2))
    for _ in range(30):
        err = fc.conv2d(X, w) - Y
        _, grad_w, _ = fc.conv2d_backward(2 * err, X, w)
        w -= 0.03 * grad_w
    np.testing.assert_allclose(w.ravel(), [1.0, -1.0], atol=0.02)


def test_multi_input_channels_sum_per_channel_correlations(backend, rng):
    X = rng.standard_normal((3, 6, 5))
    K = rng.standard_normal((3, 2, 2))
    expected = sum(fc.corr2d(x, k) for x, k in zip(X, K))
    assert_close(fc.conv2d(X[None], K[None])[0, 0], expected, np.float64)


def test_multi_output_channels_stack(backend, rng):
    X = rng.standard_normal((1, 3, 6, 5))
    K = rng.standard_normal((2, 3, 2, 2))
    stacked = np.stack([fc.conv2d(X, K[i:i + 1])[0, 0] for i in range(2)])
    assert_close(fc.conv2d(X, K)[0], stacked, np.float64)


def test_pointwise_conv_is_a_matrix_product(backend, rng, dtype):
    X = randn(rng, (2, 3, 4, 5), dtype)
    K = randn(rng, (6, 3, 1, 1), dtype)
    expected = np.einsum("kc,nchw->nkhw", K[:, :, 0, 0], X)
    assert_close(fc.conv2d(X, K), expected.astype(dtype), dtype)


@pytest.mark.parametrize("kind, expected", [("max", [[4, 5], [7, 8]]),
                                            ("avg", [[2, 3], [5, 6]])])
def test_pooling_textbook_example(kind, expected, backend):
    X = np.arange(9.0).reshape(1, 1, 3, 3)
    out = getattr(fc, f"{kind}_pool2d")(X, 2, stride=1)
    np.testing.assert_array_equal(out[0, 0], expected)


def test_padding_and_stride_textbook_shapes(backend, rng):
    X = rng.standard_normal((1, 1, 8, 8))
    assert fc.conv2d(X, rng.standard_normal((1, 1, 3, 3)), padding=1).shape == (1, 1, 8, 8)
    assert fc.conv2d(X, rng.standard_normal((1, 1, 5, 3)), padding=(2, 1)).shape == (1, 1, 8, 8)
    assert fc.conv2d(X, rng.standard_normal((1, 1, 3, 3)), padding=1,
                     stride=2).shape == (1, 1, 4, 4)
    assert fc.conv2d(X, rng.standard_normal((1, 1, 3, 5)), padding=(0, 1),
                     stride=(3, 4)).shape == (1, 1, 2, 2)
