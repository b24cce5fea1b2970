"""The base of every layer: parameters, train/eval mode, state dictionaries, and Sequential.

There is no autograd tape. A layer's ``forward`` keeps what its ``backward`` needs; ``backward``
takes the gradient of the loss with respect to the layer's output, adds the gradients of its
parameters into their ``grad`` and returns the gradient with respect to its input.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._params import array_module, is_cupy, is_dask
from . import lanes
from .lazy import forward_blocks


def to_numpy(a):
    """``a`` as a NumPy array (copied from the GPU for a CuPy array)."""
    return a.get() if is_cupy(a) else np.asarray(a)


def device_module(device):
    """The array module of ``device``: ``"cpu"`` (NumPy) or ``"cuda"`` (CuPy)."""
    if device == "cpu":
        return np
    if device in ("cuda", "gpu"):
        import cupy

        return cupy
    raise ValueError(f"unknown device {device!r}; use 'cpu' or 'cuda'")


def check_input(layer, x, ndim):
    """A ``ValueError`` naming ``layer`` unless ``x`` has ``ndim`` dimensions."""
    if getattr(x, "ndim", None) != ndim:
        raise ValueError(f"{layer}: expected a {ndim}-D input, got shape "
                         f"{getattr(x, 'shape', type(x).__name__)}")


def saved(layer, value, what):
    """``value``, kept by ``layer``'s forward for its backward; a ``RuntimeError`` if none."""
    if value is None:
        raise RuntimeError(f"{layer}.backward: no {what} saved; call forward first")
    return value


class Window(NamedTuple):
    """What one output element of a layer sees along one spatial axis of its input, in input
    elements: the receptive-field arithmetic's three numbers.

    ``size``: from the first input it sees to the last (dilation's gaps included); ``stride``:
    how far apart neighbouring outputs' windows are (below 1 for a transposed convolution);
    ``centre``: where the first output's window is centred (negative into the padding).
    """

    size: float
    stride: float
    centre: float

    @classmethod
    def sliding(cls, kernel, stride, pad_lo, dilation):
        """The window of a convolution or a pooling: ``kernel`` taps ``dilation`` apart,
        ``stride`` apart, the first one starting ``pad_lo`` elements into the padding."""
        extent = dilation * (kernel - 1)
        return cls(extent + 1, stride, extent / 2 - pad_lo)


class Parameter:
    """A trainable array (``data``) and the gradient accumulated into it (``grad``, ``None``
    until a backward pass fills it or after :meth:`Module.zero_grad`)."""

    __slots__ = ("data", "grad")

    def __init__(self, data):
        self.data = data
        self.grad = None

    def accumulate(self, grad):
        """Add ``grad`` into :attr:`grad` (gradients of several backward passes add up)."""
        if self.grad is None:
            self.grad = grad
        else:
            self.grad += grad

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class of layers and models.

    Subclasses set their :class:`Parameter` attributes and list their names in
    ``parameter_names``; containers list their sub-modules in ``children``.
    """

    parameter_names: tuple[str, ...] = ()
    # Whether the layer may take lane arrays (see takes_lanes), and whether a Sequential may
    # start a run of such layers at it (see fastconv.nn.lanes)
    lane_layer = False
    starts_lanes = False

    def __init__(self):
        self.training = True
        self.children: list[tuple[str, Module]] = []

    def takes_lanes(self, x):
        """Whether ``forward`` takes ``x`` as a :class:`fastconv.nn.lanes.LaneArray` (and
        ``backward`` its gradient likewise); layers that cannot say ``False``."""
        return False

    def fuses_backward(self, grad_output, preceding):
        """Whether ``backward_fused(grad_output, preceding)`` computes this layer's backward
        and then ``preceding``'s in one pass over memory (a Sequential asks before calling
        ``backward`` on two neighbouring layers); ``False`` unless a layer can."""
        return False

    def forward(self, x):
        raise NotImplementedError

    def backward(self, grad_output):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    @property
    def layer_name(self):
        """The layer's class name, for messages."""
        return type(self).__name__

    def output_shape(self, input_shape):
        """The shape of :meth:`forward`'s output for an input of ``input_shape``, without
        computing it (for :func:`fastconv.nn.summary`)."""
        raise NotImplementedError(f"{self.layer_name} does not say its output shape")

    def macs(self, input_shape):
        """Multiply-adds of one forward pass on an input of ``input_shape`` (0: none)."""
        return 0

    def windows(self, input_shape):
        """Per spatial axis, the :class:`Window` an output element sees of the input; ``None``
        where every output sees the whole input (the spatial part of the network ends)."""
        raise NotImplementedError(f"{self.layer_name} does not say what its outputs see")

    def named_parameters(self, prefix=""):
        """``(name, Parameter)`` pairs, this module's first, then its children's, in order."""
        for name in self.parameter_names:
            p = getattr(self, name)
            if p is not None:
                yield prefix + name, p
        for child_name, child in self.children:
            yield from child.named_parameters(f"{prefix}{child_name}.")

    def parameters(self):
        """The trainable parameters, in a fixed order (that of :meth:`named_parameters`)."""
        return [p for _, p in self.named_parameters()]

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def train(self, mode=True):
        """Set training mode (``mode=False``: evaluation mode) here and in every child."""
        self.training = mode
        for _, child in self.children:
            child.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def to(self, device):
        """Move the parameters to ``device`` (``"cpu"``: NumPy arrays, ``"cuda"``: CuPy arrays,
        for the ``cupy`` backend); gradients are dropped. Returns the module."""
        xp = device_module(device)
        for p in self.parameters():
            p.data = xp.asarray(p.data) if xp is not np else to_numpy(p.data)
            p.grad = None
        return self

    def state_dict(self):
        """Copies of the parameter arrays by name, e.g. ``{"0.weight": ..., "0.bias": ...}``
        (on the parameters' device)."""
        return {name: p.data.copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state):
        """Copy the arrays of ``state`` into the parameters; names, shapes and dtypes must match
        exactly (a ``ValueError`` says which do not). The values may be NumPy arrays for a
        model on the GPU."""
        own = dict(self.named_parameters())
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"load_state_dict: missing {missing}, unexpected {unexpected}")
        for name, p in own.items():
            value = state[name]
            if tuple(value.shape) != tuple(p.data.shape) or value.dtype != p.data.dtype:
                raise ValueError(
                    f"load_state_dict: {name} has shape {tuple(value.shape)} and dtype "
                    f"{value.dtype}, the model's {tuple(p.data.shape)} and {p.data.dtype}")
            p.data[...] = array_module(p.data).asarray(value)

    def __repr__(self):
        if not self.children:
            return f"{type(self).__name__}({self.extra_repr()})"
        inner = "\n".join(f"  ({name}): {child!r}" for name, child in self.children)
        return f"{type(self).__name__}(\n{inner}\n)"

    def extra_repr(self):
        return ""


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse.

    On the ``numba`` backend, runs of neighbouring layers that can (``Conv2d`` at stride 1,
    the activations, ``AvgPool2d``) hand each other their activations in the batch-lane
    layout of the Numba kernels (:mod:`fastconv.nn.lanes`), and an ``AvgPool2d`` after a
    ``Sigmoid`` computes both backward passes in one kernel. Inputs, outputs and gradients
    seen from outside are arrays, with the same values as the layers called one by one.
    """

    def __init__(self, *layers):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: layer {i} is a {type(layer).__name__}, "
                                "not a fastconv.nn.Module")
        self.children = [(str(i), layer) for i, layer in enumerate(layers)]

    def __getitem__(self, i):
        return self.children[i][1]

    def __len__(self):
        return len(self.children)

    def output_shape(self, input_shape):
        for _, layer in self.children:
            input_shape = layer.output_shape(input_shape)
        return tuple(input_shape)

    def forward(self, x):
        if is_dask(x):  # in evaluation mode, the whole model per batch block
            return forward_blocks(self, x)
        # On the numba backend, runs of layers that take lanes hand each other lane arrays
        # (fastconv.nn.lanes): what is converted before which layer is kept for backward.
        layers = [layer for _, layer in self.children]
        self._converted = [None] * len(layers)
        for i, layer in enumerate(layers):
            if isinstance(x, lanes.LaneArray):
                if not layer.takes_lanes(x):
                    self._converted[i] = x
                    x = x.to_array()
            elif (layer.starts_lanes and i + 1 < len(layers) and lanes.numba_active(x)
                  and layers[i + 1].lane_layer and layer.takes_lanes(x)):
                x = lanes.start(x)
                self._converted[i] = "lanes"
            x = layer.forward(x)
        self._out = x if isinstance(x, lanes.LaneArray) else None
        return x.to_array() if self._out is not None else x

    def backward(self, grad_output):
        if getattr(self, "_out", None) is not None:
            grad_output = lanes.like(grad_output, self._out)
        layers = [layer for _, layer in self.children]
        converted = getattr(self, "_converted", [None] * len(layers))
        i = len(layers) - 1
        while i >= 0:
            layer = layers[i]
            if i > 0 and layer.fuses_backward(grad_output, layers[i - 1]):
                grad_output = layer.backward_fused(grad_output, layers[i - 1])
                i -= 1
            else:
                grad_output = layer.backward(grad_output)
            before = converted[i]
            if isinstance(before, lanes.LaneArray):
                grad_output = lanes.like(grad_output, before)
            elif before == "lanes" and grad_output is not None:
                grad_output = grad_output.to_array()
            i -= 1
        return grad_output
