"""The Numba backend's ways to convolve (direct kernels; packing + BLAS in tasks; Winograd; batch
lanes) agree with the reference however the work is split: each path forced, and tasks as small
as one row."""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
import torch
from helpers import NUMBA_WAYS, assert_close, autograd, force_numba_way, randn, torch_conv
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fastconv as fc
from fastconv.backends import (
    _numba_gemm,
    _numba_kvector,
    _numba_lanes,
    _numba_phases,
    _numba_tasks,
    _numba_winograd,
    numba_cpu,
)

CASES = [
    (2, {"padding": 1}),
    (2, {"padding": ((0, 2), (2, 1)), "groups": 2}),  # Winograd: odd sizes, asymmetric pads
    (2, {"padding": 2, "dilation": 2}),  # Winograd tiles per class of positions mod 2
    (2, {"padding": ((1, 3), (0, 2)), "dilation": (3, 2), "groups": 2}),
    (3, {"padding": (1, 1, 0), "dilation": (2, 1, 2)}),  # Winograd per depth tap, one GEMM
    (3, {"padding": (2, 0, 1)}),  # Winograd: output slices in blocks share input transforms
    (2, {"stride": (2, 1), "padding": ((0, 2), (1, 0)), "dilation": (1, 2), "groups": 2}),
    (3, {"stride": 2, "padding": 1, "groups": 2}),
    (1, {"stride": 3, "dilation": 2, "padding": 2}),
    (2, {"groups": 2, "kernel": 1}),  # pointwise: no packing at all
    (3, {"kernel": 1}),
]


def run_all(nd, kw, x, w, b, gy, wt, bt):
    conv = getattr(fc, f"conv{nd}d")
    out = [conv(x, w, b, **kw), *getattr(fc, f"conv{nd}d_backward")(gy, x, w, **kw)]
    tkw = {k: v for k, v in kw.items() if k in ("stride", "dilation", "groups")}
    yt = getattr(fc, f"conv_transpose{nd}d")(x, wt, bt, **tkw)
    out += [yt, *getattr(fc, f"conv_transpose{nd}d_backward")(np.ones_like(yt), x, wt, **tkw)]
    return out


def case_arrays(nd, kw, dtype, rng):
    """A case of ``CASES`` as ``(kernel size, run_all's arguments)``, on fresh data."""
    size = {1: (17,), 2: (9, 11), 3: (5, 6, 7)}[nd]
    x = randn(rng, (3, 4, *size), dtype)
    kw = dict(kw)
    k = kw.pop("kernel", 3)
    w = randn(rng, (6, 4 // kw.get("groups", 1), *(k,) * nd), dtype)
    wt = randn(rng, (4, 3, *(2 if k == 3 else 1,) * nd), dtype)
    b, bt = randn(rng, (6,), dtype), randn(rng, (3 * kw.get("groups", 1),), dtype)
    gy = randn(rng, fc.conv_output_shape(x.shape, w.shape, **kw), dtype)
    return k, (nd, kw, x, w, b, gy, wt, bt)


@pytest.mark.parametrize("setting", NUMBA_WAYS)
@pytest.mark.parametrize("nd, kw", CASES)
def test_paths_agree_with_reference(setting, nd, kw, dtype, rng, monkeypatch):
    force_numba_way(setting, monkeypatch)
    _, args = case_arrays(nd, kw, dtype, rng)
    with fc.use_backend("numpy"):
        expected = run_all(*args)
    with fc.use_backend("numba"):
        got = run_all(*args)
    for a, b, what in zip(got, expected, ["y", "gx", "gw", "gb", "yt", "gxt", "gwt", "gbt"]):
        assert_close(a, b, dtype, what)


DEPTHWISE_CASES = [
    (2, 20, {"padding": 1}),  # a vector of channels and a part of one
    (2, 5, {"stride": (2, 1), "padding": ((0, 2), (1, 0)), "dilation": (1, 2)}),
    (1, 17, {"stride": 3, "dilation": 2, "padding": 2}),
    (3, 9, {"padding": (1, 0, 2), "dilation": (2, 1, 1)}),
    (3, 16, {"stride": 2, "padding": 1}),
]


@pytest.mark.parametrize("nd, channels, kw", DEPTHWISE_CASES)
def test_depthwise_agrees_with_reference(nd, channels, kw, dtype, rng, monkeypatch):
    """The channel-vectorised depthwise kernels on any channel count, stride, dilation and
    padding: forward, both gradients, and the transposed convolution (stride 1: the same
    kernel on the flipped weights) with its gradients."""
    force_numba_way("depthwise", monkeypatch)
    size = {1: (23,), 2: (9, 11), 3: (5, 6, 7)}[nd]
    kernel = {1: (3,), 2: (3, 2), 3: (2, 3, 3)}[nd]
    x = randn(rng, (3, channels, *size), dtype)
    w = randn(rng, (channels, 1, *kernel), dtype)
    b = randn(rng, (channels,), dtype)
    gy = randn(rng, fc.conv_output_shape(x.shape, w.shape, groups=channels, **kw), dtype)
    tkw = {"stride": 1, "padding": 1, "dilation": kw.get("dilation", 1)}
    conv, transposed = getattr(fc, f"conv{nd}d"), getattr(fc, f"conv_transpose{nd}d")

    def run():
        yt = transposed(x, w, b, groups=channels, **tkw)
        return [conv(x, w, b, groups=channels, **kw),
                *getattr(fc, f"conv{nd}d_backward")(gy, x, w, groups=channels, **kw), yt,
                *getattr(fc, f"conv_transpose{nd}d_backward")(np.ones_like(yt), x, w,
                                                                groups=channels, **tkw)]

    with fc.use_backend("numpy"):
        expected = run()
    with fc.use_backend("numba"), numba_cpu.trace_ways() as ways:
        got = run()
    assert "depthwise" in ways
    for a, e, what in zip(got, expected, ["y", "gx", "gw", "gb", "yt", "gxt", "gwt", "gbt"]):
        assert_close(a, e, dtype, what)


def test_depthwise_rule_and_preference(rng):
    """Small planes take ``depthwise`` by the rules (forward, input and weight gradient);
    large ones the direct kernels, unless ``prefer_way`` asks for it, but for their weight
    gradient where there is a task (an image's vector of channels) for every thread."""
    small = randn(rng, (2, 32, 7, 7), np.float32)
    large = randn(rng, (1, 32, 20, 20), np.float32)
    w = randn(rng, (32, 1, 3, 3), np.float32)
    tasks_enough = 2 >= numba.get_num_threads()  # two vectors of 16 float32 channels
    for x, expected in ((small, ["depthwise"] * 3),
                        (large, ["direct", "depthwise" if tasks_enough else "direct",
                                 "direct"])):
        gy = np.ones_like(x)
        with fc.use_backend("numba"), numba_cpu.trace_ways() as ways:
            fc.conv2d_backward(gy, x, w, padding=1, groups=32)
            fc.conv2d(x, w, padding=1, groups=32)
        assert ways == expected, ways
    # one task (a vector of 16 channels, one image): depthwise on one thread, not on two; the
    # choice follows the thread count from call to call
    if numba.config.NUMBA_NUM_THREADS >= 2:
        one = randn(rng, (1, 16, 20, 20), np.float32)
        w16 = randn(rng, (16, 1, 3, 3), np.float32)
        before = numba.get_num_threads()
        try:
            for threads, expected in ((1, "depthwise"), (2, "direct"), (1, "depthwise")):
                numba.set_num_threads(threads)
                with fc.use_backend("numba"), numba_cpu.trace_ways() as ways:
                    fc.conv2d_backward(np.ones_like(one), one, w16, padding=1, groups=16,
                                       input_grad=False)
                assert ways == [expected], (threads, ways)
        finally:
            numba.set_num_threads(before)
    # at stride 2 the limit on output positions is four times as large (20x20 out), the
    # input gradient (a strided transposed convolution) left to the direct kernels
    strided = randn(rng, (1, 32, 40, 40), np.float32)
    gy = np.ones((1, 32, 20, 20), np.float32)
    with fc.use_backend("numba"), numba_cpu.trace_ways() as ways:
        fc.conv2d_backward(gy, strided, w, stride=2, padding=1, groups=32)
        fc.conv2d(strided, w, stride=2, padding=1, groups=32)
    assert ways == ["direct", "depthwise", "depthwise"], ways
    with (fc.use_backend("numba"), numba_cpu.prefer_way("depthwise"),
          numba_cpu.trace_ways() as ways):
        y = fc.conv2d(large, w, padding=1, groups=32)
    assert ways == ["depthwise"]
    with fc.use_backend("numpy"):
        assert_close(y, fc.conv2d(large, w, padding=1, groups=32), np.float32, "forward")


GROUPED_CASES = [
    (2, 20, 2, 3, {"padding": 1}),  # a vector of groups and a part of one; a part of a block
    (2, 16, 7, 4, {"stride": (2, 1), "padding": ((0, 2), (1, 0)), "dilation": (1, 2)}),
    (1, 33, 1, 5, {"stride": 3, "dilation": 2, "padding": 2}),
    (3, 9, 3, 8, {"padding": (1, 0, 2), "dilation": (2, 1, 1)}),
    (2, 16, 13, 4, {"kernel": 1}),  # pointwise; more channels than a register block
]


@pytest.mark.parametrize("nd, groups, cg, kg, kw", GROUPED_CASES)
def test_grouped_agrees_with_reference(nd, groups, cg, kg, kw, dtype, rng, monkeypatch):
    """The group-vectorised kernels on any group, channel and filter count, stride, dilation
    and padding: forward, both gradients, and the transposed convolution (stride 1: the same
    kernel on the flipped weights, its channel axes swapped) with its gradients."""
    force_numba_way("grouped", monkeypatch)
    kw = dict(kw)
    size = {1: (23,), 2: (9, 11), 3: (5, 6, 7)}[nd]
    kernel = (kw.pop("kernel"),) * nd if "kernel" in kw else {1: (3,), 2: (3, 2),
                                                               3: (2, 3, 3)}[nd]
    x = randn(rng, (3, groups * cg, *size), dtype)
    w = randn(rng, (groups * kg, cg, *kernel), dtype)
    b = randn(rng, (groups * kg,), dtype)
    gy = randn(rng, fc.conv_output_shape(x.shape, w.shape, groups=groups, **kw), dtype)
    wt = randn(rng, (groups * cg, kg, *kernel), dtype)
    bt = randn(rng, (groups * kg,), dtype)
    tkw = {"groups": groups, "padding": 1, "dilation": kw.get("dilation", 1)}
    conv, transposed = getattr(fc, f"conv{nd}d"), getattr(fc, f"conv_transpose{nd}d")

    def run():
        yt = transposed(x, wt, bt, **tkw)
        return [conv(x, w, b, groups=groups, **kw),
                *getattr(fc, f"conv{nd}d_backward")(gy, x, w, groups=groups, **kw), yt,
                *getattr(fc, f"conv_transpose{nd}d_backward")(np.ones_like(yt), x, wt, **tkw)]

    with fc.use_backend("numpy"):
        expected = run()
    with fc.use_backend("numba"), numba_cpu.trace_ways() as ways:
        got = run()
    # the forward, its weight gradient, the transposed forward and its input gradient (a
    # convolution); the stride-2 input gradient goes by phases
    assert ways.count("grouped") >= 4, ways
    for a, e, what in zip(got, expected, ["y", "gx", "gw", "gb", "yt", "gxt", "gwt", "gbt"]):
        assert_close(a, e, dtype, what)


def test_grouped_rule_and_preference(rng):
    """Deep groups in whole vectors of groups take ``grouped`` by the rules (forward, input
    and weight gradient), at a training batch and for a single image; groups that leave a
    vector partly empty only for their weight gradient, unless ``prefer_way`` asks for it."""
    for groups, expected in ((32, ["grouped"] * 3), (24, ["blocked", "grouped", "blocked"])):
        w = randn(rng, (16 * groups, 16, 3, 3), np.float32)
        for batch in (8, 1):
            x = randn(rng, (batch, 16 * groups, 14, 14), np.float32)
            with fc.use_backend("numba"), numba_cpu.trace_ways() as ways:
                fc.conv2d_backward(np.ones_like(x), x, w, padding=1, groups=groups)
                fc.conv2d(x, w, padding=1, groups=groups)
            assert ways == expected, (groups, batch, ways)
    with (fc.use_backend("numba"), numba_cpu.prefer_way("grouped"),
          numba_cpu.trace_ways() as ways):
        y = fc.conv2d(x, w, padding=1, groups=24)
    assert ways == ["grouped"]
    with fc.use_backend("numpy"):
        assert_close(y, fc.conv2d(x, w, padding=1, groups=24), np.float32, "forward")


PHASE_CASES = [  # (kernel, stride, padding, dilation, output padding) on each axis
    (3, 2, 1, 1, 1), (1, 2, 0, 1, 0), (2, 2, 0, 1, 0), (4, 2, 1, 1, 0), (5, 3, 2, 1, 2),
    (3, 2, 3, 1, 0),  # padding past the kernel's reach: phases start inside the input
    (3, 2, 2, 2, 1),  # dilation and stride share a factor: every other phase has no tap
    (3, 3, 1, 2, 0), (2, 4, 0, 1, 3),  # phases that no tap reaches: the bias alone
]


@pytest.mark.parametrize("k, s, p, d, op", PHASE_CASES)
@pytest.mark.parametrize("groups", [1, 2])
def test_phases_agree_with_reference(k, s, p, d, op, groups, dtype, rng, monkeypatch):
    """A strided transposed convolution as stride-1 ones per output phase: on one strided and
    one stride-1 axis, with and without bias, the same numbers as the reference."""
    force_numba_way("phases", monkeypatch)
    x = randn(rng, (2, 2 * groups, 5, 4), dtype)
    w = randn(rng, (2 * groups, 3, k, 2), dtype)
    kw = {"stride": (s, 1), "padding": (p, 0), "dilation": (d, 1), "output_padding": (op, 0),
          "groups": groups}
    for bias in (None, randn(rng, (3 * groups,), dtype)):
        with fc.use_backend("numpy"):
            expected = fc.conv_transpose2d(x, w, bias, **kw)
        with fc.use_backend("numba"), numba_cpu.trace_ways() as ways:
            got = fc.conv_transpose2d(x, w, bias, **kw)
        assert ways == ["phases"]
        assert_close(got, expected, dtype, "yt")


def _grouped_copies(dtype, monkeypatch):
    """``grouped`` forced (the test skipped without AVX-512), and the workspace of each
    groups-last copy it makes recorded, in order, in the list returned."""
    if numba_cpu._grouped_fits(16, 2, 3, np.dtype(dtype).itemsize) is None:
        pytest.skip("grouped needs AVX-512")
    force_numba_way("grouped", monkeypatch)
    roles = []
    copy = numba_cpu._grouped_copy
    monkeypatch.setattr(numba_cpu, "_grouped_copy",
                        lambda *a: roles.append(a[-1]) or copy(*a))
    return roles


@pytest.mark.parametrize("k, s, p, d, op", PHASE_CASES)
def test_phases_by_grouped_share_one_copy(k, s, p, d, op, dtype, rng, monkeypatch):
    """Phases computed by ``grouped`` read one groups-last copy of the input, each from the
    origin of its own padding (phases that crop the input make their own): the same numbers
    as the reference, and the shared copy made."""
    force_numba_way("phases", monkeypatch)
    roles = _grouped_copies(dtype, monkeypatch)
    x = randn(rng, (2, 32, 5, 4), dtype)
    w = randn(rng, (32, 3, k, 2), dtype)
    kw = {"stride": (s, 1), "padding": (p, 0), "dilation": (d, 1), "output_padding": (op, 0),
          "groups": 16}
    with fc.use_backend("numpy"):
        expected = fc.conv_transpose2d(x, w, **kw)
    with fc.use_backend("numba"), numba_cpu.trace_ways() as ways:
        got = fc.conv_transpose2d(x, w, **kw)
    assert ways == ["phases"]
    assert_close(got, expected, dtype, "yt")
    rows = (5 - 1) * s - 2 * p + d * (k - 1) + op + 1
    sharing = any(a.taps and not a.crop
                  for a in _numba_phases.axis_phases(5, k, s, p, d, rows))
    assert roles.count("grouped shared input") == sharing, roles


@pytest.mark.parametrize("input_grad", [True, False])
def test_grouped_backward_copies_grad_output_once(input_grad, dtype, rng, monkeypatch):
    """A convolution's backward by ``grouped`` copies the output gradient once: the input
    gradient pads it, the weight gradient reads it from there (or, alone, copies it as it
    needs); a transposed convolution's backward likewise shares it, its input there. The
    numbers are the reference's."""
    roles = _grouped_copies(dtype, monkeypatch)
    x = randn(rng, (2, 32, 6, 5), dtype)
    w = randn(rng, (48, 2, 3, 2), dtype)
    kw = {"padding": (1, 1), "dilation": (2, 1), "groups": 16}
    gy = randn(rng, fc.conv_output_shape(x.shape, w.shape, **kw), dtype)
    wt = randn(rng, (32, 3, 3, 2), dtype)
    tkw = {"padding": 1, "groups": 16}
    gyt = randn(rng, fc.conv_transpose_output_shape(x.shape, wt.shape, **tkw), dtype)

    def run():
        return [*fc.conv2d_backward(gy, x, w, input_grad=input_grad, **kw)[:2],
                *fc.conv_transpose2d_backward(gyt, x, wt, **tkw)[:2]]

    with fc.use_backend("numpy"):
        expected = run()
    with fc.use_backend("numba"), numba_cpu.trace_ways() as ways:
        got = run()
    assert ways == ["grouped"] * (4 if input_grad else 3), ways
    assert roles == (["grouped shared input", "grouped input"] if input_grad else
                     ["grouped input", "grouped shared input"]) + [
        "grouped shared input", "grouped gradient"], roles
    for a, e, what in zip(got, expected, ["gx", "gw", "gxt", "gwt"]):
        if a is not None:
            assert_close(a, e, dtype, what)


def test_phases_rule():
    """The phases of a stride-2 input gradient with deep groups go to ``grouped``, so it goes
    by phases (ResNeXt's layer4.0 at batch 16); ResNet's and a depthwise one keep packing and
    the direct kernels, and single images packing."""
    def first(gy_shape, w_shape, groups, in_size):
        return numba_cpu.conv_transpose_forward_ways(gy_shape, w_shape, (1, 2, 2), (0, 1, 1),
                                                     (1, 1, 1), groups, in_size, 4)[0]

    grouped = "phases" if numba_cpu._grouped_fits(32, 32, 32, 4) is not None else "gemm"
    assert first((16, 1024, 1, 7, 7), (1024, 32, 1, 3, 3), 32, (1, 14, 14)) == grouped
    assert first((1, 1024, 1, 7, 7), (1024, 32, 1, 3, 3), 32, (1, 14, 14)) == "gemm"
    assert first((16, 128, 1, 28, 28), (128, 64, 1, 3, 3), 1, (1, 56, 56)) == "gemm"
    assert first((16, 144, 1, 28, 28), (144, 1, 1, 3, 3), 144, (1, 56, 56)) == "direct"


@pytest.mark.parametrize("setting", ["gemm", "winograd"])
@pytest.mark.parametrize("nd, kw", CASES[:3] + CASES[-2:])
def test_scipy_blas_from_kernels(setting, nd, kw, dtype, rng, monkeypatch):
    """The kernels' BLAS where NumPy bundles none: SciPy's ``?gemm`` (32-bit integers)."""
    from fastconv.backends import _numba_blas

    gemms, integer = _numba_blas._scipy_gemms()
    monkeypatch.setattr(_numba_blas, "_GEMMS", gemms)
    monkeypatch.setattr(_numba_blas, "_INTEGER", integer)
    test_paths_agree_with_reference(setting, nd, kw, dtype, rng, monkeypatch)


def test_single_thread_path(rng, monkeypatch):
    """One task: one of Numba's threads runs it."""
    monkeypatch.setattr(_numba_tasks, "TASK_BYTES", 1 << 30)
    x = randn(rng, (1, 4, 9, 9), np.float64)
    w = randn(rng, (6, 4, 3, 3), np.float64)
    with fc.use_backend("numpy"):
        expected = fc.conv2d(x, w, padding=1)
    with fc.use_backend("numba"):
        assert_close(fc.conv2d(x, w, padding=1), expected, np.float64, "forward")


BANDED = [  # planes large enough that the direct kernels work in several bands of rows
    ("conv2d", (1, 2, 150, 161), {"weight": (2, 1, 3, 3), "padding": 1, "groups": 2}),
    ("conv2d", (1, 1, 131, 140), {"weight": (3, 1, 5, 3), "stride": 2, "dilation": (2, 1),
                                   "padding": (3, 0)}),
    ("conv3d", (1, 1, 3, 140, 130), {"weight": (1, 1, 2, 3, 3), "stride": (1, 3, 2),
                                      "padding": (1, 1, 2)}),
    ("max_pool2d", (1, 2, 301, 297), {"kernel_size": 3, "stride": 2, "padding": 1,
                                      "ceil_mode": True}),
    ("max_pool3d", (1, 1, 3, 150, 151), {"kernel_size": (2, 3, 3), "dilation": (1, 2, 1)}),
    ("avg_pool2d", (1, 2, 299, 300), {"kernel_size": 3, "stride": 2, "padding": 1}),
]


def _banded_against_reference(op, shape, kw, dtype, rng):
    """``op`` (a convolution given ``kw["weight"]``'s shape, or a pooling, max pooling with its
    indices) on the numba backend against the NumPy reference."""
    x = randn(rng, shape, dtype)
    kw = dict(kw)
    args = (x, randn(rng, kw.pop("weight"), dtype)) if "weight" in kw else (x,)
    if op.startswith("max"):
        kw["return_indices"] = True
    with fc.use_backend("numpy"):
        expected = getattr(fc, op)(*args, **kw)
    with fc.use_backend("numba"):
        got = getattr(fc, op)(*args, **kw)
    if op.startswith("max"):
        np.testing.assert_array_equal(got[1], expected[1])
        got, expected = got[0], expected[0]
    assert_close(got, expected, dtype, op)


@pytest.mark.parametrize("op, shape, kw", BANDED, ids=[c[0] for c in BANDED])
def test_large_planes_in_bands(op, shape, kw, rng):
    _banded_against_reference(op, shape, kw, np.float64, rng)


# Strides 3 and 4 copy each row's phases a vector's worth at a time (shuffles), the last vector
# overlapping the one before, and the edges element by element: rows long enough for several
# vectors, with padding on both sides
STRIDED_ROWS = [
    ("max_pool1d", (2, 3, 1981), {"kernel_size": 4}),
    ("max_pool1d", (1, 2, 403), {"kernel_size": 5, "stride": 4, "padding": 2}),
    ("max_pool2d", (1, 2, 9, 157), {"kernel_size": (2, 3), "stride": 3, "padding": 1}),
    ("avg_pool2d", (1, 2, 12, 203), {"kernel_size": 4, "stride": (2, 3), "padding": 1}),
    ("conv2d", (1, 3, 40, 227), {"weight": (5, 3, 11, 11), "stride": 4, "padding": 2}),
    ("conv1d", (2, 4, 500), {"weight": (6, 4, 7), "stride": 3, "padding": 3}),
]


@pytest.mark.parametrize("op, shape, kw", STRIDED_ROWS, ids=[c[0] for c in STRIDED_ROWS])
def test_strided_rows(op, shape, kw, dtype, rng):
    _banded_against_reference(op, shape, kw, dtype, rng)


LANE_CASES = [  # batches filling one, several and part of a last group of lanes
    (16, (3, 7, 9), {"weight": (5, 3, 3, 3), "padding": 1}),
    (70, (2, 6, 5), {"weight": (4, 2, 2, 3), "padding": ((2, 0), (1, 3)), "dilation": (2, 1)}),
    (200, (3, 5, 6), {"weight": (8, 3, 5, 2), "padding": 2}),
]


@pytest.mark.parametrize("n, shape, kw", LANE_CASES, ids=[str(c[0]) for c in LANE_CASES])
def test_lane_groups(n, shape, kw, dtype, rng):
    """Batches on lanes of 16, 32 and 64 images, with a bias, channels not a multiple of four,
    asymmetric pads and dilation; the transposed convolution's crop of its padded input."""
    kw = dict(kw)
    x = randn(rng, (n, *shape), dtype)
    w = randn(rng, kw.pop("weight"), dtype)
    b = randn(rng, (w.shape[0],), dtype)
    gy = randn(rng, fc.conv_output_shape(x.shape, w.shape, **kw), dtype)
    wt = randn(rng, (shape[0], 6, 3, 2), dtype)
    tkw = {"padding": (2, 1), "dilation": kw.get("dilation", 1)}  # padding > dilation * (k - 1)

    def run():
        return [fc.conv2d(x, w, b, **kw), *fc.conv2d_backward(gy, x, w, **kw),
                fc.conv_transpose2d(x, wt, **tkw)]

    assert _numba_lanes.lanes_fit((n, *shape[:1], 1, *shape[1:]), w.shape[0],
                                  (1, *w.shape[2:]), (1, 1, 1), (0, 0, 0),
                                  (1, 1, 1), 1, (1, *gy.shape[2:]))
    with fc.use_backend("numpy"):
        expected = run()
    with fc.use_backend("numba"):
        got = run()
    for a, e, what in zip(got, expected, ["y", "gx", "gw", "gb", "yt"]):
        assert_close(a, e, dtype, what)


@pytest.mark.parametrize("n, shape, kw", LANE_CASES, ids=[str(c[0]) for c in LANE_CASES])
def test_lane_vectors_same_bits(n, shape, kw, dtype, rng, monkeypatch):
    """The 512-bit lane kernel sums in the order of the 256-bit loops: the same bits, forward
    and input gradient (a convolution on lanes too)."""
    kw = dict(kw)
    x = randn(rng, (n, *shape), dtype)
    w = randn(rng, kw.pop("weight"), dtype)
    b = randn(rng, (w.shape[0],), dtype)
    gy = randn(rng, fc.conv_output_shape(x.shape, w.shape, **kw), dtype)
    results = []
    for wide in (True, False):
        monkeypatch.setattr(_numba_lanes, "WIDE_VECTORS", wide)
        with fc.use_backend("numba"):
            results.append((fc.conv2d(x, w, b, **kw), fc.conv2d_backward(gy, x, w, **kw)[0]))
    for wide, narrow in zip(*results):
        np.testing.assert_array_equal(wide, narrow)



@pytest.mark.parametrize("wide", [True, False])
def test_lane_kernel_picks_the_twin_of_the_vector_width(wide, monkeypatch):
    """So that the test above compares two kernels, not one with itself."""
    from fastconv.backends import _numba_lane_kernels as K

    monkeypatch.setattr(_numba_lanes, "WIDE_VECTORS", wide)
    for name in ("_lane_conv", "_lane_conv_nchw", "_lane_weight_grad"):
        twin = getattr(K, name + "_wide")
        assert (_numba_lanes.lane_kernel(name) is twin) == wide
        assert (_numba_lanes.lane_kernel(name) is getattr(K, name)) != wide


@st.composite
def lane_cases(draw):
    nd = draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 5)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    size = tuple(draw(st.integers(1, 12)) for _ in range(nd))
    pads = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(nd))
    out = [s + lo + hi - d * (k - 1) for s, (lo, hi), d, k in zip(size, pads, dilation, kernel)]
    assume(all(o > 0 for o in out) and np.prod(kernel) > 1)
    return {"nd": nd, "n": draw(st.integers(1, 80)), "c": draw(st.integers(1, 5)),
            "k": draw(st.integers(4, 9)), "size": size, "kernel": kernel,
            "dilation": dilation, "padding": pads,
            "dtype": draw(st.sampled_from([np.float64, np.float32])),
            "wide": draw(st.booleans()), "seed": draw(st.integers(0, 2**32 - 1))}


@settings(deadline=None)
@given(case=lane_cases())
def test_lanes_drawn(case):
    """Drawn stride-1 convolutions forced onto batch lanes (any batch), with 512-bit vectors or
    256-bit loops, against PyTorch: forward, both gradients, and the stride-1 transposed
    convolution."""
    rng = np.random.default_rng(case["seed"])
    nd, dtype = case["nd"], np.dtype(case["dtype"])
    kw = {"padding": case["padding"], "dilation": case["dilation"]}
    x = randn(rng, (case["n"], case["c"], *case["size"]), dtype)
    w = randn(rng, (case["k"], case["c"], *case["kernel"]), dtype)
    b = randn(rng, (case["k"],), dtype)
    y_t, _, gy, (gx_t, gw_t, _) = autograd(torch_conv(nd, **kw), [x, w, b], rng)
    wt = randn(rng, (case["c"], case["k"], *case["kernel"]), dtype)
    t_pad = tuple(min(lo, d * (k - 1) // 2) for (lo, _), d, k in
                  zip(case["padding"], case["dilation"], case["kernel"]))
    yt_t = getattr(torch.nn.functional, f"conv_transpose{nd}d")(
        torch.from_numpy(x), torch.from_numpy(wt), padding=t_pad,
        dilation=case["dilation"]).numpy()
    saved = _numba_lanes.LANE_MIN_BATCH, _numba_lanes.WIDE_VECTORS
    _numba_lanes.LANE_MIN_BATCH, _numba_lanes.WIDE_VECTORS = 1, case["wide"]
    try:
        with fc.use_backend("numba"):
            y = getattr(fc, f"conv{nd}d")(x, w, b, **kw)
            gx, gw, _ = getattr(fc, f"conv{nd}d_backward")(gy, x, w, **kw)
            yt = getattr(fc, f"conv_transpose{nd}d")(x, wt, padding=t_pad,
                                                     dilation=case["dilation"])
    finally:
        _numba_lanes.LANE_MIN_BATCH, _numba_lanes.WIDE_VECTORS = saved
    assert_close(y, y_t, dtype, "forward")
    assert_close(gx, gx_t, dtype, "grad_x")
    assert_close(gw, gw_t, dtype, "grad_weight")
    assert_close(yt, yt_t, dtype, "transposed")


BLOCKED_CASES = [  # (input shape, weight shape, keyword arguments)
    ((2, 4, 9, 11), (6, 4, 3, 3), {"padding": 1}),  # 6 filters: two of eight are zero filler
    ((2, 4, 9, 11), (10, 2, 3, 3), {"padding": ((2, 0), (1, 3)), "dilation": 2, "groups": 2}),
    ((1, 3, 30, 31), (8, 3, 5, 3), {"stride": (3, 2), "padding": (0, 2)}),
    ((2, 40, 6, 7, 7), (12, 40, 3, 3, 3), {"padding": 1}),  # channels in several blocks
    ((2, 4, 5, 6, 7), (8, 2, 2, 3, 1), {"stride": (2, 1, 2), "padding": (1, 0, 1),
                                        "groups": 2, "dilation": (2, 1, 1)}),
    ((3, 4, 40), (9, 4, 5), {"stride": 2, "padding": 3}),
    ((1, 20, 13, 12), (16, 5, 3, 3), {"padding": 1, "groups": 4}),
]


def _forced_kernel_case(x_shape, w_shape, kw, dtype, rng):
    """A forced-kernel test's operands: input, weight, bias, a transposed convolution's
    weight (4 output channels per group), and the convolution and transposed functions."""
    nd = len(x_shape) - 2
    x, w = randn(rng, x_shape, dtype), randn(rng, w_shape, dtype)
    b = randn(rng, (w_shape[0],), dtype)
    wt = randn(rng, (x_shape[1], 4, *w_shape[2:]), dtype)
    return (nd, kw.get("groups", 1), x, w, b, wt, getattr(fc, f"conv{nd}d"),
            getattr(fc, f"conv_transpose{nd}d"))


@pytest.mark.parametrize("tasks", ["blocked", "blocked_small_tasks"])
@pytest.mark.parametrize("x_shape, w_shape, kw", BLOCKED_CASES)
def test_blocked_kernel(x_shape, w_shape, kw, tasks, dtype, rng, monkeypatch):
    """The register-blocked direct kernel, forced: forward with a bias, and the stride-1
    transposed convolution (a convolution with the kernel flipped), against the reference;
    whole bands, or bands of one row with output channels in chunks of four."""
    force_numba_way(tasks, monkeypatch)
    nd, groups, x, w, b, wt, conv, transposed = _forced_kernel_case(x_shape, w_shape, kw,
                                                                    dtype, rng)
    with fc.use_backend("numba"), numba_cpu.trace_ways() as ways:
        y, yt = conv(x, w, b, **kw), transposed(x, wt, groups=groups)
    assert ways == ["blocked", "blocked"]
    with fc.use_backend("numpy"):
        assert_close(y, conv(x, w, b, **kw), dtype, "forward")
        assert_close(yt, transposed(x, wt, groups=groups), dtype, "transposed")


def test_blocked_split_fills_the_runs():
    """Few images and few weights: the blocked kernel's bands and chunks are those whose
    busiest thread computes least, each band's last run of 64 positions counted whole.
    AlexNet's 11x11 stem at stride 4 (55 rows of 55, 57 apart) at batch 1 on two threads:
    two bands of 28 and 27 rows (1,539 and 1,596 positions: 25 runs each), not eight of 7
    (7 runs for 397 positions), one task per thread; with four threads, the same bands,
    each in two chunks of 32 filters."""
    geometry = (1, 55, 55, 57, 46, 64, 3, 121, (4, 4, 11, 1), 64)
    assert numba_cpu._blocked_split(*geometry, 2) == (28, 64)
    assert numba_cpu._blocked_split(*geometry, 4) == (28, 32)


KVECTOR_CASES = [*BLOCKED_CASES,
                 ((2, 6, 7, 5), (70, 6, 3, 3), {"padding": 1}),  # a block and 6 filters more
                 ((1, 8, 9, 9), (130, 4, 1, 1), {"groups": 2}),  # 65 per group, 1x1
                 # the second group's weights copied a vector's worth at a time too
                 ((2, 36, 5, 5), (130, 18, 3, 3), {"groups": 2, "padding": 1}),
                 # rows copied channels last a vector's worth of columns x channels at a time
                 ((1, 20, 3, 41), (64, 20, 1, 3), {"padding": (0, 5), "stride": (1, 2)}),
                 ((3, 5, 6), (33, 5, 1), {"stride": 2}),
                 # windows wholly in the padding (their outputs the bias), and a 3-D kernel
                 # dilated and padded on every axis, strided on one
                 ((2, 16, 4, 5), (64, 16, 3, 3), {"padding": 3}),
                 ((1, 16, 4, 5, 6), (64, 16, 3, 3, 3), {"padding": (2, 1, 1),
                                                        "dilation": (1, 2, 1),
                                                        "stride": (1, 1, 2)})]


@pytest.mark.skipif(not _numba_lanes.WIDE_VECTORS, reason="kvector needs AVX-512")
@pytest.mark.parametrize("tasks", ["kvector", "kvector_small_tasks"])
@pytest.mark.parametrize("layout", ["channel_major", "tap_major"])
@pytest.mark.parametrize("skip_padding", [True, False])
@pytest.mark.parametrize("x_shape, w_shape, kw", KVECTOR_CASES)
def test_kvector_kernel(x_shape, w_shape, kw, skip_padding, layout, tasks, dtype, rng,
                        monkeypatch):
    """The direct kernels vectorised over output channels, forced: forward with a bias, weight
    gradient, and the stride-1 transposed convolution (the kernel flipped, a crop here),
    against the reference; tasks over the whole batch, or chunks of one register block with
    one input channel at a time; weight blocks laid out either way; the taps that read only
    padding skipped per block of positions, or every tap run."""
    force_numba_way(tasks, monkeypatch)
    monkeypatch.setattr(numba_cpu, "KVECTOR_CHANNEL_MAJOR_POSITIONS",
                        1 << 40 if layout == "channel_major" else -1)
    monkeypatch.setattr(numba_cpu, "KVECTOR_SKIP_MIN_STEPS", 0 if skip_padding else math.inf)
    nd, groups, x, w, b, wt, conv, transposed = _forced_kernel_case(x_shape, w_shape, kw,
                                                                    dtype, rng)
    backward = getattr(fc, f"conv{nd}d_backward")
    gy = randn(rng, fc.conv_output_shape(x_shape, w_shape, **kw), dtype)

    def run():
        return (conv(x, w, b, **kw), backward(gy, x, w, **kw)[1],
                transposed(x, wt, groups=groups, padding=1))

    # preferred too: the rules never take it for a 1x1 kernel's weight gradient
    with (fc.use_backend("numba"), numba_cpu.prefer_way("kvector"),
          numba_cpu.trace_ways() as ways):
        got = run()
    assert ways[0] == ways[-2] == ways[-1] == "kvector"  # forward, weight grad, transposed
    with fc.use_backend("numpy"):
        for a, e, what in zip(got, run(), ["forward", "grad_weight", "transposed"]):
            assert_close(a, e, dtype, what)


@pytest.mark.parametrize("way, groups", [("kvector", 1), ("grouped", 16)])
@pytest.mark.parametrize("kg", [40, 70])  # one block of filters (per group), or two
@pytest.mark.parametrize("sums_bytes", [1, 1 << 20])  # a range per block of channels, or one
def test_weight_grad_split(way, groups, kg, sums_bytes, dtype, rng, monkeypatch):
    """The vectorised weight gradients with their work cut in ranges of channels and ranges
    of positions (each range's partial sums added afterwards): three blocks of channels per
    group, in one range or three; with one block of filters the tasks are not a multiple of
    two threads without ranges of positions."""
    if way == "kvector" and not _numba_lanes.WIDE_VECTORS:
        pytest.skip("kvector needs AVX-512")
    force_numba_way(way, monkeypatch)
    monkeypatch.setattr(numba_cpu, "KVECTOR_GRAD_SUMS_BYTES", sums_bytes)
    if way == "grouped":
        kg //= 10  # a block of four filters, or two
    cg = 3 * _numba_kvector.KVECTOR_POSITIONS - 2
    x = randn(rng, (3, groups * cg, 9, 11), dtype)
    w = randn(rng, (groups * kg, cg, 3, 2), dtype)
    gy = randn(rng, fc.conv_output_shape(x.shape, w.shape, padding=1, groups=groups), dtype)
    with fc.use_backend("numba"), numba_cpu.trace_ways() as ways:
        got = fc.conv2d_backward(gy, x, w, padding=1, groups=groups, input_grad=False)[1]
    assert ways[-1] == way
    with fc.use_backend("numpy"):
        expected = fc.conv2d_backward(gy, x, w, padding=1, groups=groups, input_grad=False)[1]
    assert_close(got, expected, dtype, "grad_weight")


# Zoo layers at their training batch and the ways the rules give them (forward, input
# gradient, weight gradient), as measured per primitive (numba_cpu, beside KVECTOR_MAX_MACS)
TRAINING_CHOICES = [
    # Winograd by blocks of filters from WINOGRAD_MIN_POSITIONS (as many filters as tiles)
    ((16, 512, 1, 7, 7), (512, 512, 1, 3, 3), 1, ("winograd", "winograd", "kvector")),
    ((1, 512, 1, 16, 16), (1024, 512, 1, 3, 3), 1, ("winograd", "winograd", "kvector")),
    # Winograd from a quarter of a tile per channel (its kernel transform in the L3 cache)
    ((16, 256, 1, 14, 14), (256, 256, 1, 3, 3), 1, ("winograd", "winograd", "kvector")),
    ((1, 128, 1, 28, 28), (128, 128, 1, 3, 3), 1, ("winograd", "winograd", "kvector")),
    ((1, 256, 1, 14, 14), (256, 256, 1, 3, 3), 1, ("kvector", "kvector", "kvector")),
    ((4, 512, 1, 14, 14), (512, 512, 1, 3, 3), 1, ("winograd", "winograd", "kvector")),
    ((1, 512, 1, 14, 14), (512, 512, 1, 3, 3), 1, ("kvector", "kvector", "kvector")),
    ((16, 64, 1, 56, 56), (64, 64, 1, 3, 3), 1, ("winograd", "winograd", "kvector")),
    # stride 2: kvector forward and weight gradient (packing + BLAS for the input gradient)
    ((16, 64, 1, 56, 56), (128, 64, 1, 3, 3), 2, ("kvector", "gemm", "kvector")),
    ((2, 128, 8, 28, 28), (256, 128, 3, 3, 3), 1, ("winograd", "winograd", "kvector")),
    ((64, 128, 1, 1, 495), (128, 128, 1, 1, 3), 1, ("kvector", "kvector", "kvector")),
    ((64, 120, 1, 1, 495), (120, 120, 1, 1, 3), 1, ("blocked", "blocked", "gemm")),  # shallow
    ((16, 512, 1, 7, 7), (2048, 512, 1, 1, 1), 1, ("kvector", "kvector", "gemm")),
    ((16, 1024, 1, 14, 14), (256, 1024, 1, 1, 1), 1, ("gemm", "gemm", "gemm")),
    ((16, 256, 1, 14, 14), (512, 256, 1, 3, 3), 2, ("kvector", "gemm", "kvector")),
    ((8, 32, 1, 1, 16385), (64, 32, 1, 1, 2), 1, ("blocked", "blocked", "gemm")),
    # few positions; a third of the multiply-adds in depth padding (45% in all), at batch 1
    # and 2; padding of rows and columns does not count (31% and 40% here: kvector forward)
    ((1, 512, 2, 7, 7), (512, 512, 3, 3, 3), 1, ("blocked", "blocked", "gemm")),
    ((1, 384, 1, 7, 7), (768, 384, 1, 3, 3), 2, ("kvector", "gemm", "gemm")),
    ((1, 512, 1, 3, 3), (512, 512, 1, 3, 3), 1, ("kvector", "blocked", "gemm")),
    ((2, 512, 2, 7, 7), (512, 512, 3, 3, 3), 1, ("blocked", "blocked", "kvector")),
    # few positions, 9% of the forward's multiply-adds in the padding, then 18% (45% above)
    ((1, 256, 1, 14, 14), (512, 256, 1, 3, 3), 2, ("kvector", "gemm", "gemm")),
    ((1, 512, 1, 7, 7), (512, 512, 1, 3, 3), 1, ("kvector", "blocked", "gemm")),
    ((1, 512, 1, 7, 7), (2048, 512, 1, 1, 1), 1, ("gemm", "gemm", "gemm")),  # 1x1: no padding
    ((1, 64, 1, 56, 56), (256, 64, 1, 1, 1), 1, ("gemm", "gemm", "gemm")),  # 1x1, batch 1
    ((1, 1024, 1, 14, 14), (256, 1024, 1, 1, 1), 1, ("gemm", "gemm", "gemm")),
    # Winograd ahead of the direct kernels from WINOGRAD_AHEAD_MIN_MACS, not below
    ((1, 64, 1, 56, 56), (64, 64, 1, 3, 3), 1, ("winograd", "winograd", "kvector")),
    ((1, 32, 1, 56, 56), (32, 32, 1, 3, 3), 1, ("blocked", "blocked", "gemm")),
]


@pytest.mark.skipif(not _numba_lanes.WIDE_VECTORS, reason="kvector needs AVX-512")
@pytest.mark.parametrize("x_shape, w_shape, stride, expected", TRAINING_CHOICES)
def test_training_batch_choices(x_shape, w_shape, stride, expected):
    """The rules for large calls: kvector at stride 1 where Winograd does not take the call,
    1x1 kernels on 7x7 images, weight gradients at stride 1 of deep sums; Winograd where it
    takes the call (3-D kernels too) and it is not small; the blocked forward for calls of few
    positions, unless few of their multiply-adds read padding; packing + BLAS otherwise (1x1
    kernels at batch 1 too)."""
    pad = tuple((k - 1) // 2 for k in w_shape[2:])
    strides = (1, stride, stride)
    y_shape = fc.conv_output_shape(x_shape, w_shape, stride=strides, padding=pad)
    one = (1, 1, 1)
    got = (numba_cpu.conv_forward_ways(x_shape, w_shape, strides, pad, one, 1, y_shape[2:],
                                       4)[0],
           numba_cpu.conv_transpose_forward_ways(y_shape, w_shape, strides, pad, one, 1,
                                                 x_shape[2:], 4)[0],
           numba_cpu.conv_weight_grad_ways(x_shape, y_shape, strides, pad, one, 1,
                                           w_shape[2:], 4)[0])
    assert got == expected


def test_strided_weight_grad_float64():
    """kvector's float64 weight gradient at stride 2 lost to packing + BLAS (its blocks hold
    half the filters); at stride 1, and in float32 at stride 2, it takes the call."""
    x_shape, gy_shape = (16, 256, 1, 14, 14), (16, 512, 1, 7, 7)
    one, two = (1, 1, 1), (1, 2, 2)
    ways = numba_cpu.conv_weight_grad_ways
    assert ways(x_shape, gy_shape, two, one, one, 1, (1, 3, 3), 8)[0] == "gemm"
    assert ways(x_shape, gy_shape, two, one, one, 1, (1, 3, 3), 4)[0] == "kvector"
    assert ways(x_shape, (16, 512, 1, 14, 14), one, one, one, 1, (1, 3, 3), 8)[0] == "kvector"


def test_winograd_large_kernels():
    """By tasks of tiles (more tiles than filters), a transformed kernel past
    WINOGRAD_KERNEL_BYTES (every task reads it from memory) needs
    WINOGRAD_LARGE_TILES_PER_CHANNEL tiles a channel: 256 channels at 28x28, batch 6 (294
    tiles, 1.1 a channel) take Winograd in float32 (9.4 MB), not in float64 (18.9 MB) until
    batch 8 (1.5 a channel); by blocks of filters the line is WINOGRAD_MIN_POSITIONS, whatever
    the kernel's size."""
    fits, one, kernel = _numba_winograd.fits, (1, 1, 1), (1, 3, 3)
    assert fits(kernel, one, one, 1, 256, 256, 6, (1, 28, 28), 4)
    assert not fits(kernel, one, one, 1, 256, 256, 6, (1, 28, 28), 8)
    assert fits(kernel, one, one, 1, 256, 256, 8, (1, 28, 28), 8)
    assert fits(kernel, one, one, 1, 512, 512, 1, (1, 16, 16), 8)  # by blocks
    assert not fits(kernel, one, one, 1, 512, 512, 1, (1, 14, 14), 8)
    assert not fits(kernel, one, (1, 2, 2), 1, 512, 512, 1, (1, 16, 16), 8)  # by tiles
    blocks = _numba_winograd.by_filter_blocks
    assert blocks(16, 256, kernel, one, (1, 14, 14))  # 256 filters, 256 tiles
    assert not blocks(16, 255, kernel, one, (1, 14, 14))
    assert not blocks(1, 512, (3, 3, 3), one, (1, 14, 14))  # 3-D


@pytest.mark.parametrize("pad", [0, 1, 2])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("budget, blocks", [(1, 20), (7, 3), (40, 1)])  # filters' worth
def test_winograd_filter_blocks(budget, blocks, groups, pad, dtype, rng, monkeypatch):
    """Winograd by blocks of filters (the transformed kernel at most WINOGRAD_BLOCK_BYTES a
    block, here ``budget`` filters' worth, the blocks of near-equal size; those of the
    forward counted, one thread): the reference's forward with bias, input gradient and
    transposed convolution, at sizes that are not multiples of the tile."""
    force_numba_way("winograd_filter_blocks", monkeypatch)
    cg, itemsize = 6, np.dtype(dtype).itemsize
    monkeypatch.setattr(_numba_winograd, "WINOGRAD_BLOCK_BYTES", 36 * cg * itemsize * budget)
    assert _numba_winograd.filter_blocks(groups, cg, 20, itemsize, 1) == blocks
    x = randn(rng, (2, cg * groups, 9, 11), dtype)
    w, b = randn(rng, (20 * groups, cg, 3, 3), dtype), randn(rng, (20 * groups,), dtype)
    gy = randn(rng, fc.conv_output_shape(x.shape, w.shape, padding=pad, groups=groups), dtype)

    def run():
        return [fc.conv2d(x, w, b, padding=pad, groups=groups),
                fc.conv2d_backward(gy, x, w, padding=pad, groups=groups)[0],
                fc.conv_transpose2d(gy, w, b[:cg * groups], padding=pad, groups=groups)]

    with fc.use_backend("numpy"):
        expected = run()
    with fc.use_backend("numba"), numba_cpu.trace_ways() as ways:
        got = run()
    assert ways.count("winograd") == 3
    for a, e, what in zip(got, expected, ["y", "gx", "yt"]):
        assert_close(a, e, dtype, what)


def test_winograd_filter_blocks_share_threads():
    """Blocks of filters as a multiple of the threads, all the groups' together: 512 x 512
    channels float32 need 9 blocks of 4 MB (two threads: 10), 512 x 520 10; one group of
    one block gives two threads one each, two groups one each, three groups two; never more
    blocks than filters."""
    blocks = _numba_winograd.filter_blocks
    assert blocks(1, 512, 512, 4, 2) == 10
    assert blocks(1, 512, 512, 4, 3) == 9
    assert blocks(1, 512, 520, 4, 2) == 10
    assert blocks(1, 32, 32, 4, 2) == 2
    assert blocks(2, 32, 32, 4, 2) == 1
    assert blocks(3, 32, 32, 4, 2) == 2
    assert blocks(1, 32, 1, 4, 2) == 1


@pytest.mark.parametrize("budget_slices, most, expected", [(2, 8, 2), (9, 3, 3), (1, 8, 1)])
def test_winograd_depth_blocks(budget_slices, most, expected, dtype, rng, monkeypatch):
    """A 3-D Winograd convolution takes output depth slices in blocks of at most
    WINOGRAD_DEPTH_BLOCK, as many as keep their input slices within WINOGRAD_DEPTH_BYTES per
    tile point (here room for ``budget_slices`` output slices): the same numbers as the
    reference over blocks and a short last one (7 slices), bias and depth padding included."""
    force_numba_way("winograd", monkeypatch)
    x = randn(rng, (2, 4, 7, 6, 9), dtype)
    w = randn(rng, (5, 4, 3, 3, 3), dtype)
    b = randn(rng, (5,), dtype)
    monkeypatch.setattr(_numba_winograd, "WINOGRAD_DEPTH_BLOCK", most)
    monkeypatch.setattr(_numba_winograd, "WINOGRAD_DEPTH_BYTES",
                        (budget_slices + 2) * 4 * x.itemsize)
    blocks = set()
    task_array = _numba_tasks.task_array
    monkeypatch.setattr(_numba_tasks, "task_array",
                        lambda t: blocks.update((r[1], r[2]) for r in t) or task_array(t))
    with fc.use_backend("numba"), numba_cpu.trace_ways() as ways:
        got = fc.conv3d(x, w, b, padding=1)
    assert ways == ["winograd"]
    assert blocks == {(d, min(d + expected, 7)) for d in range(0, 7, expected)}
    with fc.use_backend("numpy"):
        assert_close(got, fc.conv3d(x, w, b, padding=1), dtype, "forward")


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("size", [(5, 7), (30, 31)])  # channel ranges; position ranges
@pytest.mark.parametrize("step", [None, 16])  # the rule's products; products of 16 positions
def test_pointwise_one_image_in_tasks(size, groups, step, dtype, rng, monkeypatch):
    """A 1x1 convolution of one image (packing + BLAS) split over the threads, by output
    channels where its positions are few, else by positions, each task in products of
    ``step`` positions (the last one short): forward with bias, weight gradient,
    transposed."""
    force_numba_way("gemm", monkeypatch)
    if step:
        monkeypatch.setattr(_numba_gemm, "POINTWISE_MIN_STEP", step)
        monkeypatch.setattr(_numba_gemm, "POINTWISE_STEP_BYTES", 1)
    x = randn(rng, (1, 8, *size), dtype)
    w, b = randn(rng, (12, 8 // groups, 1, 1), dtype), randn(rng, (12,), dtype)
    gy = randn(rng, (1, 12, *size), dtype)
    wt, bt = randn(rng, (8, 6 // groups, 1, 1), dtype), randn(rng, (6,), dtype)

    def run():
        return [fc.conv2d(x, w, b, groups=groups),
                fc.conv2d_backward(gy, x, w, groups=groups)[1],
                fc.conv_transpose2d(x, wt, bt, groups=groups)]

    with fc.use_backend("numpy"):
        expected = run()
    with fc.use_backend("numba"):
        for got, e, what in zip(run(), expected, ["y", "gw", "yt"]):
            assert_close(got, e, dtype, what)


@pytest.mark.parametrize("pack", [False, True])
def test_pointwise_weight_grad_packing_images(pack, dtype, rng, monkeypatch):
    """A pointwise weight gradient of a batch, a product per image or several images packed
    into one (few positions per image): the reference's numbers either way."""
    force_numba_way("gemm", monkeypatch)
    monkeypatch.setattr(_numba_gemm, "POINTWISE_GRAD_MIN_POSITIONS", 10**9 if pack else 0)
    x = randn(rng, (5, 8, 3, 4), dtype)
    w = randn(rng, (12, 4, 1, 1), dtype)
    gy = randn(rng, (5, 12, 3, 4), dtype)
    assert _numba_gemm._packs_images(5, 12, 2) == pack
    with fc.use_backend("numpy"):
        expected = fc.conv2d_backward(gy, x, w, groups=2)[1]
    with fc.use_backend("numba"):
        assert_close(fc.conv2d_backward(gy, x, w, groups=2)[1], expected, dtype, "gw")


@pytest.mark.parametrize("n_b, size", [(1, (7, 7)), (2, (5, 9)), (40, (7, 7))])
def test_packed_weight_grad_few_positions(n_b, size, dtype, rng, monkeypatch):
    """A weight gradient by packing + BLAS over few positions (at stride 2, 16 or 10 of them
    an image; 40 images: many) splits the filters between the threads into one sum, the
    same numbers as the reference either way, groups of an odd number of filters too."""
    force_numba_way("gemm", monkeypatch)
    x = randn(rng, (n_b, 8, *size), dtype)
    w = randn(rng, (14, 4, 3, 3), dtype)
    gy = randn(rng, fc.conv_output_shape(x.shape, w.shape, stride=2, padding=1, groups=2),
               dtype)
    with fc.use_backend("numpy"):
        expected = fc.conv2d_backward(gy, x, w, stride=2, padding=1, groups=2)[1]
    with fc.use_backend("numba"), numba_cpu.trace_ways() as ways:
        got = fc.conv2d_backward(gy, x, w, stride=2, padding=1, groups=2)[1]
    assert ways[-1] == "gemm"
    assert_close(got, expected, dtype, "gw")


@pytest.mark.parametrize("way", numba_cpu.WAYS)
@pytest.mark.parametrize("nd, kw", CASES)
def test_preferred_way_agrees_with_reference(way, nd, kw, dtype, rng):
    """``prefer_way`` (what ``fastconv bench --ways`` measures with): each way taken wherever
    it can compute the call, rules or not, and the same numbers as the reference."""
    k, args = case_arrays(nd, kw, dtype, rng)
    with fc.use_backend("numpy"):
        expected = run_all(*args)
    with fc.use_backend("numba"), numba_cpu.prefer_way(way), numba_cpu.trace_ways() as ways:
        got = run_all(*args)
    for a, e, what in zip(got, expected, ["y", "gx", "gw", "gb", "yt", "gxt", "gwt", "gbt"]):
        assert_close(a, e, dtype, what)
    stride_one = all(s == 1 for s in np.atleast_1d(args[1].get("stride", 1)))
    if (way in ("blocked", "direct") or (way == "winograd" and k == 3 and stride_one)
            or (way == "kvector" and _numba_lanes.WIDE_VECTORS)):
        assert way in ways  # the forward at least
    if way == "phases" and not stride_one:
        assert way in ways  # the input gradient and the transposed forward


def test_rule_ways_are_kept_per_shape_and_follow_the_knobs(rng, monkeypatch):
    """The rules run once per call shape (their ways kept); a knob a test changes rules the
    next call (conftest's monkeypatch drops the kept ways)."""
    x = randn(rng, (2, 16, 12, 12), np.float32)
    w = randn(rng, (32, 16, 3, 3), np.float32)
    evaluated = []

    def counted(*args):
        evaluated.append(args)
        return rules(*args)

    rules = numba_cpu.conv_forward_ways
    monkeypatch.setattr(numba_cpu, "conv_forward_ways", counted)
    with numba_cpu.trace_ways() as taken:
        first = fc.conv2d(x, w, padding=1)
        assert_close(fc.conv2d(x, w, padding=1), first, np.dtype(np.float32), "kept")
        fc.conv2d(x[:1], w, padding=1)
    assert len(evaluated) == 2 and taken[0] == taken[1] != "direct"
    force_numba_way("direct", monkeypatch)
    with numba_cpu.trace_ways() as taken:
        fc.conv2d(x, w, padding=1)
    assert taken == ["direct"]


def test_one_blas_thread_sets_and_restores_the_blas_thread_count():
    """BLAS runs one thread inside the context and its own count again after it, an error
    inside included (the kernels call BLAS from Numba's threads)."""
    from threadpoolctl import ThreadpoolController

    blas = ThreadpoolController().select(user_api="blas")
    with blas.limit(limits=2):
        counts = [info["num_threads"] for info in blas.info()]
        with _numba_tasks.one_blas_thread():
            assert [info["num_threads"] for info in blas.info()] == [1] * len(counts)
        assert [info["num_threads"] for info in blas.info()] == counts
        with pytest.raises(RuntimeError), _numba_tasks.one_blas_thread():
            raise RuntimeError("inside")
        assert [info["num_threads"] for info in blas.info()] == counts
