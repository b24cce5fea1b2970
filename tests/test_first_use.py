"""fastconv.backends._numba_first_use: the list of kernels a LeNet training step compiles on a
fresh installation, which a helper process compiles from the other end (fastconv train)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from fastconv.backends import _numba_first_use as first_use

# In a fresh process with an empty cache: compile the list, then a training step and a
# prediction must compile nothing more (a kernel missing from the list, or listed with other
# argument types, would compile there: the list is stale).
SCRIPT = textwrap.dedent("""
    import numpy as np
    from fastconv._compiling import CompileWatch
    from fastconv.backends import _numba_first_use as first_use
    from fastconv.models import lenet
    from fastconv.nn import SGD, SoftmaxCrossEntropy
    from fastconv.train import blas_single_thread, predict, train_step

    assert not first_use.cached()
    assert first_use.compile_all(first_use.LENET_TRAINING) == len(first_use.LENET_TRAINING)
    assert first_use.cached()
    rng = np.random.default_rng(0)
    model = lenet("classic", rng=rng)
    with CompileWatch() as watch, blas_single_thread():
        train_step(model, SoftmaxCrossEntropy(), SGD(model.parameters(), 0.1),
                   rng.random((256, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 256))
        predict(model, rng.random((1000, 1, 28, 28), dtype=np.float32))
    print("compiled after the list:", watch.seconds)
""")


def test_the_list_is_what_a_training_step_compiles(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "compiled after the list: 0.0" in done.stdout


def test_stale_entries_are_skipped():
    stale = [("_numba_lane_kernels", "_no_such_kernel", ("int64",)),
             ("_numba_elementwise", "_sigmoid_backward", ("int64",))]  # wrong types
    assert first_use.compile_all(stale) == 0
