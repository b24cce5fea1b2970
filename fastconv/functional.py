"""Public ops: validate once, lift to three spatial axes, pick the backend, compose primitives.

Every op here is built from the eight backend primitives (see
:mod:`fastconv.backends.reference`) through the dualities of convolution:

- conv's input gradient is a transposed conv of ``grad_output``; a transposed conv's input
  gradient is a conv; one weight-gradient kernel serves both;
- average pooling and its gradient are primitives of their own (window sums over their
  divisors and the adjoint; the reference computes them as a depthwise conv with a kernel of
  ones and the matching transposed conv);
- 1-D and 2-D ops are 3-D ops on views with singleton leading spatial axes (no copy).

Layouts follow PyTorch: inputs ``(N, C, *spatial)`` (or ``(C, *spatial)`` unbatched), conv
weights ``(C_out, C_in // groups, *kernel)``, transposed-conv weights
``(C_in, C_out // groups, *kernel)``.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import numpy as np

from . import _backend
from . import _params as P
from ._padding import pad, pad_backward

__all__ = [
    "corr2d",
    "conv1d", "conv2d", "conv3d",
    "conv1d_backward", "conv2d_backward", "conv3d_backward",
    "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "conv_transpose1d_backward", "conv_transpose2d_backward", "conv_transpose3d_backward",
    "max_pool1d", "max_pool2d", "max_pool3d",
    "max_pool1d_backward", "max_pool2d_backward", "max_pool3d_backward",
    "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "avg_pool1d_backward", "avg_pool2d_backward", "avg_pool3d_backward",
    "conv_output_shape", "conv_transpose_output_shape", "pool_output_shape",
]

# --------------------------------------------------------------------------- plumbing


def _lazy(*arrays):
    """Whether a call takes the Dask path (its input or ``grad_output`` is a Dask array)."""
    return any(P.is_dask(a) for a in arrays)


def _dask():
    from . import _dask  # imported on first use: Dask is an optional extra

    return _dask


def _backend_for(fn, **arrays):
    """Check the arrays (type, float dtype, one device) and return the backend module."""
    xp = P.array_namespace(fn, **arrays)
    P.check_float(fn, **arrays)
    return _backend.resolve(fn, xp)


def _to5d(a, nd, batched=True):
    """Contiguous 5-D view ``(N, C, D, H, W)`` of a batched or unbatched nd-D array (NumPy or
    CuPy; a copy only where ``a`` is not contiguous)."""
    if not a.flags.c_contiguous:
        a = a.copy()
    if not batched:
        a = a[None]
    return a.reshape(a.shape[:2] + (1,) * (P.SPATIAL - nd) + a.shape[2:])


def _from5d(a, nd, batched):
    a = a.reshape(a.shape[:2] + a.shape[2 + P.SPATIAL - nd:])
    return a if batched else a[0]


def _output_shape(x, nd, batched, channels, size):
    lead = x.shape[:1] if batched else ()
    return lead + (channels,) + tuple(size[P.SPATIAL - nd:])


def _padded_input(x5, spec):
    """Apply a non-zero padding mode explicitly; zero padding stays implicit in the kernels."""
    if spec.padding_mode == "zeros":
        return x5, spec.pad_lo
    return pad(x5, spec.padding, spec.padding_mode), (0, 0, 0)


# --------------------------------------------------------------------------- convolution


def _conv(fn, nd, x, weight, bias, stride, padding, dilation, groups, padding_mode):
    if _lazy(x):
        return _dask().conv(fn, nd, x, weight, bias, stride, padding, dilation, groups,
                            padding_mode)
    be = _backend_for(fn, input=x, weight=weight, bias=bias)
    spec = P.conv_spec(fn, nd, x, weight, bias, stride, padding, dilation, groups, padding_mode)
    x5, pad_lo = _padded_input(_to5d(x, nd, spec.batched), spec)
    y = be.conv_forward(x5, _to5d(weight, nd), spec.stride, pad_lo, spec.dilation, spec.groups,
                        spec.out_size, bias)
    return _from5d(y, nd, spec.batched)


def _conv_backward(fn, nd, grad_output, x, weight, stride, padding, dilation, groups,
                   padding_mode, input_grad=True):
    if _lazy(grad_output, x):
        return _dask().conv_backward(fn, nd, grad_output, x, weight, stride, padding, dilation,
                                     groups, padding_mode, input_grad)
    be = _backend_for(fn, input=x, weight=weight, grad_output=grad_output)
    spec = P.conv_spec(fn, nd, x, weight, None, stride, padding, dilation, groups, padding_mode)
    P.check_grad_output(fn, grad_output,
                        _output_shape(x, nd, spec.batched, weight.shape[0], spec.out_size),
                        x.dtype)
    gy = _to5d(grad_output, nd, spec.batched)
    w5 = _to5d(weight, nd)
    x5, pad_lo = _padded_input(_to5d(x, nd, spec.batched), spec)
    gx = None
    with _one_copy_of(be, gy):  # both gradients read grad_output
        if input_grad:
            gx = be.conv_transpose_forward(gy, w5, spec.stride, pad_lo, spec.dilation,
                                           spec.groups, x5.shape[2:])
            if spec.padding_mode != "zeros":
                gx = pad_backward(gx, spec.padding, spec.padding_mode)
            gx = _from5d(gx, nd, spec.batched)
        gw = be.conv_weight_grad(x5, gy, spec.stride, pad_lo, spec.dilation, spec.groups,
                                 spec.kernel)
    return gx, gw.reshape(weight.shape), be.bias_grad(gy)


def _one_copy_of(be, array):
    """The backend's block within which its calls copy ``array`` into a layout of theirs
    once, where it has one (``numba``: the grouped kernels' copies)."""
    return getattr(be, "one_copy_of", contextlib.nullcontext)(array)


def _conv_transpose(fn, nd, x, weight, bias, stride, padding, output_padding, groups, dilation):
    if _lazy(x):
        return _dask().conv_transpose(fn, nd, x, weight, bias, stride, padding, output_padding,
                                      groups, dilation)
    be = _backend_for(fn, input=x, weight=weight, bias=bias)
    spec = P.conv_transpose_spec(fn, nd, x, weight, bias, stride, padding, output_padding,
                                 groups, dilation)
    y = be.conv_transpose_forward(_to5d(x, nd, spec.batched), _to5d(weight, nd), spec.stride,
                                  spec.pad_lo, spec.dilation, spec.groups, spec.out_size, bias)
    return _from5d(y, nd, spec.batched)


def _conv_transpose_backward(fn, nd, grad_output, x, weight, stride, padding, output_padding,
                             groups, dilation):
    if _lazy(grad_output, x):
        return _dask().conv_transpose_backward(fn, nd, grad_output, x, weight, stride, padding,
                                               output_padding, groups, dilation)
    be = _backend_for(fn, input=x, weight=weight, grad_output=grad_output)
    spec = P.conv_transpose_spec(fn, nd, x, weight, None, stride, padding, output_padding,
                                 groups, dilation)
    P.check_grad_output(fn, grad_output,
                        _output_shape(x, nd, spec.batched, weight.shape[1] * spec.groups,
                                      spec.out_size),
                        x.dtype)
    gy = _to5d(grad_output, nd, spec.batched)
    x5, w5 = _to5d(x, nd, spec.batched), _to5d(weight, nd)
    with _one_copy_of(be, gy):  # both gradients read grad_output
        gx = be.conv_forward(gy, w5, spec.stride, spec.pad_lo, spec.dilation, spec.groups,
                             spec.in_size)
        gw = be.conv_weight_grad(gy, x5, spec.stride, spec.pad_lo, spec.dilation,
                                 spec.groups, spec.kernel)
    return _from5d(gx, nd, spec.batched), gw.reshape(weight.shape), be.bias_grad(gy)


# --------------------------------------------------------------------------- pooling


def _max_pool(fn, nd, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    if _lazy(x):
        return _dask().max_pool(fn, nd, x, kernel_size, stride, padding, dilation, ceil_mode,
                                return_indices)
    be = _backend_for(fn, input=x)
    spec = P.pool_spec(fn, nd, x, kernel_size, stride, padding, dilation, ceil_mode)
    y, idx = be.max_pool_forward(_to5d(x, nd, spec.batched), spec.kernel, spec.stride,
                                 spec.padding, spec.dilation, spec.out_size, return_indices)
    y = _from5d(y, nd, spec.batched)
    return (y, _from5d(idx, nd, spec.batched)) if return_indices else y


def _max_pool_backward(fn, nd, grad_output, x, kernel_size, stride, padding, dilation,
                       ceil_mode, indices):
    if _lazy(grad_output, x):
        return _dask().max_pool_backward(fn, nd, grad_output, x, kernel_size, stride, padding,
                                         dilation, ceil_mode, indices)
    be = _backend_for(fn, input=x, grad_output=grad_output)
    spec = P.pool_spec(fn, nd, x, kernel_size, stride, padding, dilation, ceil_mode)
    out_shape = _output_shape(x, nd, spec.batched, x.shape[-nd - 1], spec.out_size)
    P.check_grad_output(fn, grad_output, out_shape, x.dtype)
    if indices is None:
        _, idx = be.max_pool_forward(_to5d(x, nd, spec.batched), spec.kernel, spec.stride,
                                     spec.padding, spec.dilation, spec.out_size)
    else:
        P.array_namespace(fn, indices=indices)
        if indices.dtype.kind not in "iu" or tuple(indices.shape) != out_shape:
            raise ValueError(f"{fn}: indices must be an integer array of the output's shape "
                             f"{out_shape}, got dtype {indices.dtype} and shape {indices.shape}")
        idx = _to5d(indices.astype(np.int64, copy=False), nd, spec.batched)
    gx = be.max_pool_backward(_to5d(grad_output, nd, spec.batched), idx, spec.in_size,
                              (spec.kernel, spec.stride, spec.padding, spec.dilation))
    return _from5d(gx, nd, spec.batched)


def _avg_pool(fn, nd, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
              divisor_override):
    if _lazy(x):
        return _dask().avg_pool(fn, nd, x, kernel_size, stride, padding, ceil_mode,
                                count_include_pad, divisor_override)
    be = _backend_for(fn, input=x)
    spec, divisor = P.avg_pool_setup(fn, nd, x, kernel_size, stride, padding, ceil_mode,
                                     count_include_pad, divisor_override)
    y = be.avg_pool_forward(_to5d(x, nd, spec.batched), spec.kernel, spec.stride, spec.padding,
                            spec.out_size, divisor)
    return _from5d(y, nd, spec.batched)


def _avg_pool_backward(fn, nd, grad_output, x, kernel_size, stride, padding, ceil_mode,
                       count_include_pad, divisor_override):
    if _lazy(grad_output, x):
        return _dask().avg_pool_backward(fn, nd, grad_output, x, kernel_size, stride, padding,
                                         ceil_mode, count_include_pad, divisor_override)
    be = _backend_for(fn, input=x, grad_output=grad_output)
    spec, divisor = P.avg_pool_setup(fn, nd, x, kernel_size, stride, padding, ceil_mode,
                                     count_include_pad, divisor_override)
    channels = x.shape[-nd - 1]
    P.check_grad_output(fn, grad_output,
                        _output_shape(x, nd, spec.batched, channels, spec.out_size), x.dtype)
    gx = be.avg_pool_backward(_to5d(grad_output, nd, spec.batched), spec.kernel, spec.stride,
                              spec.padding, spec.in_size, divisor)
    return _from5d(gx, nd, spec.batched)


# --------------------------------------------------------------------------- public wrappers
# The 1-D, 2-D and 3-D functions are thin wrappers with explicit signatures (so that help()
# and IDEs show the arguments); their docstrings are filled from the templates below.


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    return _conv("conv1d", 1, x, weight, bias, stride, padding, dilation, groups, padding_mode)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    return _conv("conv2d", 2, x, weight, bias, stride, padding, dilation, groups, padding_mode)


def conv3d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    return _conv("conv3d", 3, x, weight, bias, stride, padding, dilation, groups, padding_mode)


def conv1d_backward(grad_output, x, weight, stride=1, padding=0, dilation=1, groups=1,
                    padding_mode="zeros", *, input_grad=True):
    return _conv_backward("conv1d_backward", 1, grad_output, x, weight, stride, padding,
                          dilation, groups, padding_mode, input_grad)


def conv2d_backward(grad_output, x, weight, stride=1, padding=0, dilation=1, groups=1,
                    padding_mode="zeros", *, input_grad=True):
    return _conv_backward("conv2d_backward", 2, grad_output, x, weight, stride, padding,
                          dilation, groups, padding_mode, input_grad)


def conv3d_backward(grad_output, x, weight, stride=1, padding=0, dilation=1, groups=1,
                    padding_mode="zeros", *, input_grad=True):
    return _conv_backward("conv3d_backward", 3, grad_output, x, weight, stride, padding,
                          dilation, groups, padding_mode, input_grad)


def conv_transpose1d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1):
    return _conv_transpose("conv_transpose1d", 1, x, weight, bias, stride, padding,
                           output_padding, groups, dilation)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1):
    return _conv_transpose("conv_transpose2d", 2, x, weight, bias, stride, padding,
                           output_padding, groups, dilation)


def conv_transpose3d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1):
    return _conv_transpose("conv_transpose3d", 3, x, weight, bias, stride, padding,
                           output_padding, groups, dilation)


def conv_transpose1d_backward(grad_output, x, weight, stride=1, padding=0, output_padding=0,
                              groups=1, dilation=1):
    return _conv_transpose_backward("conv_transpose1d_backward", 1, grad_output, x, weight,
                                    stride, padding, output_padding, groups, dilation)


def conv_transpose2d_backward(grad_output, x, weight, stride=1, padding=0, output_padding=0,
                              groups=1, dilation=1):
    return _conv_transpose_backward("conv_transpose2d_backward", 2, grad_output, x, weight,
                                    stride, padding, output_padding, groups, dilation)


def conv_transpose3d_backward(grad_output, x, weight, stride=1, padding=0, output_padding=0,
                              groups=1, dilation=1):
    return _conv_transpose_backward("conv_transpose3d_backward", 3, grad_output, x, weight,
                                    stride, padding, output_padding, groups, dilation)


def max_pool1d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    return _max_pool("max_pool1d", 1, x, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    return _max_pool("max_pool2d", 2, x, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices)


def max_pool3d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    return _max_pool("max_pool3d", 3, x, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices)


def max_pool1d_backward(grad_output, x, kernel_size, stride=None, padding=0, dilation=1,
                        ceil_mode=False, indices=None):
    return _max_pool_backward("max_pool1d_backward", 1, grad_output, x, kernel_size, stride,
                              padding, dilation, ceil_mode, indices)


def max_pool2d_backward(grad_output, x, kernel_size, stride=None, padding=0, dilation=1,
                        ceil_mode=False, indices=None):
    return _max_pool_backward("max_pool2d_backward", 2, grad_output, x, kernel_size, stride,
                              padding, dilation, ceil_mode, indices)


def max_pool3d_backward(grad_output, x, kernel_size, stride=None, padding=0, dilation=1,
                        ceil_mode=False, indices=None):
    return _max_pool_backward("max_pool3d_backward", 3, grad_output, x, kernel_size, stride,
                              padding, dilation, ceil_mode, indices)


def avg_pool1d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    return _avg_pool("avg_pool1d", 1, x, kernel_size, stride, padding, ceil_mode,
                     count_include_pad, divisor_override)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    return _avg_pool("avg_pool2d", 2, x, kernel_size, stride, padding, ceil_mode,
                     count_include_pad, divisor_override)


def avg_pool3d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    return _avg_pool("avg_pool3d", 3, x, kernel_size, stride, padding, ceil_mode,
                     count_include_pad, divisor_override)


def avg_pool1d_backward(grad_output, x, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, divisor_override=None):
    return _avg_pool_backward("avg_pool1d_backward", 1, grad_output, x, kernel_size, stride,
                              padding, ceil_mode, count_include_pad, divisor_override)


def avg_pool2d_backward(grad_output, x, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, divisor_override=None):
    return _avg_pool_backward("avg_pool2d_backward", 2, grad_output, x, kernel_size, stride,
                              padding, ceil_mode, count_include_pad, divisor_override)


def avg_pool3d_backward(grad_output, x, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, divisor_override=None):
    return _avg_pool_backward("avg_pool3d_backward", 3, grad_output, x, kernel_size, stride,
                              padding, ceil_mode, count_include_pad, divisor_override)


# --------------------------------------------------------------------------- textbook corr2d


def corr2d(X, K):
    """Single-channel 2-D cross-correlation of an image ``X`` with a kernel ``K`` (no padding).

    The textbook operation: ``Y[i, j] = sum_{a, b} X[i + a, j + b] * K[a, b]``.

    Parameters
    ----------
    X : array_like, shape (H, W)
        The image. Integer and boolean inputs are computed in float64; float32 stays float32.
    K : array_like, shape (kh, kw)
        The kernel; no larger than ``X``.

    Returns
    -------
    numpy.ndarray, shape (H - kh + 1, W - kw + 1)

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.corr2d(np.arange(9.0).reshape(3, 3), np.arange(4.0).reshape(2, 2))
    array([[19., 25.],
           [37., 43.]])
    """
    if _lazy(X):  # a Dask image: the kernel stays in memory, NumPy or CuPy
        K = K if P.is_cupy(K) else np.asarray(K)
    else:
        xp = np
        if P.is_cupy(X) or P.is_cupy(K):
            xp = P.array_namespace("corr2d", X=X, K=K)  # both CuPy arrays, or a TypeError
        X, K = xp.asarray(X), xp.asarray(K)
    for arg, a in (("X", X), ("K", K)):
        if a.ndim != 2:
            raise ValueError(f"corr2d: {arg} must be 2-D, got shape {a.shape}")
        if a.dtype.kind not in "biuf":
            raise TypeError(f"corr2d: {arg} must hold real numbers, got dtype {a.dtype}")
    if K.shape[0] > X.shape[0] or K.shape[1] > X.shape[1] or 0 in K.shape:
        raise ValueError(f"corr2d: kernel K of shape {K.shape} must be non-empty and no larger "
                         f"than X of shape {X.shape}")
    dtype = np.result_type(X.dtype, K.dtype, np.float32)
    if dtype not in P.FLOAT_DTYPES:
        dtype = np.dtype(np.float64)
    return conv2d(X.astype(dtype)[None, None], K.astype(dtype)[None, None])[0, 0]


# --------------------------------------------------------------------------- shape helpers


def _shaped(shape):
    shape = tuple(int(s) for s in shape)
    return SimpleNamespace(shape=shape, ndim=len(shape))


def conv_output_shape(input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1):
    """Shape of ``conv{1,2,3}d``'s output, without computing it.

    Parameters
    ----------
    input_shape : tuple of int
        ``(N, C_in, *spatial)`` or ``(C_in, *spatial)``.
    weight_shape : tuple of int
        ``(C_out, C_in // groups, *kernel)``; its length fixes the number of spatial axes.
    stride, padding, dilation, groups
        As for :func:`conv2d`.

    Returns
    -------
    tuple of int

    Examples
    --------
    >>> conv_output_shape((256, 1, 28, 28), (6, 1, 5, 5), padding=2)
    (256, 6, 28, 28)
    """
    x, w = _shaped(input_shape), _shaped(weight_shape)
    nd = w.ndim - 2
    spec = P.conv_spec("conv_output_shape", nd, x, w, None, stride, padding, dilation, groups,
                       "zeros")
    return _output_shape(x, nd, spec.batched, w.shape[0], spec.out_size)


def conv_transpose_output_shape(input_shape, weight_shape, stride=1, padding=0,
                                output_padding=0, groups=1, dilation=1):
    """Shape of ``conv_transpose{1,2,3}d``'s output, without computing it.

    Parameters
    ----------
    input_shape : tuple of int
        ``(N, C_in, *spatial)`` or ``(C_in, *spatial)``.
    weight_shape : tuple of int
        ``(C_in, C_out // groups, *kernel)``; its length fixes the number of spatial axes.
    stride, padding, output_padding, groups, dilation
        As for :func:`conv_transpose2d`.

    Returns
    -------
    tuple of int

    Examples
    --------
    >>> conv_transpose_output_shape((64, 128, 16, 16), (128, 64, 4, 4), stride=2, padding=1)
    (64, 64, 32, 32)
    """
    x, w = _shaped(input_shape), _shaped(weight_shape)
    nd = w.ndim - 2
    spec = P.conv_transpose_spec("conv_transpose_output_shape", nd, x, w, None, stride, padding,
                                 output_padding, groups, dilation)
    return _output_shape(x, nd, spec.batched, w.shape[1] * spec.groups, spec.out_size)


def pool_output_shape(input_shape, kernel_size, stride=None, padding=0, dilation=1,
                      ceil_mode=False):
    """Shape of a pooling op's output, without computing it.

    Parameters
    ----------
    input_shape : tuple of int
        ``(N, C, *spatial)``; with a tuple ``kernel_size`` also ``(C, *spatial)``.
    kernel_size : int or tuple of int
        A tuple's length fixes the number of spatial axes; an int means all axes after ``N, C``.
    stride, padding, dilation, ceil_mode
        As for :func:`max_pool2d` (average pooling has ``dilation=1``).

    Returns
    -------
    tuple of int

    Examples
    --------
    >>> pool_output_shape((32, 64, 112, 112), 3, stride=2, padding=1)
    (32, 64, 56, 56)
    """
    x = _shaped(input_shape)
    nd = len(kernel_size) if isinstance(kernel_size, (tuple, list)) else x.ndim - 2
    if nd < 1:
        raise ValueError(f"pool_output_shape: input_shape {x.shape} has no spatial axis")
    spec = P.pool_spec("pool_output_shape", nd, x, kernel_size, stride, padding, dilation,
                       ceil_mode)
    return _output_shape(x, nd, spec.batched, x.shape[-nd - 1], spec.out_size)


# --------------------------------------------------------------------------- docstrings

_AXES = {1: "L", 2: "H, W", 3: "D, H, W"}

_CONV_DOC = """{n}-D convolution (cross-correlation, as ``torch.nn.functional.conv{n}d``).

Parameters
----------
x : numpy.ndarray, shape (N, C_in, {axes}) or (C_in, {axes})
    Input, float32 or float64; any memory layout.
weight : numpy.ndarray, shape (C_out, C_in // groups, {kaxes})
    Filters, same dtype as ``x``.
bias : numpy.ndarray, shape (C_out,), optional
stride, dilation : int or tuple of {n} ints
padding : int, tuple of {n} ints, tuple of {n} (lo, hi) pairs, 'valid' or 'same'
    Zero-padding added on both sides; ``(lo, hi)`` pairs pad asymmetrically (an extension
    beyond PyTorch). ``'same'`` gives ``ceil(in / stride)`` outputs; an odd total padding
    puts the extra element on the high side. At stride 1 that is PyTorch's ``'same'``; above
    it (an extension: PyTorch rejects it) TensorFlow's and Keras's rule.
groups : int
    Split channels into this many independent groups (``groups == C_in`` is depthwise).
padding_mode : {{'zeros', 'reflect', 'replicate', 'circular'}}
    How the padding is filled (``torch.nn.Conv{n}d``'s ``padding_mode``).

Returns
-------
numpy.ndarray, shape (N, C_out, {oaxes}), dtype of ``x``

See Also
--------
conv{n}d_backward, conv_output_shape
"""

_CONV_BACKWARD_DOC = """Gradients of :func:`conv{n}d` (what PyTorch's autograd returns).

Parameters
----------
grad_output : numpy.ndarray, shape of ``conv{n}d(x, weight, ...)``
x, weight, stride, padding, dilation, groups, padding_mode
    The arguments of the forward call.
input_grad : bool, keyword-only
    ``False`` skips the gradient with respect to ``x`` (``grad_x`` is then ``None``), as for
    a network's first layer, whose input needs none.

Returns
-------
grad_x : numpy.ndarray, shape of ``x``, or None
grad_weight : numpy.ndarray, shape of ``weight``
grad_bias : numpy.ndarray, shape (C_out,)
    The gradient a bias would have had (the sum of ``grad_output`` over all but channels).
"""

_CONV_TRANSPOSE_DOC = """{n}-D transposed convolution (``torch.nn.functional.conv_transpose{n}d``).

The adjoint of :func:`conv{n}d`: each input element scatters ``x * weight`` over a window.
Output size per axis: ``(in - 1) * stride - 2 * padding + dilation * (k - 1)
+ output_padding + 1``.

Parameters
----------
x : numpy.ndarray, shape (N, C_in, {axes}) or (C_in, {axes})
    Input, float32 or float64; any memory layout.
weight : numpy.ndarray, shape (C_in, C_out // groups, {kaxes})
bias : numpy.ndarray, shape (C_out,), optional
stride, padding, output_padding, dilation : int or tuple of {n} ints
    ``output_padding`` must be smaller than either ``stride`` or ``dilation``.
groups : int

Returns
-------
numpy.ndarray, shape (N, C_out, {oaxes}), dtype of ``x``

See Also
--------
conv_transpose{n}d_backward, conv_transpose_output_shape
"""

_CONV_TRANSPOSE_BACKWARD_DOC = """Gradients of :func:`conv_transpose{n}d`.

Parameters
----------
grad_output : numpy.ndarray, shape of ``conv_transpose{n}d(x, weight, ...)``
x, weight, stride, padding, output_padding, groups, dilation
    The arguments of the forward call.

Returns
-------
grad_x : numpy.ndarray, shape of ``x``
grad_weight : numpy.ndarray, shape of ``weight``
grad_bias : numpy.ndarray, shape (C_out,)
"""

_MAX_POOL_DOC = """{n}-D max pooling (``torch.nn.functional.max_pool{n}d``).

Parameters
----------
x : numpy.ndarray, shape (N, C, {axes}) or (C, {axes})
kernel_size : int or tuple of {n} ints
stride : int or tuple of {n} ints, optional
    Defaults to ``kernel_size``.
padding : int or tuple of {n} ints
    Implicit ``-inf`` padding, at most half of ``kernel_size``.
dilation : int or tuple of {n} ints
ceil_mode : bool
    Round the output size up, keeping a last partial window unless it would start inside
    the right padding.
return_indices : bool
    Also return, for each output, the flat index of the chosen element within its input
    plane (``{axes}`` flattened), as PyTorch does.

Returns
-------
y : numpy.ndarray, shape (N, C, {oaxes})
indices : numpy.ndarray of int64, same shape (only with ``return_indices``)

Notes
-----
NaN propagates as in PyTorch: a window holding a NaN yields NaN (the index of its last NaN).
"""

_MAX_POOL_BACKWARD_DOC = """Gradient of :func:`max_pool{n}d` with respect to ``x``.

Parameters
----------
grad_output : numpy.ndarray, shape of ``max_pool{n}d(x, ...)``
x, kernel_size, stride, padding, dilation, ceil_mode
    The arguments of the forward call.
indices : numpy.ndarray of int, optional
    The indices the forward call returned; recomputed from ``x`` when omitted.

Returns
-------
grad_x : numpy.ndarray, shape of ``x``
"""

_AVG_POOL_DOC = """{n}-D average pooling (``torch.nn.functional.avg_pool{n}d``).

Parameters
----------
x : numpy.ndarray, shape (N, C, {axes}) or (C, {axes})
kernel_size : int or tuple of {n} ints
stride : int or tuple of {n} ints, optional
    Defaults to ``kernel_size``.
padding : int or tuple of {n} ints
    Implicit zero padding, at most half of ``kernel_size``.
ceil_mode : bool
count_include_pad : bool
    Count padded zeros in each window's divisor.
divisor_override : int, optional
    Divide every window's sum by this instead.

Returns
-------
numpy.ndarray, shape (N, C, {oaxes})
"""

_AVG_POOL_BACKWARD_DOC = """Gradient of :func:`avg_pool{n}d` with respect to ``x``.

Parameters
----------
grad_output : numpy.ndarray, shape of ``avg_pool{n}d(x, ...)``
x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    The arguments of the forward call.

Returns
-------
grad_x : numpy.ndarray, shape of ``x``
"""


def _fill_docstrings():
    templates = {
        "conv{n}d": _CONV_DOC,
        "conv{n}d_backward": _CONV_BACKWARD_DOC,
        "conv_transpose{n}d": _CONV_TRANSPOSE_DOC,
        "conv_transpose{n}d_backward": _CONV_TRANSPOSE_BACKWARD_DOC,
        "max_pool{n}d": _MAX_POOL_DOC,
        "max_pool{n}d_backward": _MAX_POOL_BACKWARD_DOC,
        "avg_pool{n}d": _AVG_POOL_DOC,
        "avg_pool{n}d_backward": _AVG_POOL_BACKWARD_DOC,
    }
    for pattern, template in templates.items():
        for n in (1, 2, 3):
            axes = _AXES[n]
            kaxes = ", ".join("k" + a.strip() for a in axes.split(","))
            oaxes = ", ".join("O" + a.strip() for a in axes.split(","))
            globals()[pattern.format(n=n)].__doc__ = template.format(
                n=n, axes=axes, kaxes=kaxes, oaxes=oaxes)


_fill_docstrings()
