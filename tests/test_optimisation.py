"""_numba_optimisation.AtMostO2: the kernels that compile at LLVM's -O2 really do, and nothing
else does."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit, prange
from numba.core import codegen, config

from fastconv.backends import _numba_first_use
from fastconv.backends._numba_optimisation import LEVEL, AtMostO2


@pytest.fixture
def levels(monkeypatch):
    """The optimisation levels Numba sets LLVM's passes up with, as it compiles."""
    njit(lambda: 1)()  # Numba's runtime, compiled once per process on first use, comes first
    seen = []
    build = codegen.CPUCodegen._pass_builder

    def recording(self, **kwargs):
        seen.append(int(kwargs.get("opt", config.OPT)))
        return build(self, **kwargs)

    monkeypatch.setattr(codegen.CPUCodegen, "_pass_builder", recording)
    return seen


def _fresh(**options):
    """A new parallel function (compiled on its first call, never cached)."""
    @njit(parallel=True, **options)
    def scaled(a):
        for i in prange(a.size):
            a[i] *= 3.0
        return a
    return scaled


def test_the_pipeline_lowers_the_level_and_restores_it(levels):
    before = config.OPT
    np.testing.assert_array_equal(_fresh(pipeline_class=AtMostO2)(np.ones(5)), np.full(5, 3.0))
    assert levels and max(levels) <= LEVEL  # the loop body's compile included
    assert config.OPT == before and type(config.OPT) is type(before)
    if int(before) > LEVEL:  # a user's NUMBA_OPT below it is kept; the default is above
        levels.clear()
        _fresh()(np.ones(5))
        assert max(levels) == int(before)


def test_lenet_kernels_use_it():
    """The kernels of LeNet's first step, what a newcomer waits for, are the ones it is for."""
    for module, name, _ in _numba_first_use.LENET_TRAINING:
        kernel = _numba_first_use._kernel(module, name)
        assert kernel._compiler.pipeline_class is AtMostO2, name
