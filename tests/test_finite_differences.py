"""Every gradient against central finite differences (float64), on every backend.

For a loss ``L = sum(g * f(inputs))`` with a random ``g``, the directional derivative along a
random ``v`` must equal ``<dL/d input, v>``. This checks the backward functions against the
forward functions alone, independently of PyTorch.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import randn

import fastconv as fc

H = 1e-6


def directional_check(forward, grads, inputs, rng):
    """Compare ``<grads[i], v>`` with the central difference of ``sum(g * forward(...))``."""
    y = forward(*inputs)
    g = randn(rng, y.shape, np.float64)
    analytic = grads(g, *inputs)
    for i, (x, dx) in enumerate(zip(inputs, analytic)):
        v = randn(rng, x.shape, np.float64)
        plus = [a + H * v if j == i else a for j, a in enumerate(inputs)]
        minus = [a - H * v if j == i else a for j, a in enumerate(inputs)]
        numeric = ((g * forward(*plus)).sum() - (g * forward(*minus)).sum()) / (2 * H)
        exact = (dx * v).sum()
        assert abs(numeric - exact) <= 1e-6 * max(1.0, abs(exact)), (
            f"input {i}: finite difference {numeric} vs backward {exact}")


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "circular"])
def test_conv(nd, padding_mode, backend, rng):
    size = {1: (9,), 2: (7, 6), 3: (5, 4, 5)}[nd]
    x = randn(rng, (2, 4, *size), np.float64)
    w = randn(rng, (6, 2, *(3,) * nd), np.float64)
    b = randn(rng, (6,), np.float64)
    kw = {"stride": 2, "padding": 2, "dilation": 1, "groups": 2, "padding_mode": padding_mode}
    conv, backward = getattr(fc, f"conv{nd}d"), getattr(fc, f"conv{nd}d_backward")
    directional_check(lambda x, w, b: conv(x, w, b, **kw),
                      lambda g, x, w, b: backward(g, x, w, **kw), [x, w, b], rng)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv_transpose(nd, backend, rng):
    size = {1: (6,), 2: (5, 4), 3: (3, 4, 3)}[nd]
    x = randn(rng, (2, 4, *size), np.float64)
    w = randn(rng, (4, 3, *(3,) * nd), np.float64)
    b = randn(rng, (6,), np.float64)
    kw = {"stride": 2, "padding": 1, "output_padding": 1, "groups": 2, "dilation": 1}
    op, backward = getattr(fc, f"conv_transpose{nd}d"), getattr(fc, f"conv_transpose{nd}d_backward")
    directional_check(lambda x, w, b: op(x, w, b, **kw),
                      lambda g, x, w, b: backward(g, x, w, **kw), [x, w, b], rng)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool(nd, kind, backend, rng):
    size = {1: (11,), 2: (7, 8), 3: (5, 6, 5)}[nd]
    x = randn(rng, (2, 3, *size), np.float64)
    kw = {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}
    if kind == "avg":
        kw["count_include_pad"] = False
    op, backward = getattr(fc, f"{kind}_pool{nd}d"), getattr(fc, f"{kind}_pool{nd}d_backward")
    directional_check(lambda x: op(x, **kw), lambda g, x: (backward(g, x, **kw),), [x], rng)
