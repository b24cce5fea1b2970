"""The implementations a case is timed with: fastconv's backends and the peers a user would
otherwise pick (PyTorch, SciPy's correlate2d, the textbook Python loop; PyTorch on CUDA for
the GPU backend).

Each contender is a forward closure and, where it has one, a forward + backward closure over
the same fresh random data. GPU contenders copy the data to the GPU once, and each of their
closures waits for the GPU to finish before it returns, so that timing a call times its work.
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
    on_gpu: bool = False

    @property
    def peer(self):
        """The contender its speed is compared with: PyTorch on the same device."""
        return "torch-cuda" if self.on_gpu else "torch"


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


def _synchronised(call):
    import cupy

    def run():
        out = call()
        cupy.cuda.get_current_stream().synchronize()
        return out

    return run


def fastconv_contender(case: Case, data, backend):
    on_gpu = backend == "cupy"
    if on_gpu:
        import cupy

        data = tuple(None if a is None else cupy.asarray(a) for a in data)
    x, w, b, gy = data
    use = fastconv.use_backend
    name = f"fastconv-{backend}"
    if case.kind == "corr2d":
        def forward():
            with use(backend):
                return fastconv.corr2d(x, w)
        return Contender(name, _synchronised(forward) if on_gpu else forward, None, True,
                         on_gpu)

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

    if on_gpu:
        return Contender(name, _synchronised(forward), _synchronised(both), True, True)
    return Contender(name, forward, both, True)


def torch_contender(case: Case, data, device="cpu"):
    """PyTorch on ``device`` ("cpu" or "cuda": cuDNN, each call synchronised)."""
    import torch
    import torch.nn.functional as TF

    x, w, b, gy = (None if a is None else torch.from_numpy(a).to(device) for a in data)
    on_gpu = device == "cuda"
    name = "torch-cuda" if on_gpu else "torch"

    def contender(forward, both):
        if not on_gpu:
            return Contender(name, forward, both)

        def synchronised(call):
            def run():
                out = call()
                torch.cuda.synchronize()
                return out
            return run

        return Contender(name, synchronised(forward), both and synchronised(both),
                         on_gpu=True)

    if case.kind == "corr2d":
        x4, w4 = x[None, None], w[None, None]

        def forward():
            with torch.no_grad():
                return TF.conv2d(x4, w4)
        return contender(forward, None)

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

    return contender(forward, both)


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


def _torch_cuda():
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def contenders_for(case: Case, data, backends, peers=True):
    """fastconv on each backend, then the peers installed here that can compute the case:
    the CPU peers when a CPU backend is timed, PyTorch on CUDA when the GPU backend is."""
    found = [fastconv_contender(case, data, b) for b in backends]
    cpu = any(b != "cupy" for b in backends)
    if peers and cpu and importlib.util.find_spec("torch") is not None:
        found.append(torch_contender(case, data))
    if peers and "cupy" in backends and _torch_cuda():
        found.append(torch_contender(case, data, "cuda"))
    if peers and cpu and _scipy_fits(case):
        found.append(scipy_contender(case, data))
    if peers and cpu and case.kind == "corr2d":
        found.append(Contender("textbook-loop", lambda: textbook_loop(data[0], data[1]), None))
    return found
