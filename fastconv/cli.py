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
    return 0


def _demo(_args):
    from .demo import run

    run()
    return 0


def _bench(args):
    from .bench import run

    return run(args)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fastconv",
        description="Convolution primitives for NumPy with PyTorch's semantics.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, threads and the backends available here"
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
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
