"""Activations kept in the batch-lane layout between layers, on the ``numba`` backend.

The Numba backend convolves many small images fastest with the batch innermost, in groups of
``lanes`` images (:mod:`fastconv.backends._numba_lanes`). A convolution called on its own
copies its input into that layout and its output back, and for LeNet's layers those copies
cost about as much as the arithmetic. Inside a :class:`~fastconv.nn.Sequential`, a run of
layers that can work on lanes (convolutions that fit them, activations, average pooling) hands
:class:`LaneArray` objects from layer to layer instead, forward and backward; the
``Sequential`` converts at the run's two ends, so no layer outside a run, and no caller, ever
sees one.

Lanes past the batch (a short last group) and, for an odd ``C``, one channel past it (the
kernels compute channels in fours and pairs) are carried along: their gradients are zeros,
and convolutions read only the first ``C`` channels.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np

from .. import _backend
from .. import _params as P


@functools.cache
def _numba():
    """The Numba backend's kernel modules, imported on first use (``import fastconv.nn`` does
    not pay for Numba)."""
    from ..backends import _numba_kernels, _numba_lanes

    return _numba_kernels, _numba_lanes


def _all_finite(data):
    from ..backends import numba_cpu

    return numba_cpu._all_finite(data)


def _serialised(function):
    """Run under the Numba backend's launch lock, as its own primitives do (its workqueue
    threading layer aborts when two threads launch parallel kernels at once)."""

    @functools.wraps(function)
    def call(*args, **kwargs):
        from ..backends import numba_cpu

        with numba_cpu._launch_lock:
            return function(*args, **kwargs)

    return call


@dataclass(frozen=True)
class LaneArray:
    """A (N, C, H, W) array laid out as flat lanes.

    ``data`` holds ``groups`` groups of ``c_held`` planes, ``pitch`` elements apart; a plane is
    (H, W, lanes), image ``g * lanes + b`` in lane ``b`` of group ``g``. Arrays handed between
    layers share one layout for a shape (:func:`canonical`), so that element-wise layers
    combine ``data`` arrays directly; what lies between planes and after the last is zeros.
    """

    data: np.ndarray
    shape: tuple
    lanes: int
    c_held: int
    pitch: int

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def groups(self):
        return -(-self.shape[0] // self.lanes)

    @property
    def planes(self):
        return self.groups * self.c_held

    def with_data(self, data):
        """The same layout holding ``data`` (an element-wise function of this one's)."""
        return replace(self, data=data)

    @_serialised
    def to_array(self):
        """The (N, C, H, W) array."""
        return _dense(self).reshape(self.shape)


def _dense(x):
    """The lane array ``x`` as a dense (N, C, 1, H, W) array (the caller holds the lock)."""
    n, c, h, w = x.shape
    y = np.empty((n, c, 1, h, w), dtype=x.data.dtype)
    _numba()[0]._from_lanes(x.data, x.pitch, x.c_held, x.lanes, y)
    return y


def canonical(data, shape, lanes):
    """``data`` as the lane array of ``shape`` in the layout shared between layers, as the lane
    convolution writes it: channels held in twos, planes ``LANE_SKEW`` elements further apart
    than their size, ``slack(lanes)`` elements after the last plane."""
    L = _numba()[1]
    return LaneArray(data, tuple(shape), lanes, L.k_held(shape[1]),
                     L.lane_pitch(shape[2:], lanes))


def slack(lanes):
    """Elements past the last plane: the weight gradient's kernel reads up to ``2 * lanes``
    there (see ``_lane_weight_grad``)."""
    return 2 * lanes


@_serialised
def from_array(x, lanes):
    """``x`` (N, C, H, W), an array, in the shared lane layout."""
    K, L = _numba()
    n, c, h, w = x.shape
    layout = canonical(None, x.shape, lanes)
    data = K._to_lanes(np.ascontiguousarray(x).reshape(n, c, 1, h, w), lanes, layout.c_held,
                       (0, 0), (h, w), layout.pitch, slack(lanes),
                       L.lane_buffer(L.lanes_size(n, layout.c_held, layout.pitch, lanes,
                                                  slack(lanes)), x.dtype))
    return layout.with_data(data)


def like(g, template):
    """The gradient ``g`` (an array) in ``template``'s lanes."""
    return from_array(g, template.lanes)


def numba_active(x):
    """Whether calls on the array ``x`` run on the ``numba`` backend."""
    return (isinstance(x, np.ndarray) and x.dtype in (np.float32, np.float64)
            and _backend.get_backend() in ("auto", "numba")
            and getattr(_backend.resolve("Sequential"), "name", None) == "numba")


# --------------------------------------------------------------------------- convolution


def conv_fits(x, weight, options, input_grad):
    """Whether a ``Conv2d`` on ``x`` (an array or a :class:`LaneArray`) runs on lanes: the
    input's dtype and channels as the weight's (else the usual path raises the error), stride
    1, one group, zero padding given as numbers, and lanes that fit the forward and (if
    wanted) the input gradient."""
    L = _numba()[1]
    k_out, c_in, kh, kw = weight.shape
    if (x.ndim != 4 or x.dtype != weight.dtype or x.shape[1] != c_in
            or options["groups"] != 1 or options["padding_mode"] != "zeros"
            or isinstance(options["padding"], str)):
        return False
    stride, pad, dilation = (_pair(options[key]) for key in ("stride", "padding", "dilation"))
    if (stride != (1, 1) or len(pad) != 2 or len(dilation) != 2
            or not all(isinstance(v, int) and v >= 0 for v in pad + dilation)):
        return False
    n, _, h, w = x.shape
    out = (h + 2 * pad[0] - dilation[0] * (kh - 1), w + 2 * pad[1] - dilation[1] * (kw - 1))
    if min(out) < 1:
        return False
    fits = L.lanes_fit((n, c_in, 1, h, w), k_out, (1, kh, kw), (1, 1, 1), (0, *pad),
                       (1, *dilation), 1, (1, *out))
    if input_grad:
        grad_pad = tuple(d * (k - 1) - p for d, k, p in zip(dilation, (kh, kw), pad))
        fits = fits and L.lanes_fit((n, k_out, 1, *out), c_in, (1, kh, kw), (1, 1, 1),
                                    (0, *grad_pad), (1, *dilation), 1, (1, h, w))
    return fits


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _padded(x, pad, size, dilation_w):
    """``x`` as the dense, padded input of a lane convolution of padded size ``size``."""
    K, L = _numba()
    n, c, h, w = x.shape
    tail = 2 * dilation_w * x.lanes  # what the weight gradient's kernel reads past the end
    needed = (x.planes - 1) * x.pitch + h * w * x.lanes + tail
    if pad == (0, 0) and size == (h, w) and x.data.size >= needed:
        return x
    data = L.lane_buffer(x.planes * size[0] * size[1] * x.lanes + tail, x.data.dtype)
    K._lanes_padded(x.data, x.pitch, x.planes, (h, w), pad, size, x.lanes, tail, data)
    return LaneArray(data, (n, c, *size), x.lanes, x.c_held, size[0] * size[1] * x.lanes)


@_serialised
def conv_forward(x, weight, bias, options):
    """``Conv2d``'s forward on lanes: ``(output, saved input)``."""
    K, L = _numba()
    k_out, c_in, kh, kw = weight.shape
    pad, dilation = _pair(options["padding"]), _pair(options["dilation"])
    n, _, h, w = x.shape
    size = (h + 2 * pad[0], w + 2 * pad[1])
    out = (size[0] - dilation[0] * (kh - 1), size[1] - dilation[1] * (kw - 1))
    xl = _padded(x, pad, size, dilation[1])  # saved for the weight gradient
    w4, b4 = L.lane_weights(weight, bias)
    yl = L.lane_kernel("_lane_conv")(
        xl.data, xl.pitch, xl.c_held, w4, b4, L.k_held(k_out), x.groups, c_in, size,
        (pad[0], pad[0] + h, pad[1], pad[1] + w), dilation, out, x.lanes, slack(x.lanes),
        L.lane_buffer(L.conv_out_size(n, k_out, out, x.lanes, slack(x.lanes)), x.dtype))
    return canonical(yl, (n, k_out, *out), x.lanes), xl


@_serialised
def conv_backward(gy, xl, weight, options, in_shape, input_grad):
    """``Conv2d``'s backward on lanes from the saved padded input ``xl``: ``(gx, gw, gb)``,
    ``gx`` a :class:`LaneArray` of ``in_shape`` (or ``None`` without ``input_grad``)."""
    K, L = _numba()
    k_out, c_in, kh, kw = weight.shape
    pad, dilation = _pair(options["padding"]), _pair(options["dilation"])
    size = xl.shape[2:]
    gw = L.lane_kernel("_lane_weight_grad")(xl.data, xl.pitch, xl.c_held, gy.data, gy.pitch,
                                            gy.c_held, gy.groups, c_in, size, dilation, (kh, kw),
                                            gy.lanes)
    gw = np.ascontiguousarray(gw[:k_out])
    # the lanes multiply gy by the padding's zeros (0 * inf is NaN): where gw shows a NaN or
    # Inf and gy holds one, the in-bounds sums instead (see numba_cpu's weight gradient)
    if not np.isfinite(gw).all() and not _all_finite(gy.data):
        x = _dense(xl)[..., pad[0]:pad[0] + in_shape[2], pad[1]:pad[1] + in_shape[3]]
        gw = K._conv_weight_grad_exact(np.ascontiguousarray(x), _dense(gy), (1, 1, 1),
                                       (0, *pad), (1, *dilation), 1, (1, kh, kw))
        gw = gw.reshape(weight.shape)
    gb = K._lane_channel_sums(gy.data, gy.pitch, gy.c_held, gy.groups, k_out,
                              gy.shape[2] * gy.shape[3] * gy.lanes)
    if not input_grad:
        return None, gw, gb
    # at stride 1 the input gradient is a convolution of the gradient, padded by
    # dilation * (k - 1) - padding, with the kernel flipped and its channel axes swapped
    h, w = in_shape[2:]
    gpad = tuple(d * (k - 1) - p for d, k, p in zip(dilation, (kh, kw), pad))
    gsize = (h + dilation[0] * (kh - 1), w + dilation[1] * (kw - 1))
    gl = _padded(gy, gpad, gsize, dilation[1])
    flipped = np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    window = (max(gpad[0], 0), min(gpad[0] + gy.shape[2], gsize[0]),
              max(gpad[1], 0), min(gpad[1] + gy.shape[3], gsize[1]))
    gx = L.lane_kernel("_lane_conv")(
        gl.data, gl.pitch, gl.c_held, *L.lane_weights(flipped), L.k_held(c_in), gy.groups, k_out,
        gsize, window, dilation, (h, w), gy.lanes, slack(gy.lanes),
        L.lane_buffer(L.conv_out_size(gy.shape[0], c_in, (h, w), gy.lanes, slack(gy.lanes)),
                      gy.dtype))
    return canonical(gx, in_shape, gy.lanes), gw, gb


# --------------------------------------------------------------------------- pooling


def _pool_geometry(x, options):
    """The pooling's spec and divisors (kept per shape and options by ``P.avg_pool_setup``)."""
    o = options
    return P.avg_pool_setup("AvgPool2d", 2, x, o["kernel_size"], o["stride"], o["padding"],
                            o["ceil_mode"], o["count_include_pad"], o["divisor_override"])


@_serialised
def avg_pool_forward(x, options):
    """``AvgPool2d``'s forward on lanes (its options as keyword arguments of the functional
    call)."""
    K, L = _numba()
    spec, divisor = _pool_geometry(x, options)
    out = canonical(None, (*x.shape[:2], *spec.out_size[1:]), x.lanes)
    data = L.lane_buffer(x.planes * out.pitch + slack(x.lanes), x.data.dtype)
    K._lane_avg_pool_forward(x.data, x.pitch, x.planes, spec.in_size[1:], spec.kernel[1:],
                             spec.stride[1:], spec.padding[1:], spec.out_size[1:], divisor[0],
                             x.lanes, out.pitch, slack(x.lanes), data)
    return out.with_data(data)


@_serialised
def avg_pool_backward(gy, x, options, after_sigmoid=False):
    """``AvgPool2d``'s backward on lanes, ``x`` its saved input; ``after_sigmoid``: ``x`` is a
    sigmoid's output, and the gradient returned is the one of the sigmoid's input."""
    K, L = _numba()
    spec, divisor = _pool_geometry(x, options)
    data = L.lane_buffer(gy.planes * x.pitch + slack(gy.lanes), gy.data.dtype)
    K._lane_avg_pool_backward(gy.data, gy.pitch, gy.planes, spec.out_size[1:], spec.kernel[1:],
                              spec.stride[1:], spec.padding[1:], spec.in_size[1:], divisor[0],
                              gy.lanes, x.pitch, slack(gy.lanes),
                              x.data if after_sigmoid else x.data[:0], data)
    return x.with_data(data)


def start(x):
    """The array ``x`` as the lane input of a run of layers."""
    L = _numba()[1]
    return from_array(x, L.lane_width(x.shape[0]))


def elementwise(fn, *arrays):
    """``fn`` applied to arrays, or to the ``data`` of lane arrays of one layout (the result
    then in that layout)."""
    if not isinstance(arrays[0], LaneArray):
        return fn(*arrays)
    return arrays[0].with_data(fn(*(a.data for a in arrays)))
