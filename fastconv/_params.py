"""Argument rules: normalisation, validation, output sizes and error messages.

Every public op validates here once; what leaves this module is canonical: integer tuples over
three spatial axes (1-D and 2-D ops are lifted by prepending singleton axes), ``(lo, hi)`` padding
pairs, and arrays known to be floating point of one dtype. Kernels never see a string, a ``None``
or a bad shape.
"""

from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass

import numpy as np

SPATIAL = 3  # every op runs on (N, C, D, H, W) internally
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


# --------------------------------------------------------------------------- output-size rules


def conv_output_size(size, kernel, stride=1, pad_lo=0, pad_hi=0, dilation=1):
    """Length of one spatial axis after a convolution (PyTorch's rule, floor division)."""
    return (size + pad_lo + pad_hi - dilation * (kernel - 1) - 1) // stride + 1


def conv_transpose_output_size(size, kernel, stride=1, pad_lo=0, pad_hi=0, dilation=1,
                               output_padding=0):
    """Length of one spatial axis after a transposed convolution."""
    return (size - 1) * stride - pad_lo - pad_hi + dilation * (kernel - 1) + output_padding + 1


def pool_output_size(size, kernel, stride, padding=0, dilation=1, ceil_mode=False):
    """Length of one spatial axis after pooling.

    With ``ceil_mode`` a last, partial window is kept unless it would start inside the right
    padding (PyTorch's rule).
    """
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


# --------------------------------------------------------------------------- small validators


def _fail(fn, message, exc=ValueError):
    raise exc(f"{fn}: {message}")


def _is_int(value):
    # a plain int first: this runs several times per call, and a call at batch 1 is short
    return type(value) is int or (isinstance(value, numbers.Integral)
                                  and not isinstance(value, (bool, np.bool_)))


def int_tuple(fn, arg, value, nd, minimum):
    """``value`` as a tuple of ``nd`` ints, each ``>= minimum``: an int is repeated."""
    if type(value) is int and value >= minimum:  # the common case, without the general checks
        return (value,) * nd
    if _is_int(value):
        values = (int(value),) * nd
    elif isinstance(value, (tuple, list)) and all(_is_int(v) for v in value):
        values = tuple(int(v) for v in value)
        if len(values) == 1:
            values = values * nd
        if len(values) != nd:
            _fail(fn, f"{arg} must be an int or a tuple of {nd} ints, got {value!r}")
    else:
        _fail(fn, f"{arg} must be an int or a tuple of {nd} ints, got {value!r}", TypeError)
    if any(v < minimum for v in values):
        word = "positive" if minimum == 1 else "non-negative"
        _fail(fn, f"{arg} must be {word}, got {value!r}")
    return values


def lift(values, fill):
    """Prepend ``fill`` so that a per-axis tuple covers all three spatial axes."""
    return (fill,) * (SPATIAL - len(values)) + tuple(values)


def is_cupy(a):
    """Whether ``a`` is a CuPy array (told by its type's module: CuPy need not be imported)."""
    return type(a).__module__.startswith("cupy")


def is_dask(a):
    """Whether ``a`` is a Dask array (told by its type's module: Dask need not be imported)."""
    return type(a).__module__.startswith("dask.")


def array_module(a):
    """NumPy, or CuPy for a CuPy array: the module whose functions take ``a``."""
    if is_cupy(a):
        import cupy

        return cupy
    return np


def array_namespace(fn, **arrays):
    """Return the array module (NumPy, or CuPy) of the given arrays; ``None`` values are skipped.

    Raises ``TypeError`` for non-arrays and for a mix of NumPy and CuPy arrays.
    """
    module = None
    for arg, a in arrays.items():
        if a is None:
            continue
        if isinstance(a, np.ndarray):
            mod = np
        elif is_cupy(a):
            import cupy

            mod = cupy
        else:
            _fail(fn, f"{arg} must be a NumPy or CuPy array, got {type(a).__name__}", TypeError)
        if module is not None and mod is not module:
            _fail(fn, "cannot mix NumPy and CuPy arrays in one call; move them to one device "
                      "first (cupy.asarray / cupy.asnumpy)", TypeError)
        module = mod
    return module


def check_float(fn, dtype=None, **arrays):
    """Check that the arrays are float32 or float64 and share one dtype; return that dtype."""
    for arg, a in arrays.items():
        if a is None:
            continue
        if a.dtype not in FLOAT_DTYPES:
            _fail(fn, f"{arg} must be float32 or float64, got dtype {a.dtype}", TypeError)
        if dtype is None:
            dtype = a.dtype
        elif a.dtype != dtype:
            _fail(fn, f"{arg} has dtype {a.dtype} but the input has dtype {dtype}; "
                      "cast one of them so the dtypes match", TypeError)
    return dtype


def check_batched(fn, x, nd):
    """Whether ``x`` has a batch axis: ``nd + 2`` dims (batched) or ``nd + 1`` (unbatched)."""
    if x.ndim not in (nd + 1, nd + 2):
        _fail(fn, f"input must have {nd + 2} dims (N, C, {_spatial_names(nd)}) or {nd + 1} "
                  f"(unbatched), got shape {x.shape}")
    if 0 in x.shape[-nd - 1:]:
        _fail(fn, f"only the batch axis of the input may be empty, got shape {x.shape}")
    return x.ndim == nd + 2


def _spatial_names(nd):
    return {1: "L", 2: "H, W", 3: "D, H, W"}[nd]


# --------------------------------------------------------------------------- padding


def conv_padding(fn, padding, nd, kernel, stride, dilation, in_size):
    """Normalise conv padding to ``nd`` ``(lo, hi)`` pairs.

    Accepts an int, a tuple of ``nd`` ints, a tuple of ``nd`` ``(lo, hi)`` pairs (an extension:
    asymmetric padding), ``"valid"`` or ``"same"``. ``"same"`` gives an output of
    ``ceil(in / stride)`` elements per axis, as in TensorFlow and Keras: total padding
    ``max((out - 1) * stride + dilation * (kernel - 1) + 1 - in, 0)``, the smaller half on the
    low side. At stride 1 that is PyTorch's ``"same"`` (which rejects other strides): total
    ``dilation * (kernel - 1)``, an odd extra element on the high side.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * nd
        if padding == "same":
            pairs = []
            for i, k, s, d in zip(in_size, kernel, stride, dilation):
                out = -(-i // s)
                total = max((out - 1) * s + d * (k - 1) + 1 - i, 0)
                pairs.append((total // 2, total - total // 2))
            return tuple(pairs)
        _fail(fn, f"padding must be 'valid', 'same', an int or a tuple, got {padding!r}")
    if (isinstance(padding, (tuple, list)) and len(padding) == nd
            and all(isinstance(p, (tuple, list)) for p in padding)):
        pairs = []
        for p in padding:
            lo_hi = int_tuple(fn, "padding", tuple(p), 2, 0)
            pairs.append(lo_hi)
        return tuple(pairs)
    return tuple((p, p) for p in int_tuple(fn, "padding", padding, nd, 0))


# --------------------------------------------------------------------------- specs

# Validated specs, kept per call signature: a spec depends on the arrays' type, shape and dtype
# and on the parameters alone, and validating took a small call 5-9 us of its 30-100 (a 3x3
# convolution of a 3 x 8 x 8 image: 29 us in all, 9 of them the spec). Only parameters of a
# few plain types are keys, each told apart by type as well as value (stride=True must fail as
# it did, not find stride=1's spec); any other call is validated afresh.
KEPT_SPECS = 1024


def _signature(args, arrays):
    """A key for the arguments of a spec function whose first ``arrays`` arguments are arrays
    (or ``None``), or ``None`` where a parameter is not plain."""
    parts = []
    for a in args[:arrays]:
        if a is not None and not hasattr(a, "shape"):
            return None  # not an array: validation says so
        parts.append(a if a is None else (type(a), a.shape, getattr(a, "dtype", None)))
    for a in args[arrays:]:
        kind = type(a)
        if kind is int or kind is str or a is None:
            parts.append(a)
        elif kind is bool:
            parts.append((bool, a))
        elif kind is tuple and all(type(v) is int for v in a):
            parts.append(a)
        else:
            return None
    return tuple(parts)


def kept(arrays):
    """Decorate ``spec_function(fn, nd, *args)``, whose first ``arrays`` arguments are arrays
    (or shape stand-ins, or ``None``), to compute once per signature (:func:`_signature`) and
    keep the result; a call that raises keeps nothing, so the next one raises too."""

    def decorate(spec_function):
        cache = {}

        @functools.wraps(spec_function)
        def spec(fn, nd, *args, **kwargs):
            key = None if kwargs else _signature(args, arrays)
            if key is None:
                return spec_function(fn, nd, *args, **kwargs)
            key = (fn, nd, key)
            found = cache.get(key)
            if found is None:
                found = spec_function(fn, nd, *args)
                if len(cache) >= KEPT_SPECS:
                    cache.clear()
                cache[key] = found
            return found

        return spec

    return decorate


@dataclass(frozen=True)
class ConvSpec:
    """A validated (transposed) convolution over three spatial axes.

    Sizes are for the convolution's own direction: ``in_size`` is the size of ``x`` and
    ``out_size`` the size of the result.
    """

    batched: bool
    stride: tuple
    padding: tuple  # ((lo, hi),) * 3
    dilation: tuple
    groups: int
    kernel: tuple
    in_size: tuple
    out_size: tuple
    padding_mode: str = "zeros"

    @property
    def pad_lo(self):
        return tuple(lo for lo, _ in self.padding)


@dataclass(frozen=True)
class PoolSpec:
    """A validated pooling over three spatial axes."""

    batched: bool
    kernel: tuple
    stride: tuple
    padding: tuple  # symmetric, one int per axis
    dilation: tuple
    ceil_mode: bool
    in_size: tuple
    out_size: tuple


def _check_weight(fn, weight, nd, what="weight"):
    if weight.ndim != nd + 2:
        _fail(fn, f"{what} must have {nd + 2} dims, got shape {weight.shape}")
    if 0 in weight.shape:
        _fail(fn, f"{what} has a zero dimension: shape {weight.shape}")


def _check_bias(fn, bias, channels):
    if bias is not None and bias.shape != (channels,):
        _fail(fn, f"bias must have shape ({channels},) to match the output channels, "
                  f"got {bias.shape}")


def _check_groups(fn, groups):
    if not _is_int(groups):
        _fail(fn, f"groups must be an int, got {groups!r}", TypeError)
    if groups < 1:
        _fail(fn, f"groups must be positive, got {groups}")
    return int(groups)


def _check_output_size(fn, out, x_shape, kernel, what="kernel"):
    if any(o <= 0 for o in out):
        _fail(fn, f"the output would be empty (size {tuple(out)}): the {what} {tuple(kernel)} "
                  f"is larger than the padded input (input shape {tuple(x_shape)})")


def _check_padding_mode(fn, mode, padding, in_size):
    if mode not in PADDING_MODES:
        _fail(fn, f"padding_mode must be one of {', '.join(PADDING_MODES)}, got {mode!r}")
    for (lo, hi), size in zip(padding, in_size):
        if mode == "reflect" and max(lo, hi) >= size:
            _fail(fn, f"padding_mode='reflect' needs padding smaller than the input size, got "
                      f"padding {(lo, hi)} for an axis of size {size}")
        if mode == "circular" and max(lo, hi) > size:
            _fail(fn, f"padding_mode='circular' needs padding at most the input size, got "
                      f"padding {(lo, hi)} for an axis of size {size}")


@kept(arrays=3)
def conv_spec(fn, nd, x, weight, bias, stride, padding, dilation, groups, padding_mode):
    """Validate a convolution call; weight is ``(C_out, C_in // groups, *kernel)``."""
    batched = check_batched(fn, x, nd)
    _check_weight(fn, weight, nd)
    groups = _check_groups(fn, groups)
    stride = int_tuple(fn, "stride", stride, nd, 1)
    dilation = int_tuple(fn, "dilation", dilation, nd, 1)
    kernel = tuple(weight.shape[2:])
    channels = x.shape[-nd - 1]
    out_channels, group_channels = weight.shape[:2]
    if channels % groups or out_channels % groups:
        _fail(fn, f"groups={groups} must divide both the input channels ({channels}) and the "
                  f"output channels ({out_channels}); weight shape {weight.shape}")
    if channels != group_channels * groups:
        _fail(fn, f"input has {channels} channels but weight expects {group_channels * groups} "
                  f"(weight shape {weight.shape}, groups={groups}; input shape {x.shape})")
    _check_bias(fn, bias, out_channels)
    in_size = tuple(x.shape[-nd:])
    pads = conv_padding(fn, padding, nd, kernel, stride, dilation, in_size)
    _check_padding_mode(fn, padding_mode, pads, in_size)
    out = tuple(conv_output_size(i, k, s, lo, hi, d)
                for i, k, s, (lo, hi), d in zip(in_size, kernel, stride, pads, dilation))
    _check_output_size(fn, out, x.shape, kernel)
    return ConvSpec(batched, lift(stride, 1), lift(pads, (0, 0)), lift(dilation, 1), groups,
                    lift(kernel, 1), lift(in_size, 1), lift(out, 1), padding_mode)


@kept(arrays=3)
def conv_transpose_spec(fn, nd, x, weight, bias, stride, padding, output_padding, groups,
                        dilation):
    """Validate a transposed convolution; weight is ``(C_in, C_out // groups, *kernel)``."""
    batched = check_batched(fn, x, nd)
    _check_weight(fn, weight, nd)
    groups = _check_groups(fn, groups)
    stride = int_tuple(fn, "stride", stride, nd, 1)
    dilation = int_tuple(fn, "dilation", dilation, nd, 1)
    if isinstance(padding, str):
        _fail(fn, f"padding must be an int or a tuple of {nd} ints (string padding such as "
                  f"{padding!r} is not defined for transposed convolution)")
    pads = int_tuple(fn, "padding", padding, nd, 0)
    output_padding = int_tuple(fn, "output_padding", output_padding, nd, 0)
    for op, s, d in zip(output_padding, stride, dilation):
        if op >= s and op >= d:
            _fail(fn, f"output_padding must be smaller than either stride or dilation, got "
                      f"output_padding={output_padding}, stride={stride}, dilation={dilation}")
    kernel = tuple(weight.shape[2:])
    channels = x.shape[-nd - 1]
    if channels != weight.shape[0]:
        _fail(fn, f"input has {channels} channels but weight expects {weight.shape[0]} "
                  f"(weight shape {weight.shape} is (C_in, C_out // groups, *kernel); "
                  f"input shape {x.shape})")
    if channels % groups:
        _fail(fn, f"groups={groups} must divide the input channels ({channels}); "
                  f"weight shape {weight.shape}")
    _check_bias(fn, bias, weight.shape[1] * groups)
    in_size = tuple(x.shape[-nd:])
    out = tuple(conv_transpose_output_size(i, k, s, p, p, d, op)
                for i, k, s, p, d, op in zip(in_size, kernel, stride, pads, dilation,
                                             output_padding))
    _check_output_size(fn, out, x.shape, kernel)
    return ConvSpec(batched, lift(stride, 1), lift(tuple((p, p) for p in pads), (0, 0)),
                    lift(dilation, 1), groups, lift(kernel, 1), lift(in_size, 1), lift(out, 1))


@kept(arrays=1)
def pool_spec(fn, nd, x, kernel_size, stride, padding, dilation, ceil_mode):
    """Validate a pooling call (``stride=None`` means ``stride=kernel_size``)."""
    batched = check_batched(fn, x, nd)
    kernel = int_tuple(fn, "kernel_size", kernel_size, nd, 1)
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        stride = kernel
    stride = int_tuple(fn, "stride", stride, nd, 1)
    padding = int_tuple(fn, "padding", padding, nd, 0)
    dilation = int_tuple(fn, "dilation", dilation, nd, 1)
    if any(p > k // 2 for p, k in zip(padding, kernel)):
        _fail(fn, f"padding must be at most half of kernel_size, got padding={padding} and "
                  f"kernel_size={kernel}")
    in_size = tuple(x.shape[-nd:])
    out = tuple(pool_output_size(i, k, s, p, d, bool(ceil_mode))
                for i, k, s, p, d in zip(in_size, kernel, stride, padding, dilation))
    _check_output_size(fn, out, x.shape, kernel, what="kernel_size")
    return PoolSpec(batched, lift(kernel, 1), lift(stride, 1), lift(padding, 0),
                    lift(dilation, 1), bool(ceil_mode), lift(in_size, 1), lift(out, 1))


def avg_pool_spec(fn, nd, x, kernel_size, stride, padding, ceil_mode, divisor_override):
    """Validate an average pooling call: its spec, and ``divisor_override`` as an int (0 for
    none)."""
    spec = pool_spec(fn, nd, x, kernel_size, stride, padding, 1, ceil_mode)
    if nd == 3:
        check_avg_pool3d_input(fn, spec)
    return spec, check_divisor_override(fn, divisor_override)


@kept(arrays=1)
def avg_pool_setup(fn, nd, x, kernel_size, stride=None, padding=0, ceil_mode=False,
                   count_include_pad=True, divisor_override=None):
    """An in-memory average pooling's spec and its divisors (see :func:`avg_pool_divisor`)."""
    spec, override = avg_pool_spec(fn, nd, x, kernel_size, stride, padding, ceil_mode,
                                   divisor_override)
    return spec, avg_pool_divisor(spec, count_include_pad, override, x.dtype)


def check_avg_pool3d_input(fn, spec: PoolSpec):
    """PyTorch's avg_pool3d (alone among the pooling ops) needs the unpadded input to hold a
    whole kernel; fastconv follows it so that the two accept the same calls."""
    if any(i < k for i, k in zip(spec.in_size, spec.kernel)):
        _fail(fn, f"input spatial size {spec.in_size} is smaller than kernel_size {spec.kernel} "
                  "(PyTorch's avg_pool3d requires the unpadded input to cover the kernel)")


def check_grad_output(fn, grad_output, expected_shape, dtype):
    """The gradient must have the forward output's shape and the input's dtype."""
    if tuple(grad_output.shape) != tuple(expected_shape):
        _fail(fn, f"grad_output must have the forward output's shape {tuple(expected_shape)}, "
                  f"got {tuple(grad_output.shape)}")
    check_float(fn, dtype, grad_output=grad_output)


def check_divisor_override(fn, divisor_override):
    if divisor_override is None:
        return 0
    if not _is_int(divisor_override) or divisor_override == 0:
        _fail(fn, f"divisor_override must be a non-zero int, got {divisor_override!r}")
    return int(divisor_override)


# --------------------------------------------------------------------------- pooling geometry


def avg_pool_divisor(spec: PoolSpec, count_include_pad, divisor_override, dtype=np.float64):
    """The divisor of each output window, shape ``out_size``, of ``dtype`` (NumPy).

    A window's element count is a product over axes, so it is computed per axis and multiplied
    out. PyTorch's rule: a window is clipped to the padded input; without ``count_include_pad``
    it is clipped further to the input itself. The array is kept for the next call of the same
    geometry (computing it cost a call at batch 1 as much as its kernel): it is shared, so the
    callers read it and never write it.
    """
    return _window_divisor(spec.in_size, spec.kernel, spec.stride, spec.padding, spec.out_size,
                           bool(count_include_pad), divisor_override, np.dtype(dtype))


@functools.lru_cache(maxsize=128)
def _window_divisor(in_size, kernel, stride, padding, out_size, count_include_pad,
                    divisor_override, dtype):
    return window_divisor(in_size, kernel, stride, padding, [(0, o) for o in out_size],
                          count_include_pad, divisor_override, dtype)


def window_divisor(in_size, kernel, stride, padding, out_ranges, count_include_pad,
                   divisor_override, dtype):
    """The divisors of the output windows ``[o0, o1)`` per axis (``out_ranges``), a NumPy
    array of ``dtype``: a block of the whole divisor (Dask computes one per block)."""
    shape = tuple(o1 - o0 for o0, o1 in out_ranges)
    if divisor_override:
        return np.full(shape, divisor_override, dtype=dtype)
    counts = []
    for size, k, s, p, (o0, o1) in zip(in_size, kernel, stride, padding, out_ranges):
        start = np.arange(o0, o1) * s - p
        end = np.minimum(start + k, size + p)
        if not count_include_pad:
            start, end = np.maximum(start, 0), np.minimum(end, size)
        counts.append((end - start).astype(np.float64))
    return (counts[0][:, None, None] * counts[1][None, :, None]
            * counts[2][None, None, :]).astype(dtype)
