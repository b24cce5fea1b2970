"""The ``fastconv`` command."""

from __future__ import annotations

import pytest

from fastconv.cli import main


def test_info(capsys, tmp_path, monkeypatch):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "fastconv 0.1.0" in out and "available: numpy, numba" in out
    assert "data     Fashion-MNIST in " in out
    monkeypatch.setenv("FASTCONV_DATA", str(tmp_path))  # an empty folder: an error to report
    assert main(["info"]) == 0
    assert "Fashion-MNIST not found" in capsys.readouterr().out


def test_demo(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "[[19. 25.]\n [37. 43.]]" in out
    assert "learned K = [[ 0.99 -0.99]]" in out  # ten steps of gradient descent from seed 0


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(c in out for c in ("info", "demo", "bench", "train", "evaluate", "download",
                                  "summary"))


def test_summary(capsys):
    assert main(["summary", "--model", "lenet"]) == 0
    out = capsys.readouterr().out
    assert "total params 61,706" in out and "5 AvgPool2d" in out and "16x16" in out
    assert main(["summary", "--model", "lenet-modern", "--input-shape", "64,1,28,28"]) == 0
    assert "(64, 10)" in capsys.readouterr().out
    assert main(["summary", "--input-shape", "1,1,32,32"]) == 2  # LeNet's Linear needs 28x28
    assert "summary: error: summary: layer 7: Linear: input has 576 features" in (
        capsys.readouterr().err)
    with pytest.raises(SystemExit):
        main(["summary", "--input-shape", "1,28,28"])


def test_a_bad_bench_case_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--case", "max_pool1d N=1 C=1 W=9 k=2"])
    assert exit_.value.code == 2 and "--case: 'max_pool1d" in capsys.readouterr().err
