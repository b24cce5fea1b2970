"""Measured tuning of the way to compute (``FASTCONV_TUNE``, ``fastconv.set_tuning``)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from helpers import assert_close, randn

import fastconv as fc
from fastconv.backends import _numba_tuning as tuning
from fastconv.backends import numba_cpu


@pytest.fixture
def tuned(monkeypatch):
    """Tuning on, with no plans kept before or after the test."""
    tuning.forget()
    monkeypatch.setattr(tuning, "_setting", True)
    yield
    tuning.forget()


def _plans_for(primitive):
    return {key: way for key, way in tuning.plans().items() if key[0] == primitive}


def test_first_call_measures_later_calls_follow_the_plan(tuned, rng):
    """Each primitive of a 3x3 convolution is planned on its first call, among the ways that
    can compute it; later calls take the plan and repeat the first call's numbers bitwise."""
    x = randn(rng, (4, 16, 12, 12), np.float32)
    w = randn(rng, (32, 16, 3, 3), np.float32)
    gy = randn(rng, (4, 32, 12, 12), np.float32)

    def run():
        with fc.use_backend("numba"), numba_cpu.trace_ways() as ways:
            out = [fc.conv2d(x, w, padding=1), *fc.conv2d_backward(gy, x, w, padding=1)[:2]]
        return out, ways

    first, ways = run()
    plans = [_plans_for(p) for p in ("conv_forward", "conv_transpose_forward",
                                     "conv_weight_grad")]
    assert all(len(p) == 1 for p in plans), plans
    assert ways == [next(iter(p.values())) for p in plans]
    shape_ways = numba_cpu.conv_forward_ways((4, 16, 1, 12, 12), (32, 16, 1, 3, 3),
                                             (1, 1, 1), (0, 1, 1), (1, 1, 1), 1, (1, 12, 12), 4)
    assert ways[0] in shape_ways and ways[0] != "direct"
    again, ways_again = run()
    assert ways_again == ways
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    with fc.use_backend("numpy"):
        expected = [fc.conv2d(x, w, padding=1), *fc.conv2d_backward(gy, x, w, padding=1)[:2]]
    for got, e, what in zip(first, expected, ("y", "gx", "gw")):
        assert_close(got, e, np.float32, what)


def test_the_fastest_way_is_kept(tuned):
    """The plan is the way with the shortest time."""
    def compute(way):
        time.sleep({"slow": 0.02, "fast": 0.0, "middle": 0.01}[way])
        return way

    assert tuning.tune(("k",), ["slow", "fast", "middle"], compute) == ("fast", "fast")
    assert tuning.planned(("k",)) == "fast"


def test_preferred_way_is_not_tuned(tuned, rng):
    """``prefer_way`` (the benchmark's per-way timings) takes its way, and plans nothing."""
    x = randn(rng, (2, 8, 9, 9), np.float64)
    w = randn(rng, (8, 8, 3, 3), np.float64)
    with (fc.use_backend("numba"), numba_cpu.prefer_way("direct"),
          numba_cpu.trace_ways() as ways):
        fc.conv2d(x, w, padding=1)
    assert ways == ["direct"] and not tuning.plans()


def test_nonfinite_first_call_keeps_the_rules(tuned, rng, monkeypatch):
    """A first call with NaN where Winograd (whose sums mix neighbours) is a candidate plans
    nothing and takes an exact way; a finite call then plans, and a NaN call later still
    steps aside from a planned Winograd."""
    monkeypatch.setattr("fastconv.backends._numba_winograd.WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr("fastconv.backends._numba_winograd.WINOGRAD_TILES_PER_CHANNEL", 0)
    x = randn(rng, (2, 8, 12, 12), np.float32)
    w = randn(rng, (8, 8, 3, 3), np.float32)
    spoiled = x.copy()
    spoiled[0, 0, 5, 5] = np.nan
    with fc.use_backend("numba"), numba_cpu.trace_ways() as ways:
        y = fc.conv2d(spoiled, w, padding=1)
    assert ways[0] != "winograd" and not _plans_for("conv_forward")
    assert np.isnan(y[0, :, 4:7, 4:7]).all() and np.isfinite(y[1]).all()
    assert np.isnan(y).sum() == 9 * 8
    monkeypatch.setitem(tuning._plans, ("conv_forward", (2, 8, 1, 12, 12), (8, 8, 1, 3, 3),
                                        (1, 1, 1), (0, 1, 1), (1, 1, 1), 1, (1, 12, 12), "<f4",
                                        fc.get_num_threads()), "winograd")
    with fc.use_backend("numba"), numba_cpu.trace_ways() as ways:
        y = fc.conv2d(spoiled, w, padding=1)
    assert ways[0] != "winograd" and np.isnan(y).sum() == 9 * 8
    with fc.use_backend("numba"), numba_cpu.trace_ways() as ways:
        fc.conv2d(x, w, padding=1)
    assert ways == ["winograd"]


def test_off_by_default_and_settings(monkeypatch):
    """Off unless asked; ``set_tuning`` beats the environment; bad values are named."""
    monkeypatch.setattr(tuning, "_setting", None)
    monkeypatch.delenv("FASTCONV_TUNE", raising=False)
    assert not tuning.enabled()
    monkeypatch.setenv("FASTCONV_TUNE", "1")
    assert tuning.enabled()
    fc.set_tuning(False)
    assert not tuning.enabled()
    fc.set_tuning(None)
    monkeypatch.setenv("FASTCONV_TUNE", "maybe")
    with pytest.raises(ValueError, match="FASTCONV_TUNE"):
        tuning.enabled()
    with pytest.raises(TypeError, match="set_tuning"):
        fc.set_tuning("yes")
