"""Optimisers, with PyTorch's update rules (``torch.optim.SGD`` and ``torch.optim.Adam``)."""

from __future__ import annotations

import math

import numpy as np

from .module import array_module


class Optimizer:
    """Base: a list of :class:`~fastconv.nn.module.Parameter` and per-parameter state."""

    def __init__(self, parameters, lr):
        self.params = list(parameters)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: no parameters to optimise")
        if lr <= 0:
            raise ValueError(f"{type(self).__name__}: lr must be positive, got {lr}")
        self.lr = lr

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        raise NotImplementedError

    def _gradients(self, weight_decay):
        """``(index, parameter, gradient + weight_decay * parameter)`` for each parameter
        that has a gradient."""
        for i, p in enumerate(self.params):
            if p.grad is not None:
                yield i, p, (p.grad + weight_decay * p.data if weight_decay else p.grad)

    def state_dict(self):
        """The state arrays by name (e.g. ``"momentum.3"`` for parameter 3), for checkpoints."""
        return {}

    def _like(self, i, saved):
        """A checkpoint's state array for parameter ``i``, on that parameter's device."""
        return None if saved is None else array_module(self.params[i].data).asarray(saved).copy()

    def load_state_dict(self, state):
        own = self.state_dict()
        if set(own) != set(state) and own:
            raise ValueError(f"{type(self).__name__}.load_state_dict: expected entries "
                             f"{sorted(own)}, got {sorted(state)}")


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and weight decay.

    ``g = grad + weight_decay * p``; with momentum, ``b = momentum * b + g`` (``b = g`` at
    the first step) and ``g = b``; then ``p -= lr * g``.
    """

    def __init__(self, parameters, lr, momentum=0.0, weight_decay=0.0):
        super().__init__(parameters, lr)
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: momentum ({momentum}) and weight_decay ({weight_decay}) "
                             "must not be negative")
        self.momentum, self.weight_decay = momentum, weight_decay
        self.buffers = [None] * len(self.params)

    def step(self):
        for i, p, g in self._gradients(self.weight_decay):
            if self.momentum:
                if self.buffers[i] is None:
                    self.buffers[i] = g.copy()
                else:
                    self.buffers[i] *= self.momentum
                    self.buffers[i] += g
                g = self.buffers[i]
            p.data -= self.lr * g

    def state_dict(self):
        return {f"momentum.{i}": b for i, b in enumerate(self.buffers) if b is not None}

    def load_state_dict(self, state):
        for i in range(len(self.params)):
            self.buffers[i] = self._like(i, state.get(f"momentum.{i}"))


class Adam(Optimizer):
    """Adam (Kingma and Ba, 2015) with bias correction, as ``torch.optim.Adam``."""

    def __init__(self, parameters, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(parameters, lr)
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"Adam: betas must lie in [0, 1), got {betas}")
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.t = 0
        self.m = [None] * len(self.params)
        self.v = [None] * len(self.params)

    def step(self):
        self.t += 1
        b1, b2 = self.betas
        correction1 = 1 - b1**self.t
        correction2 = 1 - b2**self.t
        for i, p, g in self._gradients(self.weight_decay):
            if self.m[i] is None:
                self.m[i] = (1 - b1) * g
                self.v[i] = (1 - b2) * g * g
            else:
                self.m[i] *= b1
                self.m[i] += (1 - b1) * g
                self.v[i] *= b2
                self.v[i] += (1 - b2) * g * g
            denom = (self.v[i] ** 0.5) / math.sqrt(correction2) + self.eps
            p.data -= (self.lr / correction1) * self.m[i] / denom

    def state_dict(self):
        state = {f"m.{i}": m for i, m in enumerate(self.m) if m is not None}
        state.update({f"v.{i}": v for i, v in enumerate(self.v) if v is not None})
        if self.t:
            state["t"] = np.array(self.t)
        return state

    def load_state_dict(self, state):
        self.t = int(state["t"]) if "t" in state else 0
        for i in range(len(self.params)):
            self.m[i] = self._like(i, state.get(f"m.{i}"))
            self.v[i] = self._like(i, state.get(f"v.{i}"))
