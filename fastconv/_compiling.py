"""Seeing Numba compile: how long it took, and a word to the user when it starts.

The ``numba`` backend compiles each kernel on its first use and caches it on disk (see
``fastconv.backends._numba_cache``), so a first run on a fresh installation waits for the
compiler, and later runs do not. :class:`CompileWatch` lets a command say so, and keep that
time out of the speeds it reports.
"""

from __future__ import annotations

import threading
import time

try:
    from numba.core import event
except ImportError:  # pragma: no cover - numba is a dependency; without it nothing compiles
    event = None

MESSAGE = "compiling the numba kernels for first use (cached for later runs)"


class CompileWatch:
    """Within ``with CompileWatch(announce) as watch``, ``watch.seconds`` adds up the time
    Numba spends compiling (nested compiles counted once), and ``announce(MESSAGE)`` is called
    when the first compile starts, if at all."""

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
        event.register("numba:compile", self._listener)
        return self

    def __exit__(self, *exc):
        if self._listener is not None:  # ``seconds`` stays
            event.unregister("numba:compile", self._listener)
            self._listener = None
        return False
