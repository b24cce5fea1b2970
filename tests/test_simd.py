"""The explicit-vector helpers the Numba kernels share, against NumPy on every edge case."""

from __future__ import annotations

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from fastconv.backends._numba_simd import VECTOR_BYTES, _copy_transposed  # noqa: E402


def _sides(count):
    """Sides of a copy: slivers, part squares, whole squares and whole squares plus a part."""
    return (1, 3, count // 4, count // 2 - 1, count - 1, count, count + 2, 2 * count + 5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_copy_transposed_every_edge(dtype):
    """``dst[d0 + j * d_step + i] = src[s0 + i * s_step + j]``: every element of the block
    written, nothing else (the part squares' masked stores), from a source that ends exactly
    at the block's last element (their masked loads read nothing past it)."""
    count = VECTOR_BYTES // np.dtype(dtype).itemsize
    at = np.empty(count, dtype=np.int64)
    rng = np.random.default_rng(7)
    for n_i in _sides(count):
        for n_j in _sides(count):
            s0, s_step, d0, d_step = 3, n_j + 2, 5, n_i + 3
            src = rng.standard_normal(s0 + (n_i - 1) * s_step + n_j).astype(dtype)
            dst = np.full(d0 + n_j * d_step + 7, np.nan, dtype=dtype)
            _copy_transposed(src, s0, s_step, dst, d0, d_step, n_i, n_j, at)
            block = np.stack([src[s0 + i * s_step:][:n_j] for i in range(n_i)])
            want = np.full_like(dst, np.nan)
            want[d0:d0 + n_j * d_step].reshape(n_j, d_step)[:, :n_i] = block.T
            np.testing.assert_array_equal(dst, want, err_msg=f"{n_i} x {n_j}")
