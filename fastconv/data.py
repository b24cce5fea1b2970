"""Fashion-MNIST: the four original IDX files, found on disk or downloaded and verified."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot")

# The four files, by role, and the SHA-256 of each file's decompressed IDX bytes (so that a
# mirror's different gzip settings do not matter), as in Debian's dataset-fashion-mnist.
FILES = {
    "train_images": ("train-images-idx3-ubyte",
                     "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train_labels": ("train-labels-idx1-ubyte",
                     "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "test_images": ("t10k-images-idx3-ubyte",
                    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "test_labels": ("t10k-labels-idx1-ubyte",
                    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
CACHE_DIR = Path("~/.cache/fastconv/fashion-mnist")
BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

# IDX type codes: dtype of the elements (big-endian on disk)
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
              0x0E: ">f8"}

HOW_TO_GET = ("Get them with one of: `apt-get install dataset-fashion-mnist` (Debian, Ubuntu; "
              "installs them under /usr/share/datasets/fashion-mnist), `fastconv download` "
              "(fetches them to ~/.cache/fastconv/fashion-mnist), or copy the four "
              "*-ubyte(.gz) files into a folder and pass it with --data or FASTCONV_DATA.")


class DataError(ValueError):
    """A data file is missing, corrupt, truncated or not what it claims to be."""


def _raw_bytes(path):
    """The file's bytes, decompressed if it is gzip (recognised by its magic number)."""
    data = Path(path).read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    return data


def parse_idx(data, name="<bytes>"):
    """An IDX file's bytes as an array (e.g. uint8 of shape (60000, 28, 28)).

    Raises :class:`DataError` naming ``name`` for a wrong magic number, an unknown element
    type, or a length that does not match the header.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{name}: not an IDX file (magic number {data[:4].hex() or 'missing'}, "
                        "expected 0000 followed by a type code and a dimension count)")
    code, ndim = data[2], data[3]
    if code not in _IDX_TYPES:
        raise DataError(f"{name}: unknown IDX element type 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated header ({len(data)} bytes, {header} needed)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        kind = "truncated" if found < expected else "trailing bytes"
        raise DataError(f"{name}: {kind}: {found} bytes of data for shape {shape}, "
                        f"expected {expected}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def read_idx(path):
    """Read an IDX file, gzip-compressed or not; see :func:`parse_idx`."""
    return parse_idx(_raw_bytes(path), str(path))


def _file_in(folder, stem):
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def candidate_dirs(data=None):
    """Where the files are looked for, in order: ``data``, ``$FASTCONV_DATA``, Debian's
    package folder, the user cache."""
    dirs = [data, os.environ.get("FASTCONV_DATA"), SYSTEM_DIR, CACHE_DIR]
    return [Path(d).expanduser() for d in dirs if d]


def find_files(data=None):
    """``{role: path}`` from the first folder that holds all four files.

    An explicitly given folder (``data`` or ``$FASTCONV_DATA``) that lacks a file is an error
    rather than skipped, so that a typo does not silently train on other data.
    """
    explicit = {Path(d).expanduser() for d in (data, os.environ.get("FASTCONV_DATA")) if d}
    for folder in candidate_dirs(data):
        files = {role: _file_in(folder, stem) for role, (stem, _) in FILES.items()}
        if all(files.values()):
            return files
        if folder in explicit:
            missing = [FILES[r][0] for r, f in files.items() if f is None]
            raise DataError(f"Fashion-MNIST: {folder} lacks {', '.join(missing)} (.gz or not). "
                            + HOW_TO_GET)
    looked = ", ".join(str(d) for d in candidate_dirs(data))
    raise DataError(f"Fashion-MNIST files not found (looked in {looked}). {HOW_TO_GET}")


def load_fashion_mnist(data=None, limit=None):
    """The training and test sets as ``(x_train, y_train, x_test, y_test)``.

    Images are float32 in [0, 1] of shape (N, 1, 28, 28); labels int64 class indices (see
    :data:`CLASSES`). ``limit`` keeps the first ``limit`` images of each set.
    """
    files = find_files(data)
    arrays = {role: read_idx(path) for role, path in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"Fashion-MNIST {split} set: images {images.shape} and labels "
                            f"{labels.shape} do not match ({files[f'{split}_images']})")
    sl = slice(None if limit is None else int(limit))

    def images(role):
        # one pass, the same float32 quotients as astype then divide, which took 0.8 s of a
        # first batch's wait (two 188 MB arrays touched for the first time) against 0.06 s
        return np.divide(arrays[role][sl], np.float32(255), dtype=np.float32)[:, None]

    return (images("train_images"), arrays["train_labels"][sl].astype(np.int64),
            images("test_images"), arrays["test_labels"][sl].astype(np.int64))


def download(dest=None, base_url=BASE_URL, files=None, timeout=60):
    """Fetch the four files to ``dest`` (default ``~/.cache/fastconv/fashion-mnist``).

    Each file is written to a temporary file in ``dest``, checked (a valid IDX file whose
    decompressed bytes have the expected SHA-256), then renamed into place, so that a
    failed or interrupted download never leaves a partial file under the real name. Files
    already present and valid are kept.

    Parameters
    ----------
    dest : path, optional
    base_url : str
        Folder URL the files' ``.gz`` names are appended to.
    files : dict, optional
        ``{role: (name, sha256)}``; :data:`FILES` by default.
    timeout : float
        Seconds per request.

    Returns
    -------
    dict
        ``{role: path}`` of the verified files.
    """
    dest = (Path(dest) if dest else CACHE_DIR).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    files = FILES if files is None else files
    out = {}
    for role, (stem, digest) in files.items():
        final = dest / (stem + ".gz")
        if final.is_file() and _verified(final, digest):
            out[role] = final
            continue
        url = base_url.rstrip("/") + "/" + stem + ".gz"
        fd, tmp = tempfile.mkstemp(prefix=stem + ".", suffix=".part", dir=dest)
        try:
            with os.fdopen(fd, "wb") as fh, urllib.request.urlopen(url, timeout=timeout) as r:
                while chunk := r.read(1 << 20):
                    fh.write(chunk)
            _check(Path(tmp), digest, url)
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        out[role] = final
    return out


def _check(path, digest, what):
    """Raise :class:`DataError` unless ``path`` is an IDX file (gzip or not) whose bytes hash to
    ``digest``; ``what`` names it in the message."""
    raw = _raw_bytes(path)
    parse_idx(raw, what)
    got = hashlib.sha256(raw).hexdigest()
    if got != digest:
        raise DataError(f"{what}: SHA-256 of the decompressed data is {got}, expected "
                        f"{digest}; the file was not kept")


def _verified(path, digest):
    """Whether ``path`` passes :func:`_check`."""
    try:
        _check(path, digest, str(path))
    except DataError:
        return False
    return True
