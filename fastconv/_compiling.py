"""Seeing the kernels compile: how long it took, and a word to the user when it starts.

The ``numba`` backend compiles each kernel on its first use and caches it on disk (see
``fastconv.backends._numba_cache``); the ``cupy`` backend compiles its CUDA source with NVRTC
on first use per element type (CuPy caches it on disk). So a first run on a fresh installation
waits for a compiler, and later runs do not. :class:`CompileWatch` lets a command say so, and
keep that time out of the speeds it reports.
"""

from __future__ import annotations

import threading
import time

try:
    from numba.core import event
except ImportError:  # pragma: no cover - numba is a dependency; without it nothing compiles
    event = None

MESSAGE = "compiling the kernels for first use (cached for later runs)"

# Numba reports its compiles as events; the CUDA compiles are reported under this kind, so
# that one listener sees both.
NUMBA_COMPILE = "numba:compile"
CUDA_COMPILE = "fastconv:cuda-compile"
KINDS = (NUMBA_COMPILE, CUDA_COMPILE)


def compiling_cuda():
    """Context manager around a compile of the CUDA source, for :class:`CompileWatch`."""
    return event.trigger_event(CUDA_COMPILE)


class CompileWatch:
    """Within ``with CompileWatch(announce) as watch``, ``watch.seconds`` adds up the time
    spent compiling, by Numba or NVRTC (nested compiles counted once), and
    ``announce(MESSAGE)`` is called when the first compile starts, if at all."""

    def __init__(self, announce=None):
        self.announce = announce
        self.seconds = 0.0
        self._depth = 0
        self._started = 0.0
        self._lock = threading.Lock()
        self._listener = None

    def __enter__(self):
        if event is None:
            return self
        watch = self

        class _Listener(event.Listener):
            def on_start(self, ev):
                with watch._lock:
                    watch._depth += 1
                    if watch._depth > 1:
                        return
                    watch._started = time.perf_counter()
                    announce, watch.announce = watch.announce, None
                if announce is not None:
                    announce(MESSAGE)

            def on_end(self, ev):
                with watch._lock:
                    watch._depth -= 1
                    if watch._depth == 0:
                        watch.seconds += time.perf_counter() - watch._started

        self._listener = _Listener()
        for kind in KINDS:
            event.register(kind, self._listener)
        return self

    def __exit__(self, *exc):
        if self._listener is not None:  # ``seconds`` stays
            for kind in KINDS:
                event.unregister(kind, self._listener)
            self._listener = None
        return False
