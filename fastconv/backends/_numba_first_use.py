"""Compiling a known set of kernels in a second process, so that a first run waits less.

On a fresh installation the first LeNet training step compiles ten Numba kernels, one after
another (17 s on a 2-core machine; see docs/architecture.md). Numba compiles on one core, and
its cache is shared between processes: a kernel that one process has compiled and saved,
another loads in milliseconds. So while the trainer compiles the kernels in the order it
needs them, a helper process (:func:`start_helper`) compiles the same list from the other
end; they meet in the middle, and each loads what the other has saved.

``LENET_TRAINING`` lists those kernels and their argument types, in the order of first use,
as ``python -m fastconv.backends._numba_first_use`` records them (run it with
``NUMBA_CACHE_DIR`` set to an empty folder: only compiles are seen). A stale entry costs only
time: the helper skips what does not compile. ``tests/test_first_use.py`` checks that the
list is what a training step uses.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

_ARRAY = "Array({}, {}, 'C', False, aligned=True)"
_F1, _F2, _F4, _F5 = (_ARRAY.format("float32", n) for n in (1, 2, 4, 5))
_I, _P2, _P4 = "int64", "UniTuple(int64, 2)", "UniTuple(int64, 4)"



# (module, kernel, argument types) of LeNet's training step and prediction, float32; a lane
# kernel with a 512-bit twin by its own name (:func:`_kernel` takes the twin this CPU uses)
LENET_TRAINING = (
    ("_numba_lane_kernels", "_to_lanes", (_F5, _I, _I, _P2, _P2, _I, _I, _F1)),
    ("_numba_lane_kernels", "_lanes_padded", (_F1, _I, _I, _P2, _P2, _P2, _I, _I, _F1)),
    ("_numba_lane_kernels", "_lane_conv", (_F1, _I, _I, _F4, _F1, _I, _I, _I, _P2, _P4, _P2,
                                           _P2, _I, _I, _F1)),
    ("_numba_elementwise", "_sigmoid_forward_f32", (_F1, _F1)),
    ("_numba_lane_kernels", "_lane_avg_pool_forward", (_F1, _I, _I, _P2, _P2, _P2, _P2, _P2,
                                                       _F2, _I, _I, _I, _F1)),
    ("_numba_lane_kernels", "_from_lanes", (_F1, _I, _I, _I, _F5)),
    ("_numba_elementwise", "_sigmoid_backward", (_F1, _F1, _F1)),
    ("_numba_lane_kernels", "_lane_avg_pool_backward", (_F1, _I, _I, _P2, _P2, _P2, _P2, _P2,
                                                        _F2, _I, _I, _I, _F1, _F1)),
    ("_numba_lane_kernels", "_lane_weight_grad", (_F1, _I, _I, _F1, _I, _I, _I, _I, _P2, _P2,
                                                  _P2, _I)),
    ("_numba_lane_kernels", "_lane_channel_sums", (_F1, _I, _I, _I, _I, _I)),
)


def _types(names):
    """Numba types from their ``repr`` (the few forms the kernels take)."""
    from numba.core import types

    namespace = {"Array": types.Array, "UniTuple": types.UniTuple, "int64": types.int64,
                 "float32": types.float32, "float64": types.float64, "bool": types.boolean}
    return tuple(eval(name, {"__builtins__": {}}, namespace) for name in names)


def _kernel(module, name):
    """The dispatcher of an entry: for a lane kernel with a ``_wide`` twin, the one this CPU's
    training step calls (``_numba_lanes.lane_kernel``, imported here rather than with this
    module, which ``fastconv.train`` imports)."""
    kernels = importlib.import_module(f"{__package__}.{module}")
    if module == "_numba_lane_kernels" and hasattr(kernels, name + "_wide"):
        from ._numba_lanes import lane_kernel

        return lane_kernel(name)
    return getattr(kernels, name)


def compile_all(entries):
    """Compile (or load from the cache) each ``(module, kernel, types)``; skip any that fails
    (a stale entry): returns how many compiled."""
    done = 0
    for module, name, names in entries:
        try:
            kernel = _kernel(module, name)
            kernel.compile(_types(names))
            done += 1
        except Exception:  # noqa: BLE001 - a stale entry only costs the time it saved
            continue
    return done


def start_helper(entries=LENET_TRAINING):
    """Start a process compiling ``entries`` from the last to the first, on the other core;
    returns it (``None`` with one core, where it would only compete). The caller compiles
    in order as it runs, and stops it when done (:func:`stop_helper`)."""
    if (os.cpu_count() or 1) < 2:
        return None
    code = (f"from {__name__} import compile_all, LENET_TRAINING as E; "
            "compile_all(E[::-1])")
    env = dict(os.environ, NUMBA_NUM_THREADS="1")  # compiling needs no thread pool
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_helper(process):
    """End the helper if it still runs (what it saved stays in the cache)."""
    if process is not None and process.poll() is None:
        process.terminate()
        process.wait()


def cached(entries=LENET_TRAINING):
    """Whether every kernel of ``entries`` is in this process or in Numba's cache index (read,
    not loaded): then a helper has nothing to do."""
    for module, name, names in entries:
        try:
            kernel = _kernel(module, name)
            sig = _types(names)
            if sig in kernel.overloads:
                continue
            index = kernel._cache._cache_file._load_index()  # Numba's, keyed by signature first
        except Exception:  # noqa: BLE001 - a stale entry, or a Numba without that index
            continue
        if not any(key[0] == sig for key in index):
            return False
    return True


def _record():
    """Print the kernels a LeNet training step and a prediction compile, in order."""
    import numpy as np
    from numba.core import event

    seen, depth = [], [0]

    class Listener(event.Listener):
        def on_start(self, ev):
            depth[0] += 1
            if depth[0] == 1:
                d = ev.data["dispatcher"]
                seen.append((d.py_func.__module__.rsplit(".", 1)[1],
                             d.py_func.__name__.removesuffix("_wide"),
                             tuple(repr(t) for t in ev.data["args"])))

        def on_end(self, ev):
            depth[0] -= 1

    event.register("numba:compile", Listener())
    from ..models import lenet
    from ..nn import SGD, SoftmaxCrossEntropy
    from ..train import blas_single_thread, predict, train_step

    rng = np.random.default_rng(0)
    model = lenet("classic", rng=rng)
    with blas_single_thread():
        train_step(model, SoftmaxCrossEntropy(), SGD(model.parameters(), 0.1),
                   rng.random((256, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 256))
        predict(model, rng.random((1000, 1, 28, 28), dtype=np.float32))
    for entry in seen:
        print(entry)


if __name__ == "__main__":
    _record()
