"""The primitives of the ``cupy`` backend, written against a *device*: an array module and a
way to launch the kernels of ``cuda_kernels.cu``.

On the GPU the device is CuPy (:mod:`.cupy_gpu`: arrays in GPU memory, kernels compiled by
NVRTC, GEMMs by cuBLAS through ``cupy.matmul``). The test suite also runs this module on a
host device (the same CUDA source compiled as C++, NumPy arrays), so that every line here is
checked against PyTorch on machines without a GPU.

A device has ``xp`` (the array module) and ``launch(kernel, dtype, total, *args)``, which runs
``kernel`` with at least ``total`` threads in all; integer arguments are passed as 64-bit.

Convolutions with enough work per output element go through packing (``im2col``) and one
batched GEMM per chunk of images; the others (depthwise ones, LeNet's first layer) run direct
kernels. Every kernel gathers, so results do not depend on thread scheduling.
"""

from __future__ import annotations

import math

import numpy as np

# The packed operand of one call stays within this, or within the output's size if larger.
CHUNK_BYTES = 64 << 20

# Below this many multiply-adds per output element and group (input channels x taps x output
# channels), packing costs more than the GEMM saves, as on the CPU (``_numba_gemm``).
GEMM_MIN_WORK = 32


def conv_geometry(in_shape, k_out, out_size, kernel, stride, pad_lo, dilation, groups):
    """The ``CONV_GEOMETRY`` arguments of the kernels, in their order."""
    return (*in_shape, k_out, *out_size, *kernel, *stride, *pad_lo, *dilation, groups)


def pool_geometry(in_shape, out_size, kernel, stride, pad_lo, dilation=(1, 1, 1)):
    """The ``POOL_GEOMETRY`` arguments: planes, sizes in and out, window."""
    return (in_shape[0] * in_shape[1], *in_shape[2:], *out_size, *kernel, *stride, *pad_lo,
            *dilation)


def uses_gemm(out_per_group, in_per_group, kernel):
    """Whether packing + GEMM is worth it: more than one input channel per group, and enough
    multiply-adds per output element."""
    return in_per_group > 1 and out_per_group * in_per_group * math.prod(kernel) >= GEMM_MIN_WORK


def image_chunks(n_images, bytes_per_image, out_bytes):
    """Ranges of images whose packed operand fits ``max(CHUNK_BYTES, out_bytes)``."""
    per = max(1, max(CHUNK_BYTES, out_bytes) // max(bytes_per_image, 1))
    return [(n0, min(n_images, n0 + per)) for n0 in range(0, n_images, per)]


class GpuOps:
    """The primitives of :mod:`fastconv.backends.reference` on ``device``'s arrays."""

    def __init__(self, device):
        self.device = device
        self.xp = device.xp

    def _launch(self, kernel, dtype, total, *args):
        if total:
            self.device.launch(kernel, dtype, total, *args)

    def _with_bias(self, y, bias):
        if bias is not None:
            y += self.xp.asarray(bias).reshape(1, -1, 1, 1, 1)
        return y

    # ------------------------------------------------------------------ convolution

    def conv_forward(self, x, w, stride, pad_lo, dilation, groups, out_size, bias=None):
        xp = self.xp
        n_b, c_in = x.shape[:2]
        k_out, kernel = w.shape[0], w.shape[2:]
        y = xp.empty((n_b, k_out, *out_size), dtype=x.dtype)
        geometry = conv_geometry(x.shape, k_out, out_size, kernel, stride, pad_lo, dilation,
                                 groups)
        cg, kg = c_in // groups, k_out // groups
        if not uses_gemm(kg, cg, kernel):
            self._launch("conv_direct", x.dtype, y.size, x, w, y, *geometry)
            return self._with_bias(y, bias)
        taps, outs = math.prod(kernel), math.prod(out_size)
        w3 = w.reshape(groups, kg, cg * taps)
        for n0, n1 in image_chunks(n_b, c_in * taps * outs * x.itemsize, y.nbytes):
            cols = xp.empty((n1 - n0, c_in * taps, outs), dtype=x.dtype)
            self._launch("im2col", x.dtype, cols.size, x, cols, n0, n1 - n0, *geometry)
            xp.matmul(w3, cols.reshape(n1 - n0, groups, cg * taps, outs),
                      out=y[n0:n1].reshape(n1 - n0, groups, kg, outs))
        return self._with_bias(y, bias)

    def conv_transpose_forward(self, x, w, stride, pad_lo, dilation, groups, out_size,
                               bias=None):
        xp = self.xp
        n_b, c_in = x.shape[:2]
        cog, kernel = w.shape[1], w.shape[2:]
        c_out, cig = cog * groups, c_in // groups
        y = xp.empty((n_b, c_out, *out_size), dtype=x.dtype)
        # the kernels' geometry describes the convolution whose adjoint this is: y is its input
        geometry = conv_geometry(y.shape, c_in, x.shape[2:], kernel, stride, pad_lo, dilation,
                                 groups)
        if not uses_gemm(cog, cig, kernel):
            self._launch("conv_transpose_direct", x.dtype, y.size, x, w, y, *geometry)
            return self._with_bias(y, bias)
        taps, ins = math.prod(kernel), math.prod(x.shape[2:])
        w_t = w.reshape(groups, cig, cog * taps).transpose(0, 2, 1)
        for n0, n1 in image_chunks(n_b, c_out * taps * ins * x.itemsize, y.nbytes):
            cols = xp.matmul(w_t, x[n0:n1].reshape(n1 - n0, groups, cig, ins))
            self._launch("col2im", x.dtype, (n1 - n0) * y[0].size, cols, y, n0, n1 - n0,
                         *geometry)
        return self._with_bias(y, bias)

    def conv_weight_grad(self, x, gy, stride, pad_lo, dilation, groups, kernel):
        xp = self.xp
        n_b, c_in = x.shape[:2]
        k_out, out_size = gy.shape[1], gy.shape[2:]
        cg, kg = c_in // groups, k_out // groups
        taps, outs = math.prod(kernel), math.prod(out_size)
        geometry = conv_geometry(x.shape, k_out, out_size, kernel, stride, pad_lo, dilation,
                                 groups)
        # the packed input holds the padding's zeros, and 0 * inf is NaN where PyTorch's sums
        # (and the direct kernel's) leave the padding out: a gy with NaN or Inf goes direct
        if not uses_gemm(kg, cg, kernel) or not bool(xp.isfinite(gy).all()):
            partial = xp.empty((n_b, k_out, cg, *kernel), dtype=x.dtype)
            self._launch("conv_weight_grad_direct", x.dtype, partial.size, x, gy, partial,
                         *geometry)
            return partial.sum(axis=0)
        gw = xp.zeros((groups, kg, cg * taps), dtype=x.dtype)
        for n0, n1 in image_chunks(n_b, c_in * taps * outs * x.itemsize, 0):
            cols = xp.empty((n1 - n0, c_in * taps, outs), dtype=x.dtype)
            self._launch("im2col", x.dtype, cols.size, x, cols, n0, n1 - n0, *geometry)
            cols4 = cols.reshape(n1 - n0, groups, cg * taps, outs)
            per_image = xp.matmul(gy[n0:n1].reshape(n1 - n0, groups, kg, outs),
                                  cols4.transpose(0, 1, 3, 2))
            gw += per_image.sum(axis=0)
        return gw.reshape(k_out, cg, *kernel)

    def bias_grad(self, gy):
        return gy.sum(axis=(0, 2, 3, 4))

    # ------------------------------------------------------------------ pooling

    def avg_pool_forward(self, x, kernel, stride, pad_lo, out_size, divisor):
        y = self.xp.empty((*x.shape[:2], *out_size), dtype=x.dtype)
        self._launch("avg_pool_forward", x.dtype, y.size, x, self._divisor(divisor, x.dtype), y,
                     *pool_geometry(x.shape, out_size, kernel, stride, pad_lo))
        return y

    def avg_pool_backward(self, gy, kernel, stride, pad_lo, in_size, divisor):
        gx = self.xp.empty((*gy.shape[:2], *in_size), dtype=gy.dtype)
        self._launch("avg_pool_backward", gy.dtype, gx.size, gy,
                     self._divisor(divisor, gy.dtype), gx,
                     *pool_geometry(gx.shape, gy.shape[2:], kernel, stride, pad_lo))
        return gx

    def _divisor(self, divisor, dtype):
        return self.xp.ascontiguousarray(self.xp.asarray(divisor, dtype=dtype))

    def max_pool_forward(self, x, kernel, stride, pad_lo, dilation, out_size, indices=True):
        shape = (*x.shape[:2], *out_size)
        y = self.xp.empty(shape, dtype=x.dtype)
        idx = self.xp.empty(shape, dtype=np.int64)
        self._launch("max_pool_forward", x.dtype, y.size, x, y, idx,
                     *pool_geometry(x.shape, out_size, kernel, stride, pad_lo, dilation))
        return y, (idx if indices else None)

    def max_pool_backward(self, gy, idx, in_size, window):
        gx = self.xp.empty((*gy.shape[:2], *in_size), dtype=gy.dtype)
        kernel, stride, pad_lo, dilation = window
        self._launch("max_pool_backward", gy.dtype, gx.size, gy,
                     self.xp.ascontiguousarray(idx, dtype=np.int64), gx,
                     *pool_geometry(gx.shape, gy.shape[2:], kernel, stride, pad_lo, dilation))
        return gx

    # ------------------------------------------------------------------ activations

    def sigmoid_forward(self, x):
        """``1 / (1 + exp(-x))``; ``exp`` overflowing to inf gives the right 0."""
        xp = self.xp
        y = xp.negative(x)
        with np.errstate(over="ignore"):  # NumPy on the host device; CuPy does not warn
            xp.exp(y, out=y)
        y += 1
        xp.reciprocal(y, out=y)
        return y

    def sigmoid_backward(self, y, gy):
        g = 1 - y
        g *= y
        g *= gy
        return g
