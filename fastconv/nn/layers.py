"""The dense layer, Flatten and the activations, with hand-written backward passes (the
convolutions are in :mod:`fastconv.nn.conv`, the poolings in :mod:`fastconv.nn.pooling`)."""

from __future__ import annotations

import math

import numpy as np

from .. import _backend
from . import lanes
from .init import default_bias, kaiming_uniform
from .module import Module, Parameter, Window, array_module, check_input, saved


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
        check_input("Linear", x, 2)
        if x.shape[1] != self.weight.data.shape[1]:
            raise ValueError(f"Linear: input has {x.shape[1]} features, the layer takes "
                             f"{self.weight.data.shape[1]} (input shape {x.shape})")
        self._x = x
        y = x @ self.weight.data.T
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward(self, grad_output):
        x = saved("Linear", self._x, "input")
        self.weight.accumulate(grad_output.T @ x)
        if self.bias is not None:
            self.bias.accumulate(grad_output.sum(axis=0))
        return grad_output @ self.weight.data

    def output_shape(self, input_shape):
        if input_shape[-1] != self.weight.data.shape[1]:
            raise ValueError(f"Linear: input has {input_shape[-1]} features, the layer takes "
                             f"{self.weight.data.shape[1]} (input shape {tuple(input_shape)})")
        return (*input_shape[:-1], self.weight.data.shape[0])

    def macs(self, input_shape):
        return math.prod(input_shape) * self.weight.data.shape[0]

    def windows(self, input_shape):
        return None  # every output sees every input: the spatial part ends

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
        return grad_output.reshape(saved("Flatten", self._shape, "input shape"))

    def output_shape(self, input_shape):
        return (*input_shape[:self.start_dim], math.prod(input_shape[self.start_dim:]))

    def windows(self, input_shape):
        return None  # the spatial axes are gone


class _ElementWise(Module):
    """An activation, computed element by element: it takes lane arrays as they are."""

    lane_layer = True

    def takes_lanes(self, x):
        return True

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def windows(self, input_shape):
        return (Window(1, 1, 0),) * (len(input_shape) - 2)


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
        y = saved("Sigmoid", self._y, "output")
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
                                 saved("ReLU", self._positive, "input"))


class Tanh(_ElementWise):
    """The hyperbolic tangent."""

    def __init__(self):
        super().__init__()
        self._y = None

    def forward(self, x):
        self._y = lanes.elementwise(lambda a: array_module(a).tanh(a), x)
        return self._y

    def backward(self, grad_output):
        return lanes.elementwise(_tanh_backward, saved("Tanh", self._y, "output"), grad_output)


def _tanh_backward(y, grad_output):
    g = y * y
    xp = array_module(g)
    xp.subtract(1, g, out=g)
    g *= grad_output
    return g
