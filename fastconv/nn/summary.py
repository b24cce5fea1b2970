"""A network's table: per layer its output shape, parameters, multiply-adds and receptive
field, as torchinfo and torchscan print theirs, without running the network."""

from __future__ import annotations

from dataclasses import dataclass

from .module import Module, Sequential


@dataclass(frozen=True)
class LayerRow:
    """One layer of a :class:`Summary`.

    Attributes
    ----------
    layer : str
        Its place in the model and its class, e.g. ``"0 Conv2d"``.
    output_shape : tuple of int
    params : int
        Its parameters' elements.
    macs : int
        Multiply-adds of its forward pass on the summary's input (0 for poolings and
        activations).
    receptive_field, jump, start : tuple or None
        Per spatial axis, in input pixels: how many pixels one output element sees (first to
        last; dilation's gaps included), how far apart neighbouring output elements' fields
        are (the product of the strides so far), and the centre of the first output element's
        field (negative: in the padding). ``None`` once the spatial axes are gone (from
        ``Flatten`` and ``Linear`` on).
    """

    layer: str
    output_shape: tuple
    params: int
    macs: int
    receptive_field: tuple | None
    jump: tuple | None
    start: tuple | None


@dataclass(frozen=True)
class Summary:
    """What :func:`summary` returns; ``str(summary)`` is the table."""

    input_shape: tuple
    rows: list
    total_params: int
    total_macs: int

    def __str__(self):
        head = ("layer", "output shape", "params", "MACs", "receptive field", "jump", "start")
        body = [(r.layer, _shape(r.output_shape), f"{r.params:,}", f"{r.macs:,}",
                 _axes(r.receptive_field, "x"), _axes(r.jump, "x"), _axes(r.start, ", ", "()"))
                for r in self.rows]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        right = {2, 3}  # numbers line up on the right

        def line(cells):
            return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        rule = "-" * len(line(head))
        return "\n".join([f"input {_shape(self.input_shape)}", rule, line(head), rule,
                          *map(line, body), rule, f"total params {self.total_params:,}",
                          f"total MACs   {self.total_macs:,}"])


def _number(v):
    return f"{v:g}" if isinstance(v, float) else str(v)


def _axes(values, sep, brackets=""):
    if values is None:
        return "-"
    text = sep.join(_number(v) for v in values)
    return f"{brackets[:1]}{text}{brackets[1:]}" if brackets else text


def _shape(shape):
    return "(" + ", ".join(map(str, shape)) + ")"


def _layers(model, prefix=""):
    """``(name, layer)`` of every layer that computes, in order: a Sequential's children (and
    theirs), or the model itself."""
    if isinstance(model, Sequential):
        for name, child in model.children:
            yield from _layers(child, f"{prefix}{name}.")
    else:
        yield prefix.rstrip("."), model


def summary(model, input_shape):
    """Shapes, parameters, multiply-adds and receptive fields of ``model`` layer by layer, for
    an input of ``input_shape``, computed from the layers' arguments (nothing runs).

    Parameters
    ----------
    model : fastconv.nn.Module
        A layer or a :class:`~fastconv.nn.Sequential` (nested ones are walked).
    input_shape : tuple of int
        ``(N, C, *spatial)``.

    Returns
    -------
    Summary
        ``rows`` (:class:`LayerRow`), ``total_params``, ``total_macs``; ``str()`` of it is the
        table.

    Notes
    -----
    The receptive field follows the usual arithmetic (Dumoulin and Visin, 2016; Araujo et
    al., 2019). Per spatial axis a layer's :class:`~fastconv.nn.Window` (``size``, ``stride``,
    ``centre``, in its input's elements) updates the field ``r``, the jump ``j`` and the
    start ``s`` of the layer before: ``r += (size - 1) * j``, ``s += centre * j``,
    ``j *= stride``. A pixel is 1 and the first pixel's centre 0 at the input. Exact for
    convolutions and poolings; a transposed convolution's outputs (and an adaptive pooling's)
    see windows of different sizes, so their window is the widest and their stride the mean:
    exact for that layer, an upper estimate for the layers after it.

    Examples
    --------
    >>> from fastconv.models import lenet
    >>> s = summary(lenet(), (1, 1, 28, 28))
    >>> s.total_params, s.rows[-1].output_shape
    (61706, (1, 10))
    """
    if not isinstance(model, Module):
        raise TypeError(f"summary: model must be a fastconv.nn.Module, got "
                        f"{type(model).__name__}")
    shape = tuple(int(v) for v in input_shape)
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"summary: input_shape must be (N, C, *spatial) with positive sizes, "
                         f"got {tuple(input_shape)}")
    nd = len(shape) - 2
    field, jump, start = [1] * nd, [1] * nd, [0] * nd
    spatial = nd > 0
    rows = []
    for name, layer in _layers(model):
        try:
            out = tuple(layer.output_shape(shape))
            windows = layer.windows(shape) if spatial else None
        except NotImplementedError as exc:
            raise TypeError(f"summary: layer {name} ({exc}); give it output_shape and windows "
                            "methods (see fastconv.nn.Module)") from None
        except ValueError as exc:  # the shapes do not fit the layer: say which layer
            raise ValueError(f"summary: layer {name}: {exc}") from None
        if windows is None:
            spatial = False
        else:
            for axis, w in enumerate(windows):
                field[axis] += (w.size - 1) * jump[axis]
                start[axis] += w.centre * jump[axis]
                jump[axis] *= w.stride
        params = sum(p.data.size for _, p in layer.named_parameters())
        rows.append(LayerRow(f"{name} {layer.layer_name}".strip(), out, params,
                             int(layer.macs(shape)),
                             *((tuple(_tidy(v) for v in values) if spatial else None)
                               for values in (field, jump, start))))
        shape = out
    return Summary(tuple(int(v) for v in input_shape), rows, sum(r.params for r in rows),
                   sum(r.macs for r in rows))


def _tidy(v):
    """Whole numbers as ints (floats creep in through transposed convolutions and adaptive
    pooling), others rounded to 6 digits."""
    v = round(float(v), 6)
    return int(v) if v == int(v) else v
