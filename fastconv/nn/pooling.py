"""Pooling layers, 1-D to 3-D, as ``torch.nn``'s: max, average and adaptive average."""

from __future__ import annotations

import itertools
import math

from .. import _params as P
from .. import functional as F
from . import lanes
from .lanes import LaneArray
from .layers import Sigmoid
from .module import Module, Window, array_module, check_input, saved


class _PoolNd(Module):
    """What the fixed-window poolings share: shapes and windows from their options."""

    nd = 2

    def _spec(self, input_shape):
        o = self.options
        return P.pool_spec(self.layer_name, self.nd, F._shaped(input_shape), o["kernel_size"],
                           o["stride"], o["padding"], o.get("dilation", 1), o["ceil_mode"])

    def output_shape(self, input_shape):
        return (*input_shape[:2], *self._spec(input_shape).out_size[-self.nd:])

    def windows(self, input_shape):
        spec = self._spec(input_shape)
        return tuple(Window.sliding(*axis) for axis in zip(*(v[-self.nd:] for v in (
            spec.kernel, spec.stride, spec.padding, spec.dilation))))


class _MaxPoolNd(_PoolNd):
    """Max pooling over ``nd`` spatial axes, as ``torch.nn.MaxPool{nd}d``; the backward routes
    each gradient to the input element that won its window (the forward keeps the indices)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        self.options = {"kernel_size": kernel_size, "stride": stride, "padding": padding,
                        "dilation": dilation, "ceil_mode": ceil_mode}
        self._x = self._indices = None

    def forward(self, x):
        check_input(self.layer_name, x, self.nd + 2)
        self._x = x
        pool = getattr(F, f"max_pool{self.nd}d")
        if not self.training:  # no backward to come: skip the indices
            self._indices = None
            return pool(x, **self.options)
        y, self._indices = pool(x, **self.options, return_indices=True)
        return y

    def backward(self, grad_output):
        x = saved(self.layer_name, self._x, "input")
        return getattr(F, f"max_pool{self.nd}d_backward")(grad_output, x, **self.options,
                                                          indices=self._indices)


class MaxPool1d(_MaxPoolNd):
    """1-D max pooling, as ``torch.nn.MaxPool1d``."""

    nd = 1


class MaxPool2d(_MaxPoolNd):
    """2-D max pooling, as ``torch.nn.MaxPool2d``; the backward routes each gradient to the
    input element that won its window (the forward keeps the indices)."""

    nd = 2


class MaxPool3d(_MaxPoolNd):
    """3-D max pooling, as ``torch.nn.MaxPool3d``."""

    nd = 3


class _AvgPoolNd(_PoolNd):
    """Average pooling over ``nd`` spatial axes, as ``torch.nn.AvgPool{nd}d``."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        super().__init__()
        self.options = {"kernel_size": kernel_size, "stride": stride, "padding": padding,
                        "ceil_mode": ceil_mode, "count_include_pad": count_include_pad,
                        "divisor_override": divisor_override}
        self._x = None

    def forward(self, x):
        check_input(self.layer_name, x, self.nd + 2)
        self._x = x
        return getattr(F, f"avg_pool{self.nd}d")(x, **self.options)

    def backward(self, grad_output):
        x = saved(self.layer_name, self._x, "input")
        return getattr(F, f"avg_pool{self.nd}d_backward")(grad_output, x, **self.options)


class AvgPool1d(_AvgPoolNd):
    """1-D average pooling, as ``torch.nn.AvgPool1d`` (``divisor_override`` too, as the
    functional op takes it)."""

    nd = 1


class AvgPool2d(_AvgPoolNd):
    """2-D average pooling, as ``torch.nn.AvgPool2d``. On lanes (see :class:`Sequential`) its
    backward fuses with a sigmoid's before it."""

    nd = 2
    lane_layer = True

    def takes_lanes(self, x):
        return x.ndim == 4

    def forward(self, x):
        if isinstance(x, LaneArray):
            self._x = x
            return lanes.avg_pool_forward(x, self.options)
        return super().forward(x)

    def backward(self, grad_output):
        if isinstance(grad_output, LaneArray):
            x = saved(self.layer_name, self._x, "input")
            return lanes.avg_pool_backward(grad_output, x, self.options)
        return super().backward(grad_output)

    def fuses_backward(self, grad_output, preceding):
        """Whether :meth:`backward_fused` can compute ``preceding``'s backward with this
        one's: a sigmoid before the pooling, on lanes."""
        return (isinstance(grad_output, LaneArray) and isinstance(preceding, Sigmoid)
                and preceding._y is self._x)

    def backward_fused(self, grad_output, preceding):
        """This layer's backward and then ``preceding``'s, in one kernel."""
        x = saved(self.layer_name, self._x, "input")
        return lanes.avg_pool_backward(grad_output, x, self.options, after_sigmoid=True)


class AvgPool3d(_AvgPoolNd):
    """3-D average pooling, as ``torch.nn.AvgPool3d``."""

    nd = 3


class _AdaptiveAvgPoolNd(Module):
    """Average pooling to a fixed output size, as ``torch.nn.AdaptiveAvgPool{nd}d``: output
    cell ``i`` of an axis of ``n`` inputs and ``m`` outputs averages inputs
    ``floor(i * n / m)`` to ``ceil((i + 1) * n / m)`` (exclusive). ``output_size`` is an int
    or a tuple whose ``None`` entries keep the input's size; 1 is the global average."""

    nd = 2

    def __init__(self, output_size):
        super().__init__()
        sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size,)
        if len(sizes) == 1:
            sizes = tuple(sizes) * self.nd
        if len(sizes) != self.nd or not all(
                s is None or (isinstance(s, int) and s >= 1) for s in sizes):
            raise ValueError(f"{self.layer_name}: output_size must be a positive int or a tuple "
                             f"of {self.nd} positive ints or None, got {output_size!r}")
        self.output_size = tuple(sizes)
        self._shape = None

    def _out_size(self, in_size):
        return tuple(i if o is None else o for i, o in zip(in_size, self.output_size))

    def _cells(self, in_size):
        """Per output cell, its index and the slices of the inputs it averages."""
        bounds = [[(i * n // m, -(-(i + 1) * n // m)) for i in range(m)]
                  for n, m in zip(in_size, self._out_size(in_size))]
        for index in itertools.product(*(range(len(b)) for b in bounds)):
            yield index, tuple(slice(*b[i]) for b, i in zip(bounds, index))

    def forward(self, x):
        check_input(self.layer_name, x, self.nd + 2)
        self._shape = x.shape
        in_size = x.shape[2:]
        axes = tuple(range(2, 2 + self.nd))
        if all(o == 1 for o in self._out_size(in_size)):  # the global average: one pass
            return x.mean(axis=axes, keepdims=True)
        y = array_module(x).empty((*x.shape[:2], *self._out_size(in_size)), dtype=x.dtype)
        for index, window in self._cells(in_size):
            y[(..., *index)] = x[(..., *window)].mean(axis=axes)
        return y

    def backward(self, grad_output):
        shape = saved(self.layer_name, self._shape, "input shape")
        expected = self.output_shape(shape)
        if tuple(grad_output.shape) != expected:
            raise ValueError(f"{self.layer_name}.backward: grad_output must have shape "
                             f"{expected}, got {tuple(grad_output.shape)}")
        xp = array_module(grad_output)
        gx = xp.zeros(shape, dtype=grad_output.dtype)
        for index, window in self._cells(shape[2:]):
            count = math.prod(s.stop - s.start for s in window)
            gx[(..., *window)] += (grad_output[(..., *index)] / count)[(...,) + (None,) * self.nd]
        return gx

    def output_shape(self, input_shape):
        return (*input_shape[:2], *self._out_size(input_shape[2:]))

    def windows(self, input_shape):
        # windows of ceil(n / m) or one more input; n / m apart; the first one from 0
        out = []
        for n, m in zip(input_shape[2:], self._out_size(input_shape[2:])):
            widest = max(-(-(i + 1) * n // m) - i * n // m for i in range(m))
            out.append(Window(widest, n / m, (-(-n // m) - 1) / 2))
        return tuple(out)

    def extra_repr(self):
        return f"output_size={self.output_size!r}"


class AdaptiveAvgPool1d(_AdaptiveAvgPoolNd):
    """1-D adaptive average pooling, as ``torch.nn.AdaptiveAvgPool1d``."""

    nd = 1


class AdaptiveAvgPool2d(_AdaptiveAvgPoolNd):
    """2-D adaptive average pooling, as ``torch.nn.AdaptiveAvgPool2d`` (``1``: the global
    average of each channel)."""

    nd = 2


class AdaptiveAvgPool3d(_AdaptiveAvgPoolNd):
    """3-D adaptive average pooling, as ``torch.nn.AdaptiveAvgPool3d``."""

    nd = 3
