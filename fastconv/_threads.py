"""How many threads fastconv's CPU kernels use."""

from __future__ import annotations


def set_num_threads(n):
    """Use ``n`` threads in fastconv's CPU kernels (Numba's parallel loops).

    ``n`` is at most ``NUMBA_NUM_THREADS`` (read once, when Numba is imported; it defaults to
    the number of cores). The setting belongs to the calling thread, as in Numba.
    """
    import numba

    most = numba.config.NUMBA_NUM_THREADS
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= most:
        raise ValueError(f"set_num_threads: n must be an int from 1 to {most} "
                         f"(NUMBA_NUM_THREADS), got {n!r}")
    numba.set_num_threads(n)


def get_num_threads():
    """The number of threads fastconv's CPU kernels use in the calling thread."""
    import numba

    return numba.get_num_threads()
