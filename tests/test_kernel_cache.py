"""Numba's on-disk cache across the kernel modules (fastconv.backends._numba_cache): a kernel
that calls a helper from another module is recompiled when that helper changes, never loaded
stale from the cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import fastconv

# the exact weight gradient (in _numba_direct) of a 3x3 convolution, through _valid_range (in
# _numba_band): its sum of every entry, printed
CALL = """
import numpy as np
from fastconv.backends import _numba_direct as D
x = np.ones((1, 1, 1, 6, 6)); gy = np.ones((1, 1, 1, 6, 6))
print(D._conv_weight_grad_exact(x, gy, (1, 1, 1), (0, 1, 1), (1, 1, 1), 1, (1, 3, 3)).sum())
"""


def _run(root, env):
    done = subprocess.run([sys.executable, "-c", CALL], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.split()[-1])


def test_changed_helper_recompiles_its_callers(tmp_path):
    shutil.copytree(Path(fastconv.__file__).parent, tmp_path / "fastconv",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    env.pop("NUMBA_CACHE_DIR", None)  # the copy's own __pycache__
    # 36 outputs of a 6x6 image, each tap in bounds for 25 to 36 of them: 9 taps sum to 256
    assert _run(tmp_path, env) == 256.0
    cached = list((tmp_path / "fastconv" / "backends" / "__pycache__").glob("_numba_direct*.nbi"))
    assert cached, "the kernel was not cached"
    assert _run(tmp_path, env) == 256.0  # from the cache
    band = tmp_path / "fastconv" / "backends" / "_numba_band.py"
    source = band.read_text()
    old = "    return lo, hi\n"
    assert old in source
    band.write_text(source.replace(old, "    return lo, lo  # changed: no position in bounds\n"))
    assert _run(tmp_path, env) == 0.0  # the caller in _numba_direct was recompiled
