"""Shared fixtures: every test body runs once per backend, on fresh random data."""

from __future__ import annotations

import os

import numpy as np
import pytest

# PyTorch is the oracle: without it the suite must fail, never pass vacuously.
import torch  # noqa: F401  (an ImportError here fails collection loudly)
from hypothesis import HealthCheck, settings

import fastconv

settings.register_profile(
    "fastconv", max_examples=30, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(  # HYPOTHESIS_PROFILE=thorough for a longer hunt
    "thorough", max_examples=400, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fastconv"))

BACKENDS = ["numpy", "numba"]
DTYPES = [np.float64, np.float32]


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Run the test inside ``use_backend(name)`` for each CPU backend."""
    with fastconv.use_backend(request.param):
        yield request.param


@pytest.fixture(params=DTYPES, ids=["f64", "f32"])
def dtype(request):
    return np.dtype(request.param)


@pytest.fixture
def rng():
    """A generator seeded afresh for every test; the seed is printed for reproduction."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"rng seed: {seed}")
    return np.random.default_rng(seed)
