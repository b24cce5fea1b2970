"""fastconv.nn.summary: shapes against the layers' outputs, MACs against PyTorch's FLOP
counter, and receptive fields against their definition: the input pixels whose gradient a
one-hot gradient at one output element reaches, through the real layers with positive
weights (and average pooling, whose gradient reaches its whole window)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fastconv import nn
from fastconv.models import lenet


def positive(model, rng):
    """``model`` with weights in [0.1, 1) and zero biases: no gradient cancels to 0."""
    for name, p in model.named_parameters():
        p.data = (rng.uniform(0.1, 1, p.data.shape) if name.endswith("weight")
                  else np.zeros(p.data.shape))
    return model


def field_of(model, input_shape, index, rng):
    """Per spatial axis, the first and last input pixel whose gradient is non-zero after a
    one-hot gradient at output element ``index`` (spatial indices, channel 0, image 0)."""
    x = rng.uniform(0.1, 1, input_shape)
    y = model.forward(x)
    g = np.zeros(y.shape)
    g[(0, 0, *index)] = 1
    gx = model.backward(g)
    hit = np.nonzero(np.abs(gx).sum(axis=(0, 1)))
    return [(int(h.min()), int(h.max())) for h in hit]


# models made of convolutions and average pooling, and an input that holds the centre output
# element's whole field
FIELD_MODELS = {
    "strided_padded": (lambda: nn.Sequential(
        nn.Conv2d(2, 3, 5, stride=2, padding=2), nn.Sigmoid(),
        nn.AvgPool2d(3, 2, padding=1, ceil_mode=True), nn.Conv2d(3, 4, 3, padding=1)),
        (1, 2, 64, 60)),
    "dilated_grouped": (lambda: nn.Sequential(
        nn.Conv2d(4, 4, (3, 2), dilation=(2, 3), groups=2), nn.Tanh(),
        nn.Conv2d(4, 2, 3, stride=(1, 2), padding=(0, 1), groups=2), nn.AvgPool2d(2)),
        (1, 4, 48, 50)),
    "asymmetric_same_strided": (lambda: nn.Sequential(
        nn.Conv2d(1, 2, 4, stride=3, padding="same"), nn.Conv2d(2, 2, 3, padding=((2, 0), (0, 1))),
        nn.AvgPool2d((2, 3), stride=(1, 2), ceil_mode=True)), (1, 1, 61, 58)),
    "conv1d_audio": (lambda: nn.Sequential(
        nn.Conv1d(1, 4, 80, stride=4, padding=38), nn.ReLU(), nn.AvgPool1d(4),
        nn.Conv1d(4, 4, 3, padding=1, dilation=2), nn.AvgPool1d(4)), (1, 1, 4000)),
    "conv3d_video": (lambda: nn.Sequential(
        nn.Conv3d(1, 2, 3, padding=1), nn.AvgPool3d((1, 2, 2)), nn.Conv3d(2, 2, 3, padding=1),
        nn.AvgPool3d(2, ceil_mode=True)), (1, 1, 12, 20, 18)),
    "transposed_last": (lambda: nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2), nn.ConvTranspose2d(2, 2, 4, stride=2, padding=1)),
        (1, 1, 40, 40)),
    "transposed_dilated": (lambda: nn.Sequential(
        nn.ConvTranspose1d(1, 2, 3, stride=3, padding=2, dilation=2)), (1, 1, 30)),
    "adaptive": (lambda: nn.Sequential(nn.Conv1d(1, 1, 3), nn.AdaptiveAvgPool1d(5)),
                 (1, 1, 23)),
}


@pytest.mark.parametrize("name", FIELD_MODELS)
def test_receptive_field_matches_its_definition(name, rng):
    make, shape = FIELD_MODELS[name]
    model = positive(make(), rng)
    last = nn.summary(model, shape).rows[-1]
    field, jump, start = last.receptive_field, last.jump, last.start
    # a transposed convolution's outputs (and an adaptive pooling's) see windows of two sizes:
    # the summary gives the widest, and a centre on the average
    uneven = any(isinstance(c, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.AdaptiveAvgPool1d))
                 for _, c in model.children)
    out, size = last.output_shape[2:], shape[2:]
    # up to four outputs per axis around the centre (a period of the strides), those whose
    # field the summary places inside the input
    tried = {axis: [] for axis in range(len(out))}
    for offsets in np.ndindex(*(min(4, o) for o in out)):
        index = tuple(max(o // 2 - 2, 0) + d for o, d in zip(out, offsets))
        centres = [s + i * j for s, i, j in zip(start, index, jump)]
        if any(c - (f - 1) / 2 < 0 or c + (f - 1) / 2 > n - 1
               for c, f, n in zip(centres, field, size)):
            continue
        for axis, (lo, hi) in enumerate(field_of(model, shape, index, rng)):
            tried[axis].append(hi - lo + 1)
            if not uneven:
                assert (lo + hi) / 2 == centres[axis], (axis, index)
    for axis, widths in tried.items():
        assert len(widths) >= 2, f"no output of axis {axis} has its field inside the input"
        assert max(widths) == field[axis], (axis, widths)
        if not uneven:
            assert min(widths) == field[axis], (axis, widths)


def test_max_pool_windows_are_a_convolution_s(rng):
    """Max pooling's gradient reaches one input per window; its window is a depthwise
    convolution's with the same kernel, stride, padding and dilation."""
    pool = nn.Sequential(nn.Conv2d(1, 1, 3), nn.MaxPool2d(3, 2, 1, dilation=2, ceil_mode=True))
    conv = nn.Sequential(nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3, 2, 1, dilation=2))
    a, b = nn.summary(pool, (1, 1, 30, 30)).rows[-1], nn.summary(conv, (1, 1, 30, 30)).rows[-1]
    assert (a.receptive_field, a.jump, a.start) == (b.receptive_field, b.jump, b.start)


MAC_MODELS = [
    (lambda: lenet(), (8, 1, 28, 28)),
    (lambda: nn.Sequential(nn.Conv1d(2, 6, 5, stride=2, groups=2),
                           nn.ConvTranspose1d(6, 4, 3, stride=2, groups=2),
                           nn.MaxPool1d(2), nn.Flatten(), nn.Linear(4 * 10, 3)), (3, 2, 24)),
    (lambda: nn.Sequential(nn.Conv3d(2, 4, (3, 1, 2), dilation=(1, 1, 2)),
                           nn.ConvTranspose3d(4, 2, 2, stride=2), nn.AdaptiveAvgPool3d(1)),
     (2, 2, 5, 6, 7)),
]


def _to_torch(model):
    """The same network in ``torch.nn`` (same classes, arguments and parameters)."""
    layers = []
    for _, layer in model.children:
        cls = getattr(torch.nn, type(layer).__name__)
        if hasattr(layer, "weight") and type(layer).__name__ != "Linear":
            w = layer.weight.data
            transposed = "Transpose" in type(layer).__name__
            groups = layer.options["groups"]
            c_in, c_out = (w.shape[0], w.shape[1] * groups) if transposed else (
                w.shape[1] * groups, w.shape[0])
            t = cls(c_in, c_out, tuple(w.shape[2:]), **layer.options)
        elif type(layer).__name__ == "Linear":
            t = cls(*reversed(layer.weight.data.shape))
        elif hasattr(layer, "options"):
            t = cls(**layer.options)
        elif hasattr(layer, "output_size"):
            t = cls(layer.output_size)
        else:
            t = cls()
        layers.append(t)
    return torch.nn.Sequential(*layers)


@pytest.mark.parametrize("make, shape", MAC_MODELS)
def test_shapes_params_and_macs_against_torch(make, shape, rng):
    model = make()
    summary = nn.summary(model, shape)
    # output shapes: the layers' own outputs
    x = rng.standard_normal(shape).astype(np.float32)
    for row, (_, layer) in zip(summary.rows, model.children):
        x = layer.forward(x)
        assert row.output_shape == x.shape, row.layer
    theirs = _to_torch(model)
    assert summary.total_params == sum(p.numel() for p in theirs.parameters())
    with FlopCounterMode(display=False) as counter:
        theirs(torch.zeros(shape))
    assert 2 * summary.total_macs == counter.get_total_flops()  # a multiply-add is 2 FLOPs


def test_lenet_table():
    s = nn.summary(lenet(), (1, 1, 28, 28))
    assert s.total_params == 61706 and len(s.rows) == 12
    assert [r.receptive_field for r in s.rows[:6]] == [(5, 5), (5, 5), (6, 6), (14, 14),
                                                       (14, 14), (16, 16)]
    assert s.rows[5].jump == (4, 4) and s.rows[5].start == (5.5, 5.5)
    assert all(r.receptive_field is None for r in s.rows[6:])
    text = str(s)
    assert "total params 61,706" in text and "3 Conv2d" in text and "(1, 16, 10, 10)" in text


def test_summary_errors():
    with pytest.raises(TypeError, match="summary: model must be a fastconv.nn.Module"):
        nn.summary(torch.nn.Conv2d(1, 1, 1), (1, 1, 4, 4))
    with pytest.raises(ValueError, match="summary: input_shape"):
        nn.summary(lenet(), (1, 0, 28, 28))
    with pytest.raises(ValueError, match="summary: layer 3: Conv2d: the output would be empty"):
        nn.summary(lenet(), (1, 1, 8, 8))

    class Custom(nn.Module):
        pass

    with pytest.raises(TypeError, match="summary: layer 1 .Custom does not say its output"):
        nn.summary(nn.Sequential(nn.ReLU(), Custom()), (1, 1, 4, 4))
