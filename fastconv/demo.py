"""A short tour of fastconv on the textbook examples (what ``make demo`` runs for now)."""

from __future__ import annotations

import time

import numpy as np

import fastconv as fc
from fastconv._compiling import CompileWatch


def edge_image():
    """The textbook 6x8 image: white (1) columns at both sides, black (0) in the middle."""
    X = np.ones((6, 8))
    X[:, 2:6] = 0
    return X


def learn_edge_kernel(X, Y, steps=10, lr=0.03, seed=0):
    """Learn a 1x2 kernel mapping ``X`` to ``Y`` with conv2d_backward and gradient descent."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((1, 1, 1, 2))
    x = X[None, None]
    losses = []
    for _ in range(steps):
        err = fc.conv2d(x, w) - Y[None, None]
        losses.append(float((err**2).sum()))
        _, grad_w, _ = fc.conv2d_backward(2 * err, x, w)
        w -= lr * grad_w
    return w[0, 0], losses


def run():
    print(f"fastconv {fc.__version__}, backends: {', '.join(fc.available_backends())}\n")

    X = np.arange(9.0).reshape(3, 3)
    K = np.arange(4.0).reshape(2, 2)
    print("corr2d(X, K) for the textbook 3x3 image and 2x2 kernel:")
    print(fc.corr2d(X, K), "\n")

    img = edge_image()
    edges = fc.corr2d(img, np.array([[1.0, -1.0]]))
    print("vertical edges of the 6x8 image with K = [[1, -1]] (1: white to black, -1: back):")
    print(edges.astype(int), "\n")

    w, losses = learn_edge_kernel(img, edges, steps=10)
    print("learning that kernel back with conv2d_backward and gradient descent:")
    print(f"  loss {losses[0]:.3f} -> {losses[-1]:.5f}; learned K = {np.round(w, 3)}\n")

    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 1, 28, 28)).astype(np.float32)
    w1 = rng.standard_normal((6, 1, 5, 5)).astype(np.float32)

    def first_layer():
        y = fc.conv2d(x, w1, padding=2)
        fc.conv2d_backward(np.ones_like(y), x, w1, padding=2)
        return y

    for backend in fc.available_backends():
        with fc.use_backend(backend), CompileWatch(announce=print) as compiling:
            first_layer()  # untimed: numba compiles its kernels on their first use
            start = time.perf_counter()
            y = first_layer()
            seconds = time.perf_counter() - start
        note = f" (after {compiling.seconds:.1f} s of compiling)" if compiling.seconds else ""
        print(f"LeNet's first layer, batch 256, forward + backward on {backend:>5}: "
              f"{seconds * 1e3:7.1f} ms -> {y.shape}{note}")
