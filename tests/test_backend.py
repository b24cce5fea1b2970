"""Backend selection: environment variable, set_backend, use_backend (context-local)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import types

import numpy as np
import pytest
from helpers import assert_close, gpu_missing

import fastconv as fc
from fastconv import _backend


@pytest.fixture
def clean_setting(monkeypatch):
    """No environment variable and no process default, restored afterwards."""
    monkeypatch.delenv("FASTCONV_BACKEND", raising=False)
    monkeypatch.setattr(_backend, "_process_default", None)


def test_available_backends():
    gpu = gpu_missing() is None
    assert fc.available_backends() == ["numpy", "numba"] + (["cupy"] if gpu else [])


@pytest.mark.skipif(gpu_missing() is None, reason="the cupy backend is available here")
def test_cupy_backend_without_a_gpu_is_a_clear_error(clean_setting, monkeypatch):
    monkeypatch.setenv("FASTCONV_BACKEND", "cupy")
    assert fc.get_backend() == "cupy"
    with pytest.raises(RuntimeError, match="conv2d: the 'cupy' backend cannot be imported here"
                       ".*available: numpy, numba"):
        fc.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)))


def test_cpu_backends_refuse_gpu_arrays_and_the_reverse(clean_setting):
    """What fastconv's dispatch does with CuPy arrays, checked with an array-module stand-in
    named ``cupy`` (only its name is read): a CPU backend refuses them, never copying."""
    fake_cupy = types.SimpleNamespace(__name__="cupy")
    with fc.use_backend("numba"), pytest.raises(
            TypeError, match="op: the 'numba' backend takes NumPy arrays, got CuPy arrays"):
        _backend.resolve("op", fake_cupy)
    if gpu_missing() is None:
        with fc.use_backend("cupy"), pytest.raises(
                TypeError, match="op: the 'cupy' backend takes CuPy arrays, got NumPy arrays"):
            _backend.resolve("op", np)


def test_default_is_auto_and_auto_means_numba(clean_setting):
    assert fc.get_backend() == "auto"
    assert _backend.resolve("test").name == "numba"


def test_environment_variable(clean_setting, monkeypatch):
    monkeypatch.setenv("FASTCONV_BACKEND", "NumPy")
    assert fc.get_backend() == "numpy"
    assert _backend.resolve("test").name == "numpy"
    monkeypatch.setenv("FASTCONV_BACKEND", "fortran")
    with pytest.raises(ValueError, match="FASTCONV_BACKEND.*'fortran'.*auto, numpy, numba"):
        fc.conv1d(np.ones((1, 1, 3)), np.ones((1, 1, 2)))


def test_environment_variable_in_a_fresh_process():
    env = dict(os.environ, FASTCONV_BACKEND="numpy")
    code = "import fastconv, sys; print(fastconv.get_backend(), 'numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    # the numpy backend never imports Numba, and neither does importing fastconv
    assert out == ["numpy", "False"]


def test_set_backend_and_use_backend_precedence(clean_setting, monkeypatch):
    monkeypatch.setenv("FASTCONV_BACKEND", "numba")
    fc.set_backend("numpy")
    assert fc.get_backend() == "numpy"
    with fc.use_backend("numba"):
        assert fc.get_backend() == "numba"
        with fc.use_backend("auto"):
            assert fc.get_backend() == "auto"
        assert fc.get_backend() == "numba"
    assert fc.get_backend() == "numpy"


def test_use_backend_is_restored_after_an_exception(clean_setting):
    with pytest.raises(RuntimeError), fc.use_backend("numpy"):
        raise RuntimeError
    assert fc.get_backend() == "auto"


def test_use_backend_is_context_local(clean_setting):
    seen = {}
    inside = threading.Event()
    release = threading.Event()

    def other_thread():
        with fc.use_backend("numpy"):
            inside.set()
            release.wait(5)
            seen["other"] = fc.get_backend()

    t = threading.Thread(target=other_thread)
    t.start()
    inside.wait(5)
    seen["main"] = fc.get_backend()  # the other thread's block must not leak here
    release.set()
    t.join()
    assert seen == {"main": "auto", "other": "numpy"}


def test_backends_agree(rng):
    x = rng.standard_normal((2, 3, 9, 7))
    w = rng.standard_normal((4, 3, 3, 2))
    results = []
    for name in ("numpy", "numba"):
        with fc.use_backend(name):
            results.append((fc.conv2d(x, w, padding=1), fc.conv2d_backward(
                np.ones((2, 4, 9, 8)), x, w, padding=1)))
    (y0, g0), (y1, g1) = results
    assert_close(y0, y1, np.float64, "forward")
    for a, b in zip(g0, g1):
        assert_close(a, b, np.float64, "gradient")


def test_numba_results_are_bitwise_repeatable(rng):
    x = rng.standard_normal((4, 3, 12, 12)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((4, 5, 10, 10)).astype(np.float32)
    with fc.use_backend("numba"):
        first = fc.conv2d_backward(gy, x, w)
        for _ in range(3):
            for a, b in zip(first, fc.conv2d_backward(gy, x, w)):
                assert np.array_equal(a, b)


CONCURRENT = """
import threading, numpy as np, fastconv as fc
rng = np.random.default_rng(0)
x, w = rng.standard_normal((8, 4, 32, 32)), rng.standard_normal((8, 4, 3, 3))
expected = fc.conv2d(x, w, padding=1)
results = []
def work():
    for _ in range(20):
        results.append(np.array_equal(fc.conv2d(x, w, padding=1), expected))
threads = [threading.Thread(target=work) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print(len(results), all(results))
"""


def test_numba_calls_from_many_threads():
    """Parallel kernels launched from several Python threads at once neither crash nor differ.

    The child process forces Numba's workqueue threading layer, which aborts the process on
    concurrent launches unless fastconv serialises them; a child keeps such an abort from
    killing the test run.
    """
    env = dict(os.environ, FASTCONV_BACKEND="numba", NUMBA_THREADING_LAYER="workqueue")
    done = subprocess.run([sys.executable, "-c", CONCURRENT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["80", "True"]
