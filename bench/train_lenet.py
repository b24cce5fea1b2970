"""Training throughput of the textbook LeNet on Fashion-MNIST: fastconv against PyTorch (CPU),
side by side in one process.

Both train the same network with the same recipe (sigmoid, average pooling, Xavier-uniform
weights, SGD lr 0.9, batch 256) on the real training set, in alternating rounds of
``--steps`` steps each; a round's examples per second is its images over its time, and the
median over ``--rounds`` rounds is reported, with the ratio. Each contender runs a few untimed
steps before each of its rounds (PyTorch's OpenMP threads keep spinning after it stops and
would slow whoever runs next). fastconv runs exactly the step of ``fastconv train``.

    python bench/train_lenet.py --json bench/results/train-lenet-cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch
from torch import nn as tnn

import fastconv
from fastconv import nn
from fastconv.data import load_fashion_mnist
from fastconv.models import lenet
from fastconv.train import blas_single_thread, keep_freed_memory, train_step


def torch_lenet():
    """PyTorch's reference: the textbook LeNet (d2l.ai 7.6), Xavier-uniform weights."""
    model = tnn.Sequential(
        tnn.Conv2d(1, 6, 5, padding=2), tnn.Sigmoid(), tnn.AvgPool2d(2, 2),
        tnn.Conv2d(6, 16, 5), tnn.Sigmoid(), tnn.AvgPool2d(2, 2), tnn.Flatten(),
        tnn.Linear(400, 120), tnn.Sigmoid(), tnn.Linear(120, 84), tnn.Sigmoid(),
        tnn.Linear(84, 10))
    for m in model:
        if isinstance(m, (tnn.Conv2d, tnn.Linear)):
            tnn.init.xavier_uniform_(m.weight)
    return model


def batches(x, y, batch, rng):
    while True:
        order = rng.permutation(len(x))
        for b in range(0, len(x) - batch + 1, batch):
            idx = order[b:b + batch]
            yield x[idx], y[idx]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    keep_freed_memory()  # as fastconv train does; PyTorch has its own caching allocator
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    fastconv.set_num_threads(args.threads)
    x, y, _, _ = load_fashion_mnist()
    rng = np.random.default_rng(0)

    model = lenet("classic", rng=rng)
    optimizer, loss_fn = nn.SGD(model.parameters(), 0.9), nn.SoftmaxCrossEntropy()
    ours_batches = batches(x, y, args.batch_size, rng)

    def ours(steps):
        with fastconv.use_backend("numba"), blas_single_thread():
            for _ in range(steps):
                train_step(model, loss_fn, optimizer, *next(ours_batches))

    tmodel = torch_lenet()
    toptimizer = torch.optim.SGD(tmodel.parameters(), lr=0.9)
    tloss = tnn.CrossEntropyLoss()
    theirs_batches = batches(torch.from_numpy(x), torch.from_numpy(y), args.batch_size, rng)

    def theirs(steps):
        for _ in range(steps):
            xb, yb = next(theirs_batches)
            toptimizer.zero_grad()
            logits = tmodel(xb)
            tloss(logits, yb).backward()
            toptimizer.step()
            int((logits.argmax(1) == yb).sum())  # what the trainer counts

    rates = {"fastconv": [], "torch": []}
    contenders = {"fastconv": ours, "torch": theirs}
    ours(3)  # compile
    for r in range(args.rounds):
        for name, run in contenders.items():
            run(3)
            start = time.perf_counter()
            run(args.steps)
            rates[name].append(args.steps * args.batch_size / (time.perf_counter() - start))
        print(f"round {r + 1}: " + "  ".join(f"{n} {v[-1]:,.0f}" for n, v in rates.items())
              + " examples/s")
    median = {n: statistics.median(v) for n, v in rates.items()}
    ratio = median["fastconv"] / median["torch"]
    print(f"median examples/s: fastconv {median['fastconv']:,.0f}, PyTorch "
          f"{median['torch']:,.0f}: fastconv {ratio:.2f}x PyTorch")
    if args.json:
        result = {"median_examples_per_s": median, "rounds": rates, "ratio": ratio,
                  "settings": vars(args),
                  "machine": {"python": platform.python_version(),
                              "platform": platform.platform(), "torch": torch.__version__,
                              "fastconv": fastconv.__version__, "numpy": np.__version__}}
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
            fh.write("\n")


if __name__ == "__main__":
    main()
