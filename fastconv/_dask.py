"""The public ops on Dask arrays: lazy, block by block, each block by the in-memory backend.

:mod:`fastconv.functional` sends a call here when its input (or ``grad_output``) is a
``dask.array.Array``. Validation is the in-memory op's (it needs shapes only); then the call
becomes a graph:

- arrays are lifted to ``(N, C, D, H, W)`` as in memory;
- along each spatial axis, :mod:`fastconv._blocks` says which source region computes each
  block of the result, with which local padding; the source is re-cut into those regions
  (neighbouring regions overlap by the halo the kernel needs) and each block runs the
  backend's primitive, chosen by the chunk type (NumPy chunks: ``numba`` or ``numpy``; CuPy
  chunks: ``cupy``) under the backend setting in force when the op was called;
- the batch axis maps block to block; convolutions need all channels in one block, so their
  channel axis is merged into one chunk (``x.rechunk({1: -1})``); pooling keeps channel chunks;
- weights and biases stay in-memory arrays, put in the graph once (every block refers to that
  one key, so a cluster sends them once to each worker);
- weight and bias gradients are per-block partial sums added by Dask's tree reduction.

Result chunks: a forward op's block boundaries follow the input's (result element ``o`` goes
to the block of the input chunk where its window starts; for a transposed convolution, input
chunk ``[b0, b1)`` gives the outputs from ``b0 * stride - padding``); an input gradient is
chunked as the input. A block reads its own source chunk plus a halo of at most
``dilation * (kernel - 1)`` elements per axis, so no block grows past its chunk by more.
"""

from __future__ import annotations

import bisect
import itertools
import operator

import dask
import dask.array as da
import numpy as np
from dask.highlevelgraph import HighLevelGraph

from . import _backend
from . import _blocks as B
from . import _params as P
from . import functional as F
from ._padding import source_index

_SPATIAL_AXES = (2, 3, 4)
_NUMPY_PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


# --------------------------------------------------------------------------- checks and lifting


def _chunk_module(fn, arg, a):
    """NumPy or CuPy: the module of a Dask array's chunks."""
    meta = getattr(a, "_meta", None)
    if isinstance(meta, np.ndarray):
        return np
    if P.is_cupy(meta):
        import cupy

        return cupy
    raise TypeError(f"{fn}: {arg} must be a Dask array of NumPy or CuPy chunks, got chunks of "
                    f"type {type(meta).__name__}")


def _check(fn, lazy, eager=()):
    """``lazy``: (name, array) pairs that must be Dask arrays with known chunks; ``eager``: the
    weights, in-memory arrays of the chunks' kind. Returns the chunks' array module."""
    for arg, a in eager:
        if P.is_dask(a):
            raise TypeError(f"{fn}: {arg} must be a NumPy or CuPy array (it goes whole to every "
                            f"block), got a Dask array; call {arg}.compute() first")
    module = None
    for arg, a in lazy:
        if a is None:
            continue
        if not P.is_dask(a):
            raise TypeError(f"{fn}: {arg} must be a Dask array, as the other operands are, got "
                            f"{type(a).__name__}; wrap it with dask.array.from_array")
        if any(np.isnan(c) for axis in a.chunks for c in axis):
            raise ValueError(f"{fn}: {arg} has unknown chunk sizes {a.chunks}; call "
                             f"{arg}.compute_chunk_sizes() first")
        mod = _chunk_module(fn, arg, a)
        if module is not None and mod is not module:
            raise TypeError(f"{fn}: cannot mix Dask arrays of NumPy and of CuPy chunks")
        module = mod
    for arg, a in eager:
        if a is None:
            continue
        if P.array_namespace(fn, **{arg: a}) is not module:
            kind = "CuPy" if module is not np else "NumPy"
            raise TypeError(f"{fn}: {arg} must be a {kind} array to match the input's {kind} "
                            f"chunks, got {type(a).__name__}")
    P.check_float(fn, **dict(lazy), **dict(eager))
    return module


def _to5d(a, nd, batched):
    if not batched:
        a = a[None]
    return a[(slice(None), slice(None)) + (None,) * (P.SPATIAL - nd)]


def _from5d(a, nd, batched):
    a = a[(slice(None), slice(None)) + (0,) * (P.SPATIAL - nd)]
    return a if batched else a[0]


def _in_graph(a):
    """An in-memory operand as one key of the graph (``None`` stays ``None``)."""
    return None if a is None else dask.delayed(a, pure=True)


def _resolved(fn, block, backend):
    """The backend module for a block: the chunk's kind under the caller's setting."""
    with _backend.use_backend(backend):
        return _backend.resolve(fn, P.array_module(block))


def _meta(module, ndim, dtype):
    return module.empty((0,) * ndim, dtype=dtype)


# --------------------------------------------------------------------------- regions


def _regions(a, plans):
    """``a`` re-cut along the spatial axes so that its block ``i`` along each axis is the
    source region of the result's block ``i``.

    A region takes whole chunks as they are and a copy of the part it needs of any other chunk
    it overlaps (a halo: a few planes), so that a chunk's memory is freed once its own block is
    done and only halos travel between workers. One task per region assembles it (a region
    inside one chunk is a view of it): one copy of the data in all, where cutting axis by axis
    would concatenate the whole array once per axis."""
    spans = [[(b.start, b.stop) for b in plan] for plan in plans]
    bounds = [B.chunk_bounds(a.chunks[axis]) for axis in _SPATIAL_AXES]
    if all(s == list(zip(b[:-1], b[1:])) for s, b in zip(spans, bounds)):
        return a
    sizes = [tuple(stop - start for start, stop in s) for s in spans]
    token = dask.base.tokenize(a.name, spans)
    name, halo = "fastconv-regions-" + token, "fastconv-halo-" + token
    per_axis = [[_overlaps(b, start, stop) for start, stop in s] for s, b in zip(spans, bounds)]
    graph = {}
    for n, c in itertools.product(range(len(a.chunks[0])), range(len(a.chunks[1]))):
        for block in itertools.product(*(range(len(s)) for s in spans)):
            shape = (a.chunks[0][n], a.chunks[1][c]) + tuple(s[i] for s, i in zip(sizes, block))
            overlapped = list(itertools.product(*(axis[i] for axis, i in zip(per_axis, block))))
            keys, places = [], []
            for parts in overlapped:
                chunk = (a.name, n, c) + tuple(index for index, _, _ in parts)
                src = tuple(part for _, part, _ in parts)
                whole = all(part == slice(0, b[index + 1] - b[index])
                            for (index, part, _), b in zip(parts, bounds))
                if len(overlapped) > 1 and not whole:
                    key = (halo, n, c) + block + chunk[3:]
                    graph[key] = (_copied, chunk, src)
                    chunk, src = key, (slice(None),) * 3
                keys.append(chunk)
                places.append((src, tuple(dst for _, _, dst in parts)))
            graph[(name, n, c) + block] = (_assemble, shape, places, keys)
    layer = HighLevelGraph.from_collections(name, graph, dependencies=[a])
    return da.Array(layer, name, a.chunks[:2] + tuple(sizes), meta=a._meta)


def _copied(chunk, src):
    """A copy of part of a chunk (a view would keep the whole chunk in memory)."""
    return chunk[(slice(None), slice(None)) + src].copy()


def _overlaps(bounds, start, stop):
    """The chunks of one axis that overlap ``[start, stop)``, each as (chunk index, slice in the
    chunk, slice in the region); an empty region takes an empty slice of a neighbouring
    chunk (its block still needs the chunks' kind and dtype)."""
    last = len(bounds) - 2
    first = min(max(bisect.bisect_right(bounds, start) - 1, 0), last)
    if start == stop:
        return [(first, slice(0, 0), slice(0, 0))]
    parts = []
    for chunk in range(first, last + 1):
        if bounds[chunk] >= stop:
            break
        lo, hi = max(start, bounds[chunk]), min(stop, bounds[chunk + 1])
        if lo < hi:
            parts.append((chunk, slice(lo - bounds[chunk], hi - bounds[chunk]),
                          slice(lo - start, hi - start)))
    return parts


def _assemble(shape, places, chunks):
    """One region from the parts of the chunks it overlaps (``places``: (slices in the chunk,
    slices in the region) per chunk)."""
    first = chunks[0]
    if len(chunks) == 1:  # inside one chunk: a view of it
        return first[(slice(None), slice(None)) + places[0][0]]
    region = P.array_module(first).empty(shape, dtype=first.dtype)
    for (src, dst), chunk in zip(places, chunks):
        region[(slice(None), slice(None)) + dst] = chunk[(slice(None), slice(None)) + src]
    return region


def _geometry(plans, block_id):
    """The block's AxisBlock along each spatial axis."""
    return [plan[i] for plan, i in zip(plans, block_id[2:])]


def _sizes(bounds):
    return tuple(b - a for a, b in zip(bounds[:-1], bounds[1:]))


def _constant_block(module, shape, dtype, bias):
    y = module.zeros(shape, dtype=dtype)
    if bias is not None:
        y += bias.reshape(1, -1, 1, 1, 1)
    return y


# --------------------------------------------------------------------------- block functions


def _conv_block(xb, w, bias, *, fn, backend, plans, stride, dilation, groups, block_id=None):
    geo = _geometry(plans, block_id)
    out = tuple(g.size for g in geo)
    if any(g.empty for g in geo):
        return _constant_block(P.array_module(xb), (xb.shape[0], w.shape[0]) + out, xb.dtype, bias)
    be = _resolved(fn, xb, backend)
    return be.conv_forward(P.array_module(xb).ascontiguousarray(xb), w, stride,
                           tuple(g.pad for g in geo), dilation, groups, out, bias)


def _conv_transpose_block(xb, w, bias, *, fn, backend, plans, stride, dilation, groups,
                          block_id=None):
    geo = _geometry(plans, block_id)
    out = tuple(g.size for g in geo)
    if any(g.empty for g in geo):
        shape = (xb.shape[0], w.shape[1] * groups) + out
        return _constant_block(P.array_module(xb), shape, xb.dtype, bias)
    be = _resolved(fn, xb, backend)
    return be.conv_transpose_forward(P.array_module(xb).ascontiguousarray(xb), w, stride,
                                     tuple(g.pad for g in geo), dilation, groups, out, bias)


def _weight_grad_block(xb, gyb, *, fn, backend, plans, stride, dilation, groups, kernel,
                       weight_shape, block_id=None):
    geo = _geometry(plans, block_id)
    module = P.array_module(xb)
    if any(g.empty for g in geo):
        gw = module.zeros(weight_shape, dtype=xb.dtype)
    else:
        be = _resolved(fn, xb, backend)
        gw = be.conv_weight_grad(module.ascontiguousarray(xb), module.ascontiguousarray(gyb),
                                 stride, tuple(g.pad for g in geo), dilation, groups, kernel)
    return gw.reshape((1,) * 5 + tuple(weight_shape))


def _max_pool_block(xb, *, fn, backend, plans, kernel, stride, dilation, in_size, indices,
                    block_id=None):
    geo = _geometry(plans, block_id)
    module = P.array_module(xb)
    be = _resolved(fn, xb, backend)
    y, idx = be.max_pool_forward(module.ascontiguousarray(xb), kernel, stride,
                                 tuple(g.pad for g in geo), dilation,
                                 tuple(g.size for g in geo), indices)
    if not indices:
        return y
    # the block's flat indices count within its region: make them the whole input's
    region = tuple(g.stop - g.start for g in geo)
    where = module.unravel_index(idx, region)
    flat = module.ravel_multi_index(tuple(w + g.start for w, g in zip(where, geo)), in_size)
    return y, flat.astype(np.int64)


def _max_pool_backward_block(gyb, idxb, *, fn, backend, plans, kernel, stride, dilation,
                             in_size, block_id=None):
    geo = _geometry(plans, block_id)
    module = P.array_module(gyb)
    size = tuple(g.size for g in geo)
    if any(g.empty for g in geo):
        return module.zeros(gyb.shape[:2] + size, dtype=gyb.dtype)
    # the indices point into the whole input: make them the block's, -1 outside it
    where = module.unravel_index(module.clip(idxb, 0, int(np.prod(in_size)) - 1), in_size)
    local = [w - g.origin for w, g in zip(where, geo)]
    inside = (idxb >= 0)
    for position, extent in zip(local, size):
        inside &= (position >= 0) & (position < extent)
    flat = module.where(inside, module.ravel_multi_index(
        tuple(module.clip(p, 0, e - 1) for p, e in zip(local, size)), size), -1)
    be = _resolved(fn, gyb, backend)
    window = (kernel, stride, tuple(g.pad for g in geo), dilation)
    return be.max_pool_backward(module.ascontiguousarray(gyb), flat.astype(np.int64), size,
                                window)


def _divisor(module, pool, out_ranges, dtype):
    in_size, kernel, stride, padding, count_include_pad, override = pool
    return module.asarray(P.window_divisor(in_size, kernel, stride, padding, out_ranges,
                                           count_include_pad, override, np.dtype(dtype)))


def _avg_pool_block(xb, *, fn, backend, plans, pool, block_id=None):
    geo = _geometry(plans, block_id)
    module = P.array_module(xb)
    ranges = [(g.origin, g.origin + g.size) for g in geo]
    be = _resolved(fn, xb, backend)
    return be.avg_pool_forward(module.ascontiguousarray(xb), pool[1], pool[2],
                               tuple(g.pad for g in geo), tuple(g.size for g in geo),
                               _divisor(module, pool, ranges, xb.dtype))


def _avg_pool_backward_block(gyb, *, fn, backend, plans, pool, block_id=None):
    geo = _geometry(plans, block_id)
    module = P.array_module(gyb)
    size = tuple(g.size for g in geo)
    if any(g.empty for g in geo):
        return module.zeros(gyb.shape[:2] + size, dtype=gyb.dtype)
    ranges = [(g.start, g.stop) for g in geo]  # the gradient's region: outputs of the forward
    be = _resolved(fn, gyb, backend)
    return be.avg_pool_backward(module.ascontiguousarray(gyb), pool[1], pool[2],
                                tuple(g.pad for g in geo), size,
                                _divisor(module, pool, ranges, gyb.dtype))


# --------------------------------------------------------------------------- graph pieces


def _cut(plan, source, result_bounds, spec_axes):
    """Per spatial axis the ``plan`` (``_blocks.gather_plan`` or ``scatter_plan``) of the
    result blocks ``result_bounds`` over ``source`` (5-D), with ``spec_axes`` (kernel,
    stride, pad, dilation) per axis; and the source re-cut to their regions."""
    plans = tuple(plan(bounds, k, s, p, d, source.shape[axis])
                  for axis, bounds, (k, s, p, d) in zip(_SPATIAL_AXES, result_bounds, spec_axes))
    return plans, _regions(source, plans)


def _axes(kernel, stride, pad_lo, dilation):
    return list(zip(kernel, stride, pad_lo, dilation))


def _result_bounds(rule, source, spec, pad_lo):
    """The result's block boundaries per spatial axis, by ``rule`` from the source's chunks."""
    return [rule(b, k, s, p, d, o) for b, k, s, p, d, o in
            zip(_bounds(source), spec.kernel, spec.stride, pad_lo, spec.dilation, spec.out_size)]


def _bounds(a):
    return [B.chunk_bounds(a.chunks[axis]) for axis in _SPATIAL_AXES]


def _weight_grad(fn, x_regions, gy, plans, spec, w_shape5, module):
    """The weight gradient: per block the in-memory gradient over (source region, block),
    added up by Dask's tree reduction."""
    numblocks = gy.numblocks
    partials = da.map_blocks(
        _weight_grad_block, x_regions, gy, fn=fn, backend=_backend.get_backend(), plans=plans,
        stride=spec.stride, dilation=spec.dilation, groups=spec.groups, kernel=spec.kernel,
        weight_shape=w_shape5, new_axis=list(range(5, 10)),
        chunks=tuple((1,) * n for n in numblocks) + tuple((s,) for s in w_shape5),
        dtype=gy.dtype, meta=_meta(module, 10, gy.dtype))
    return partials.sum(axis=(0, 1, 2, 3, 4))


def _explicit_padding(x5, padding, mode):
    """A non-zero padding mode applied to the Dask array (zero padding stays in the blocks).
    The pads join the first and last chunks, so the padded array's chunk boundaries are the
    input's, shifted: blocks and result chunks stay those of the input."""
    if mode == "zeros":
        return x5, padding
    padded = da.pad(x5, ((0, 0), (0, 0)) + tuple(padding), mode=_NUMPY_PAD_MODES[mode])
    chunks = list(x5.chunks[:2])
    for axis, (lo, hi) in zip(_SPATIAL_AXES, padding):
        sizes = list(x5.chunks[axis])
        sizes[0] += lo
        sizes[-1] += hi
        chunks.append(tuple(sizes))
    return padded.rechunk(tuple(chunks)), ((0, 0),) * 3


def _pad_backward(g, padding, mode, chunks):
    """The gradient of :func:`_explicit_padding`: every padded element adds into the element
    it copied, in the order of :func:`fastconv._padding.pad_backward`; the result is chunked
    as ``chunks`` (the input's)."""
    for axis, (lo, hi) in zip(_SPATIAL_AXES, padding):
        if not (lo or hi):
            continue
        size = g.shape[axis] - lo - hi
        source = source_index(size, lo, hi, mode)

        def piece(a, start, stop, axis=axis):
            return a[(slice(None),) * axis + (slice(start, stop),)]

        inner = piece(g, lo, lo + size)
        adds = {}  # input element -> the padded elements that copied it
        for j in (*range(lo), *range(lo + size, lo + size + hi)):
            adds.setdefault(int(source[j]), []).append(j)
        pieces, done = [], 0
        for target in sorted(adds):
            column = piece(inner, target, target + 1)
            for j in adds[target]:
                column = column + piece(g, j, j + 1)
            pieces += [piece(inner, done, target), column]
            done = target + 1
        pieces.append(piece(inner, done, size))
        g = da.concatenate([p for p in pieces if p.shape[axis]], axis=axis)
    return g.rechunk(chunks)


# --------------------------------------------------------------------------- the ops


def conv(fn, nd, x, weight, bias, stride, padding, dilation, groups, padding_mode):
    module = _check(fn, [("input", x)], [("weight", weight), ("bias", bias)])
    spec = P.conv_spec(fn, nd, x, weight, bias, stride, padding, dilation, groups, padding_mode)
    x5 = _to5d(x, nd, spec.batched).rechunk({1: -1})
    source, pads = _explicit_padding(x5, spec.padding, spec.padding_mode)
    pad_lo = tuple(lo for lo, _ in pads)
    result_bounds = _result_bounds(B.gather_bounds, source, spec, pad_lo)
    plans, regions = _cut(B.gather_plan, source, result_bounds,
                             _axes(spec.kernel, spec.stride, pad_lo, spec.dilation))
    y = da.map_blocks(
        _conv_block, regions, _in_graph(F._to5d(weight, nd)), _in_graph(bias), fn=fn,
        backend=_backend.get_backend(), plans=plans, stride=spec.stride, dilation=spec.dilation,
        groups=spec.groups,
        chunks=(x5.chunks[0], (weight.shape[0],)) + tuple(_sizes(b) for b in result_bounds),
        dtype=x.dtype, meta=_meta(module, 5, x.dtype))
    return _from5d(y, nd, spec.batched)


def conv_backward(fn, nd, grad_output, x, weight, stride, padding, dilation, groups,
                  padding_mode, input_grad=True):
    module = _check(fn, [("input", x), ("grad_output", grad_output)], [("weight", weight)])
    spec = P.conv_spec(fn, nd, x, weight, None, stride, padding, dilation, groups, padding_mode)
    P.check_grad_output(fn, grad_output,
                        F._output_shape(x, nd, spec.batched, weight.shape[0], spec.out_size),
                        x.dtype)
    x5 = _to5d(x, nd, spec.batched).rechunk({1: -1})
    gy = _to5d(grad_output, nd, spec.batched).rechunk({0: x5.chunks[0], 1: -1})
    source, pads = _explicit_padding(x5, spec.padding, spec.padding_mode)
    pad_lo = tuple(lo for lo, _ in pads)
    axes = _axes(spec.kernel, spec.stride, pad_lo, spec.dilation)
    w5 = F._to5d(weight, nd)
    gx = None
    if input_grad:
        plans, regions = _cut(B.scatter_plan, gy, _bounds(source), axes)
        gx = da.map_blocks(
            _conv_transpose_block, regions, _in_graph(w5), None, fn=fn,
            backend=_backend.get_backend(), plans=plans, stride=spec.stride, dilation=spec.dilation,
            groups=spec.groups, chunks=source.chunks, dtype=x.dtype,
            meta=_meta(module, 5, x.dtype))
        if spec.padding_mode != "zeros":
            gx = _pad_backward(gx, spec.padding, spec.padding_mode, x5.chunks)
        gx = _from5d(gx, nd, spec.batched)
    plans, regions = _cut(B.gather_plan, source, _bounds(gy), axes)
    gw = _weight_grad(fn, regions, gy, plans, spec, w5.shape, module).reshape(weight.shape)
    return gx, gw, gy.sum(axis=(0, 2, 3, 4))


def conv_transpose(fn, nd, x, weight, bias, stride, padding, output_padding, groups, dilation):
    module = _check(fn, [("input", x)], [("weight", weight), ("bias", bias)])
    spec = P.conv_transpose_spec(fn, nd, x, weight, bias, stride, padding, output_padding,
                                 groups, dilation)
    x5 = _to5d(x, nd, spec.batched).rechunk({1: -1})
    result_bounds = _result_bounds(B.scatter_bounds, x5, spec, spec.pad_lo)
    plans, regions = _cut(B.scatter_plan, x5, result_bounds,
                              _axes(spec.kernel, spec.stride, spec.pad_lo, spec.dilation))
    channels = weight.shape[1] * spec.groups
    y = da.map_blocks(
        _conv_transpose_block, regions, _in_graph(F._to5d(weight, nd)), _in_graph(bias),
        fn=fn, backend=_backend.get_backend(), plans=plans, stride=spec.stride,
        dilation=spec.dilation, groups=spec.groups,
        chunks=(x5.chunks[0], (channels,)) + tuple(_sizes(b) for b in result_bounds),
        dtype=x.dtype, meta=_meta(module, 5, x.dtype))
    return _from5d(y, nd, spec.batched)


def conv_transpose_backward(fn, nd, grad_output, x, weight, stride, padding, output_padding,
                            groups, dilation):
    module = _check(fn, [("input", x), ("grad_output", grad_output)], [("weight", weight)])
    spec = P.conv_transpose_spec(fn, nd, x, weight, None, stride, padding, output_padding,
                                 groups, dilation)
    P.check_grad_output(fn, grad_output, F._output_shape(x, nd, spec.batched, weight.shape[1]
                                                         * spec.groups, spec.out_size),
                        x.dtype)
    x5 = _to5d(x, nd, spec.batched).rechunk({1: -1})
    gy = _to5d(grad_output, nd, spec.batched).rechunk({0: x5.chunks[0], 1: -1})
    w5 = F._to5d(weight, nd)
    # the input gradient is a convolution of grad_output, and the weight gradient gathers
    # over the same regions of it
    plans, regions = _cut(B.gather_plan, gy, _bounds(x5),
                             _axes(spec.kernel, spec.stride, spec.pad_lo, spec.dilation))
    gx = da.map_blocks(
        _conv_block, regions, _in_graph(w5), None, fn=fn, backend=_backend.get_backend(),
        plans=plans, stride=spec.stride, dilation=spec.dilation, groups=spec.groups,
        chunks=x5.chunks, dtype=x.dtype, meta=_meta(module, 5, x.dtype))
    gw = _weight_grad(fn, regions, x5, plans, spec, w5.shape, module).reshape(weight.shape)
    return _from5d(gx, nd, spec.batched), gw, gy.sum(axis=(0, 2, 3, 4))


def _max_pool5d(fn, x5, spec, module, return_indices):
    result_bounds = _result_bounds(B.gather_bounds, x5, spec, spec.padding)
    plans, regions = _cut(B.gather_plan, x5, result_bounds,
                          _axes(spec.kernel, spec.stride, spec.padding, spec.dilation))
    chunks = x5.chunks[:2] + tuple(_sizes(b) for b in result_bounds)
    blocks = da.map_blocks(
        _max_pool_block, regions, fn=fn, backend=_backend.get_backend(), plans=plans,
        kernel=spec.kernel, stride=spec.stride, dilation=spec.dilation, in_size=spec.in_size,
        indices=return_indices, chunks=chunks, dtype=x5.dtype, meta=_meta(module, 5, x5.dtype))
    if not return_indices:
        return blocks, None
    # each block is a (values, indices) pair; two light tasks per block take them apart
    y = blocks.map_blocks(operator.itemgetter(0), dtype=x5.dtype,
                          meta=_meta(module, 5, x5.dtype))
    idx = blocks.map_blocks(operator.itemgetter(1), dtype=np.int64,
                            meta=_meta(module, 5, np.int64))
    return y, idx


def max_pool(fn, nd, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    module = _check(fn, [("input", x)])
    spec = P.pool_spec(fn, nd, x, kernel_size, stride, padding, dilation, ceil_mode)
    y, idx = _max_pool5d(fn, _to5d(x, nd, spec.batched), spec, module, return_indices)
    y = _from5d(y, nd, spec.batched)
    return (y, _from5d(idx, nd, spec.batched)) if return_indices else y


def max_pool_backward(fn, nd, grad_output, x, kernel_size, stride, padding, dilation,
                      ceil_mode, indices):
    module = _check(fn, [("input", x), ("grad_output", grad_output)])
    spec = P.pool_spec(fn, nd, x, kernel_size, stride, padding, dilation, ceil_mode)
    out_shape = F._output_shape(x, nd, spec.batched, x.shape[-nd - 1], spec.out_size)
    P.check_grad_output(fn, grad_output, out_shape, x.dtype)
    x5 = _to5d(x, nd, spec.batched)
    gy = _to5d(grad_output, nd, spec.batched).rechunk({0: x5.chunks[0], 1: x5.chunks[1]})
    if indices is None:
        _, idx = _max_pool5d(fn, x5, spec, module, True)
    else:
        if not P.is_dask(indices):
            raise TypeError(f"{fn}: indices must be a Dask array like the input, got "
                            f"{type(indices).__name__}")
        if indices.dtype.kind not in "iu" or tuple(indices.shape) != out_shape:
            raise ValueError(f"{fn}: indices must be an integer array of the output's shape "
                             f"{out_shape}, got dtype {indices.dtype} and shape {indices.shape}")
        idx = _to5d(indices.astype(np.int64), nd, spec.batched)
    idx = idx.rechunk(gy.chunks)
    axes = _axes(spec.kernel, spec.stride, spec.padding, spec.dilation)
    plans, gy_regions = _cut(B.scatter_plan, gy, _bounds(x5), axes)
    idx_regions = _regions(idx, plans)
    gx = da.map_blocks(
        _max_pool_backward_block, gy_regions, idx_regions, fn=fn, backend=_backend.get_backend(),
        plans=plans, kernel=spec.kernel, stride=spec.stride, dilation=spec.dilation,
        in_size=spec.in_size, chunks=x5.chunks, dtype=x.dtype, meta=_meta(module, 5, x.dtype))
    return _from5d(gx, nd, spec.batched)


def _pool_geometry(spec, count_include_pad, divisor_override):
    return (spec.in_size, spec.kernel, spec.stride, spec.padding, bool(count_include_pad),
            divisor_override)


def avg_pool(fn, nd, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
             divisor_override):
    module = _check(fn, [("input", x)])
    spec, divisor_override = P.avg_pool_spec(fn, nd, x, kernel_size, stride, padding,
                                             ceil_mode, divisor_override)
    x5 = _to5d(x, nd, spec.batched)
    result_bounds = _result_bounds(B.gather_bounds, x5, spec, spec.padding)
    plans, regions = _cut(B.gather_plan, x5, result_bounds,
                          _axes(spec.kernel, spec.stride, spec.padding, spec.dilation))
    y = da.map_blocks(
        _avg_pool_block, regions, fn=fn, backend=_backend.get_backend(), plans=plans,
        pool=_pool_geometry(spec, count_include_pad, divisor_override),
        chunks=x5.chunks[:2] + tuple(_sizes(b) for b in result_bounds), dtype=x.dtype,
        meta=_meta(module, 5, x.dtype))
    return _from5d(y, nd, spec.batched)


def avg_pool_backward(fn, nd, grad_output, x, kernel_size, stride, padding, ceil_mode,
                      count_include_pad, divisor_override):
    module = _check(fn, [("input", x), ("grad_output", grad_output)])
    spec, divisor_override = P.avg_pool_spec(fn, nd, x, kernel_size, stride, padding,
                                             ceil_mode, divisor_override)
    P.check_grad_output(fn, grad_output,
                        F._output_shape(x, nd, spec.batched, x.shape[-nd - 1], spec.out_size),
                        x.dtype)
    x5 = _to5d(x, nd, spec.batched)
    gy = _to5d(grad_output, nd, spec.batched).rechunk({0: x5.chunks[0], 1: x5.chunks[1]})
    plans, regions = _cut(B.scatter_plan, gy, _bounds(x5),
                          _axes(spec.kernel, spec.stride, spec.padding, spec.dilation))
    gx = da.map_blocks(
        _avg_pool_backward_block, regions, fn=fn, backend=_backend.get_backend(), plans=plans,
        pool=_pool_geometry(spec, count_include_pad, divisor_override), chunks=x5.chunks,
        dtype=x.dtype, meta=_meta(module, 5, x.dtype))
    return _from5d(gx, nd, spec.batched)
