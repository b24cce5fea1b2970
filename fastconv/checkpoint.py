"""Checkpoints: a model's and an optimiser's arrays plus JSON metadata in one ``.npz`` file,
read back with ``allow_pickle=False`` and checked against a SHA-256 digest of its contents."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .nn.module import to_numpy

FORMAT = "fastconv-checkpoint-1"


class CheckpointError(ValueError):
    """A file that is not a fastconv checkpoint, or one changed after it was written."""


def _digest(arrays, meta_json):
    h = hashlib.sha256(meta_json.encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save(path, model_state, optimizer_state, meta):
    """Write a checkpoint atomically (a temporary file in the same folder, then a rename).

    ``model_state`` and ``optimizer_state`` map names to arrays; ``meta`` is JSON-serialisable.
    """
    arrays = {f"model/{k}": to_numpy(v) for k, v in model_state.items()}
    arrays.update({f"optim/{k}": to_numpy(v) for k, v in optimizer_state.items()})
    meta_json = json.dumps(meta, sort_keys=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, format=np.array(FORMAT), meta=np.array(meta_json),
                     sha256=np.array(_digest(arrays, meta_json)), **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path):
    """``(model_state, optimizer_state, meta)`` from a checkpoint written by :func:`save`.

    Raises :class:`CheckpointError` for a file that is not an ``.npz``, holds pickled objects,
    lacks fastconv's format marker, or whose contents do not match their digest.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            contents = {name: z[name] for name in z.files}
    except FileNotFoundError:
        raise
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise CheckpointError(f"{path}: refused, not a fastconv checkpoint ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{path}: not a readable .npz file ({exc})") from None
    if str(contents.get("format", "")) != FORMAT:
        raise CheckpointError(f"{path}: not a fastconv checkpoint (no '{FORMAT}' marker)")
    try:
        meta_json, digest = str(contents.pop("meta")), str(contents.pop("sha256"))
        meta = json.loads(meta_json)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: damaged checkpoint metadata ({exc})") from None
    contents.pop("format")
    if _digest(contents, meta_json) != digest:
        raise CheckpointError(f"{path}: refused, its contents do not match the SHA-256 digest "
                              "written with them (the file was changed or damaged)")
    model = {k[6:]: v for k, v in contents.items() if k.startswith("model/")}
    optim = {k[6:]: v for k, v in contents.items() if k.startswith("optim/")}
    return model, optim, meta
