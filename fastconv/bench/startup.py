"""``fastconv bench --startup``: import plus a first small conv, in fresh processes."""

from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

_FIRST_CALL = {
    "fastconv": ("import numpy as np, fastconv\n"
                 "x = np.ones((1, 1, 28, 28), np.float32)\n"
                 "w = np.ones((6, 1, 5, 5), np.float32)\n"
                 "fastconv.conv2d(x, w, padding=2)\n"),
    "torch": ("import torch, torch.nn.functional as F\n"
              "F.conv2d(torch.ones(1, 1, 28, 28), torch.ones(6, 1, 5, 5), padding=2)\n"),
}
_TIMED = "import time\nstart = time.perf_counter()\n{body}print(time.perf_counter() - start)\n"


def _run(code, env):
    """(seconds inside the process for import + first call, seconds of the whole process)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _TIMED.format(body=code)], env=env,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1]), time.perf_counter() - start


def startup(repeat=3):
    """Cold (empty Numba cache) and warm start of fastconv, and PyTorch's start, in seconds."""
    results = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        results["fastconv cold cache"] = _run(_FIRST_CALL["fastconv"], env)
        warm = [_run(_FIRST_CALL["fastconv"], env) for _ in range(repeat)]
        results["fastconv warm cache"] = tuple(statistics.median(v) for v in zip(*warm))
    if importlib.util.find_spec("torch") is not None:
        runs = [_run(_FIRST_CALL["torch"], dict(os.environ)) for _ in range(repeat)]
        results["torch"] = tuple(statistics.median(v) for v in zip(*runs))
    return {name: {"import_and_first_call_s": a, "process_s": b}
            for name, (a, b) in results.items()}


def startup_table(results):
    lines = [f"{'start-up':22s} {'import + first conv2d':>22s} {'whole process':>14s}"]
    for name, r in results.items():
        lines.append(f"{name:22s} {r['import_and_first_call_s']:21.2f}s "
                     f"{r['process_s']:13.2f}s")
    return "\n".join(lines)
