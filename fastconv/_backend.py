"""Backend selection: which module computes a call.

The setting is, in order of precedence: the innermost :func:`use_backend` block (context-local,
so threads and asyncio tasks do not see each other's), the last :func:`set_backend`, the
``FASTCONV_BACKEND`` environment variable, and ``"auto"``. Backend modules are imported on
first use, so ``import fastconv`` does not pay for Numba.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os

BACKENDS = ("numpy", "numba")
SETTINGS = ("auto",) + BACKENDS
ENV_VAR = "FASTCONV_BACKEND"

_MODULES = {"numpy": "fastconv.backends.reference", "numba": "fastconv.backends.numba_cpu"}
_context = contextvars.ContextVar("fastconv_backend", default=None)
_process_default = None


def _check(name, where):
    if not isinstance(name, str) or name.lower() not in SETTINGS:
        raise ValueError(f"{where}: unknown backend {name!r}; valid names: {', '.join(SETTINGS)}")
    return name.lower()


def set_backend(name):
    """Set the backend for this process: ``"auto"``, ``"numpy"`` or ``"numba"``.

    ``"auto"`` sends NumPy arrays to Numba (or to NumPy where Numba cannot be imported).
    A :func:`use_backend` block takes precedence while it lasts.
    """
    global _process_default
    _process_default = _check(name, "set_backend")


def get_backend():
    """The backend setting in force here (a name from ``SETTINGS``, possibly ``"auto"``)."""
    name = _context.get() or _process_default
    if name is None:
        name = _check(os.environ.get(ENV_VAR, "auto"), f"environment variable {ENV_VAR}")
    return name


@contextlib.contextmanager
def use_backend(name):
    """Use backend ``name`` inside a ``with`` block (context-local: other threads keep theirs).

    Examples
    --------
    >>> import fastconv
    >>> with fastconv.use_backend("numpy"):
    ...     fastconv.get_backend()
    'numpy'
    """
    token = _context.set(_check(name, "use_backend"))
    try:
        yield
    finally:
        _context.reset(token)


def available_backends():
    """Names of the backends that can run on this machine, e.g. ``['numpy', 'numba']``."""
    names = []
    for name in BACKENDS:
        try:
            _load(name)
        except ImportError:
            continue
        names.append(name)
    return names


def _load(name):
    return importlib.import_module(_MODULES[name])


def resolve(fn):
    """The backend module that computes ``fn`` for NumPy arrays under the current setting."""
    name = get_backend()
    if name == "auto":
        try:
            return _load("numba")
        except ImportError:
            return _load("numpy")
    try:
        return _load(name)
    except ImportError as exc:
        raise RuntimeError(f"{fn}: the {name!r} backend cannot be imported here ({exc}); "
                           f"available: {', '.join(available_backends())}") from exc
