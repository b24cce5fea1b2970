"""Explicit 512-bit vectors for Numba kernels: a vector type and intrinsics to load, store,
splat, fuse multiply-adds, sum and transpose (Numba's own loops stay 256 bits wide on AVX-512 CPUs).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, errors, types
from numba.extending import intrinsic, models, register_model

from . import _numba_cache  # noqa: F401  (first: the kernels' cache stamp)

# Explicit SIMD vectors, for kernels whose sums stay in registers over many taps. Numba's LLVM
# keeps its own vectorised loops to 256 bits on CPUs that tune for it (AVX-512 Xeons), but
# lowers explicit 512-bit vector operations to 512-bit instructions there (and splits them
# where the CPU has narrower registers).
VECTOR_BYTES = 64


class _Vector(types.Type):
    """``VECTOR_BYTES`` of one element type, held in a register."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.count = VECTOR_BYTES * 8 // dtype.bitwidth
        super().__init__(name=f"Vector({dtype}x{self.count})")


@register_model(_Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.count))


def _element_pointer(context, builder, array_type, array, index, index_type, vector_type):
    data = context.make_array(array_type)(context, builder, array).data
    at = builder.gep(data, [context.cast(builder, index, index_type, types.intp)])
    return builder.bitcast(at, context.get_value_type(vector_type).as_pointer())


@intrinsic
def _vload(typingctx, array, index):
    """The vector at ``array[index:index + count]`` (1-D, contiguous; no bounds check)."""
    vector = _Vector(array.dtype)

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1],
                               vector)
        return builder.load(ptr, align=array.dtype.bitwidth // 8)

    return vector(array, index), codegen


@intrinsic
def _vstore(typingctx, array, index, value):
    """``array[index:index + count] = value`` (1-D, contiguous; no bounds check)."""

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1],
                               sig.args[2])
        builder.store(args[2], ptr, align=array.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(array, index, value), codegen


def _splat(builder, scalar, vector_type):
    one = builder.insert_element(ir.Constant(vector_type, ir.Undefined), scalar,
                                 ir.Constant(ir.IntType(32), 0))
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), vector_type.count), [0] * vector_type.count)
    return builder.shuffle_vector(one, ir.Constant(vector_type, ir.Undefined), zeros)


@intrinsic
def _vsplat(typingctx, scalar, array):
    """A vector of ``array``'s element type with ``scalar`` in every element."""
    vector = _Vector(array.dtype)

    def codegen(context, builder, sig, args):
        value = context.cast(builder, args[0], sig.args[0], vector.dtype)
        return _splat(builder, value, context.get_value_type(vector))

    return vector(scalar, array), codegen


@intrinsic
def _vcount(typingctx, array):
    """Elements of ``array``'s type in one vector, as a constant the compiler folds (an
    array's ``itemsize`` is read from the array at run time, so offsets of ``k * count``
    were computed at run time too)."""
    count = VECTOR_BYTES * 8 // array.dtype.bitwidth

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, count)

    return types.intp(array), codegen


@intrinsic
def _vfma(typingctx, a, vector, acc):
    """``a * vector + acc``, ``a`` a scalar or a vector, element by element, each with one
    rounding (a fused multiply-add, as the loops compiled with ``contract`` get)."""

    def codegen(context, builder, sig, args):
        vt = args[1].type
        bits = 32 if vt.element == ir.FloatType() else 64
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt] * 3),
                                             f"llvm.fma.v{vt.count}f{bits}")
        if isinstance(sig.args[0], _Vector):
            factor = args[0]
        else:
            scalar = context.cast(builder, args[0], sig.args[0], sig.args[1].dtype)
            factor = _splat(builder, scalar, vt)
        return builder.call(fma, [factor, args[1], args[2]])

    return vector(a, vector, acc), codegen


@intrinsic
def _vsum(typingctx, vector):
    """The sum of ``vector``'s elements, added pairwise (halves, then quarters, ...: LLVM's
    reduction allowed to reassociate, which one sum in order would not be)."""

    def codegen(context, builder, sig, args):
        vt = args[0].type
        bits = 32 if vt.element == ir.FloatType() else 64
        reduce = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vt.element, [vt.element, vt]),
            f"llvm.vector.reduce.fadd.v{vt.count}f{bits}")
        # -0.0 is the sum's identity: an all -0.0 vector sums to -0.0
        return builder.call(reduce, [ir.Constant(vt.element, -0.0), args[0]],
                            fastmath=("reassoc",))

    return vector.dtype(vector), codegen


def _masked_call(builder, op, vector_type, args, result_type):
    """LLVM's masked vector load or store (``op``): lanes whose mask is off neither read nor
    write memory (AVX-512 masks them in the instruction)."""
    bits = 32 if vector_type.element == ir.FloatType() else 64
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(result_type, [a.type for a in args]),
        f"llvm.masked.{op}.v{vector_type.count}f{bits}.p0")
    return builder.call(fn, args)


def _lanes_below(context, builder, count, bound, bound_type):
    """The mask of lanes ``0 .. count - 1`` below the run-time ``bound``."""
    i64 = ir.IntType(64)
    bound = context.cast(builder, bound, bound_type, types.int64)
    one = builder.insert_element(ir.Constant(ir.VectorType(i64, count), ir.Undefined), bound,
                                 ir.Constant(ir.IntType(32), 0))
    splat = builder.shuffle_vector(one, ir.Constant(ir.VectorType(i64, count), ir.Undefined),
                                   ir.Constant(ir.VectorType(ir.IntType(32), count),
                                               [0] * count))
    return builder.icmp_signed("<", ir.Constant(ir.VectorType(i64, count), list(range(count))),
                               splat), bound


def _transpose_codegen(vector, partial):
    """The code of :func:`_vtranspose` (``partial`` False) and :func:`_vtranspose_part`."""

    def codegen(context, builder, sig, args):
        count = vector.count
        vt = context.get_value_type(vector)
        align = vector.dtype.bitwidth // 8
        if partial:  # lane masks: a row's first `columns` elements, a column's first `rows`
            columns_mask, columns = _lanes_below(context, builder, count, args[6], sig.args[6])
            rows_mask, rows = _lanes_below(context, builder, count, args[5], sig.args[5])
            nothing = ir.Constant(ir.VectorType(ir.IntType(1), count), [0] * count)
            zeros = ir.Constant(vt, [0] * count)
            i32_align = ir.Constant(ir.IntType(32), align)
            rows_start = columns_start = None  # the first row's and first column's addresses
        square = []
        for i in range(count):
            at = builder.add(args[1], builder.mul(args[2], context.get_constant(sig.args[2], i)))
            ptr = _element_pointer(context, builder, sig.args[0], args[0], at, sig.args[2],
                                   vector)
            if partial:  # a row past the last reads nothing, from the first row's address:
                # a masked load from an unmapped page costs a fault's microcode assist
                here = builder.icmp_signed("<", ir.Constant(ir.IntType(64), i), rows)
                mask = builder.select(here, columns_mask, nothing)
                ptr = builder.select(here, ptr, rows_start) if i else ptr
                rows_start = ptr if i == 0 else rows_start
                square.append(_masked_call(builder, "load", vt, [ptr, i32_align, mask, zeros],
                                           vt))
            else:
                square.append(builder.load(ptr, align=align))
        i32 = ir.IntType(32)
        b = 1
        while b < count:
            low = ir.Constant(ir.VectorType(i32, count), [j if j & b == 0 else count + j - b
                                                          for j in range(count)])
            high = ir.Constant(ir.VectorType(i32, count), [j + b if j & b == 0 else count + j
                                                           for j in range(count)])
            for i in range(count):
                if i & b == 0:
                    square[i], square[i + b] = (
                        builder.shuffle_vector(square[i], square[i + b], low),
                        builder.shuffle_vector(square[i], square[i + b], high))
            b *= 2
        offsets = context.make_array(sig.args[4])(context, builder, args[4]).data
        for j in range(count):
            at = builder.load(builder.gep(offsets, [context.get_constant(types.intp, j)]))
            ptr = _element_pointer(context, builder, sig.args[3], args[3], at,
                                   sig.args[4].dtype, vector)
            if partial:  # likewise a column past the last (its `at` is not set)
                here = builder.icmp_signed("<", ir.Constant(ir.IntType(64), j), columns)
                mask = builder.select(here, rows_mask, nothing)
                ptr = builder.select(here, ptr, columns_start) if j else ptr
                columns_start = ptr if j == 0 else columns_start
                _masked_call(builder, "store", vt, [square[j], ptr, i32_align, mask],
                             ir.VoidType())
            else:
                builder.store(square[j], ptr, align=align)
        return context.get_dummy_value()

    return codegen


@intrinsic
def _vtranspose(typingctx, src, start, step, dst, at):
    """The square of ``count`` rows ``src[start + i * step:][:count]`` (``count`` elements a
    vector), transposed: column ``j`` into ``dst[at[j]:][:count]``, i.e. ``dst[at[j] + i] =
    src[start + i * step + j]``. One vector load per row, then the butterfly of shuffles that
    swaps the off-diagonal b x b blocks of every 2b x 2b block, b = 1, 2, 4, ...; one vector
    store per column (copied element by element, each element is a load and a store of its
    own, one of them strided)."""
    return types.none(src, start, step, dst, at), _transpose_codegen(_Vector(src.dtype), False)


@intrinsic
def _vtranspose_part(typingctx, src, start, step, dst, at, rows, columns):
    """:func:`_vtranspose` of the square's first ``rows`` rows and ``columns`` columns only
    (each at most ``count``): the loads and stores masked, so nothing outside them is read or
    written, and ``at[j]`` for ``j >= columns`` is never used. The edges of a copy whose
    sides are not multiples of a vector (rows of 14 or 7 positions, 3 channels) take it
    instead of element-by-element copies."""
    return (types.none(src, start, step, dst, at, rows, columns),
            _transpose_codegen(_Vector(src.dtype), True))


@intrinsic
def _vdeinterleave(typingctx, src, start, phases, dst, d0, d_step):
    """``count`` elements of each of ``phases`` interleaved rows, split: ``dst[d0 + p * d_step
    + i] = src[start + i * phases + p]`` for ``i < count`` (a vector's worth), ``p < phases``.
    ``phases`` must be a literal. One vector load per ``count`` source elements, then per
    phase one two-source shuffle per further vector (the lanes it holds taken in, the rest
    kept), one vector store (M5's 1,981-sample rows at stride 4: 0.07 ns an element, against
    0.18 copied one phase at a time, element by element)."""
    if not isinstance(phases, types.IntegerLiteral):
        raise errors.RequireLiteralValue(phases)
    vector = _Vector(src.dtype)
    n = phases.literal_value

    def codegen(context, builder, sig, args):
        count = vector.count
        align = src.dtype.bitwidth // 8
        parts = []
        for k in range(n):
            at = builder.add(args[1], context.get_constant(sig.args[1], k * count))
            parts.append(builder.load(_element_pointer(context, builder, sig.args[0], args[0],
                                                       at, sig.args[1], vector), align=align))
        vector_mask = ir.VectorType(ir.IntType(32), count)
        for p in range(n):
            # lane i wants element i * n + p of the parts laid end to end: the first two parts
            # are one shuffle's two sources; each further part a shuffle with the lanes so far
            wanted = [i * n + p for i in range(count)]
            row = parts[0]
            if n > 1:
                row = builder.shuffle_vector(parts[0], parts[1], ir.Constant(
                    vector_mask, [e if e < 2 * count else 0 for e in wanted]))
            for k in range(2, n):
                row = builder.shuffle_vector(row, parts[k], ir.Constant(
                    vector_mask, [count + e - k * count if e // count == k else i
                                  for i, e in enumerate(wanted)]))
            at = builder.add(args[4], builder.mul(args[5], context.get_constant(sig.args[5], p)))
            builder.store(row, _element_pointer(context, builder, sig.args[3], args[3], at,
                                                sig.args[4], vector), align=align)
        return context.get_dummy_value()

    return types.none(src, start, phases, dst, d0, d_step), codegen


@njit(cache=True, inline="always")
def _copy_transposed(src, s0, s_step, dst, d0, d_step, n_i, n_j, at):
    """``dst[d0 + j * d_step + i] = src[s0 + i * s_step + j]`` for ``i < n_i``, ``j < n_j``
    (``src``'s rows contiguous along ``j``, ``dst``'s columns along ``i``): squares of a
    vector's worth transposed in registers (:func:`_vtranspose`), those at the edges in part
    (:func:`_vtranspose_part`) where they hold a quarter of a square or more, element by
    element where less (three channels of a 224x224 image: 46 us element by element, 118 us
    in part-squares, one thread).
    ``at``: a vector's worth of int64 scratch."""
    count = at.size
    for i0 in range(0, n_i, count):
        rows = min(count, n_i - i0)
        if 4 * rows < count:  # too few rows for squares (three channels): one by one
            _copy_elements(src, s0, s_step, dst, d0, d_step, i0, rows, 0, n_j)
            continue
        for j0 in range(0, n_j, count):
            columns = min(count, n_j - j0)
            if 4 * rows * columns < count * count:
                # a sliver: a square's shuffles cost more than its elements one by one
                _copy_elements(src, s0, s_step, dst, d0, d_step, i0, rows, j0, columns)
                continue
            for j in range(count):
                at[j] = d0 + (j0 + j) * d_step + i0
            if rows == count and columns == count:
                _vtranspose(src, s0 + i0 * s_step + j0, s_step, dst, at)
            else:
                _vtranspose_part(src, s0 + i0 * s_step + j0, s_step, dst, at, rows, columns)


@njit(cache=True, inline="always")
def _copy_elements(src, s0, s_step, dst, d0, d_step, i0, rows, j0, columns):
    """:func:`_copy_transposed`'s rows ``i0 .. i0 + rows - 1`` and columns ``j0 .. j0 +
    columns - 1``, element by element."""
    for i in range(i0, i0 + rows):
        for j in range(j0, j0 + columns):
            dst[np.uintp(d0 + j * d_step + i)] = src[np.uintp(s0 + i * s_step + j)]


@njit(cache=True, inline="always")
def _vector_scratch(size, like):
    """``size`` elements of ``like``'s type for a kernel's scratch, starting on a 64-byte
    boundary (Numba's arrays start on 32: every other vector load then straddles two cache
    lines)."""
    count = VECTOR_BYTES // like.itemsize
    raw = np.empty(size + count, dtype=like.dtype)
    start = (-(raw.ctypes.data % VECTOR_BYTES) // like.itemsize) % count
    return raw[start:start + size]
