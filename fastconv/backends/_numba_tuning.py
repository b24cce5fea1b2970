"""Measured choice of the way to compute, for the ``numba`` backend (opt-in).

The backend's rules choose a way per call from the shapes alone; they were fitted on a few
machines and layers, and off those they can lose (the zoo suite shows the chosen way beside
the fastest measured). With tuning on, the first call of each shape times every way that can
compute it (as cuDNN's benchmark mode and FFTW's plans do) and keeps the fastest as that
shape's plan; every later call of the shape goes the same way, so its results are bitwise
repeatable within the process for a fixed thread count.

On with ``FASTCONV_TUNE=1`` or :func:`set_tuning`. The first call of a shape then costs every
candidate's compilation and four runs of each (one untimed, which compiles, then three timed,
in alternating order, the fastest of each kept), and one more run of the winner.
"""

from __future__ import annotations

import os
import time

ENV_VAR = "FASTCONV_TUNE"
ROUNDS = 3

_setting = None
_plans = {}


def set_tuning(enabled):
    """Turn measured tuning on or off for this process (``None``: back to ``$FASTCONV_TUNE``).

    With tuning on, the ``numba`` backend times every way of computing each convolution
    shape on its first call and keeps the fastest for the calls that follow; off (the
    default), its rules choose from the shapes alone.
    """
    global _setting
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"set_tuning: enabled must be True, False or None, not {enabled!r}")
    _setting = enabled


def enabled():
    """Whether tuning is on: :func:`set_tuning`, else ``$FASTCONV_TUNE``."""
    if _setting is not None:
        return _setting
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"environment variable {ENV_VAR}: {value!r} is not one of 1, 0, true, "
                     "false, yes, no, on, off")


def planned(key):
    """The way kept for ``key``, or ``None`` before its first call."""
    return _plans.get(key)


def plans():
    """A copy of the plans kept so far: ``{(primitive, shapes and parameters...): way}``."""
    return dict(_plans)


def forget():
    """Drop every plan (the next call of each shape measures again)."""
    _plans.clear()


def tune(key, ways, compute):
    """Time ``compute(way)`` for each of ``ways``, keep the fastest as ``key``'s plan, and
    return ``(way, its result)``."""
    if len(ways) > 1:
        for way in ways:
            compute(way)  # compiles it, outside the times
        best = {way: float("inf") for way in ways}
        for r in range(ROUNDS):
            for way in (ways if r % 2 == 0 else ways[::-1]):
                start = time.perf_counter()
                compute(way)  # each result dropped at once: peak memory of one call
                best[way] = min(best[way], time.perf_counter() - start)
        ways = [min(ways, key=best.get)]
    _plans[key] = ways[0]
    return ways[0], compute(ways[0])
