"""Models built from :mod:`fastconv.nn`."""

from __future__ import annotations

import numpy as np

from . import nn
from .nn.init import kaiming_uniform, xavier_uniform

VARIANTS = ("classic", "modern")


def lenet(variant="classic", dtype=np.float32, rng=None):
    """LeNet-5 for 28x28 single-channel images and 10 classes.

    Parameters
    ----------
    variant : {"classic", "modern"}
        ``"classic"``: the textbook network (sigmoid, average pooling, 6 and 16 channels of
        5x5 kernels, dense layers 120-84-10), weights Xavier-uniform. ``"modern"``: the same
        shape with ReLU and max pooling, weights Kaiming-uniform for ReLU.
    dtype : dtype
        Of the parameters.
    rng : numpy.random.Generator, optional
        For the initial weights (fixed by a seed for reproducible runs).

    Returns
    -------
    fastconv.nn.Sequential
        Its first layer has ``input_grad = False``: ``backward`` returns ``None`` instead of
        the gradient with respect to the images (set it to ``True`` to get that).
    """
    if variant not in VARIANTS:
        raise ValueError(f"lenet: variant must be one of {VARIANTS}, got {variant!r}")
    rng = np.random.default_rng() if rng is None else rng
    classic = variant == "classic"
    act = nn.Sigmoid if classic else nn.ReLU

    def pool():
        return nn.AvgPool2d(2, 2) if classic else nn.MaxPool2d(2, 2)

    def make(layer, *args):
        return layer(*args, dtype=dtype, rng=rng)

    model = nn.Sequential(
        make(nn.Conv2d, 1, 6, 5, 1, 2), act(), pool(),
        make(nn.Conv2d, 6, 16, 5), act(), pool(),
        nn.Flatten(),
        make(nn.Linear, 16 * 5 * 5, 120), act(),
        make(nn.Linear, 120, 84), act(),
        make(nn.Linear, 84, 10),
    )
    model[0].input_grad = False  # nothing upstream of the images needs their gradient
    for p_name, p in model.named_parameters():
        if p_name.endswith("weight"):
            p.data[...] = (xavier_uniform(p.data.shape, rng=rng, dtype=dtype) if classic else
                           kaiming_uniform(p.data.shape, nonlinearity="relu", rng=rng,
                                           dtype=dtype))
    return model
