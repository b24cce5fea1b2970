"""Benchmark cases: the named suites, the ``--case`` mini-language, and FLOP and byte counts."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .. import functional as F
from .zoo import NETWORKS

KINDS = ("conv", "conv_transpose", "max_pool", "avg_pool", "corr2d")


@dataclass(frozen=True)
class Case:
    """One operation on fixed shapes.

    ``w_shape`` is the weight's shape for convolutions (PyTorch's layouts) and ``None`` for
    pooling; ``kwargs`` are the op's keyword arguments (pooling's include ``kernel_size``).
    ``mode`` says what is timed: ``"both"`` the forward and, apart, the forward with every
    gradient; ``"inference"`` the forward only; ``"training"`` the forward with every gradient
    only. ``source`` names the network or paper a layer comes from.
    """

    name: str
    op: str
    x_shape: tuple
    w_shape: tuple | None = None
    kwargs: dict = field(default_factory=dict)
    mode: str = "both"
    source: str = ""

    @property
    def times_forward(self):
        return self.mode in ("both", "inference")

    @property
    def times_backward(self):
        return self.mode in ("both", "training")

    @property
    def kind(self):
        return self.op.rstrip("123d") if self.op != "corr2d" else "corr2d"

    @property
    def nd(self):
        return 2 if self.op == "corr2d" else int(self.op[-2])

    def out_shape(self):
        if self.kind == "conv":
            kw = {k: v for k, v in self.kwargs.items() if k != "padding_mode"}
            return F.conv_output_shape(self.x_shape, self.w_shape, **kw)
        if self.kind == "conv_transpose":
            return F.conv_transpose_output_shape(self.x_shape, self.w_shape, **self.kwargs)
        if self.kind == "corr2d":
            return tuple(a - b + 1 for a, b in zip(self.x_shape, self.w_shape))
        kw = {k: v for k, v in self.kwargs.items()
              if k in ("kernel_size", "stride", "padding", "dilation", "ceil_mode")}
        return F.pool_output_shape(self.x_shape, **kw)

    def flops(self):
        """Floating-point operations of the forward pass (a multiply-add counts 2).

        Pooling counts one operation per window element (a comparison or an addition).
        """
        if self.kind == "corr2d":
            return 2 * math.prod(self.out_shape()) * math.prod(self.w_shape)
        out = self.out_shape()
        if self.kind == "conv":
            return 2 * math.prod(out) * math.prod(self.w_shape[1:])
        if self.kind == "conv_transpose":
            # each input element meets C_out // groups filters of the kernel's size
            return 2 * math.prod(self.x_shape) * math.prod(self.w_shape[1:])
        kernel = self.kwargs["kernel_size"]
        taps = math.prod(kernel) if isinstance(kernel, tuple) else kernel ** self.nd
        return math.prod(out) * taps

    def backward_flops(self):
        """Operations of the gradients: input and weight gradients each cost a forward."""
        if self.kind in ("conv", "conv_transpose"):
            return 2 * self.flops()
        return math.prod(self.out_shape()) if self.kind != "corr2d" else 0

    def bytes(self, itemsize, backward=False):
        """The least memory traffic: every operand read once and every result written once.

        With ``backward``, forward plus gradients; max pooling's int64 indices are written by
        the forward and read by the backward.
        """
        x, y = math.prod(self.x_shape), math.prod(self.out_shape())
        w = math.prod(self.w_shape) if self.w_shape else 0
        total = (x + w + y) * itemsize
        if not backward:
            return total
        if self.kind in ("conv", "conv_transpose"):
            # input gradient (gy, w -> gx), weight gradient (x, gy -> gw), bias gradient (gy)
            return total + ((y + w + x) + (x + y + w) + y) * itemsize
        if self.kind == "max_pool":
            return total + 2 * 8 * y + (y + x) * itemsize
        return total + (y + x) * itemsize


def _conv(name, x, w, **kw):
    return Case(name, f"conv{len(x) - 2}d", x, w, kw)


SUITES = {
    "lenet": [
        _conv("lenet-c1", (256, 1, 28, 28), (6, 1, 5, 5), padding=2),
        _conv("lenet-c2", (256, 6, 14, 14), (16, 6, 5, 5)),
        Case("avg-pool", "avg_pool2d", (256, 6, 28, 28), None, {"kernel_size": 2, "stride": 2}),
    ],
    "resnet": [
        _conv("resnet-3x3", (32, 64, 56, 56), (64, 64, 3, 3), padding=1),
        _conv("resnet-s2", (32, 128, 28, 28), (256, 128, 3, 3), stride=2, padding=1),
        _conv("pointwise", (32, 256, 14, 14), (1024, 256, 1, 1)),
        Case("max-pool", "max_pool2d", (32, 64, 112, 112), None,
             {"kernel_size": 3, "stride": 2, "padding": 1}),
    ],
    "extras": [
        _conv("depthwise", (32, 128, 56, 56), (128, 1, 3, 3), padding=1, groups=128),
        _conv("dilated", (16, 64, 64, 64), (64, 64, 3, 3), padding=2, dilation=2),
        Case("transposed", "conv_transpose2d", (64, 128, 16, 16), (128, 64, 4, 4),
             {"stride": 2, "padding": 1}),
        _conv("conv3d", (4, 32, 16, 56, 56), (64, 32, 3, 3, 3), padding=1),
        Case("textbook-corr2d", "corr2d", (64, 64), (5, 5)),
    ],
}
SUITES["all"] = [case for suite in ("lenet", "resnet", "extras") for case in SUITES[suite]]


def zoo_cases():
    """The ``zoo`` suite (:mod:`.zoo`): every layer at batch 1, forward only
    (``mode="inference"``), then at its network's training batch, forward and backward
    (``mode="training"``)."""
    cases = []
    for net, (source, batch, layers) in NETWORKS.items():
        for mode, n in (("inference", 1), ("training", batch)):
            for name, op, x_shape, w_shape, kw in layers:
                cases.append(Case(f"{net}.{name} b{n}", op, (n, *x_shape[1:]), w_shape, kw,
                                  mode=mode, source=source))
    return cases


SUITES["zoo"] = zoo_cases()

CASE_HELP = """\
A case is an op and key=value pairs, e.g.
  "conv2d N=32 C=64 H=56 W=56 K=64 k=3 stride=1 padding=1"
  "conv_transpose2d N=64 C=128 H=16 W=16 K=64 k=4 stride=2 padding=1"
  "max_pool2d N=32 C=64 H=112 W=112 k=3 stride=2 padding=1"
  "conv3d N=4 C=32 D=16 H=56 W=56 K=64 k=3x3x3 padding=1 name=my-3d"
Keys: N, C, K (output channels), L (1-D) or D/H/W, k (kernel), stride, padding, dilation,
groups, output_padding, ceil_mode, count_include_pad, name. Tuples are written 3x1."""


def _value(text):
    if text in ("same", "valid"):
        return text
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    parts = [int(p) for p in text.split("x")]
    return parts[0] if len(parts) == 1 else tuple(parts)


def parse_case(spec):
    """A :class:`Case` from the ``--case`` mini-language (see ``CASE_HELP``)."""
    op, *pairs = spec.split()
    if op.rstrip("123d") not in KINDS[:4] or op[-2:-1] not in "123":
        raise ValueError(f"--case: unknown op {op!r}; use conv2d, conv_transpose2d, "
                         "max_pool2d, avg_pool2d (1d and 3d too)")
    nd = int(op[-2])
    values = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise ValueError(f"--case: expected key=value, got {pair!r} in {spec!r}")
        values[key] = text if key == "name" else _value(text)
    axes = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}[nd]
    try:
        x_shape = (values.pop("N", 1), values.pop("C")) + tuple(values.pop(a) for a in axes)
        kernel = values.pop("k")
    except KeyError as exc:
        raise ValueError(f"--case: {spec!r} needs {exc.args[0]}=...") from None
    kernel = kernel if isinstance(kernel, tuple) else (kernel,) * nd
    name = values.pop("name", spec)
    kind = op.rstrip("123d")
    if kind in ("conv", "conv_transpose"):
        k_out, groups = values.pop("K", x_shape[1]), values.get("groups", 1)
        if kind == "conv":
            w_shape = (k_out, x_shape[1] // groups, *kernel)
        else:
            w_shape = (x_shape[1], k_out // groups, *kernel)
        return Case(name, op, x_shape, w_shape, values)
    values["kernel_size"] = kernel
    return Case(name, op, x_shape, None, values)
