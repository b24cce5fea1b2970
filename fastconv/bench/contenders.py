"""The implementations a case is timed with: fastconv's backends and the peers a user would
otherwise pick (PyTorch, SciPy's correlate2d, the textbook Python loop).

Each contender is a forward closure and, where it has one, a forward + backward closure over
the same fresh random data.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import fastconv

from .cases import Case


@dataclass
class Contender:
    name: str
    forward: Callable
    both: Callable | None  # forward and every gradient, or None (forward-only peers)
    is_fastconv: bool = False


def make_data(case: Case, dtype, rng):
    """Random operands (never zeros): input, weight, bias, and an upstream gradient."""
    x = rng.standard_normal(case.x_shape).astype(dtype)
    w = b = None
    if case.w_shape is not None:
        w = rng.standard_normal(case.w_shape).astype(dtype)
        if case.kind != "corr2d":
            b = rng.standard_normal(case.out_shape()[1]).astype(dtype)
    gy = rng.standard_normal(case.out_shape()).astype(dtype)
    return x, w, b, gy


def fastconv_contender(case: Case, data, backend):
    x, w, b, gy = data
    use = fastconv.use_backend
    if case.kind == "corr2d":
        def forward():
            with use(backend):
                return fastconv.corr2d(x, w)
        return Contender(f"fastconv-{backend}", forward, None, True)

    op = getattr(fastconv, case.op)
    back = getattr(fastconv, f"{case.op}_backward")
    kw = case.kwargs
    convolution = case.kind in ("conv", "conv_transpose")
    operands = (x, w, b) if convolution else (x,)
    grad_inputs = (gy, x, w) if convolution else (gy, x)

    def forward():
        with use(backend):
            return op(*operands, **kw)

    def both():
        with use(backend):
            if case.kind == "max_pool":  # keep the indices, as PyTorch's autograd does
                _, idx = op(x, **kw, return_indices=True)
                return back(gy, x, **kw, indices=idx)
            op(*operands, **kw)
            return back(*grad_inputs, **kw)

    return Contender(f"fastconv-{backend}", forward, both, True)


def torch_contender(case: Case, data):
    import torch
    import torch.nn.functional as TF

    x, w, b, gy = (None if a is None else torch.from_numpy(a) for a in data)
    if case.kind == "corr2d":
        x4, w4 = x[None, None], w[None, None]

        def forward():
            with torch.no_grad():
                return TF.conv2d(x4, w4)
        return Contender("torch", forward, None)

    op = getattr(TF, case.op)
    kw = {k: v for k, v in case.kwargs.items() if k != "padding_mode"}
    leaves = [t.clone().requires_grad_() for t in (x, w, b) if t is not None]
    operands = [x, w, b] if w is not None else [x]

    def forward():
        with torch.no_grad():
            return op(*operands, **kw)

    def both():
        for leaf in leaves:
            leaf.grad = None
        op(*leaves, **kw).backward(gy)

    return Contender("torch", forward, both)


def scipy_contender(case: Case, data):
    """``scipy.signal.correlate2d`` per image and filter: only for single-channel 2-D cases."""
    from scipy.signal import correlate2d

    x, w, b, _ = data
    if case.kind == "corr2d":
        return Contender("scipy", lambda: correlate2d(x, w, mode="valid"), None)
    pads = case.kwargs.get("padding", 0)
    xp = np.pad(x, ((0, 0), (0, 0), (pads, pads), (pads, pads)))

    def forward():
        out = np.empty(case.out_shape(), dtype=x.dtype)
        for n in range(x.shape[0]):
            for k in range(w.shape[0]):
                out[n, k] = correlate2d(xp[n, 0], w[k, 0], mode="valid") + b[k]
        return out

    return Contender("scipy", forward, None)


def textbook_loop(X, K):
    """The textbook's corr2d: two Python loops over output positions."""
    h, w = K.shape
    Y = np.zeros((X.shape[0] - h + 1, X.shape[1] - w + 1), dtype=X.dtype)
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            Y[i, j] = (X[i:i + h, j:j + w] * K).sum()
    return Y


def _scipy_fits(case: Case):
    if case.kind == "corr2d":
        return True
    kw = case.kwargs
    return (case.op == "conv2d" and case.x_shape[1] == 1 and kw.get("groups", 1) == 1
            and kw.get("stride", 1) == 1 and kw.get("dilation", 1) == 1
            and isinstance(kw.get("padding", 0), int)
            and kw.get("padding_mode", "zeros") == "zeros")


def contenders_for(case: Case, data, backends, peers=True):
    """fastconv on each backend, then the peers installed here that can compute the case."""
    found = [fastconv_contender(case, data, b) for b in backends]
    if peers and importlib.util.find_spec("torch") is not None:
        found.append(torch_contender(case, data))
    if peers and _scipy_fits(case):
        found.append(scipy_contender(case, data))
    if peers and case.kind == "corr2d":
        found.append(Contender("textbook-loop", lambda: textbook_loop(data[0], data[1]), None))
    return found
