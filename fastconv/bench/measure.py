"""How things are measured: the machine's ceilings, alternating timings, peak memory."""

from __future__ import annotations

import ctypes
import statistics
import sys
import time

import numpy as np


def ceilings(threads, dtype=np.float32):
    """Peak FLOP/s (a large matmul) and memory bandwidth (a large copy) here, best of 3."""
    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n)).astype(dtype)
    flop_times = []
    for _ in range(3):
        start = time.perf_counter()
        a @ a
        flop_times.append(time.perf_counter() - start)
    src = np.ones(64 << 20, dtype=np.float32)  # 256 MB
    dst = np.empty_like(src)
    copy_times = []
    for _ in range(3):
        start = time.perf_counter()
        np.copyto(dst, src)
        copy_times.append(time.perf_counter() - start)
    return {"flops": 2 * n**3 / min(flop_times),
            "bandwidth": 2 * src.nbytes / min(copy_times),
            "threads": threads}


def timed(call):
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def alternate(calls, repeat):
    """Median time of each call, the calls taking turns in every round (noise hits all alike)."""
    times = {name: [] for name in calls}
    for _ in range(repeat):
        for name, call in calls.items():
            times[name].append(timed(call))
    return {name: statistics.median(ts) for name, ts in times.items()}


def _status(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return None


def peak_memory(call):
    """Peak growth of the resident set during ``call``, in bytes (Linux), else ``None``.

    Freed memory is first handed back to the system (glibc's malloc_trim) and the peak counter
    reset (``/proc/self/clear_refs``), so the figure is what the call itself needed, outputs
    included.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        before = _status("VmRSS:")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        call()
        return max(0, _status("VmHWM:") - before)
    except OSError:
        return None
