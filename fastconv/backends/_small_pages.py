"""Fresh NumPy arrays that Linux maps in small (4 KiB) pages.

NumPy asks Linux for transparent huge pages on every array of 4 MiB or more. Mostly that
pays: fewer faults, fewer TLB misses (the convolutions lost with small pages: U-Net's 1x1
head at batch 4, 20-21 against 32 ms). But a huge page's first touch is sometimes far slower
than its 512 small ones (not compaction: the kernel's ``compact_stall`` counter stays put; the
time is system time in the fault). Pooling writes its fresh arrays at memory speed and
computes little else, so there the faults are the time: max pooling's training step on
VGG-16's pool1 at batch 4 took 14-71 ms over eight zoo runs with huge pages and 15-24 ms with
small ones (PyTorch, which asks for none, 41-52 ms). Pooling allocates through :func:`empty`.
"""

from __future__ import annotations

import ctypes
import mmap
import sys

import numpy as np

# NumPy advises huge pages for arrays from this size on (numpy/_core/src/multiarray/alloc.c)
HUGE_PAGE_ADVICE_BYTES = 1 << 22


def _madvise():
    """libc's ``madvise``, or None where there is no huge-page advice to take back."""
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_NOHUGEPAGE"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    call.restype = ctypes.c_int
    return call


_MADVISE = _madvise()


def empty(shape, dtype):
    """``np.empty(shape, dtype)``, its whole pages advised ``MADV_NOHUGEPAGE`` before they are
    first touched, so that each is faulted in as a small page. Advice only: where the call
    fails (an old kernel), the array is as NumPy made it."""
    a = np.empty(shape, dtype)
    if _MADVISE is not None and a.nbytes >= HUGE_PAGE_ADVICE_BYTES:
        first = -(-a.ctypes.data // mmap.PAGESIZE) * mmap.PAGESIZE
        end = (a.ctypes.data + a.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
        _MADVISE(first, end - first, mmap.MADV_NOHUGEPAGE)
    return a
