"""Neural-network layers with hand-written backward passes, on fastconv's primitives.

A model is a :class:`Module` (usually a :class:`Sequential`); training is explicit::

    logits = model.forward(x)
    loss = loss_fn(logits, labels)
    model.zero_grad()
    model.backward(loss_fn.backward())
    optimizer.step()

:func:`summary` prints a model's shapes, parameters, multiply-adds and receptive fields.
"""

from .conv import (
    Conv1d,
    Conv2d,
    Conv3d,
    ConvTranspose1d,
    ConvTranspose2d,
    ConvTranspose3d,
)
from .init import kaiming_uniform, xavier_uniform
from .layers import Flatten, Linear, ReLU, Sigmoid, Tanh
from .loss import SoftmaxCrossEntropy
from .module import Module, Parameter, Sequential, Window
from .optim import SGD, Adam, Optimizer
from .pooling import (
    AdaptiveAvgPool1d,
    AdaptiveAvgPool2d,
    AdaptiveAvgPool3d,
    AvgPool1d,
    AvgPool2d,
    AvgPool3d,
    MaxPool1d,
    MaxPool2d,
    MaxPool3d,
)
from .summary import Summary, summary

__all__ = [
    "Adam", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AvgPool1d",
    "AvgPool2d", "AvgPool3d", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d",
    "ConvTranspose2d", "ConvTranspose3d", "Flatten", "Linear", "MaxPool1d", "MaxPool2d",
    "MaxPool3d", "Module", "Optimizer", "Parameter", "ReLU", "SGD", "Sequential", "Sigmoid",
    "SoftmaxCrossEntropy", "Summary", "Tanh", "Window", "kaiming_uniform", "summary",
    "xavier_uniform",
]
