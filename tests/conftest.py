"""Shared fixtures: every test body runs once per backend, on fresh random data."""

from __future__ import annotations

import functools
import os

import cuda_host
import numpy as np
import pytest

# PyTorch is the oracle: without it the suite must fail, never pass vacuously.
import torch  # noqa: F401  (an ImportError here fails collection loudly)
from helpers import gpu_missing
from hypothesis import HealthCheck, settings

import fastconv
from fastconv import _backend
from fastconv.backends import numba_cpu
from fastconv.backends._gpu_ops import GpuOps

settings.register_profile(
    "fastconv", max_examples=30, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(  # HYPOTHESIS_PROFILE=thorough for a longer hunt
    "thorough", max_examples=400, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fastconv"))

CPU_BACKENDS = ["numpy", "numba"]
DTYPES = [np.float64, np.float32]


# The cupy backend's code runs on the host everywhere ("cuda-host": its CUDA kernels compiled
# for the CPU, see cuda_host.py), and on the GPU where there is one ("cupy"; elsewhere the
# GPU tests of test_gpu.py say why they skip, once each, rather than every oracle test).
BACKENDS = CPU_BACKENDS + [
    pytest.param("cuda-host", marks=pytest.mark.skipif(
        cuda_host.compiler() is None, reason="no C++ compiler for the CUDA kernels on the host")),
]
if gpu_missing() is None:
    BACKENDS.append(pytest.param("cupy", marks=pytest.mark.gpu))


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Run the test on each backend: inside ``use_backend(name)`` for the CPU backends; for
    the GPU backend's code, with fastconv's dispatch sending the test's NumPy arrays to it
    (through the host device, or copied to the GPU and the results back)."""
    name = request.param
    if name in CPU_BACKENDS:
        with fastconv.use_backend(name):
            yield name
        return
    primitives = _host_ops() if name == "cuda-host" else _OnGpu()
    monkeypatch.setattr(_backend, "resolve", lambda fn, xp=None: primitives)
    yield name


@functools.cache
def _host_ops():
    return GpuOps(cuda_host.HostDevice())


class _OnGpu:
    """The cupy backend's primitives on NumPy arrays: arguments copied to the GPU, results
    copied back, so that the CPU backends' tests run unchanged on the GPU."""

    def __getattr__(self, primitive):
        import cupy

        from fastconv.backends import cupy_gpu

        def to_host(a):
            return cupy.asnumpy(a) if isinstance(a, cupy.ndarray) else a

        def call(*args):
            out = getattr(cupy_gpu, primitive)(
                *(cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in args))
            return tuple(map(to_host, out)) if isinstance(out, tuple) else to_host(out)

        return call


class _KnobPatch(pytest.MonkeyPatch):
    """pytest's MonkeyPatch that also drops the ways the numba backend keeps per call shape
    (``numba_cpu.forget_rules``) whenever it sets or restores an attribute or an item: a knob
    a test changes rules the next call, and nothing a test chose outlives it."""

    def setattr(self, *args, **kwargs):
        super().setattr(*args, **kwargs)
        numba_cpu.forget_rules()

    def setitem(self, *args, **kwargs):
        super().setitem(*args, **kwargs)
        numba_cpu.forget_rules()

    def undo(self):
        super().undo()
        numba_cpu.forget_rules()


@pytest.fixture
def monkeypatch():
    """The :class:`_KnobPatch` of the test, undone after it (as pytest's own fixture is)."""
    patch = _KnobPatch()
    yield patch
    patch.undo()


@pytest.fixture(params=DTYPES, ids=["f64", "f32"])
def dtype(request):
    return np.dtype(request.param)


@pytest.fixture
def rng():
    """A generator seeded afresh for every test; the seed is printed for reproduction."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"rng seed: {seed}")
    return np.random.default_rng(seed)
