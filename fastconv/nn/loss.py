"""Losses."""

from __future__ import annotations

from .module import array_module


class SoftmaxCrossEntropy:
    """Softmax followed by the negative log-likelihood of the true classes, averaged over the
    batch: ``torch.nn.functional.cross_entropy`` with integer targets.

    The log-softmax is computed as ``z - max(z) - log(sum(exp(z - max(z))))``, so no
    exponential overflows; the gradient with respect to the logits is
    ``(softmax(z) - onehot(target)) / N``.

    Examples
    --------
    >>> loss_fn = SoftmaxCrossEntropy()
    >>> loss = loss_fn(logits, labels)      # a float
    >>> grad_logits = loss_fn.backward()    # the gradient to pass to the model's backward
    """

    def __init__(self):
        self._probs = self._target = None

    def __call__(self, logits, target):
        return self.forward(logits, target)

    def forward(self, logits, target):
        if getattr(logits, "ndim", None) != 2:
            raise ValueError("SoftmaxCrossEntropy: logits must be (N, classes), got shape "
                             f"{getattr(logits, 'shape', type(logits).__name__)}")
        if getattr(target, "shape", None) != logits.shape[:1] or target.dtype.kind not in "iu":
            raise ValueError("SoftmaxCrossEntropy: target must be integer class indices of shape "
                             f"{logits.shape[:1]}, got {getattr(target, 'dtype', '?')} "
                             f"{getattr(target, 'shape', type(target).__name__)}")
        xp = array_module(logits)
        n, classes = logits.shape
        if n and (int(target.min()) < 0 or int(target.max()) >= classes):
            raise ValueError(f"SoftmaxCrossEntropy: target values must lie in [0, {classes}), "
                             f"got [{int(target.min())}, {int(target.max())}]")
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = xp.exp(shifted)
        total = exp.sum(axis=1, keepdims=True)
        log_probs = shifted - xp.log(total)
        self._probs, self._target = exp / total, target
        return float(-log_probs[xp.arange(n), target].mean())

    def backward(self):
        """Gradient of the last loss with respect to the logits."""
        if self._probs is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward: call the loss first")
        xp = array_module(self._probs)
        grad = self._probs.copy()
        n = grad.shape[0]
        grad[xp.arange(n), self._target] -= 1
        grad /= max(n, 1)
        return grad
