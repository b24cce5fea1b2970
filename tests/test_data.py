"""The IDX reader on small generated files (gzip or not) and on broken ones; finding the data;
the download against a local HTTP server serving good and corrupted files."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import struct
import threading

import numpy as np
import pytest

from fastconv import data as D


def idx_bytes(array):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    a = np.ascontiguousarray(array)
    header = bytes([0, 0, codes[a.dtype], a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return header + a.tobytes()


@pytest.mark.parametrize("dtype", [np.uint8, ">i4", ">f4"])
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(dtype, compress, tmp_path, rng):
    a = (rng.random((5, 3, 4)) * 200).astype(dtype)
    raw = idx_bytes(a)
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    np.testing.assert_array_equal(D.read_idx(path), a)


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b"\x08\x03" + b[2:], "not an IDX file"),
    (lambda b: b[:2] + b"\x42" + b[3:], "unknown IDX element type"),
    (lambda b: b[:-5], "truncated"),
    (lambda b: b + b"\x00", "trailing bytes"),
    (lambda b: b[:10], "truncated header"),
])
def test_read_idx_rejects_broken_files(mutate, message, tmp_path, rng):
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(mutate(idx_bytes(rng.integers(0, 9, (4, 5, 6)).astype(np.uint8))))
    with pytest.raises(D.DataError, match=message) as info:
        D.read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_rejects_corrupt_gzip(tmp_path, rng):
    path = tmp_path / "labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(rng.integers(0, 9, 50).astype(np.uint8)))[:-12])
    with pytest.raises(D.DataError, match="gzip"):
        D.read_idx(path)


def write_dataset(folder, rng, n_train=12, n_test=5, compress=True):
    """Four small Fashion-MNIST-shaped IDX files; returns ``{role: (name, sha256)}``."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train_images": rng.integers(0, 256, (n_train, 28, 28)),
              "train_labels": rng.integers(0, 10, n_train),
              "test_images": rng.integers(0, 256, (n_test, 28, 28)),
              "test_labels": rng.integers(0, 10, n_test)}
    table = {}
    for role, a in arrays.items():
        stem = D.FILES[role][0]
        raw = idx_bytes(a.astype(np.uint8))
        (folder / (stem + (".gz" if compress else ""))).write_bytes(
            gzip.compress(raw) if compress else raw)
        table[role] = (stem, hashlib.sha256(raw).hexdigest())
    return table


def test_load_from_given_folder(tmp_path, rng, monkeypatch):
    write_dataset(tmp_path / "d", rng, compress=False)
    monkeypatch.delenv("FASTCONV_DATA", raising=False)
    x_train, y_train, x_test, y_test = D.load_fashion_mnist(tmp_path / "d", limit=7)
    assert x_train.shape == (7, 1, 28, 28) and x_train.dtype == np.float32
    assert 0 <= x_train.min() and x_train.max() <= 1
    assert y_train.dtype == np.int64 and x_test.shape == (5, 1, 28, 28) and len(y_test) == 5
    # pixels / 255 rounded once in float32, as the textbook's ToTensor gives them
    pixels = D.read_idx(tmp_path / "d" / D.FILES["train_images"][0])[:7]
    np.testing.assert_array_equal(x_train[:, 0], pixels.astype(np.float32) / np.float32(255))


def test_environment_folder_is_used_and_a_bad_one_is_an_error(tmp_path, rng, monkeypatch):
    write_dataset(tmp_path / "env", rng)
    monkeypatch.setenv("FASTCONV_DATA", str(tmp_path / "env"))
    assert D.find_files()["train_images"].parent == tmp_path / "env"
    monkeypatch.setenv("FASTCONV_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(D.DataError, match="apt-get install dataset-fashion-mnist"):
        D.find_files()


class _Server:
    """A local HTTP server for the files of a folder, on 127.0.0.1 and a free port."""

    def __init__(self, folder):
        handler = type("Quiet", (http.server.SimpleHTTPRequestHandler,),
                       {"log_message": lambda *a: None})
        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), lambda *a: handler(*a, directory=str(folder)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_verifies_and_writes_atomically(tmp_path, rng):
    table = write_dataset(tmp_path / "served", rng)
    with _Server(tmp_path / "served") as url:
        got = D.download(tmp_path / "cache", url, files=table)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        stem + ".gz" for stem, _ in table.values())
    for path in got.values():
        np.testing.assert_array_equal(D.read_idx(path), D.read_idx(tmp_path / "served" /
                                                                   path.name))


def test_download_refuses_a_corrupted_file(tmp_path, rng):
    table = write_dataset(tmp_path / "served", rng)
    stem = table["test_labels"][0]
    served = tmp_path / "served" / (stem + ".gz")
    good = served.read_bytes()
    # a valid IDX file with one label changed: only the digest can tell
    raw = bytearray(gzip.decompress(good))
    raw[-1] = (raw[-1] + 1) % 10
    served.write_bytes(gzip.compress(bytes(raw)))
    with _Server(tmp_path / "served") as url, pytest.raises(D.DataError, match="SHA-256"):
        D.download(tmp_path / "cache", url, files=table)
    left = [p.name for p in (tmp_path / "cache").iterdir()]
    assert stem + ".gz" not in left and not any(n.endswith(".part") for n in left)
    # a truncated download is refused as well
    served.write_bytes(good[: len(good) // 2])
    with _Server(tmp_path / "served") as url, pytest.raises(D.DataError, match="gzip"):
        D.download(tmp_path / "cache", url, files=table)
    served.write_bytes(good)
    with _Server(tmp_path / "served") as url:
        D.download(tmp_path / "cache", url, files=table)
    assert (tmp_path / "cache" / (stem + ".gz")).is_file()


def test_real_dataset_is_the_expected_one():
    """The Fashion-MNIST files found here (Debian's package in CI) hash as pinned."""
    for role, path in D.find_files().items():
        assert D._verified(path, D.FILES[role][1]), path
