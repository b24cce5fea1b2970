"""Tasks and workspaces of the ``numba`` backend's BLAS paths (packing + BLAS, Winograd).

The paths' kernels run a list of tasks on Numba's threads, each task owning its outputs, and
call BLAS from those threads (:mod:`._numba_blas`) with BLAS held at one thread. Here: how a
call is cut into tasks, BLAS's thread limit, and the backend's workspaces (temporaries kept
from one call to the next, per thread: the BLAS paths' and the batch lanes' copies).
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np

# Bytes of packed or transformed operands per task: small enough to stay in cache and to bound
# the extra memory of a call (one buffer per thread), large enough that BLAS runs near its peak.
TASK_BYTES = 4 << 20


@functools.cache
def _blas_threads():
    """The loaded BLAS libraries (NumPy's, and the one the kernels call), to run them one
    thread per calling thread while Numba's threads call them."""
    from threadpoolctl import ThreadpoolController

    from . import _numba_blas  # noqa: F401  (the kernels' BLAS loaded, to be found and limited)

    return ThreadpoolController().select(user_api="blas")


@contextlib.contextmanager
def one_blas_thread():
    """A context in which BLAS runs on the calling thread only: for the tasks, and for small
    products before them. A BLAS call on several threads leaves them spinning for a while
    after it returns, taking the cores from the tasks that follow: resnet-3x3's Winograd
    forward took 50-63 ms after a 0.05 ms product (the kernel's transform) on two BLAS
    threads, 28-33 ms after the same product on one (one process, interleaved). Each
    library's count is read and set directly (threadpoolctl's ``limit`` took 8 us a call,
    this 4: a small call's whole kernel takes about 5)."""
    libraries = _blas_threads().lib_controllers
    before = [library.get_num_threads() for library in libraries]
    changed = [(library, n) for library, n in zip(libraries, before) if n not in (None, 1)]
    for library, _ in changed:
        library.set_num_threads(1)
    try:
        yield
    finally:
        for library, n in changed:
            library.set_num_threads(n)


def split(count, item_bytes, threads):
    """Contiguous ranges over ``count`` items, each within ``TASK_BYTES`` where an item allows,
    as many as a multiple of ``threads`` so that the threads get equal shares."""
    if count == 0:
        return []
    most = max(1, TASK_BYTES // max(item_bytes, 1))
    n_tasks = -(-count // most)
    n_tasks = min(count, -(-n_tasks // threads) * threads)
    per = -(-count // n_tasks)
    return [(s, min(count, s + per)) for s in range(0, count, per)]


def image_row_tasks(n_images, rows, row_bytes, threads):
    """Tasks ``(n0, n1, r0, r1)``: whole images where they fit a task and there are images
    for every thread, else rows of one image (so that a single image keeps every thread
    busy: BLAS runs one thread per task)."""
    if rows * row_bytes <= TASK_BYTES and n_images >= threads:
        return [(n0, n1, 0, rows) for n0, n1 in split(n_images, rows * row_bytes, threads)]
    return [(n, n + 1, r0, r1) for n in range(n_images)
            for r0, r1 in split(rows, row_bytes, threads)]


# Temporaries of one call, kept for the next call: fresh memory costs its first touch, and
# glibc's malloc hands large freed blocks back to the system. LeNet c2's forward took 2.65 ms
# with fresh lane copies and 1.33 ms with reused ones (measured). Launches are serialised
# (numba_cpu), so one buffer per role, dtype and thread slot is enough; larger temporaries are
# allocated afresh, which bounds what stays allocated between calls.
WORKSPACE_MAX_BYTES = 8 << 20
_workspace = {}


def aligned_empty(size, dtype, align=64):
    """``np.empty(size, dtype)`` starting on an ``align``-byte boundary (NumPy's start on 16):
    the lane kernels' 64-byte vectors then never straddle two cache lines (LeNet c2's lane
    kernel 0.80 -> 0.56 ms aligned)."""
    dtype = np.dtype(dtype)
    raw = np.empty(size * dtype.itemsize + align, dtype=np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + size * dtype.itemsize].view(dtype)


def workspace(role, size, dtype, slot=0):
    """``size`` elements of ``dtype`` for ``role`` in thread ``slot``, 64-byte aligned,
    contents undefined: the buffer of the last call that asked for them where one is kept."""
    if size * np.dtype(dtype).itemsize > WORKSPACE_MAX_BYTES:
        return aligned_empty(size, dtype)
    key = (role, np.dtype(dtype), slot)
    buf = _workspace.get(key)
    if buf is None or buf.size < size:
        buf = _workspace[key] = aligned_empty(size, dtype)
    return buf[:size]


def task_array(task_list):
    """Tasks (tuples of ints, one width) as the rows of an int64 array, the kernels' form."""
    width = len(task_list[0]) if task_list else 0
    return np.array(task_list, dtype=np.int64).reshape(-1, width)


def slot_rows(role, threads, size, dtype):
    """:func:`workspace` as one row of ``size`` elements per thread (``(threads, size)``), each
    row starting on its own cache line."""
    size = -(-size // 16) * 16
    return workspace(role, threads * size, dtype).reshape(threads, size)


# Below this many positions per task a GEMM is too narrow for BLAS: split output channels
MIN_TASK_POSITIONS = 256


def splits_channels(positions, channels, parts):
    """Whether ``parts`` tasks over ``positions`` split the ``channels`` (output rows) instead:
    their ranges of positions would be narrower than ``MIN_TASK_POSITIONS``."""
    return parts > 1 and positions < parts * MIN_TASK_POSITIONS and channels >= parts


def position_tasks(n_images, positions, channels, threads):
    """Tasks ``(n, p0, p1, k0, k1)`` of a per-image GEMM: whole images when there are enough
    for every thread, else each image's positions in ranges, or, where those would be narrower
    than ``MIN_TASK_POSITIONS``, its ``channels`` (output rows) in ranges. (ResNet-50's
    512 -> 2048 1x1 layer at 7x7, batch 1: 49 positions in two tasks ran slower than one task
    on two BLAS threads.)"""
    parts = -(-threads // max(n_images, 1))
    if splits_channels(positions, channels, parts):
        return [(n, 0, positions, k0, k1) for n in range(n_images)
                for k0, k1 in split(channels, 0, parts)]
    return [(n, p0, p1, 0, channels) for n in range(n_images)
            for p0, p1 in split(positions, 0, parts)]


def sum_slots(partial, used):
    """Add the per-thread partial sums, always in thread order."""
    total = partial[0]
    for slot in range(1, used):
        total += partial[slot]
    return total
