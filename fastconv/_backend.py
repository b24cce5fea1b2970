"""Backend selection: which module computes a call.

The arrays' type comes first: CuPy arrays run on the ``cupy`` backend, NumPy arrays on a CPU
backend. The setting is, in order of precedence: the innermost :func:`use_backend` block
(context-local, so threads and asyncio tasks do not see each other's), the last
:func:`set_backend`, the ``FASTCONV_BACKEND`` environment variable, and ``"auto"``. Backend
modules are imported on first use, so ``import fastconv`` does not pay for Numba."""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os

BACKENDS = ("numpy", "numba", "cupy")
SETTINGS = ("auto",) + BACKENDS
ENV_VAR = "FASTCONV_BACKEND"

_MODULES = {"numpy": "fastconv.backends.reference", "numba": "fastconv.backends.numba_cpu",
            "cupy": "fastconv.backends.cupy_gpu"}
_context = contextvars.ContextVar("fastconv_backend", default=None)
_process_default = None


def _check(name, where):
    if not isinstance(name, str) or name.lower() not in SETTINGS:
        raise ValueError(f"{where}: unknown backend {name!r}; valid names: {', '.join(SETTINGS)}")
    return name.lower()


def set_backend(name):
    """Set the backend for this process: ``"auto"``, ``"numpy"``, ``"numba"`` or ``"cupy"``.

    ``"auto"`` sends NumPy arrays to Numba (or to NumPy where Numba cannot be imported) and
    CuPy arrays to ``"cupy"``; a named backend takes only its own kind of array.
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
    """Names of the backends that can run on this machine, e.g. ``['numpy', 'numba']`` (and
    ``'cupy'`` where CuPy finds a GPU)."""
    names = []
    for name in BACKENDS:
        try:
            _load(name)
        except ImportError:
            continue
        names.append(name)
    return names


def _load(name):
    module = _loaded.get(name)  # a dict lookup: import_module costs a call at batch 1 more
    if module is None:
        module = _loaded[name] = importlib.import_module(_MODULES[name])
    return module


_loaded = {}


def resolve(fn, xp=None):
    """The backend module that computes ``fn`` for arrays of module ``xp`` (NumPy by default,
    or CuPy) under the current setting.

    Raises ``RuntimeError`` when the chosen backend cannot be imported here, and ``TypeError``
    when it does not take ``xp``'s arrays (a CPU backend given CuPy arrays or the reverse:
    fastconv never copies between devices behind the caller's back).
    """
    on_gpu = xp is not None and xp.__name__ == "cupy"
    name = get_backend()
    if name == "auto":
        if on_gpu:
            return require(fn, "cupy")
        try:
            return _load("numba")
        except ImportError:
            return _load("numpy")
    module = require(fn, name)
    if on_gpu != (name == "cupy"):
        given, wanted = ("CuPy", "NumPy") if on_gpu else ("NumPy", "CuPy")
        raise TypeError(f"{fn}: the {name!r} backend takes {wanted} arrays, got {given} arrays; "
                        "move them first (cupy.asarray / cupy.asnumpy) or choose the backend "
                        "'auto'")
    return module


def require(fn, name):
    try:
        return _load(name)
    except ImportError as exc:
        raise RuntimeError(f"{fn}: the {name!r} backend cannot be imported here ({exc}); "
                           f"available: {', '.join(available_backends())}") from exc
