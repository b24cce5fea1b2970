"""Runs of layers handing each other lane arrays inside a Sequential (fastconv.nn.lanes): the
same numbers as the layers called one by one on arrays, and as PyTorch's autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_close, bias_grad_scale, randn

import fastconv
from fastconv import nn
from fastconv.models import lenet
from fastconv.nn.lanes import LaneArray


def mixed_run():
    """Padding and dilation inside the run, ReLU and Tanh, a padded ceil-mode pool that
    excludes padding, two convolutions back to back, every input gradient on lanes."""
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
        nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
        nn.Conv2d(8, 6, 3, padding=2, dilation=2, bias=False), nn.Tanh(), nn.Conv2d(6, 5, 3),
        nn.Sigmoid(),
        nn.Flatten(), nn.Linear(125, 3))


def cropped_run():
    """Padding wider than the kernel's reach: the input gradient crops the gradient."""
    return nn.Sequential(
        nn.Conv2d(4, 6, 3, padding=3), nn.Tanh(), nn.Conv2d(6, 4, 3, padding=2), nn.Sigmoid(),
        nn.Flatten(), nn.Linear(4 * 14 * 14, 3))


MODELS = {
    "lenet": (lambda: lenet("classic"), (1, 28, 28), 10),
    "lenet_modern": (lambda: lenet("modern"), (1, 28, 28), 10),  # max pooling ends the runs
    "mixed": (mixed_run, (4, 12, 12), 3),
    "cropped": (cropped_run, (4, 8, 8), 3),
}


def step(model, x, g, layer_by_layer):
    """Forward and backward through the Sequential, or through its layers one by one (each
    on arrays, as a caller outside a Sequential gets)."""
    model.zero_grad()
    if layer_by_layer:
        h = x
        for layer in model:
            h = layer.forward(h)
        y, gx = h, g
        for layer in reversed(list(model)):
            gx = layer.backward(gx)
        runs = 0
    else:
        y, gx = model.forward(x), model.backward(g)
        runs = sum(isinstance(c, LaneArray) or c == "lanes" for c in model._converted)
    return y, gx, [p.grad.copy() for p in model.parameters()], runs


# Max pooling routes each gradient to its window's maximum: in float32 the two ways' last-bit
# differences flip near-ties (gradients then differ by 1e-3), so lenet_modern runs in float64.
CASES = [(name, dtype) for name in MODELS for dtype in (np.float64, np.float32)
         if (name, dtype) != ("lenet_modern", np.float32)]


@pytest.mark.parametrize("batch", [20, 70, 256])  # 16, 32 and 64 lanes; last group part empty
@pytest.mark.parametrize("name, dtype", CASES, ids=lambda v: getattr(v, "__name__", v))
def test_lane_runs_match_layer_by_layer(name, batch, dtype, rng):
    make, in_shape, classes = MODELS[name]
    model = make()
    for p in model.parameters():
        p.data = (randn(rng, p.data.shape, dtype) * 0.3).astype(dtype)
    x = randn(rng, (batch, *in_shape), dtype)
    g = randn(rng, (batch, classes), dtype)
    with fastconv.use_backend("numba"):
        y, gx, grads, runs = step(model, x, g, layer_by_layer=False)
        y_ref, gx_ref, grads_ref, _ = step(model, x, g, layer_by_layer=True)
    assert runs >= 2, "no run of lane layers was formed"
    assert isinstance(y, np.ndarray)
    assert_close(y, y_ref, dtype, "forward")
    if gx_ref is None:
        assert gx is None
    else:
        assert_close(gx, gx_ref, dtype, "input gradient")
    for (p_name, _), a, b in zip(model.named_parameters(), grads, grads_ref):
        assert_close(a, b, dtype, p_name)


def torch_lenet(model, dtype):
    """PyTorch's classic LeNet in ``dtype``."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.Sigmoid(), torch.nn.AvgPool2d(2, 2),
        torch.nn.Conv2d(6, 16, 5), torch.nn.Sigmoid(), torch.nn.AvgPool2d(2, 2),
        torch.nn.Flatten(), torch.nn.Linear(400, 120), torch.nn.Sigmoid(),
        torch.nn.Linear(120, 84), torch.nn.Sigmoid(), torch.nn.Linear(84, 10),
    ).to(torch.float64 if dtype == np.float64 else torch.float32)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lenet_on_lanes_matches_torch(dtype, backend, rng):
    model = lenet("classic", dtype=dtype, rng=rng)
    x = randn(rng, (100, 1, 28, 28), dtype)
    g = randn(rng, (100, 10), dtype)
    y, _, grads, runs = step(model, x, g, layer_by_layer=False)
    assert runs == (2 if backend == "numba" else 0)
    t = torch_lenet(model, dtype)
    outputs = {}  # each layer's output, to scale the rounding error of its bias gradient

    def keep(layer, inputs, out):
        out.retain_grad()
        outputs[layer] = out

    for layer in t:
        if getattr(layer, "bias", None) is not None:
            layer.register_forward_hook(keep)
    tparams = list(t.parameters())
    with torch.no_grad():
        for p, tp in zip(model.parameters(), tparams):
            tp.copy_(torch.from_numpy(p.data))
    y_t = t(torch.from_numpy(x))
    y_t.backward(torch.from_numpy(g))
    assert_close(y, y_t.detach().numpy(), dtype, "forward")
    layer_of = {id(m.bias): m for m in outputs}
    for (p_name, _), a, tp in zip(model.named_parameters(), grads, tparams):
        scale = (bias_grad_scale(outputs[layer_of[id(tp)]].grad.numpy())
                 if id(tp) in layer_of else None)
        assert_close(a, tp.grad.numpy(), dtype, p_name, scale)


def test_lane_weight_grad_with_nonfinite_gradient(rng):
    """An infinite or NaN gradient next to the padding: the run's weight gradient leaves the
    padding out of its sums (``0 * inf``), as the layers called one by one (and PyTorch) do."""
    model = nn.Sequential(nn.Conv2d(4, 6, 3, padding=2), nn.Tanh())
    x = randn(rng, (20, 4, 8, 8), np.float32)
    g = randn(rng, (20, 6, 10, 10), np.float32)
    g[0, 0, 0, 0], g[3, 2, 9, 4], g[5, 1, 4, 4] = np.inf, -np.inf, np.nan
    with fastconv.use_backend("numba"):
        _, _, grads, runs = step(model, x, g, layer_by_layer=False)
        _, _, grads_ref, _ = step(model, x, g, layer_by_layer=True)
    assert runs >= 1, "no run of lane layers was formed"
    for a, b in zip(grads, grads_ref):
        np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        assert_close(np.where(np.isfinite(a), a, 0), np.where(np.isfinite(b), b, 0),
                     np.float32)
    assert not np.isfinite(grads[0]).all() and not np.isnan(grads[0]).all()
