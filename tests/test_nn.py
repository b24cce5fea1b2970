"""fastconv.nn: every layer's forward and hand-written backward against PyTorch's autograd
(float64 and float32, on every backend) and against finite differences (float64); the loss
against ``cross_entropy``; the optimisers against ``torch.optim``; state dictionaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_close, bias_grad_scale, randn

from fastconv import nn
from fastconv.models import lenet

# (fastconv layer factory, PyTorch module factory, input shape); parameters are copied across
LAYERS = {
    "conv": (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1),
             lambda: torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 9, 8)),
    "conv_grouped_reflect": (
        lambda: nn.Conv2d(4, 6, (3, 2), padding=(1, 2), groups=2, padding_mode="reflect"),
        lambda: torch.nn.Conv2d(4, 6, (3, 2), padding=(1, 2), groups=2,
                                padding_mode="reflect"), (2, 4, 7, 6)),
    "conv_no_bias": (lambda: nn.Conv2d(2, 3, 5, bias=False),
                     lambda: torch.nn.Conv2d(2, 3, 5, bias=False), (3, 2, 9, 10)),
    "conv_batch_lanes": (lambda: nn.Conv2d(6, 16, 5), lambda: torch.nn.Conv2d(6, 16, 5),
                         (20, 6, 14, 14)),  # a batch the Numba backend puts on lanes
    "conv_transpose": (lambda: nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1,
                                                  output_padding=1, groups=2),
                       lambda: torch.nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1,
                                                        output_padding=1, groups=2),
                       (2, 4, 5, 6)),
    "max_pool": (lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True),
                 lambda: torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True), (2, 3, 9, 8)),
    "avg_pool": (lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=False),
                 lambda: torch.nn.AvgPool2d(3, 2, 1, count_include_pad=False), (2, 3, 9, 8)),
    "conv1d": (lambda: nn.Conv1d(3, 4, 5, stride=2, padding=2, dilation=2),
               lambda: torch.nn.Conv1d(3, 4, 5, stride=2, padding=2, dilation=2), (2, 3, 17)),
    "conv1d_same_replicate": (
        lambda: nn.Conv1d(2, 4, 4, padding="same", groups=2, padding_mode="replicate"),
        lambda: torch.nn.Conv1d(2, 4, 4, padding="same", groups=2, padding_mode="replicate"),
        (3, 2, 9)),
    "conv3d": (lambda: nn.Conv3d(4, 6, (3, 2, 3), stride=(1, 2, 1), padding=1, groups=2,
                                 padding_mode="circular"),
               lambda: torch.nn.Conv3d(4, 6, (3, 2, 3), stride=(1, 2, 1), padding=1, groups=2,
                                       padding_mode="circular"), (2, 4, 5, 6, 7)),
    "conv_transpose1d": (lambda: nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1,
                                                    output_padding=1, groups=2),
                         lambda: torch.nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1,
                                                          output_padding=1, groups=2),
                         (2, 4, 7)),
    "conv_transpose3d": (lambda: nn.ConvTranspose3d(3, 2, (2, 3, 2), stride=(2, 1, 2),
                                                    padding=1, dilation=2, bias=False),
                         lambda: torch.nn.ConvTranspose3d(3, 2, (2, 3, 2), stride=(2, 1, 2),
                                                          padding=1, dilation=2, bias=False),
                         (2, 3, 3, 4, 3)),
    "max_pool1d": (lambda: nn.MaxPool1d(3, 2, 1, dilation=2, ceil_mode=True),
                   lambda: torch.nn.MaxPool1d(3, 2, 1, dilation=2, ceil_mode=True), (2, 3, 15)),
    "max_pool3d": (lambda: nn.MaxPool3d(2, ceil_mode=True),
                   lambda: torch.nn.MaxPool3d(2, ceil_mode=True), (2, 3, 5, 6, 7)),
    "avg_pool1d": (lambda: nn.AvgPool1d(3, 2, 1, ceil_mode=True, count_include_pad=False),
                   lambda: torch.nn.AvgPool1d(3, 2, 1, ceil_mode=True,
                                              count_include_pad=False), (2, 3, 11)),
    "avg_pool3d": (lambda: nn.AvgPool3d(3, 2, 1, divisor_override=5),
                   lambda: torch.nn.AvgPool3d(3, 2, 1, divisor_override=5), (2, 3, 5, 6, 7)),
    "global_avg_pool": (lambda: nn.AdaptiveAvgPool2d(1), lambda: torch.nn.AdaptiveAvgPool2d(1),
                        (2, 3, 7, 7)),
    "adaptive_avg_pool1d": (lambda: nn.AdaptiveAvgPool1d(4),
                            lambda: torch.nn.AdaptiveAvgPool1d(4), (2, 3, 10)),
    "adaptive_avg_pool2d": (lambda: nn.AdaptiveAvgPool2d((3, None)),
                            lambda: torch.nn.AdaptiveAvgPool2d((3, None)), (2, 3, 7, 5)),
    "adaptive_avg_pool3d": (lambda: nn.AdaptiveAvgPool3d((2, 3, 1)),
                            lambda: torch.nn.AdaptiveAvgPool3d((2, 3, 1)), (2, 3, 5, 7, 4)),
    "linear": (lambda: nn.Linear(7, 5), lambda: torch.nn.Linear(7, 5), (4, 7)),
    "flatten": (lambda: nn.Flatten(), lambda: torch.nn.Flatten(), (2, 3, 4, 5)),
    "sigmoid": (nn.Sigmoid, torch.nn.Sigmoid, (3, 4, 5, 6)),
    "relu": (nn.ReLU, torch.nn.ReLU, (3, 4, 5, 6)),
    "tanh": (nn.Tanh, torch.nn.Tanh, (3, 4, 5, 6)),
}


def make_pair(name, dtype, rng):
    """The fastconv layer (random parameters of ``dtype``) and PyTorch's with the same ones."""
    ours_f, theirs_f, shape = LAYERS[name]
    ours = ours_f()
    for p in ours.parameters():
        p.data = randn(rng, p.data.shape, dtype)
    theirs = theirs_f().to(torch.float64 if dtype == np.float64 else torch.float32)
    with torch.no_grad():
        for (n, p), (tn, tp) in zip(ours.named_parameters(), theirs.named_parameters()):
            assert n == tn, (n, tn)
            tp.copy_(torch.from_numpy(p.data))
    return ours, theirs, shape


@pytest.mark.parametrize("name", LAYERS)
def test_layer_against_torch(name, backend, dtype, rng):
    ours, theirs, shape = make_pair(name, dtype, rng)
    x = randn(rng, shape, dtype)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    yt = theirs(xt)
    gy = randn(rng, tuple(yt.shape), dtype)
    yt.backward(torch.from_numpy(gy))
    y = ours.forward(x)
    assert_close(y, yt.detach().numpy(), dtype, f"{name} forward")
    gx = ours.backward(gy)
    assert_close(gx, xt.grad.numpy(), dtype, f"{name} input gradient")
    for (n, p), (_, tp) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert_close(p.grad, tp.grad.numpy(), dtype, f"{name} {n} gradient")


@pytest.mark.parametrize("name", [n for n in LAYERS if n != "flatten"])
def test_layer_finite_differences(name, backend, rng):
    """``<dL/dz, v>`` against a central difference of ``L = sum(g * layer(x))``, for the input
    and every parameter ``z``."""
    ours, _, shape = make_pair(name, np.float64, rng)
    x = randn(rng, shape, np.float64)
    if name == "relu":  # keep clear of the kink at 0
        x += np.sign(x) * 0.1
    g = randn(rng, ours.forward(x).shape, np.float64)
    ours.forward(x)
    ours.zero_grad()
    gx = ours.backward(g)
    targets = [(x, gx)] + [(p.data, p.grad) for p in ours.parameters()]
    h = 1e-6
    for i, (z, grad) in enumerate(targets):
        v = randn(rng, z.shape, np.float64)
        z += h * v
        plus = (g * ours.forward(x)).sum()
        z -= 2 * h * v
        minus = (g * ours.forward(x)).sum()
        z += h * v
        numeric, exact = (plus - minus) / (2 * h), (grad * v).sum()
        assert abs(numeric - exact) <= 1e-6 * max(1.0, abs(exact)), (name, i, numeric, exact)


# every convolution layer's arguments, for the initialisation and state-dict checks
CONV_LAYERS = [
    ("Conv1d", (6, 8, 5), {"groups": 2}),
    ("Conv2d", (3, 4, (3, 5)), {"bias": True}),
    ("Conv3d", (2, 6, 3), {"bias": False}),
    ("ConvTranspose1d", (4, 6, 3), {"groups": 2}),
    ("ConvTranspose2d", (5, 3, (2, 4)), {}),
    ("ConvTranspose3d", (2, 4, 3), {}),
]


@pytest.mark.parametrize("name, args, kwargs", CONV_LAYERS)
def test_conv_layers_initialise_as_torch(name, args, kwargs):
    """State-dict names and shapes as ``torch.nn``'s; weights and biases uniform within the
    bound PyTorch computes for the layer (``1 / sqrt(fan_in)`` from its own fan-in)."""
    ours = getattr(nn, name)(*args, **kwargs, rng=np.random.default_rng(0))
    theirs = getattr(torch.nn, name)(*args, **kwargs)
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == [
        (k, tuple(v.shape)) for k, v in theirs.state_dict().items()]
    fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(theirs.weight)
    bound = 1 / np.sqrt(fan_in)
    for key, value in ours.state_dict().items():
        assert value.dtype == np.float32
        assert np.abs(value).max() <= bound, key
        assert np.abs(value).max() > 0.5 * bound, key  # drawn across the bound, not near 0


def test_new_layers_in_sequential_and_checkpoints(tmp_path, rng):
    """A 1-D and a 3-D network: the same outputs and gradients as the same ``torch.nn``
    Sequential, and their parameters through a checkpoint and back. A bias gradient sums
    terms that cancel: its budget scales with the terms (each layer's ``grad_output``, caught
    on the way back through PyTorch's), not its norm (one seed in twenty was past that)."""
    from fastconv import checkpoint

    for ours, theirs, shape in [
        (nn.Sequential(nn.Conv1d(2, 4, 5, stride=2), nn.ReLU(), nn.MaxPool1d(2),
                       nn.ConvTranspose1d(4, 3, 4, stride=2), nn.AvgPool1d(3),
                       nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(3, 2)),
         torch.nn.Sequential(torch.nn.Conv1d(2, 4, 5, stride=2), torch.nn.ReLU(),
                             torch.nn.MaxPool1d(2), torch.nn.ConvTranspose1d(4, 3, 4, stride=2),
                             torch.nn.AvgPool1d(3), torch.nn.AdaptiveAvgPool1d(1),
                             torch.nn.Flatten(), torch.nn.Linear(3, 2)), (3, 2, 40)),
        (nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.Tanh(), nn.MaxPool3d(2),
                       nn.ConvTranspose3d(4, 2, 2, stride=2), nn.AvgPool3d(2),
                       nn.AdaptiveAvgPool3d(1), nn.Flatten()),
         torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Tanh(),
                             torch.nn.MaxPool3d(2), torch.nn.ConvTranspose3d(4, 2, 2, stride=2),
                             torch.nn.AvgPool3d(2), torch.nn.AdaptiveAvgPool3d(1),
                             torch.nn.Flatten()), (2, 1, 6, 8, 4)),
    ]:
        ours.load_state_dict({k: v.numpy().copy() for k, v in theirs.state_dict().items()})
        x = randn(rng, shape, np.float32)
        xt = torch.from_numpy(x.copy()).requires_grad_()
        grad_outputs = {}
        for name, layer in theirs.named_children():
            layer.register_full_backward_hook(
                lambda _, __, g, name=name, store=grad_outputs: store.__setitem__(
                    name, g[0].numpy()))
        yt = theirs(xt)
        gy = randn(rng, tuple(yt.shape), np.float32)
        yt.backward(torch.from_numpy(gy))
        assert_close(ours.forward(x), yt.detach().numpy(), np.float32, "forward")
        assert_close(ours.backward(gy), xt.grad.numpy(), np.float32, "input gradient")
        for (n, p), (_, tp) in zip(ours.named_parameters(), theirs.named_parameters()):
            layer, kind = n.split(".")
            scale = bias_grad_scale(grad_outputs[layer]) if kind == "bias" else None
            assert_close(p.grad, tp.grad.numpy(), np.float32, n, scale)
        checkpoint.save(tmp_path / "c.npz", ours.state_dict(), {}, {"epoch": 1})
        state, _, _ = checkpoint.load(tmp_path / "c.npz")
        for (n, p), (m, q) in zip(ours.state_dict().items(), state.items()):
            assert n == m
            np.testing.assert_array_equal(p, q)


def test_adaptive_pool_rejects_bad_sizes():
    with pytest.raises(ValueError, match="AdaptiveAvgPool2d: output_size"):
        nn.AdaptiveAvgPool2d((2, 3, 4))
    with pytest.raises(ValueError, match="AdaptiveAvgPool1d: output_size"):
        nn.AdaptiveAvgPool1d(0)
    with pytest.raises(ValueError, match="Conv3d: expected a 5-D input"):
        nn.Conv3d(1, 1, 1).forward(np.zeros((1, 1, 4, 4), np.float32))


def test_gradients_accumulate_and_zero(rng):
    layer = nn.Linear(3, 2, dtype=np.float64, rng=rng)
    x, g = randn(rng, (4, 3), np.float64), randn(rng, (4, 2), np.float64)
    layer.forward(x)
    layer.backward(g)
    once = layer.weight.grad.copy()
    layer.backward(g)
    np.testing.assert_allclose(layer.weight.grad, 2 * once)
    layer.zero_grad()
    assert layer.weight.grad is None and layer.bias.grad is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_extremes(dtype, backend):
    x = np.array([-np.inf, -1000.0, -90.0, -20.0, 0.0, 20.0, 90.0, 1000.0, np.inf, np.nan],
                 dtype=dtype)
    layer = nn.Sigmoid()
    y = layer.forward(x)
    expected = torch.sigmoid(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y[:-1], expected[:-1], rtol=1e-6, atol=1e-37)
    assert y.dtype == dtype and np.isnan(y[-1])
    g = layer.backward(np.ones_like(x))
    assert np.isnan(g[-1]) and np.all(np.isfinite(g[:-1]))


def test_sigmoid_float32_accuracy(backend, rng):
    """The Numba kernel's own exp: within a few float32 roundings of the true sigmoid."""
    x = (rng.standard_normal(100_000) * 8).astype(np.float32)
    y = nn.Sigmoid().forward(x)
    exact = 1 / (1 + np.exp(-x.astype(np.float64)))
    assert np.max(np.abs(y - exact) / exact) < 5e-7


def test_first_layer_skips_input_gradient(rng):
    model = lenet(dtype=np.float64, rng=rng)
    x = randn(rng, (2, 1, 28, 28), np.float64)
    model.forward(x)
    assert model.backward(randn(rng, (2, 10), np.float64)) is None
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_loss_against_torch(dtype, rng):
    logits = randn(rng, (7, 10), dtype) * 30  # large logits: no overflow
    target = rng.integers(0, 10, 7)
    loss_fn = nn.SoftmaxCrossEntropy()
    lt = torch.from_numpy(logits.copy()).requires_grad_()
    ref = torch.nn.functional.cross_entropy(lt, torch.from_numpy(target))
    ref.backward()
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert abs(loss_fn(logits, target) - ref.item()) <= tol * max(1, abs(ref.item()))
    assert_close(loss_fn.backward(), lt.grad.numpy(), np.dtype(dtype), "loss gradient")


def test_loss_rejects_bad_targets(rng):
    loss_fn = nn.SoftmaxCrossEntropy()
    with pytest.raises(ValueError, match="target values"):
        loss_fn(randn(rng, (3, 4), np.float32), np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="integer class indices"):
        loss_fn(randn(rng, (3, 4), np.float32), np.zeros(3))


@pytest.mark.parametrize("kind, kwargs", [
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}),
    ("adam", {"lr": 0.01}),
    ("adam", {"lr": 0.003, "betas": (0.8, 0.99), "weight_decay": 0.1}),
])
def test_optimizer_against_torch(kind, kwargs, rng):
    w0 = randn(rng, (5, 4), np.float64)
    grads = [randn(rng, (5, 4), np.float64) for _ in range(4)]
    p = nn.Parameter(w0.copy())
    ours = (nn.SGD if kind == "sgd" else nn.Adam)([p], **kwargs)
    tp = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    theirs = (torch.optim.SGD if kind == "sgd" else torch.optim.Adam)([tp], **kwargs)
    for g in grads:
        p.grad = g.copy()
        ours.step()
        tp.grad = torch.from_numpy(g.copy())
        theirs.step()
    np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_optimizer_state_round_trip(rng):
    """An optimiser restored from its state dict continues exactly as the original."""
    model = lenet("modern", dtype=np.float64, rng=rng)
    a, b = nn.Adam(model.parameters(), 0.01), None
    for p in model.parameters():
        p.grad = randn(rng, p.data.shape, np.float64)
    a.step()
    twin = lenet("modern", dtype=np.float64, rng=rng)
    twin.load_state_dict(model.state_dict())
    b = nn.Adam(twin.parameters(), 0.01)
    b.load_state_dict(a.state_dict())
    for p, q in zip(model.parameters(), twin.parameters()):
        q.grad = p.grad
    a.step()
    b.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        np.testing.assert_array_equal(p.data, q.data)


def test_state_dict_checks_names_and_shapes(rng):
    model = lenet(rng=rng)
    state = model.state_dict()
    assert list(state)[:2] == ["0.weight", "0.bias"]
    bad = dict(state)
    bad["0.weight"] = bad["0.weight"][:3]
    with pytest.raises(ValueError, match="0.weight has shape"):
        model.load_state_dict(bad)
    with pytest.raises(ValueError, match="missing"):
        model.load_state_dict({k: v for k, v in state.items() if k != "11.bias"})


def test_lenet_shapes_and_init(rng):
    for variant in ("classic", "modern"):
        model = lenet(variant, rng=rng)
        y = model.forward(rng.random((3, 1, 28, 28), dtype=np.float32))
        assert y.shape == (3, 10) and y.dtype == np.float32
    w = lenet("classic", rng=rng)[7].weight.data  # Linear(400, 120), Xavier-uniform
    bound = np.sqrt(6 / (400 + 120))
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    with pytest.raises(ValueError, match="variant"):
        lenet("tiny")
