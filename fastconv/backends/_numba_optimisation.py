"""LLVM's optimisation level per kernel, for kernels that compile faster at -O2 and run as fast.

Numba optimises every function at one level, ``NUMBA_OPT`` (default 3), read whenever LLVM's
passes are set up. At -O3 LLVM spends much of a kernel's compile time on loop transforms that
buy nothing in loops bound by memory, or in loops already written out as vector code. The
pipeline :class:`AtMostO2` is Numba's own with that level lowered to 2 while it compiles one
function (and what that function's compile compiles: its parallel-loop bodies, and the helpers
it calls that are not compiled yet). Numba's lock serialises compiles, so the change is seen by
no other compile, and the level is restored afterwards. A user's lower ``NUMBA_OPT`` wins.

Why: the first training step of ``fastconv train`` compiles LeNet's ten kernels (batch lanes,
sigmoid), and its time is what a newcomer waits for. Measured on a fresh cache, per kernel in
one process: 14.3 s at -O3 against 10.3 s at -O2; the first batch of ``fastconv train`` 8.9 s
against 6.2-7.0 s; LeNet's training speed the same (``bench/train_lenet.py``, alternated runs:
1.56-1.62x PyTorch at -O3, 1.63-1.65x at -O2).
"""

from __future__ import annotations

import contextlib

from numba.core import config
from numba.core.compiler import Compiler
from numba.core.compiler_lock import global_compiler_lock

LEVEL = 2


@contextlib.contextmanager
def _level_at_most(level):
    """``config.OPT`` lowered to ``level`` (kept if lower) inside the block, under Numba's
    compiler lock."""
    with global_compiler_lock:
        before = config.OPT
        if int(before) > level:
            config.OPT = type(before)(level)
        try:
            yield
        finally:
            config.OPT = before


class AtMostO2(Compiler):
    """Numba's default compiler pipeline, with LLVM's optimisation level at most :data:`LEVEL`.
    Pass it as ``njit(pipeline_class=AtMostO2)``."""

    def compile_extra(self, func):
        with _level_at_most(LEVEL):
            return super().compile_extra(func)

    def compile_ir(self, func_ir, lifted=(), lifted_from=None):
        with _level_at_most(LEVEL):
            return super().compile_ir(func_ir, lifted, lifted_from)
