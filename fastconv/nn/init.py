"""Weight initialisation, as ``torch.nn.init`` computes fans and bounds."""

from __future__ import annotations

import math

import numpy as np


def _fans(shape):
    """PyTorch's fans: dimension 1 times the receptive field in, dimension 0 times it out."""
    if len(shape) < 2:
        raise ValueError(f"init: fans need an array of at least 2 dimensions, got shape {shape}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _uniform(shape, bound, rng, dtype):
    rng = np.random.default_rng() if rng is None else rng
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def xavier_uniform(shape, gain=1.0, rng=None, dtype=np.float32):
    """U(-b, b) with ``b = gain * sqrt(6 / (fan_in + fan_out))`` (Glorot and Bengio, 2010).

    Parameters
    ----------
    shape : tuple of int
        The weight's shape, (out, in, *kernel) for convolutions, (out, in) for linear layers.
    gain : float
        Scale for the nonlinearity that follows.
    rng : numpy.random.Generator, optional
        Source of randomness (a fresh one if omitted).
    dtype : dtype
        Of the array returned.
    """
    fan_in, fan_out = _fans(shape)
    return _uniform(shape, gain * math.sqrt(6.0 / (fan_in + fan_out)), rng, dtype)


def kaiming_uniform(shape, a=0.0, nonlinearity="leaky_relu", mode="fan_in", rng=None,
                    dtype=np.float32):
    """U(-b, b) with ``b = gain * sqrt(3 / fan)`` (He et al., 2015), ``gain`` that of
    ``nonlinearity`` (``"relu"``: sqrt(2); ``"leaky_relu"`` with slope ``a``:
    sqrt(2 / (1 + a^2)); ``"linear"``, ``"sigmoid"``: 1; ``"tanh"``: 5/3) and ``fan`` the
    fan-in or fan-out (``mode``). PyTorch's default for convolutions and linear layers is
    ``a=sqrt(5)``."""
    gains = {"relu": math.sqrt(2.0), "leaky_relu": math.sqrt(2.0 / (1 + a * a)),
             "linear": 1.0, "sigmoid": 1.0, "tanh": 5.0 / 3}
    if nonlinearity not in gains:
        raise ValueError(f"kaiming_uniform: nonlinearity must be one of {sorted(gains)}, "
                         f"got {nonlinearity!r}")
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"kaiming_uniform: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _fans(shape)
    fan = fan_in if mode == "fan_in" else fan_out
    return _uniform(shape, gains[nonlinearity] * math.sqrt(3.0 / fan), rng, dtype)


def default_bias(fan_in, size, rng=None, dtype=np.float32):
    """PyTorch's default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return _uniform((size,), 1.0 / math.sqrt(fan_in) if fan_in else 0.0, rng, dtype)
