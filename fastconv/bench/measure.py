"""How things are measured: the machine's ceilings, alternating timings, peak memory."""

from __future__ import annotations

import ctypes
import statistics
import sys
import time

import numpy as np


def ceilings(threads, dtype=np.float32, tries=5):
    """Peak FLOP/s (a large matmul) and memory bandwidth (a large copy) here, best of ``tries``.

    The matmul is NumPy's and, where PyTorch is installed, PyTorch's too (its kernels can beat
    NumPy's BLAS, and the ceiling must be the machine's); one untimed call first each.
    """
    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n)).astype(dtype)
    matmuls = [lambda: a @ a]
    try:
        import torch

        t = torch.from_numpy(a)
        matmuls.append(lambda: torch.mm(t, t))
    except ImportError:
        pass
    flop_time = float("inf")
    for matmul in matmuls:
        matmul()
        flop_time = min(flop_time, *(timed(matmul) for _ in range(tries)))
    src = np.ones(64 << 20, dtype=np.float32)  # 256 MB
    dst = np.empty_like(src)
    np.copyto(dst, src)
    copy_time = min(timed(lambda: np.copyto(dst, src)) for _ in range(tries))
    return {"flops": 2 * n**3 / flop_time, "bandwidth": 2 * src.nbytes / copy_time,
            "threads": threads}


def gpu_ceilings(dtype=np.float32, tries=5):
    """The GPU's peak FLOP/s (a large CuPy matmul, cuBLAS) and bandwidth (a large device copy),
    best of ``tries``, each synchronised."""
    import cupy

    def synchronised(call):
        def run():
            call()
            cupy.cuda.get_current_stream().synchronize()
        return run

    n = 8192
    a = cupy.random.default_rng(0).standard_normal((n, n), dtype=np.float32).astype(dtype)
    matmul = synchronised(lambda: a @ a)
    src = cupy.ones(256 << 20, dtype=np.float32)  # 1 GiB
    dst = cupy.empty_like(src)
    copy = synchronised(lambda: cupy.copyto(dst, src))
    matmul(), copy()
    flop_time = min(timed(matmul) for _ in range(tries))
    copy_time = min(timed(copy) for _ in range(tries))
    return {"flops": 2 * n**3 / flop_time, "bandwidth": 2 * src.nbytes / copy_time}


def timed(call):
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


# Seconds of untimed calls after each switch of contender (at least one call).
SETTLE_SECONDS = 0.005


def alternate(calls, repeat, rounds=3):
    """Median time of each call over ``repeat`` timed runs, in ``rounds`` interleaved rounds.

    In a round, each call runs untimed for SETTLE_SECONDS (once at least), then its share of
    the timed runs back to back. Rounds interleave the contenders, so slow drifts of a shared
    machine hit all alike; the untimed runs and the consecutive timing keep one contender's
    idle threads, still spinning after its calls (OpenMP's, PyTorch's and Numba's alike), from
    slowing the next one. One untimed call was not enough for short calls: ResNet-18's layer2
    at batch 1 took 0.92, 0.78, 0.73, 0.74, 0.70 ms through fastconv right after PyTorch's
    calls, and PyTorch's 1.17, 1.12, 1.10, 1.10, 1.08 ms right after fastconv's.
    """
    per_round = max(1, -(-repeat // rounds))
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            while time.perf_counter() - start < SETTLE_SECONDS:
                call()
            times[name].extend(timed(call) for _ in range(per_round))
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
