"""Numba's on-disk cache, kept correct across the kernel modules.

Numba stamps a cached kernel with a hash of the one source file that defines it. A kernel that
calls a helper from another file would then be loaded from the cache after that helper
changed: stale code. So every kernel module of this backend (``KERNEL_MODULES``) is stamped
with one hash over all of their sources instead: any change to any of them recompiles every
kernel on its next use, and a kernel is never run against an old helper.

The mechanism is Numba's own: a cache locator, consulted whenever a function is decorated with
``cache=True``, that takes the kernel modules' functions, puts their cache where Numba's
locators would (``NUMBA_CACHE_DIR``, else ``__pycache__``, else the user's cache folder), and
changes only the stamp. Functions of other modules keep Numba's
locators. Import this module before defining a kernel (each kernel module does, first).
"""

from __future__ import annotations

import functools
import hashlib
import os

from numba.core import caching, config

# the modules whose @njit functions call each other, and the one that sets how some of them are
# optimised: one stamp for all of them
KERNEL_MODULES = ("_numba_simd", "_numba_band", "_numba_direct", "_numba_kvector",
                  "_numba_depthwise", "_numba_grouped",
                  "_numba_pooling", "_numba_packing", "_numba_winograd_kernels",
                  "_numba_lane_kernels", "_numba_elementwise", "_numba_blas",
                  "_numba_gemm_kernels", "_numba_optimisation")
_HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL_FILES = tuple(os.path.join(_HERE, f"{name}.py") for name in KERNEL_MODULES)

# Numba's cache implementation (named _CacheImpl in older versions), and its own locators, in
# its order, for the cache's place
_IMPL = getattr(caching, "CacheImpl", None) or caching._CacheImpl
_NUMBA_LOCATORS = tuple(_IMPL._locator_classes)


@functools.cache
def sources_digest():
    """SHA-256 over the sources of every kernel module, in a fixed order."""
    digest = hashlib.sha256()
    for path in KERNEL_FILES:
        with open(path, "rb") as fh:
            digest.update(fh.read())
    return digest.hexdigest()


class KernelSourcesLocator(caching._CacheLocator):
    """Where Numba would cache a kernel module's function, stamped with
    :func:`sources_digest` instead of its own file's hash."""

    def __init__(self, inner):
        self._inner = inner

    def ensure_cache_path(self):
        self._inner.ensure_cache_path()

    def get_cache_path(self):
        return self._inner.get_cache_path()

    def get_source_stamp(self):
        return sources_digest()

    def get_disambiguator(self):
        return self._inner.get_disambiguator()

    @classmethod
    def from_function(cls, py_func, py_file):
        if os.path.abspath(py_file) not in KERNEL_FILES:
            return None
        for locator in _NUMBA_LOCATORS:
            inner = locator.from_function(py_func, py_file)
            if inner is not None:
                return cls(inner)
        return None  # no writable place: Numba then compiles without a cache


def install():
    """Put :class:`KernelSourcesLocator` first among Numba's locators (once): in the list a
    ``NUMBA_CACHE_LOCATOR_CLASSES`` setting names, else in Numba's default list."""
    if getattr(config, "CACHE_LOCATOR_CLASSES", ""):
        ours = f"{__name__}.KernelSourcesLocator"
        if ours not in config.CACHE_LOCATOR_CLASSES:
            config.CACHE_LOCATOR_CLASSES = f"{ours},{config.CACHE_LOCATOR_CLASSES}"
    elif KernelSourcesLocator not in _IMPL._locator_classes:
        _IMPL._locator_classes.insert(0, KernelSourcesLocator)


install()
