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


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fastconv",
        description="Convolution primitives for NumPy with PyTorch's semantics.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, threads and the backends available here"
                   ).set_defaults(run=_info)
    sub.add_parser("demo", help="a short tour: the textbook examples, computed with fastconv"
                   ).set_defaults(run=_demo)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
