"""Convolution layers, 1-D to 3-D, and transposed convolutions, as ``torch.nn``'s."""

from __future__ import annotations

import math

import numpy as np

from .. import _params as P
from .. import functional as F
from . import lanes
from .init import default_bias, kaiming_uniform
from .lanes import LaneArray
from .module import Module, Parameter, Window, check_input, saved


class _Convolution(Module):
    """What convolutions and transposed convolutions share: a weight and an optional bias,
    initialised as PyTorch does (Kaiming-uniform with ``a = sqrt(5)``, a bias uniform in
    +-1/sqrt(fan_in), the fan-in taken from the weight's dimension 1 times the kernel's size,
    for a transposed convolution too), and the call's options."""

    nd = 2
    transposed = False
    parameter_names = ("weight", "bias")

    def __init__(self, in_channels, out_channels, kernel_size, groups, bias, dtype, rng,
                 options):
        super().__init__()
        layer = self.layer_name
        kernel = P.int_tuple(layer, "kernel_size", kernel_size, self.nd, 1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{layer}: in_channels ({in_channels}) and out_channels "
                             f"({out_channels}) must be divisible by groups ({groups})")
        shape = ((in_channels, out_channels // groups, *kernel) if self.transposed
                 else (out_channels, in_channels // groups, *kernel))
        self.weight = Parameter(kaiming_uniform(shape, a=math.sqrt(5), rng=rng, dtype=dtype))
        fan_in = shape[1] * math.prod(kernel)
        self.bias = (Parameter(default_bias(fan_in, out_channels, rng, dtype)) if bias
                     else None)
        self.options = options
        self._x = None

    def _accumulate(self, gw, gb):
        self.weight.accumulate(gw)
        if self.bias is not None:
            self.bias.accumulate(gb)


class _ConvNd(_Convolution):
    """The convolution over ``nd`` spatial axes; :class:`Conv1d`, :class:`Conv2d` and
    :class:`Conv3d` set ``nd``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", dtype=np.float32, rng=None):
        super().__init__(in_channels, out_channels, kernel_size, groups, bias, dtype, rng,
                         {"stride": stride, "padding": padding, "dilation": dilation,
                          "groups": groups, "padding_mode": padding_mode})
        self.input_grad = True

    def forward(self, x):
        check_input(self.layer_name, x, self.nd + 2)
        self._x = x
        bias = None if self.bias is None else self.bias.data
        return getattr(F, f"conv{self.nd}d")(x, self.weight.data, bias, **self.options)

    def backward(self, grad_output):
        x = saved(self.layer_name, self._x, "input")
        gx, gw, gb = getattr(F, f"conv{self.nd}d_backward")(
            grad_output, x, self.weight.data, **self.options, input_grad=self.input_grad)
        self._accumulate(gw, gb)
        return gx

    def _spec(self, input_shape):
        o = self.options
        return P.conv_spec(self.layer_name, self.nd, F._shaped(input_shape), self.weight.data, None,
                           o["stride"], o["padding"], o["dilation"], o["groups"],
                           o["padding_mode"])

    def output_shape(self, input_shape):
        spec = self._spec(input_shape)
        return (input_shape[0], self.weight.data.shape[0], *spec.out_size[-self.nd:])

    def macs(self, input_shape):
        out = self.output_shape(input_shape)
        return math.prod(out) * math.prod(self.weight.data.shape[1:])

    def windows(self, input_shape):
        spec = self._spec(input_shape)
        return tuple(Window.sliding(k, s, lo, d) for k, s, (lo, _), d in zip(*(
            v[-self.nd:] for v in (spec.kernel, spec.stride, spec.padding, spec.dilation))))

    def extra_repr(self):
        o, i, *k = self.weight.data.shape
        return f"{i * self.options['groups']}, {o}, kernel_size={tuple(k)}, " + ", ".join(
            f"{key}={value!r}" for key, value in self.options.items())


class Conv1d(_ConvNd):
    """1-D convolution (cross-correlation) of (N, C, L) inputs, as ``torch.nn.Conv1d``;
    arguments as for :class:`Conv2d`."""

    nd = 1


class Conv2d(_ConvNd):
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

    nd = 2
    lane_layer = starts_lanes = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lane_input = None

    def takes_lanes(self, x):
        return lanes.conv_fits(x, self.weight.data, self.options, self.input_grad)

    def forward(self, x):
        if isinstance(x, LaneArray):
            self._x = x
            bias = None if self.bias is None else self.bias.data
            y, self._lane_input = lanes.conv_forward(x, self.weight.data, bias, self.options)
            return y
        self._lane_input = None
        return super().forward(x)

    def backward(self, grad_output):
        if not isinstance(grad_output, LaneArray):
            return super().backward(grad_output)
        x = saved(self.layer_name, self._x, "input")
        gx, gw, gb = lanes.conv_backward(grad_output, self._lane_input, self.weight.data,
                                         self.options, x.shape, self.input_grad)
        self._accumulate(gw, gb)
        return gx


class Conv3d(_ConvNd):
    """3-D convolution (cross-correlation) of (N, C, D, H, W) inputs, as ``torch.nn.Conv3d``;
    arguments as for :class:`Conv2d`."""

    nd = 3


class _ConvTransposeNd(_Convolution):
    """The transposed convolution over ``nd`` spatial axes (weight of shape
    (in_channels, out_channels / groups, *kernel)), as ``torch.nn.ConvTranspose{nd}d``;
    arguments as for :func:`fastconv.conv_transpose2d`, initialised as PyTorch does."""

    transposed = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, dtype=np.float32, rng=None):
        super().__init__(in_channels, out_channels, kernel_size, groups, bias, dtype, rng,
                         {"stride": stride, "padding": padding, "output_padding": output_padding,
                          "groups": groups, "dilation": dilation})

    def forward(self, x):
        check_input(self.layer_name, x, self.nd + 2)
        self._x = x
        bias = None if self.bias is None else self.bias.data
        return getattr(F, f"conv_transpose{self.nd}d")(x, self.weight.data, bias,
                                                       **self.options)

    def backward(self, grad_output):
        x = saved(self.layer_name, self._x, "input")
        gx, gw, gb = getattr(F, f"conv_transpose{self.nd}d_backward")(
            grad_output, x, self.weight.data, **self.options)
        self._accumulate(gw, gb)
        return gx

    def _spec(self, input_shape):
        o = self.options
        return P.conv_transpose_spec(self.layer_name, self.nd, F._shaped(input_shape),
                                     self.weight.data, None, o["stride"], o["padding"],
                                     o["output_padding"], o["groups"], o["dilation"])

    def output_shape(self, input_shape):
        spec = self._spec(input_shape)
        w = self.weight.data
        return (input_shape[0], w.shape[1] * self.options["groups"], *spec.out_size[-self.nd:])

    def macs(self, input_shape):
        return math.prod(input_shape) * math.prod(self.weight.data.shape[1:])

    def windows(self, input_shape):
        # Output o takes input i where i * stride = o + pad - t * dilation for a tap t: the
        # inputs one output sees depend on o modulo the stride; the window is the widest.
        spec = self._spec(input_shape)
        axes = zip(*(v[-self.nd:] for v in (spec.kernel, spec.stride, spec.padding,
                                             spec.dilation)))
        return tuple(Window(_widest_transposed(k, s, lo, d), 1 / s, (lo - d * (k - 1) / 2) / s)
                     for k, s, (lo, _), d in axes)


def _widest_transposed(kernel, stride, pad, dilation):
    """The most inputs (first to last, in input elements) that one output of a transposed
    convolution along an axis sees, over the ``stride`` residues of the output's position."""
    widest = 1
    for o in range(stride):
        inputs = [(o + pad - t * dilation) // stride for t in range(kernel)
                  if (o + pad - t * dilation) % stride == 0]
        if inputs:
            widest = max(widest, max(inputs) - min(inputs) + 1)
    return widest


class ConvTranspose1d(_ConvTransposeNd):
    """1-D transposed convolution, as ``torch.nn.ConvTranspose1d``."""

    nd = 1


class ConvTranspose2d(_ConvTransposeNd):
    """2-D transposed convolution, as ``torch.nn.ConvTranspose2d`` (weight of shape
    (in_channels, out_channels / groups, kH, kW)); arguments as for
    :func:`fastconv.conv_transpose2d`, initialised as PyTorch does."""

    nd = 2


class ConvTranspose3d(_ConvTransposeNd):
    """3-D transposed convolution, as ``torch.nn.ConvTranspose3d``."""

    nd = 3
