"""The ``fastconv`` command."""

from __future__ import annotations

import argparse
import platform
import sys


def _info(_args):
    import numpy as np

    import fastconv

    print(f"fastconv {fastconv.__version__}")
    print(f"python   {platform.python_version()} ({sys.executable})")
    print(f"numpy    {np.__version__}")
    try:
        import numba

        print(f"numba    {numba.__version__} ({numba.config.NUMBA_NUM_THREADS} threads)")
    except ImportError as exc:
        print(f"numba    not importable: {exc}")
    print(f"backend  setting {fastconv.get_backend()!r}; "
          f"available: {', '.join(fastconv.available_backends())}")
    print(f"gpu      {_gpu_line()}")
    from .data import DataError, find_files

    try:
        print(f"data     Fashion-MNIST in {find_files()['train_images'].parent}")
    except DataError:
        print("data     Fashion-MNIST not found (`fastconv train --help` says where it is "
              "looked for; `fastconv download` fetches it)")
    return 0


def _gpu_line():
    """The GPU, CUDA and CuPy versions, or why the cupy backend is unavailable."""
    try:
        from .backends import cupy_gpu
    except ImportError as exc:
        return f"none for the cupy backend ({exc})"
    return ", ".join(f"{key} {value}" for key, value in cupy_gpu.describe().items())


def _demo(_args):
    from .demo import run

    run()
    return 0


def _bench(args):
    from .bench import run

    return run(args)


def _train(args):
    from .train import Config, train

    config = Config(model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    optimizer=args.optimizer, momentum=args.momentum,
                    weight_decay=args.weight_decay, backend=args.backend, data=args.data,
                    limit=args.limit, seed=args.seed, out=args.out)
    if args.threads:
        import fastconv

        fastconv.set_num_threads(args.threads)
    metrics = train(config, resume=args.resume, progress=not args.no_progress)
    print(f"final test accuracy {metrics['final_test_acc']:.4f}; wrote {args.out}/"
          "checkpoint.npz, metrics.json, curves.png")
    return 0


def _evaluate(args):
    from .train import evaluate, format_confusion

    accuracy, matrix, meta = evaluate(args.checkpoint, args.data, args.backend,
                                      scheduler=args.scheduler, workers=args.workers)
    print(f"{meta['config']['model']} after {meta['epoch']} epochs: "
          f"test accuracy {accuracy:.4f}")
    print(format_confusion(matrix))
    return 0


def _summary(args):
    from .models import lenet
    from .nn import summary
    from .train import MODELS

    print(summary(lenet(MODELS[args.model]), args.input_shape))
    return 0


def _shape_argument(text):
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,C,H,W, got {text!r}") from None
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected four positive sizes N,C,H,W, got {text!r}")
    return shape


def _download(args):
    from .data import BASE_URL, download

    for role, path in download(args.dest, args.base_url or BASE_URL).items():
        print(f"{role:12s} {path} (SHA-256 verified)")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fastconv",
        description="Convolution primitives for NumPy with PyTorch's semantics.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, threads, the backends available here, the data"
                   ).set_defaults(run=_info)
    sub.add_parser("demo", help="a short tour: the textbook examples, computed with fastconv"
                   ).set_defaults(run=_demo)
    bench = sub.add_parser(
        "bench", help="time fastconv side by side with PyTorch and SciPy",
        description="Time fastconv's primitives, forward and forward + backward, side by side "
                    "with PyTorch (CPU), SciPy's correlate2d and the textbook loop; print a "
                    "table last.")
    from .bench import add_arguments

    add_arguments(bench)
    bench.set_defaults(run=_bench)

    train = sub.add_parser(
        "train", help="train LeNet on Fashion-MNIST with fastconv.nn",
        description="Train LeNet-5 on Fashion-MNIST. Defaults are the textbook recipe for "
                    "'lenet' (sigmoid, average pooling, Xavier init, SGD lr 0.9, batch 256, "
                    "10 epochs); 'lenet-modern' (ReLU, max pooling, Kaiming init) defaults "
                    "to Adam lr 0.002. Prints one line per epoch and writes checkpoint.npz, "
                    "metrics.json and curves.png to --out after every epoch. The first run "
                    "after installing compiles the numba kernels (it says so, and leaves that "
                    "time out of the examples/s); they are cached for later runs.")
    train.add_argument("--model", choices=["lenet", "lenet-modern"], default="lenet")
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch-size", type=int, default=256)
    train.add_argument("--lr", type=float, default=None,
                       help="learning rate (default: the model's recipe)")
    train.add_argument("--optimizer", choices=["sgd", "adam"], default=None,
                       help="default: the model's recipe")
    train.add_argument("--momentum", type=float, default=None, help="SGD momentum (default 0)")
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--backend", default=None,
                       help="numpy, numba, cupy (on the GPU) or auto (default: the current "
                            "setting)")
    train.add_argument("--threads", type=int, default=None, help="Numba threads")
    _data_argument(train)
    train.add_argument("--limit", type=int, default=None,
                       help="use only the first N images of each set")
    train.add_argument("--seed", type=int, default=0,
                       help="fixes the initial weights and the order of the batches")
    train.add_argument("--out", default="runs/lenet", help="output folder (default runs/lenet)")
    train.add_argument("--resume", default=None, metavar="CKPT",
                       help="continue from a checkpoint.npz, up to --epochs in all")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)

    evaluate = sub.add_parser(
        "evaluate", help="test accuracy and confusion matrix of a checkpoint")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--backend", default=None,
                          help="numpy, numba, cupy (on the GPU) or auto")
    cluster = evaluate.add_mutually_exclusive_group()
    cluster.add_argument("--scheduler", default=None, metavar="ADDRESS",
                         help="evaluate on the dask.distributed cluster of this scheduler, "
                              "e.g. tcp://10.0.0.5:8786 (the dask extra)")
    cluster.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                         help="evaluate on a local dask.distributed cluster of N worker "
                              "processes, started and stopped here (the dask extra)")
    _data_argument(evaluate)
    evaluate.set_defaults(run=_evaluate)

    summary = sub.add_parser(
        "summary", help="a model's layers: output shapes, parameters, MACs, receptive fields",
        description="Print the model's table, layer by layer: output shape, parameters, "
                    "multiply-adds, and per spatial axis the receptive field (input pixels one "
                    "output element sees), the jump (pixels between neighbouring outputs' "
                    "fields) and the start (centre of the first output's field); then the "
                    "totals. Nothing is trained or run.")
    summary.add_argument("--model", choices=["lenet", "lenet-modern"], default="lenet")
    summary.add_argument("--input-shape", type=_shape_argument, default=(1, 1, 28, 28),
                         metavar="N,C,H,W", help="default 1,1,28,28 (one Fashion-MNIST image)")
    summary.set_defaults(run=_summary)

    download = sub.add_parser(
        "download", help="fetch Fashion-MNIST to ~/.cache/fastconv/fashion-mnist",
        description="Fetch the four Fashion-MNIST files, check each one's SHA-256, and write "
                    "them atomically (a temporary file, then a rename).")
    download.add_argument("--dest", default=None,
                          help="folder (default ~/.cache/fastconv/fashion-mnist)")
    download.add_argument("--base-url", default=None, help="a mirror's folder URL")
    download.set_defaults(run=_download)
    return parser


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _data_argument(parser):
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="folder of the four IDX files (default: $FASTCONV_DATA, then "
                             "/usr/share/datasets/fashion-mnist, then "
                             "~/.cache/fastconv/fashion-mnist)")


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command not in ("train", "evaluate", "download", "summary"):
        return args.run(args)
    try:
        return args.run(args)
    # bad data or checkpoint files, network errors, a backend that cannot run here
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"fastconv {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
