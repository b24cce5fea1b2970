"""Test helpers: the PyTorch oracle and the closeness rule."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# The Numba backend's ways to compute, each forced by setting the knobs that choose a path
# (module attribute -> value); "winograd" and "lanes" take the cases that fit them.
_NO_WINOGRAD = {"_numba_winograd.WINOGRAD_MIN_CHANNELS": 10**9}
_NO_BLOCKED = {"numba_cpu.BLOCKED": False}
# the direct kernels vectorised over output channels wherever they can compute
_ANY_KVECTOR = {"numba_cpu.KVECTOR_MIN_BLOCKS": 0, "numba_cpu.KVECTOR_MIN_DEPTH": 1,
                "numba_cpu.KVECTOR_MIN_CHANNELS": 1, "numba_cpu.KVECTOR_MIN_POSITIONS": 1,
                "numba_cpu.KVECTOR_MAX_MACS": 10**18,
                "numba_cpu.KVECTOR_THIN_IMAGE": 10**18, **_NO_WINOGRAD}
NUMBA_WAYS = {
    "direct": {"_numba_gemm.GEMM_MIN_WORK": 10**9, **_NO_WINOGRAD, **_NO_BLOCKED},
    "gemm": {"_numba_gemm.GEMM_MIN_WORK": 0, "_numba_gemm.GEMM_MIN_CHANNELS": 0,
             **_NO_WINOGRAD, **_NO_BLOCKED},
    "gemm_row_tasks": {"_numba_gemm.GEMM_MIN_WORK": 0, "_numba_gemm.GEMM_MIN_CHANNELS": 0,
                       "_numba_tasks.TASK_BYTES": 1, **_NO_WINOGRAD,
                       **_NO_BLOCKED},  # a row per task
    # 3x3 kernels at stride 1, by tasks of tiles
    "winograd": {"_numba_winograd.WINOGRAD_MIN_CHANNELS": 1,
                 "_numba_winograd.WINOGRAD_TILES_PER_CHANNEL": 0,
                 "_numba_winograd.WINOGRAD_BLOCKS_FILTERS_PER_TILE": 10**9,
                 "numba_cpu.WINOGRAD_AHEAD_MIN_MACS": 0, **_NO_BLOCKED},
    "winograd_row_tasks": {"_numba_winograd.WINOGRAD_MIN_CHANNELS": 1,
                           "_numba_winograd.WINOGRAD_TILES_PER_CHANNEL": 0,
                           "_numba_winograd.WINOGRAD_BLOCKS_FILTERS_PER_TILE": 10**9,
                           "numba_cpu.WINOGRAD_AHEAD_MIN_MACS": 0,
                           "_numba_tasks.TASK_BYTES": 1, **_NO_BLOCKED},
    # the same, 2-D and undilated, by blocks of filters (a filter a block)
    "winograd_filter_blocks": {"_numba_winograd.WINOGRAD_MIN_CHANNELS": 1,
                               "_numba_winograd.WINOGRAD_MIN_POSITIONS": 0,
                               "_numba_winograd.WINOGRAD_BLOCKS_FILTERS_PER_TILE": 0,
                               "_numba_winograd.WINOGRAD_BLOCK_BYTES": 1,
                               "numba_cpu.WINOGRAD_AHEAD_MIN_MACS": 0, **_NO_BLOCKED},
    # register-blocked direct kernel: every kernel but 1x1 with at least four filters per group
    "blocked": {"numba_cpu.BLOCKED_MAX_MACS": 10**18, **_NO_WINOGRAD},
    # the same with bands of one row and, where those are too few tasks, output channels in
    # chunks (the rule for many weights, not the split for few: _blocked_split)
    "blocked_small_tasks": {"numba_cpu.BLOCKED_MAX_MACS": 10**18,
                            "numba_cpu.BLOCKED_BAND_ELEMS": 1,
                            "numba_cpu.BLOCKED_FEW_WEIGHTS": 0, **_NO_WINOGRAD},
    # vectors of output channels (CPUs with AVX-512): the forward and stride-1 transposed
    "kvector": _ANY_KVECTOR,
    # the same in chunks of one register block of positions, one input channel per block,
    # each block skipping the taps that read only padding
    "kvector_small_tasks": {**_ANY_KVECTOR, "numba_cpu.KVECTOR_CHUNK": 1,
                            "numba_cpu.KVECTOR_WEIGHT_ELEMS": 1,
                            "numba_cpu.KVECTOR_GRAD_SUMS_BYTES": 1,
                            "numba_cpu.KVECTOR_SKIP_MIN_STEPS": 0},
    # depthwise convolutions vectorised over channels, whatever their size and channel count
    "depthwise": {"numba_cpu.DEPTHWISE_MAX_POSITIONS": 10**9,
                  "numba_cpu.DEPTHWISE_MIN_CHANNELS": 1},
    # grouped convolutions vectorised over groups, whatever their group and channel counts
    "grouped": {"numba_cpu.GROUPED_MIN_FILL": 0, "numba_cpu.GROUPED_MIN_FILTERS": 1,
                "numba_cpu.GROUPED_MIN_DEPTH": 0, "numba_cpu.GROUPED_WHOLE_VECTORS": False},
    # strided transposed convolutions (strided input gradients) by output phases, each phase
    # by the way the rules choose for the largest
    "phases": {"numba_cpu.PHASES_WAYS": ("lanes", "blocked", "kvector", "depthwise", "grouped",
                                         "winograd", "gemm", "direct"),
               "numba_cpu.PHASES_MIN_MACS": 0},
    # 2-D and 1-D stride-1 cases on batch lanes (a batch of 3 in a group of 16 lanes)
    "lanes": {"_numba_lanes.LANE_MIN_BATCH": 1},
    # the same on the 256-bit loops that CPUs without AVX-512 take (this one may take either)
    "lanes_narrow": {"_numba_lanes.LANE_MIN_BATCH": 1, "_numba_lanes.WIDE_VECTORS": False},
}


def force_numba_way(way, monkeypatch):
    """Set the knobs of :data:`NUMBA_WAYS` ``way`` for the test."""
    import importlib

    for knob, value in NUMBA_WAYS[way].items():
        module, name = knob.split(".")
        monkeypatch.setattr(importlib.import_module(f"fastconv.backends.{module}"), name, value)


def gpu_missing():
    """Why the cupy backend cannot load here (no CuPy, no GPU), or ``None`` where it can."""
    try:
        import fastconv.backends.cupy_gpu  # noqa: F401
    except ImportError as exc:
        return f"no GPU backend here ({exc})"
    return None


TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}


def assert_close(actual, expected, dtype, what="", scale=None):
    """Relative error in the 2-norm, against the reference's norm (or ``scale``, for sums whose
    terms cancel), within the dtype's budget."""
    expected = np.asarray(expected)
    assert isinstance(actual, np.ndarray), f"{what}: got {type(actual).__name__}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype} != {dtype}"
    if expected.size == 0:
        return
    if scale is None:
        scale = np.linalg.norm(expected.astype(np.float64))
    err = np.linalg.norm(actual.astype(np.float64) - expected.astype(np.float64))
    assert err <= TOL[np.dtype(dtype)] * max(scale, 1e-30), (
        f"{what}: relative error {err / max(scale, 1e-30):.3g} (dtype {dtype})")


def randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def autograd(f, arrays, rng):
    """Run ``f`` on PyTorch copies of ``arrays`` and backpropagate a random ``grad_output``.

    Returns ``(y, extra, grad_output, grads)``: the output, a second output if ``f`` returns a
    pair (pooling indices), the upstream gradient drawn, and the gradient of each array.
    """
    tensors = [None if a is None else torch.from_numpy(np.array(a)).requires_grad_()
               for a in arrays]
    out = f(*tensors)
    y, extra = out if isinstance(out, tuple) else (out, None)
    gy = randn(rng, tuple(y.shape), arrays[0].dtype)
    y.backward(torch.from_numpy(gy))
    grads = [None if t is None else t.grad.numpy() for t in tensors]
    extra = None if extra is None else extra.numpy()
    return y.detach().numpy(), extra, gy, grads


def torch_pad(pairs):
    """Per-axis (lo, hi) pairs as F.pad's flat argument (last axis first)."""
    return tuple(v for lo, hi in reversed(pairs) for v in (lo, hi))


def pairs_of(padding, nd, kernel, dilation, in_size=None, stride=1):
    """Any fastconv conv padding as explicit (lo, hi) pairs. ``'same'`` is TensorFlow's rule
    (an output of ``ceil(in / stride)``, the smaller half of the padding first), which at
    stride 1 is PyTorch's."""
    if padding == "valid":
        return [(0, 0)] * nd
    if padding == "same":
        d = dilation if isinstance(dilation, tuple) else (dilation,) * nd
        s = stride if isinstance(stride, tuple) else (stride,) * nd
        size = in_size if in_size is not None else (1,) * nd
        totals = [max((-(-i // ss) - 1) * ss + dd * (k - 1) + 1 - i, 0)
                  for i, k, ss, dd in zip(size, kernel, s, d)]
        return [(t // 2, t - t // 2) for t in totals]
    if isinstance(padding, int):
        return [(padding, padding)] * nd
    if all(isinstance(p, int) for p in padding):
        return [(p, p) for p in padding]
    return [tuple(p) for p in padding]


TORCH_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate",
              "circular": "circular"}


def torch_conv(nd, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """A function of (x, w, b) computing fastconv's conv with PyTorch."""
    conv = getattr(F, f"conv{nd}d")

    def f(x, w, b):
        unit_stride = all(s == 1 for s in (stride if isinstance(stride, tuple) else (stride,)))
        simple = padding_mode == "zeros" and (
            isinstance(padding, int) or (isinstance(padding, str) and unit_stride)
            or (not isinstance(padding, str) and all(isinstance(p, int) for p in padding)))
        if simple:
            return conv(x, w, b, stride, padding, dilation, groups)
        pairs = pairs_of(padding, nd, w.shape[2:], dilation, x.shape[-nd:], stride)
        xp = F.pad(x, torch_pad(pairs), mode=TORCH_MODE[padding_mode])
        return conv(xp, w, b, stride, 0, dilation, groups)

    return f


def weight_grad_scale(op, x, w, grad_output):
    """The scale of a weight gradient's rounding error: the weight gradient of ``op(x, w)``
    (PyTorch, float64) from ``|x|`` and ``|grad_output|``, so each entry is the sum of its
    terms' magnitudes (as :func:`bias_grad_scale`: a few terms that cancel to a small sum
    are off by roundings of the terms; three terms near 1 summing to 0.0043 were 2.8e-5
    apart in float32, relative to the sum)."""
    x64 = torch.from_numpy(np.abs(np.asarray(x, dtype=np.float64)))
    w64 = torch.from_numpy(np.asarray(w, dtype=np.float64)).requires_grad_()
    op(x64, w64).backward(torch.from_numpy(np.abs(np.asarray(grad_output, dtype=np.float64))))
    return np.linalg.norm(w64.grad.numpy())


def bias_grad_scale(grad_output):
    """The scale of a bias gradient's rounding error: per channel the sum of ``|grad_output|``
    (a float32 sum of terms that cancel is off by a few roundings of the terms, not of the
    result: 48 terms near 1 summing to -0.021 were 3e-5 apart, relative to the result)."""
    g = np.abs(np.asarray(grad_output, dtype=np.float64))
    axes = tuple(i for i in range(g.ndim) if i != 1)
    return np.linalg.norm(g.sum(axis=axes))
