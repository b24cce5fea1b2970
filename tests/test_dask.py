"""Dask arrays through the public ops: every op and gradient, on irregular chunkings drawn by
hypothesis, against the same call on the in-memory arrays (itself checked against PyTorch by
the other tests); and on a real ``dask.distributed`` cluster of worker processes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from helpers import assert_close
from hypothesis import given
from hypothesis import strategies as st

import fastconv as fc
from fastconv import _blocks
from fastconv._params import pool_output_size

da = pytest.importorskip("dask.array", reason="needs the dask extra: pip install fastconv[dask]")
import dask  # noqa: E402  (after the skip)

SYNC = {"scheduler": "synchronous"}


def computed(a):
    return a.compute(**SYNC) if hasattr(a, "compute") else a


def assert_same(actual, expected, dtype, what):
    """The in-memory call's NaN, +inf and -inf exactly where it has them, the rest within the
    dtype's budget."""
    actual = computed(actual)
    assert isinstance(actual, np.ndarray), f"{what}: got {type(actual).__name__}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(np.isfinite(actual), finite, err_msg=what)
    np.testing.assert_array_equal(actual[~finite], expected[~finite], err_msg=what)
    assert_close(actual[finite], expected[finite], dtype, what)


# --------------------------------------------------------------------------- drawn cases


@st.composite
def chunking(draw, size):
    """Irregular chunk sizes along an axis of ``size`` elements."""
    cuts = sorted(draw(st.sets(st.integers(1, size - 1), max_size=4))) if size > 1 else []
    bounds = [0, *cuts, size]
    return tuple(b - a for a, b in zip(bounds[:-1], bounds[1:]))


def _axes(draw, nd, lo, hi):
    return tuple(draw(st.integers(lo, hi)) for _ in range(nd))


@st.composite
def lazy_cases(draw):
    op = draw(st.sampled_from(["conv", "conv_transpose", "max_pool", "avg_pool"]))
    nd = draw(st.integers(1, 3))
    size = _axes(draw, nd, 3, 12 if nd < 3 else 7)
    kernel = _axes(draw, nd, 1, 3)
    stride = _axes(draw, nd, 1, 3)
    dilation = _axes(draw, nd, 1, 2)
    case = {"op": op, "nd": nd, "batched": draw(st.booleans()),
            "dtype": np.dtype(draw(st.sampled_from([np.float64, np.float32]))),
            "seed": draw(st.integers(0, 2**32 - 1)), "n": draw(st.integers(1, 3)),
            "nonfinite": draw(st.booleans())}
    if op in ("conv", "conv_transpose"):
        groups = draw(st.integers(1, 2))
        case.update(c=groups * draw(st.integers(1, 2)), k=groups * draw(st.integers(1, 2)),
                    kernel=kernel, bias=draw(st.booleans()))
        kw = {"stride": stride, "dilation": dilation, "groups": groups}
        if op == "conv":
            mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate",
                                         "circular"]))
            if draw(st.booleans()) and mode == "zeros":
                kw["padding"] = tuple(tuple(_axes(draw, 2, 0, 3)) for _ in range(nd))
            else:  # reflect and circular need padding below the size
                kw["padding"] = _axes(draw, nd, 0, 2)
            kw["padding_mode"] = mode
            pads = [p if isinstance(p, tuple) else (p, p) for p in kw["padding"]]
            out = [(s + lo + hi - d * (k - 1) - 1) // t + 1
                   for s, (lo, hi), d, k, t in zip(size, pads, dilation, kernel, stride)]
        else:
            kw["padding"] = _axes(draw, nd, 0, 3)
            kw["output_padding"] = tuple(draw(st.integers(0, max(s, d) - 1))
                                         for s, d in zip(stride, dilation))
            out = [(s - 1) * t - 2 * p + d * (k - 1) + op_ + 1 for s, t, p, d, k, op_ in
                   zip(size, stride, kw["padding"], dilation, kernel, kw["output_padding"])]
    else:
        case.update(c=draw(st.integers(1, 3)))
        kw = {"kernel_size": kernel, "stride": stride,
              "padding": tuple(draw(st.integers(0, k // 2)) for k in kernel),
              "ceil_mode": draw(st.booleans())}
        if op == "max_pool":
            kw["dilation"] = dilation
        else:
            kw["count_include_pad"] = draw(st.booleans())
            kw["divisor_override"] = draw(st.sampled_from([None, 3]))
            dilation = (1,) * nd
        out = [pool_output_size(s, k, t, p, d, kw["ceil_mode"])
               for s, k, t, p, d in zip(size, kernel, stride, kw["padding"], dilation)]
    if any(o <= 0 for o in out) or (op == "avg_pool" and nd == 3
                                    and any(s < k for s, k in zip(size, kernel))):
        kw = None  # an invalid call: drawn again below
    case.update(size=size, kwargs=kw, out=tuple(out))
    case["x_chunks"] = tuple(draw(chunking(s)) for s in (case["n"], case["c"], *size))
    case["gy_chunks"] = tuple(draw(chunking(s)) for s in out)
    return case


def _sprinkle(rng, a):
    """NaN, +inf and -inf at a few random places."""
    flat = a.reshape(-1)
    for value in (np.nan, np.inf, -np.inf):
        flat[rng.integers(0, flat.size, size=1)] = value
    return a


def _lazy(a, chunks, batched):
    return da.from_array(a, chunks=chunks if batched else chunks[1:])


@given(case=lazy_cases().filter(lambda case: case["kwargs"] is not None))
def test_every_op_and_gradient_matches_in_memory(case):
    rng = np.random.default_rng(case["seed"])
    nd, dtype, kw, batched = case["nd"], case["dtype"], case["kwargs"], case["batched"]
    lead = (case["n"],) if batched else ()
    x = rng.standard_normal(lead + (case["c"], *case["size"])).astype(dtype)
    if case["nonfinite"]:
        _sprinkle(rng, x)
    xd = _lazy(x, case["x_chunks"], batched)
    op, name = case["op"], f"{case['op']}{nd}d"
    forward, backward = getattr(fc, name), getattr(fc, f"{name}_backward")
    if op in ("conv", "conv_transpose"):
        g = kw["groups"]
        w_shape = ((case["k"], case["c"] // g) if op == "conv" else (case["c"], case["k"] // g))
        w = rng.standard_normal(w_shape + case["kernel"]).astype(dtype)
        b = rng.standard_normal(case["k"]).astype(dtype) if case["bias"] else None
        y = forward(x, w, b, **kw)
        assert_same(forward(xd, w, b, **kw), y, dtype, "forward")
        gy = rng.standard_normal(y.shape).astype(dtype)
        if case["nonfinite"]:
            _sprinkle(rng, gy)
        gyd = _lazy(gy, (case["x_chunks"][0], (y.shape[-nd - 1],)) + case["gy_chunks"],
                    batched)
        lazy = backward(gyd, xd, w, **kw)
        for got, want, what in zip(lazy, backward(gy, x, w, **kw), ("grad_x", "grad_w", "grad_b")):
            assert_same(got, want, dtype, what)
        assert lazy[0].chunks == xd.chunks[:-nd - 1] + ((x.shape[-nd - 1],),) + xd.chunks[-nd:]
        return
    if op == "max_pool":
        y, idx = forward(x, return_indices=True, **kw)
        yd, idxd = forward(xd, return_indices=True, **kw)
        assert_same(yd, y, dtype, "forward")
        np.testing.assert_array_equal(computed(idxd), idx)
    else:
        y = forward(x, **kw)
        assert_same(forward(xd, **kw), y, dtype, "forward")
    gy = rng.standard_normal(y.shape).astype(dtype)
    if case["nonfinite"]:
        _sprinkle(rng, gy)
    gyd = _lazy(gy, case["x_chunks"][:2] + case["gy_chunks"], batched)
    if op == "max_pool":
        gx = backward(gy, x, indices=idx, **kw)
        assert_same(backward(gyd, xd, indices=idxd, **kw), gx, dtype, "grad_x (indices)")
        gxd = backward(gyd, xd, **kw)  # indices recomputed from the input
    else:
        gx = backward(gy, x, **kw)
        gxd = backward(gyd, xd, **kw)
    assert_same(gxd, gx, dtype, "grad_x")
    assert gxd.chunks == xd.chunks


# --------------------------------------------------------------------------- chunks and graph


def test_result_chunks_follow_the_input():
    x = da.from_array(np.random.default_rng(0).standard_normal((4, 3, 40, 30)),
                      chunks=(2, 3, (10, 20, 10), 15))
    w = np.random.default_rng(1).standard_normal((5, 3, 3, 3))
    # a 'same' convolution keeps the input's chunks, a stride-2 pooling halves them
    assert fc.conv2d(x, w, padding=1).chunks == ((2, 2), (5,), (10, 20, 10), (15, 15))
    assert fc.max_pool2d(x, 2).chunks == ((2, 2), (3,), (5, 10, 5), (8, 7))
    # a transposed convolution of stride 2 doubles them
    wt = np.random.default_rng(2).standard_normal((3, 4, 2, 2))
    assert fc.conv_transpose2d(x, wt, stride=2).chunks == ((2, 2), (4,), (20, 40, 20), (30, 30))


def test_chunked_channels_are_merged_for_convolutions_and_kept_for_pooling():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 9, 9))
    w = rng.standard_normal((4, 3, 3, 3))
    xd = da.from_array(x, chunks=(1, 2, 5, 5))
    y = fc.conv2d(xd, w, groups=2)
    assert y.chunks[1] == (4,)
    assert_same(y, fc.conv2d(x, w, groups=2), x.dtype, "conv over chunked channels")
    assert fc.avg_pool2d(xd, 3).chunks[1] == (2, 2, 2)


def test_weights_go_in_the_graph_once():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64, 3, 3))  # 295 kB: below Dask's own threshold for that
    x = da.random.default_rng(0).standard_normal((4, 64, 64, 64), chunks=(1, 64, 16, 16))
    y = fc.conv2d(x, w, padding=1)
    assert y.npartitions == 64
    graph = pickle.dumps(dict(y.__dask_graph__()))
    assert len(graph) < 2 * w.nbytes, f"graph of {len(graph)} bytes for a {w.nbytes}-byte weight"


def test_backend_setting_of_the_call_runs_the_blocks():
    from fastconv.backends import numba_cpu

    rng = np.random.default_rng(0)
    x = da.from_array(rng.standard_normal((2, 3, 12, 12)), chunks=(1, 3, 6, 6))
    w = rng.standard_normal((4, 3, 3, 3))
    with fc.use_backend("numpy"):
        on_numpy = fc.conv2d(x, w)
    on_numba = fc.conv2d(x, w)
    with numba_cpu.trace_ways() as ways:
        computed(on_numpy)
    assert ways == []
    with numba_cpu.trace_ways() as ways:
        computed(on_numba)
    assert ways


def test_gather_regions_hold_every_read_and_no_more_than_the_halo():
    # every window of a block reads inside its region (or the padding), and a region is its
    # source chunk plus at most dilation * (kernel - 1) + stride - 1 elements
    for n, k, s, p, d in [(17, 3, 1, 1, 1), (40, 5, 2, 2, 3), (9, 2, 3, 0, 1), (30, 3, 2, 7, 1)]:
        source = [0, 4, 11, 12, n]
        out = (n + 2 * p - d * (k - 1) - 1) // s + 1
        bounds = _blocks.gather_bounds(source, k, s, p, d, out)
        assert bounds[0] == 0 and bounds[-1] == out
        for block in _blocks.gather_plan(bounds, k, s, p, d, n):
            for o in range(block.origin, block.origin + block.size):
                reads = [o * s - p + r * d for r in range(k)]
                inside = [i for i in reads if 0 <= i < n]
                assert block.empty or all(block.start <= i < block.stop for i in inside)
                assert not block.empty or not inside
            chunk = max(b - a for a, b in zip(source[:-1], source[1:]))
            assert block.stop - block.start <= chunk + d * (k - 1) + s - 1 + 2 * p


def test_a_region_waits_on_its_own_chunk_and_copies_of_its_neighbours_halos():
    # memory: a block that needed its neighbours' whole chunks would keep them all in memory
    # (27 chunks for a 3-D block) and send them whole between workers
    x = da.random.default_rng(0).standard_normal((1, 1, 24, 24, 24), chunks=(1, 1, 8, 8, 8))
    y = fc.conv3d(x, np.ones((1, 1, 3, 3, 3)), padding=1)
    graph = y.__dask_graph__()
    dependencies = graph.get_all_dependencies()
    chunks = set(dask.core.flatten(x.__dask_keys__()))
    regions = [key for key in graph if key[0].startswith("fastconv-regions")]
    assert len(regions) == 27
    for key in regions:
        whole = dependencies[key] & chunks
        assert whole == {(x.name,) + key[1:]}, key
        assert all(dep[0].startswith("fastconv-halo") for dep in dependencies[key] - whole)
    assert len(dependencies[regions[0][:2] + (0, 1, 1, 1)]) == 27  # the centre: 26 halos


def test_empty_chunks_are_blocks_like_any_other():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 12, 9))
    w = rng.standard_normal((4, 3, 3, 2))
    xd = da.from_array(x, chunks=((1, 1), (3,), (0, 5, 0, 7), (4, 0, 5)))
    for op, args in [(fc.conv2d, (w,)), (fc.max_pool2d, (2,)), (fc.avg_pool2d, (3, 2, 1))]:
        kw = {"padding": 1} if op is fc.conv2d else {}
        assert_same(op(xd, *args, **kw), op(x, *args, **kw), x.dtype, op.__name__)
    gy = rng.standard_normal(fc.conv2d(x, w, padding=1).shape)
    gyd = da.from_array(gy, chunks=((1, 1), (4,), (0, 5, 0, 7), (5, 0, 5)))
    for lazy, eager in zip(fc.conv2d_backward(gyd, xd, w, padding=1),
                           fc.conv2d_backward(gy, x, w, padding=1)):
        assert_same(lazy, eager, x.dtype, "conv2d_backward")


# --------------------------------------------------------------------------- errors


def test_mixed_and_unsupported_arguments_get_clear_errors():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8))
    w = rng.standard_normal((4, 3, 3, 3))
    xd = da.from_array(x, chunks=(1, 3, 4, 4))
    with pytest.raises(TypeError, match="conv2d: weight must be a NumPy or CuPy array"):
        fc.conv2d(xd, da.from_array(w))
    with pytest.raises(TypeError, match="conv2d_backward: input must be a Dask array"):
        fc.conv2d_backward(da.from_array(rng.standard_normal((2, 4, 6, 6))), x, w)
    with pytest.raises(TypeError, match="max_pool2d_backward: grad_output must be a Dask"):
        fc.max_pool2d_backward(rng.standard_normal((2, 3, 4, 4)), xd, 2)
    with pytest.raises(TypeError, match="conv2d: weight has dtype float32"):
        fc.conv2d(xd, w.astype(np.float32))
    with pytest.raises(ValueError, match="conv2d: input has 3 channels but weight expects 5"):
        fc.conv2d(xd, rng.standard_normal((4, 5, 3, 3)))
    unknown = xd[xd[:, 0, 0, 0] > 0]  # a boolean mask: chunk sizes unknown until computed
    with pytest.raises(ValueError, match="avg_pool2d: input has unknown chunk sizes"):
        fc.avg_pool2d(unknown, 2)


# --------------------------------------------------------------------------- a real cluster


@pytest.fixture(scope="module")
def cluster_client():
    distributed = pytest.importorskip("distributed",
                                      reason="needs the dask extra: pip install fastconv[dask]")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            yield client


def test_ops_and_gradients_on_a_cluster_of_worker_processes(cluster_client):
    assert len(cluster_client.scheduler_info()["workers"]) == 2
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 10, 12, 12)).astype(np.float32)
    w = rng.standard_normal((6, 3, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    xd = da.from_array(x, chunks=(2, 3, 5, 6, 6))
    kw = {"stride": (1, 2, 2), "padding": 1}
    y = fc.conv3d(x, w, b, **kw)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    lazy = [fc.conv3d(xd, w, b, **kw),
            *fc.conv3d_backward(da.from_array(gy, chunks=(2, 6, 4, 3, 3)), xd, w, **kw)]
    pooled, idx = fc.max_pool3d(xd, 2, return_indices=True)
    results = dask.compute(*lazy, pooled, idx, scheduler=cluster_client.get)
    for got, want, what in zip(results, [y, *fc.conv3d_backward(gy, x, w, **kw)],
                               ("forward", "grad_x", "grad_w", "grad_b")):
        assert_same(got, want, np.float32, what)
    want_y, want_idx = fc.max_pool3d(x, 2, return_indices=True)
    np.testing.assert_array_equal(results[-2], want_y)
    np.testing.assert_array_equal(results[-1], want_idx)


def test_corr2d_of_a_chunked_image():
    rng = np.random.default_rng(0)
    image = rng.standard_normal((50, 37))
    kernel = rng.standard_normal((4, 3))
    lazy = fc.corr2d(da.from_array(image, chunks=(13, (10, 20, 7))), kernel)
    assert_same(lazy, fc.corr2d(image, kernel), image.dtype, "corr2d")


def test_windows_past_a_blocks_end():
    # a block whose windows run past its region's end, where a window as wide as the region
    # had been taken for the one window of a row (the kernels' global-pooling path)
    x = np.arange(15.0).reshape(1, 3, 5)
    lazy = da.from_array(x, chunks=((1,), (3,), (1, 1, 1, 2)))
    kw = {"kernel_size": (1, 2), "stride": 1, "padding": (0, 1), "count_include_pad": False}
    assert_same(fc.avg_pool2d(lazy, **kw), fc.avg_pool2d(x, **kw), x.dtype, "avg_pool2d")


def test_a_model_in_evaluation_mode_runs_per_batch_block():
    from fastconv.models import lenet

    rng = np.random.default_rng(0)
    model = lenet("modern", rng=rng).eval()
    x = rng.random((250, 1, 28, 28), dtype=np.float32)
    lazy = model.forward(da.from_array(x, chunks=(100, 1, 14, 28)))  # spatial chunks merged
    assert lazy.shape == (250, 10) and lazy.chunks == ((100, 100, 50), (10,))
    assert_same(lazy, model.forward(x), np.float32, "logits")
    model.train()
    with pytest.raises(ValueError, match="Sequential.forward: a Dask array needs evaluation"):
        model.forward(da.from_array(x, chunks=100))
