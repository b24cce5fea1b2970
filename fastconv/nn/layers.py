"""Layers with a hand-written backward on top of fastconv's primitives."""

from __future__ import annotations

import math

import numpy as np

from .. import _backend
from .. import functional as F
from . import lanes
from .init import default_bias, kaiming_uniform
from .lanes import LaneArray
from .module import Module, Parameter, array_module


def _check_input(layer, x, ndim):
    if getattr(x, "ndim", None) != ndim:
        raise ValueError(f"{layer}: expected a {ndim}-D input, got shape "
                         f"{getattr(x, 'shape', type(x).__name__)}")


def _conv_parameters(layer, in_channels, out_channels, kernel_size, groups, transposed, bias,
                     dtype, rng):
    """A convolution's weight and bias (or None), initialised as PyTorch does: Kaiming-uniform
    with ``a = sqrt(5)`` and a bias uniform in +-1/sqrt(fan_in), the fan-in taken from the
    weight's dimension 1 (for a transposed convolution too, as PyTorch does)."""
    k = (kernel_size,) * 2 if isinstance(kernel_size, int) else tuple(kernel_size)
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"{layer}: in_channels ({in_channels}) and out_channels "
                         f"({out_channels}) must be divisible by groups ({groups})")
    shape = ((in_channels, out_channels // groups, *k) if transposed
             else (out_channels, in_channels // groups, *k))
    weight = Parameter(kaiming_uniform(shape, a=math.sqrt(5), rng=rng, dtype=dtype))
    fan_in = shape[1] * k[0] * k[1]
    return weight, (Parameter(default_bias(fan_in, out_channels, rng, dtype)) if bias else None)


def _saved(layer, value, what):
    if value is None:
        raise RuntimeError(f"{layer}.backward: no {what} saved; call forward first")
    return value


class Conv2d(Module):
    """2-D convolution (cross-correlation) of (N, C, H, W) inputs, as ``torch.nn.Conv2d``.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, padding, dilation, groups, padding_mode
        As for :func:`fastconv.conv2d`.
    bias : bool
        Whether to add a learned bias.
    dtype : dtype
        Of the parameters (float32 by default).
    rng : numpy.random.Generator, optional
        For the initial weights: PyTorch's default, Kaiming-uniform with ``a = sqrt(5)``, and a
        bias uniform in +-1/sqrt(fan_in).

    Attributes
    ----------
    input_grad : bool
        Whether :meth:`backward` computes the gradient with respect to the input (``True``);
        ``False`` for a network's first layer saves that work, and backward returns ``None``.
    """

    parameter_names = ("weight", "bias")
    lane_layer = starts_lanes = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", dtype=np.float32, rng=None):
        super().__init__()
        self.weight, self.bias = _conv_parameters(
            "Conv2d", in_channels, out_channels, kernel_size, groups, False, bias, dtype, rng)
        self.options = {"stride": stride, "padding": padding, "dilation": dilation,
                        "groups": groups, "padding_mode": padding_mode}
        self.input_grad = True
        self._x = None
        self._lane_input = None

    def takes_lanes(self, x):
        return lanes.conv_fits(x, self.weight.data, self.options, self.input_grad)

    def forward(self, x):
        bias = None if self.bias is None else self.bias.data
        self._x = x
        if isinstance(x, LaneArray):
            y, self._lane_input = lanes.conv_forward(x, self.weight.data, bias, self.options)
            return y
        _check_input("Conv2d", x, 4)
        self._lane_input = None
        return F.conv2d(x, self.weight.data, bias, **self.options)

    def backward(self, grad_output):
        x = _saved("Conv2d", self._x, "input")
        if isinstance(grad_output, LaneArray):
            gx, gw, gb = lanes.conv_backward(grad_output, self._lane_input, self.weight.data,
                                             self.options, x.shape, self.input_grad)
        else:
            gx, gw, gb = F.conv2d_backward(grad_output, x, self.weight.data, **self.options,
                                           input_grad=self.input_grad)
        self.weight.accumulate(gw)
        if self.bias is not None:
            self.bias.accumulate(gb)
        return gx

    def extra_repr(self):
        o, i, *k = self.weight.data.shape
        return f"{i * self.options['groups']}, {o}, kernel_size={tuple(k)}, " + ", ".join(
            f"{key}={value!r}" for key, value in self.options.items())


class ConvTranspose2d(Module):
    """2-D transposed convolution, as ``torch.nn.ConvTranspose2d`` (weight of shape
    (in_channels, out_channels / groups, kH, kW)); arguments as for
    :func:`fastconv.conv_transpose2d`, initialised as PyTorch does."""

    parameter_names = ("weight", "bias")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, dtype=np.float32, rng=None):
        super().__init__()
        self.weight, self.bias = _conv_parameters(
            "ConvTranspose2d", in_channels, out_channels, kernel_size, groups, True, bias, dtype,
            rng)
        self.options = {"stride": stride, "padding": padding, "output_padding": output_padding,
                        "groups": groups, "dilation": dilation}
        self._x = None

    def forward(self, x):
        _check_input("ConvTranspose2d", x, 4)
        self._x = x
        return F.conv_transpose2d(x, self.weight.data,
                                  None if self.bias is None else self.bias.data, **self.options)

    def backward(self, grad_output):
        x = _saved("ConvTranspose2d", self._x, "input")
        gx, gw, gb = F.conv_transpose2d_backward(grad_output, x, self.weight.data,
                                                 **self.options)
        self.weight.accumulate(gw)
        if self.bias is not None:
            self.bias.accumulate(gb)
        return gx


class MaxPool2d(Module):
    """2-D max pooling, as ``torch.nn.MaxPool2d``; the backward routes each gradient to the
    input element that won its window (the forward keeps the indices)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        self.options = {"kernel_size": kernel_size, "stride": stride, "padding": padding,
                        "dilation": dilation, "ceil_mode": ceil_mode}
        self._x = self._indices = None

    def forward(self, x):
        _check_input("MaxPool2d", x, 4)
        self._x = x
        if not self.training:  # no backward to come: skip the indices
            self._indices = None
            return F.max_pool2d(x, **self.options)
        y, self._indices = F.max_pool2d(x, **self.options, return_indices=True)
        return y

    def backward(self, grad_output):
        x = _saved("MaxPool2d", self._x, "input")
        return F.max_pool2d_backward(grad_output, x, **self.options, indices=self._indices)


class AvgPool2d(Module):
    """2-D average pooling, as ``torch.nn.AvgPool2d``."""

    lane_layer = True

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        super().__init__()
        self.options = {"kernel_size": kernel_size, "stride": stride, "padding": padding,
                        "ceil_mode": ceil_mode, "count_include_pad": count_include_pad,
                        "divisor_override": divisor_override}
        self._x = None

    def takes_lanes(self, x):
        return x.ndim == 4

    def forward(self, x):
        _check_input("AvgPool2d", x, 4)
        self._x = x
        if isinstance(x, LaneArray):
            return lanes.avg_pool_forward(x, self.options)
        return F.avg_pool2d(x, **self.options)

    def backward(self, grad_output):
        x = _saved("AvgPool2d", self._x, "input")
        if isinstance(grad_output, LaneArray):
            return lanes.avg_pool_backward(grad_output, x, self.options)
        return F.avg_pool2d_backward(grad_output, x, **self.options)

    def fuses_backward(self, grad_output, preceding):
        """Whether :meth:`backward_fused` can compute ``preceding``'s backward with this
        one's: a sigmoid before the pooling, on lanes."""
        return (isinstance(grad_output, LaneArray) and isinstance(preceding, Sigmoid)
                and preceding._y is self._x)

    def backward_fused(self, grad_output, preceding):
        """This layer's backward and then ``preceding``'s, in one kernel."""
        x = _saved("AvgPool2d", self._x, "input")
        return lanes.avg_pool_backward(grad_output, x, self.options, after_sigmoid=True)


class Linear(Module):
    """``y = x @ weight.T + bias`` on (N, in_features) inputs, initialised as PyTorch does."""

    parameter_names = ("weight", "bias")

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, rng=None):
        super().__init__()
        self.weight = Parameter(kaiming_uniform((out_features, in_features), a=math.sqrt(5),
                                                rng=rng, dtype=dtype))
        self.bias = (Parameter(default_bias(in_features, out_features, rng, dtype))
                     if bias else None)
        self._x = None

    def forward(self, x):
        _check_input("Linear", x, 2)
        if x.shape[1] != self.weight.data.shape[1]:
            raise ValueError(f"Linear: input has {x.shape[1]} features, the layer takes "
                             f"{self.weight.data.shape[1]} (input shape {x.shape})")
        self._x = x
        y = x @ self.weight.data.T
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward(self, grad_output):
        x = _saved("Linear", self._x, "input")
        self.weight.accumulate(grad_output.T @ x)
        if self.bias is not None:
            self.bias.accumulate(grad_output.sum(axis=0))
        return grad_output @ self.weight.data

    def extra_repr(self):
        o, i = self.weight.data.shape
        return f"in_features={i}, out_features={o}, bias={self.bias is not None}"


class Flatten(Module):
    """Flattens dimensions ``start_dim`` onward: (N, C, H, W) -> (N, C*H*W)."""

    def __init__(self, start_dim=1):
        super().__init__()
        self.start_dim = start_dim
        self._shape = None

    def forward(self, x):
        self._shape = x.shape
        return x.reshape(*x.shape[:self.start_dim], -1)

    def backward(self, grad_output):
        return grad_output.reshape(_saved("Flatten", self._shape, "input shape"))


class _ElementWise(Module):
    """An activation, computed element by element: it takes lane arrays as they are."""

    lane_layer = True

    def takes_lanes(self, x):
        return True


class Sigmoid(_ElementWise):
    """The logistic function ``1 / (1 + exp(-x))``, without overflow for large ``|x|``.

    It runs on the backend that the arrays and the settings select (the Numba backend's
    kernels: one parallel pass each way).
    """

    def __init__(self):
        super().__init__()
        self._y = None

    def forward(self, x):
        self._y = lanes.elementwise(
            lambda a: _backend.resolve("Sigmoid", array_module(a)).sigmoid_forward(a), x)
        return self._y

    def backward(self, grad_output):
        y = _saved("Sigmoid", self._y, "output")
        return lanes.elementwise(
            lambda a, g: _backend.resolve("Sigmoid", array_module(a)).sigmoid_backward(a, g),
            y, grad_output)


class ReLU(_ElementWise):
    """``max(x, 0)``; its gradient at 0 is 0, as PyTorch's."""

    def __init__(self):
        super().__init__()
        self._positive = None

    def forward(self, x):
        self._positive = lanes.elementwise(lambda a: a > 0, x)
        return lanes.elementwise(lambda a: array_module(a).maximum(a, 0), x)  # NaN stays NaN

    def backward(self, grad_output):
        return lanes.elementwise(lambda g, positive: g * positive, grad_output,
                                 _saved("ReLU", self._positive, "input"))


class Tanh(_ElementWise):
    """The hyperbolic tangent."""

    def __init__(self):
        super().__init__()
        self._y = None

    def forward(self, x):
        self._y = lanes.elementwise(lambda a: array_module(a).tanh(a), x)
        return self._y

    def backward(self, grad_output):
        return lanes.elementwise(_tanh_backward, _saved("Tanh", self._y, "output"), grad_output)


def _tanh_backward(y, grad_output):
    g = y * y
    xp = array_module(g)
    xp.subtract(1, g, out=g)
    g *= grad_output
    return g
