"""`fastconv bench`: cases, counts, a small end-to-end run, and start-up safety."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastconv as fc
from fastconv.bench.cases import SUITES, Case, parse_case
from fastconv.bench.contenders import textbook_loop
from fastconv.cli import main


def test_parse_conv_case():
    case = parse_case("conv2d N=32 C=64 H=56 W=56 K=128 k=3 stride=2 padding=1 groups=2 name=a")
    assert case == Case("a", "conv2d", (32, 64, 56, 56), (128, 32, 3, 3),
                        {"stride": 2, "padding": 1, "groups": 2})
    assert case.out_shape() == (32, 128, 28, 28)


def test_parse_transposed_and_pool_cases():
    t = parse_case("conv_transpose3d N=2 C=8 D=4 H=5 W=6 K=4 k=2x3x3 stride=2")
    assert t.w_shape == (8, 4, 2, 3, 3) and t.out_shape() == (2, 4, 8, 11, 13)
    p = parse_case("max_pool1d N=4 C=3 L=50 k=3 stride=2 ceil_mode=true")
    assert p.kwargs == {"stride": 2, "ceil_mode": True, "kernel_size": (3,)}
    assert p.out_shape() == (4, 3, 25)


@pytest.mark.parametrize("spec, words", [
    ("conv4d N=1 C=1 H=4 W=4 k=3", "unknown op"),
    ("conv2d N=1 C=1 H=4 k=3", "W="),
    ("conv2d N=1 C=1 H=4 W=4 k=3 stride", "key=value"),
])
def test_bad_case_specs(spec, words):
    with pytest.raises(ValueError, match=words):
        parse_case(spec)


def test_flop_counts():
    c1 = next(c for c in SUITES["lenet"] if c.name == "lenet-c1")
    assert c1.flops() == 2 * 256 * 6 * 1 * 25 * 28 * 28
    assert c1.backward_flops() == 2 * c1.flops()
    t = next(c for c in SUITES["extras"] if c.name == "transposed")
    # each of the 64*128*16*16 inputs meets 64 filters of 16 taps
    assert t.flops() == 2 * 64 * 128 * 16 * 16 * 64 * 16
    dw = next(c for c in SUITES["extras"] if c.name == "depthwise")
    assert dw.flops() == 2 * 32 * 128 * 56 * 56 * 9
    assert dw.bytes(4) == 4 * (2 * 32 * 128 * 56 * 56 + 128 * 9)


def test_textbook_loop_matches_corr2d(rng):
    X, K = rng.standard_normal((9, 8)), rng.standard_normal((3, 2))
    np.testing.assert_allclose(textbook_loop(X, K), fc.corr2d(X, K), rtol=0, atol=1e-12)


def test_small_run_json_plot_compare(tmp_path, capsys):
    out, png = tmp_path / "run.json", tmp_path / "run.png"
    assert main(["bench", "--case", "conv2d N=4 C=1 H=12 W=12 K=5 k=3 padding=1 name=tiny",
                 "--case", "avg_pool2d N=2 C=3 H=8 W=8 k=2", "--repeat", "2",
                 "--threads", "1", "--json", str(out), "--plot", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "vs torch" in printed and "geometric mean" in printed
    data = json.loads(out.read_text())
    impls = {(r["case"], r["impl"]) for r in data["results"]}
    assert {("tiny", "fastconv-numba"), ("tiny", "fastconv-numpy"), ("tiny", "torch"),
            ("tiny", "scipy")} <= impls
    row = next(r for r in data["results"] if r["impl"] == "fastconv-numba" and r["case"] == "tiny")
    assert row["fwd_ms"] > 0 and row["both_ms"] > 0 and row["fwd_vs_torch"] > 0
    assert data["meta"]["threads"] == 1 and data["meta"]["ceilings"]["flops"] > 0
    assert png.stat().st_size > 1000
    assert main(["bench", "--compare", str(out), str(out)]) == 0
    assert "+0%" in capsys.readouterr().out


def test_zoo_cases_are_valid_layers():
    """Every zoo layer is a valid call, at batch 1 forward only and at a training batch with
    its gradients, named with its network and a source."""
    zoo = SUITES["zoo"]
    assert {c.name.split(".")[0] for c in zoo} >= {
        "resnet18", "resnet50", "mobilenet_v2", "resnext50", "vgg16", "unet", "wavenet", "m5",
        "c3d"}
    for case in zoo:
        assert case.source and case.mode in ("inference", "training")
        assert (case.x_shape[0] == 1) == (case.mode == "inference"), case.name
        assert case.times_forward != case.times_backward
        assert all(s > 0 for s in case.out_shape()), case.name
    assert len({c.name for c in zoo}) == len(zoo)


def test_modes_time_what_they_say(tmp_path, monkeypatch, capsys):
    """An inference case times the forward only, a training case forward + backward only; the
    Numba backend's rows name the ways it took."""
    from fastconv.bench import cases

    tiny = [Case("inf", "conv2d", (1, 4, 9, 9), (4, 4, 3, 3), {"padding": 1}, mode="inference"),
            Case("train", "conv2d", (4, 4, 9, 9), (4, 4, 3, 3), {"padding": 1},
                 mode="training")]
    monkeypatch.setitem(cases.SUITES, "zoo", tiny)
    out = tmp_path / "zoo.json"
    assert main(["bench", "--suite", "zoo", "--backends", "numba", "--repeat", "1",
                 "--json", str(out)]) == 0
    rows = {(r["case"], r["impl"]): r for r in json.loads(out.read_text())["results"]}
    inf, train = rows["inf", "fastconv-numba"], rows["train", "fastconv-numba"]
    assert inf["fwd_ms"] > 0 and inf["both_ms"] is None and inf["mode"] == "inference"
    assert train["fwd_ms"] is None and train["both_ms"] > 0
    assert inf["ways"] in ("direct", "gemm", "winograd", "lanes", "blocked")
    assert len(train["ways"].split("/")) == 3  # forward, input gradient, weight gradient
    assert rows["inf", "torch"]["ways"] is None


def test_ways_are_timed_against_the_chosen_one(tmp_path, capsys):
    """``--ways``: every way the numba backend can compute a convolution with, timed beside
    the one its rules chose, and a line saying where the chosen way lost."""
    out = tmp_path / "ways.json"
    assert main(["bench", "--case", "conv2d N=2 C=4 H=9 W=9 K=8 k=3 padding=1 name=w",
                 "--backends", "numba", "--no-peers", "--repeat", "1", "--ways",
                 "--json", str(out)]) == 0
    assert "way check:" in capsys.readouterr().out
    row = json.loads(out.read_text())["results"][0]
    assert {"chosen", "blocked", "winograd", "gemm", "direct"} <= set(row["way_ms"])
    assert all(t > 0 for t in row["way_ms"].values())


def test_set_num_threads_checks_its_argument():
    with pytest.raises(ValueError, match="set_num_threads"):
        fc.set_num_threads(0)
    before = fc.get_num_threads()
    fc.set_num_threads(1)
    assert fc.get_num_threads() == 1
    fc.set_num_threads(before)


def test_unwritable_numba_cache_still_computes():
    """A cache folder that cannot be written means no cache, not a crash."""
    env = dict(os.environ, NUMBA_CACHE_DIR="/proc/fastconv-cache-cannot-exist")
    code = ("import numpy as np, fastconv\n"
            "print(fastconv.conv2d(np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3)))[0, 0, 0, 0])")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "18.0"


def test_alternate_settles_after_each_switch(monkeypatch):
    """Each contender runs untimed for SETTLE_SECONDS after the other's calls (at least
    once), then its timed share; every contender is timed ``repeat`` times in all."""
    from fastconv.bench import measure

    counts = {"a": 0, "b": 0}

    def counter(name):
        def call():
            counts[name] += 1
        return call

    monkeypatch.setattr(measure, "SETTLE_SECONDS", 0.0)
    measure.alternate({"a": counter("a"), "b": counter("b")}, repeat=6, rounds=3)
    assert counts == {"a": 3 * (1 + 2), "b": 3 * (1 + 2)}
    counts.update(a=0, b=0)
    monkeypatch.setattr(measure, "SETTLE_SECONDS", 0.002)
    measure.alternate({"a": counter("a"), "b": counter("b")}, repeat=6, rounds=3)
    assert min(counts.values()) > 3 * (1 + 2) + 30  # a free call runs many times in 2 ms
