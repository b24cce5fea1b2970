"""Where the Numba backend stands against PyTorch CPU: one run, alternating, float32.

A stop-gap until ``fastconv bench`` exists: it times the cases of the reference figures
(forward, and forward + input/weight/bias gradients) for fastconv's numba backend and
PyTorch, alternately in one process, and writes every figure to a JSON file.

    python bench/baseline.py --repeat 3 --json bench/results/baseline.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numba
import numpy as np
import torch
import torch.nn.functional as F

import fastconv as fc

# name: (op, input shape, weight shape or kernel, keyword arguments)
CASES = {
    "lenet-c1": ("conv2d", (256, 1, 28, 28), (6, 1, 5, 5), {"padding": 2}),
    "lenet-c2": ("conv2d", (256, 6, 14, 14), (16, 6, 5, 5), {}),
    "resnet-3x3": ("conv2d", (32, 64, 56, 56), (64, 64, 3, 3), {"padding": 1}),
    "resnet-s2": ("conv2d", (32, 128, 28, 28), (256, 128, 3, 3), {"stride": 2, "padding": 1}),
    "pointwise": ("conv2d", (32, 256, 14, 14), (1024, 256, 1, 1), {}),
    "depthwise": ("conv2d", (32, 128, 56, 56), (128, 1, 3, 3), {"padding": 1, "groups": 128}),
    "dilated": ("conv2d", (16, 64, 64, 64), (64, 64, 3, 3), {"padding": 2, "dilation": 2}),
    "transposed": ("conv_transpose2d", (64, 128, 16, 16), (128, 64, 4, 4),
                   {"stride": 2, "padding": 1}),
    "conv3d": ("conv3d", (4, 32, 16, 56, 56), (64, 32, 3, 3, 3), {"padding": 1}),
    "max-pool": ("max_pool2d", (32, 64, 112, 112), 3, {"stride": 2, "padding": 1}),
    "avg-pool": ("avg_pool2d", (256, 6, 28, 28), 2, {"stride": 2}),
}


def make_calls(op, x_shape, w_shape, kwargs, rng):
    """(fastconv forward, fastconv fwd+bwd, torch forward, torch fwd+bwd) closures."""
    x = rng.standard_normal(x_shape).astype(np.float32)
    tx = torch.from_numpy(x.copy())
    if "pool" in op:
        f, t = getattr(fc, op), getattr(F, op)
        y = f(x, w_shape, **kwargs)
        gy = rng.standard_normal(y.shape).astype(np.float32)
        back = getattr(fc, f"{op}_backward")
        txg = tx.clone().requires_grad_()

        def torch_both():
            txg.grad = None
            t(txg, w_shape, **kwargs).backward(torch.from_numpy(gy))

        def fc_both():
            if op.startswith("max"):  # keep the indices, as PyTorch's autograd does
                _, idx = f(x, w_shape, **kwargs, return_indices=True)
                return back(gy, x, w_shape, **kwargs, indices=idx)
            f(x, w_shape, **kwargs)
            return back(gy, x, w_shape, **kwargs)

        return (lambda: f(x, w_shape, **kwargs), fc_both,
                lambda: t(tx, w_shape, **kwargs), torch_both)
    w = rng.standard_normal(w_shape).astype(np.float32)
    channels = w_shape[1] * kwargs.get("groups", 1) if "transpose" in op else w_shape[0]
    b = rng.standard_normal(channels).astype(np.float32)
    f, back, t = getattr(fc, op), getattr(fc, f"{op}_backward"), getattr(F, op)
    y = f(x, w, b, **kwargs)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    tw, tb = torch.from_numpy(w), torch.from_numpy(b)
    leaves = [tx.clone().requires_grad_(), tw.clone().requires_grad_(),
              tb.clone().requires_grad_()]

    def torch_both():
        for leaf in leaves:
            leaf.grad = None
        t(*leaves, **kwargs).backward(torch.from_numpy(gy))

    return (lambda: f(x, w, b, **kwargs),
            lambda: (f(x, w, b, **kwargs), back(gy, x, w, **kwargs)),
            lambda: t(tx, tw, tb, **kwargs), torch_both)


def timed(call):
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = []
    for name in args.cases:
        fc_fwd, fc_both, t_fwd, t_both = make_calls(*CASES[name], rng)
        for call in (fc_fwd, fc_both, t_fwd, t_both):
            call()  # warm-up: Numba compilation and allocator first touches stay out
        times = {"fc_fwd": [], "fc_both": [], "torch_fwd": [], "torch_both": []}
        for _ in range(args.repeat):  # alternate, so that machine noise hits both sides
            times["fc_fwd"].append(timed(fc_fwd))
            times["torch_fwd"].append(timed(t_fwd))
            times["fc_both"].append(timed(fc_both))
            times["torch_both"].append(timed(t_both))
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"case": name, **{f"{k}_ms": v * 1e3 for k, v in med.items()},
               "ratio_fwd": med["torch_fwd"] / med["fc_fwd"],
               "ratio_both": med["torch_both"] / med["fc_both"]}
        rows.append(row)
        print(f"{name:12s} fwd {row['fc_fwd_ms']:9.1f} ms vs torch {row['torch_fwd_ms']:7.1f} ms"
              f" ({row['ratio_fwd']:.2f}x)   fwd+bwd {row['fc_both_ms']:9.1f} ms vs torch "
              f"{row['torch_both_ms']:7.1f} ms ({row['ratio_both']:.2f}x)", flush=True)
    gmean = {k: float(np.exp(np.mean(np.log([r[k] for r in rows]))))
             for k in ("ratio_fwd", "ratio_both")}
    print(f"geometric mean of torch/fastconv: forward {gmean['ratio_fwd']:.3f}, "
          f"forward+backward {gmean['ratio_both']:.3f}")
    if args.json:
        meta = {"fastconv": fc.__version__, "numpy": np.__version__, "numba": numba.__version__,
                "torch": torch.__version__, "python": platform.python_version(),
                "machine": platform.processor() or platform.machine(),
                "threads": args.threads, "repeat": args.repeat, "dtype": "float32",
                "backend": "numba"}
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "cases": rows, "geomean": gmean}, fh, indent=1)


if __name__ == "__main__":
    main()
