"""Training on the real Fashion-MNIST (a short run), checkpoints (save, load, resume, refusal of
bad files), evaluation and the command line."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from fastconv import checkpoint
from fastconv.cli import main
from fastconv.train import Config, evaluate, train


def test_short_real_training_run_beats_chance(tmp_path):
    """A few thousand real images, one epoch: clearly above the 10% of guessing."""
    metrics = train(Config(model="lenet-modern", epochs=1, batch_size=64, limit=4000,
                           out=str(tmp_path)), progress=False, log=lambda _: None)
    assert metrics["final_test_acc"] > 0.5, metrics["history"]
    for name in ("checkpoint.npz", "metrics.json", "curves.png"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["history"][0]["test_acc"] == metrics["final_test_acc"]
    accuracy, matrix, _ = evaluate(tmp_path / "checkpoint.npz")
    assert matrix.sum() == 10000 and accuracy == np.trace(matrix) / 10000


def test_resume_continues_exactly(tmp_path):
    """Two epochs in one go and one epoch then a resumed second give the same weights."""
    quiet = {"progress": False, "log": lambda _: None}
    common = {"model": "lenet", "batch_size": 128, "limit": 512, "seed": 3}
    train(Config(epochs=2, out=str(tmp_path / "a"), **common), **quiet)
    train(Config(epochs=1, out=str(tmp_path / "b"), **common), **quiet)
    train(Config(epochs=2, out=str(tmp_path / "b"), **common),
          resume=tmp_path / "b" / "checkpoint.npz", **quiet)
    a, _, meta_a = checkpoint.load(tmp_path / "a" / "checkpoint.npz")
    b, _, meta_b = checkpoint.load(tmp_path / "b" / "checkpoint.npz")
    assert meta_b["epoch"] == 2 and len(meta_b["history"]) == 2
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_checkpoint_round_trip_and_refusals(tmp_path, rng):
    path = tmp_path / "c.npz"
    state = {"0.weight": rng.random((2, 3)).astype(np.float32)}
    checkpoint.save(path, state, {"momentum.0": np.ones(3)}, {"epoch": 4})
    model, optim, meta = checkpoint.load(path)
    np.testing.assert_array_equal(model["0.weight"], state["0.weight"])
    assert meta == {"epoch": 4} and list(optim) == ["momentum.0"]

    # tampered: one weight changed, the digest kept
    with np.load(path) as z:
        contents = dict(z)
    contents["model/0.weight"] = contents["model/0.weight"] + 1
    np.savez(tmp_path / "tampered.npz", **contents)
    with pytest.raises(checkpoint.CheckpointError, match="SHA-256"):
        checkpoint.load(tmp_path / "tampered.npz")
    # foreign: an .npz of someone else's, and one with a pickled object
    np.savez(tmp_path / "foreign.npz", weights=np.zeros(3))
    with pytest.raises(checkpoint.CheckpointError, match="not a fastconv checkpoint"):
        checkpoint.load(tmp_path / "foreign.npz")
    np.savez(tmp_path / "pickled.npz", format=np.array(checkpoint.FORMAT),
             meta=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(checkpoint.CheckpointError, match="refused"):
        checkpoint.load(tmp_path / "pickled.npz")
    # not even a zip file
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(checkpoint.CheckpointError, match="not a readable"):
        checkpoint.load(tmp_path / "junk.npz")
    assert zipfile.is_zipfile(path)


def test_cli_train_and_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "lenet-modern", "--epochs", "1", "--limit", "600",
                 "--batch-size", "100", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "epoch  1/1" in printed and "examples/s" in printed and "test acc" in printed
    assert main(["evaluate", "--checkpoint", str(out / "checkpoint.npz")]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "Ankle boot" in printed


def test_cli_refuses_a_foreign_checkpoint(tmp_path, capsys):
    np.savez(tmp_path / "x.npz", a=np.zeros(2))
    assert main(["evaluate", "--checkpoint", str(tmp_path / "x.npz")]) == 2
    assert "not a fastconv checkpoint" in capsys.readouterr().err


def test_cli_evaluate_on_a_local_cluster_prints_the_same(tmp_path, capsys):
    """`fastconv evaluate --workers 2`: the test set as a Dask array, predicted by a local
    dask.distributed cluster of two worker processes, gives the in-memory run's figures."""
    pytest.importorskip("distributed", reason="needs the dask extra: pip install fastconv[dask]")
    train(Config(model="lenet", epochs=1, batch_size=100, limit=600, out=str(tmp_path)),
          progress=False, log=lambda _: None)
    ckpt = str(tmp_path / "checkpoint.npz")
    assert main(["evaluate", "--checkpoint", ckpt]) == 0
    in_memory = capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", ckpt, "--workers", "2"]) == 0
    assert capsys.readouterr().out == in_memory
    assert "test accuracy" in in_memory and "Ankle boot" in in_memory
