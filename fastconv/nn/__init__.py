"""Neural-network layers with hand-written backward passes, on fastconv's primitives.

A model is a :class:`Module` (usually a :class:`Sequential`); training is explicit::

    logits = model.forward(x)
    loss = loss_fn(logits, labels)
    model.zero_grad()
    model.backward(loss_fn.backward())
    optimizer.step()
"""

from .init import kaiming_uniform, xavier_uniform
from .layers import (
    AvgPool2d,
    Conv2d,
    ConvTranspose2d,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sigmoid,
    Tanh,
)
from .loss import SoftmaxCrossEntropy
from .module import Module, Parameter, Sequential
from .optim import SGD, Adam, Optimizer

__all__ = [
    "Adam", "AvgPool2d", "Conv2d", "ConvTranspose2d", "Flatten", "Linear", "MaxPool2d",
    "Module", "Optimizer", "Parameter", "ReLU", "SGD", "Sequential", "Sigmoid",
    "SoftmaxCrossEntropy", "Tanh", "kaiming_uniform", "xavier_uniform",
]
