"""fastconv._compiling.CompileWatch: Numba's compile time, and one word when it starts."""

from __future__ import annotations

import time

import numpy as np
from numba import njit

from fastconv._compiling import MESSAGE, CompileWatch


def test_watch_counts_compiling_once_and_announces_once():
    @njit
    def inner(a):
        return a * 2

    @njit
    def outer(a):  # compiling it compiles inner inside: one span, not two
        return inner(a) + 1

    said = []
    with CompileWatch(announce=said.append) as watch:
        started = time.perf_counter()
        outer(np.ones(3))
        elapsed = time.perf_counter() - started
        outer(np.ones(3))  # compiled already: nothing more
        first = watch.seconds
        outer(np.ones(3, dtype=np.float32))  # a new signature compiles again, silently
    assert said == [MESSAGE]
    # an accounting invariant, not a speed: the nested compile counted once, within the
    # wall time of the call that contains it
    assert 0 < first <= elapsed
    assert watch.seconds > first
    with CompileWatch() as quiet:
        outer(np.ones(3))
    assert quiet.seconds == 0


def test_watch_counts_the_cuda_compiles_too():
    """The cupy backend wraps its NVRTC compile in ``compiling_cuda``: seen like Numba's."""
    from fastconv._compiling import compiling_cuda

    said = []
    with CompileWatch(announce=said.append) as watch:
        with compiling_cuda():
            time.sleep(0.05)
    assert said == [MESSAGE]
    assert watch.seconds >= 0.05
    with compiling_cuda():  # outside a watch: nothing listens, nothing breaks
        pass
