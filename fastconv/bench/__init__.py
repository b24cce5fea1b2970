"""``fastconv bench``: fastconv's primitives timed side by side with PyTorch, SciPy and the
textbook loop, with roofline figures, a table printed last, JSON and a plot.

Method: every contender is warmed up first (Numba compiles then, outside the numbers), then
timed ``--repeat`` times in three interleaved rounds (see ``measure.alternate``), and the
median kept. Inputs are fresh random data. The GPU backend (``--backends cupy``) is compared
with PyTorch on CUDA (cuDNN), each call synchronised, against the GPU's own ceilings.
"""

from __future__ import annotations

import argparse
import datetime
import platform

import numpy as np

from .cases import CASE_HELP, SUITES, parse_case

__all__ = ["add_arguments", "run"]


def add_arguments(parser):
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = CASE_HELP
    parser.add_argument("--suite", choices=sorted(SUITES), default=None,
                        help="a named set of cases (default: all, unless --case is given)")
    parser.add_argument("--case", action="append", default=[], metavar="SPEC",
                        type=_case_argument, help="a case of your own (repeatable); see below")
    parser.add_argument("--backends", default=None,
                        help="comma-separated fastconv backends (default: all available); "
                             "cupy is compared with PyTorch on CUDA")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds (median kept)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for fastconv, PyTorch and BLAS (default: all cores)")
    parser.add_argument("--no-peers", action="store_true",
                        help="time fastconv only (no PyTorch, SciPy or textbook loop)")
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    parser.add_argument("--plot", metavar="FILE.png", help="bar chart of the ratios to PyTorch")
    parser.add_argument("--compare", nargs=2, metavar=("OLD.json", "NEW.json"),
                        help="print the changes between two saved runs, and nothing else")
    parser.add_argument("--startup", action="store_true",
                        help="also time import + a first conv2d in fresh processes "
                             "(empty and warm Numba cache, and PyTorch)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument("--tf32", action="store_true",
                        help="let PyTorch on CUDA compute float32 in TF32 (its default for "
                             "convolutions); without it both sides compute in full float32")
    parser.add_argument("--tune", action="store_true",
                        help="let the numba backend time its ways to compute on each shape's "
                             "first call and keep the fastest (as FASTCONV_TUNE=1 does); the "
                             "first calls are outside the timings")
    parser.add_argument("--ways", action="store_true",
                        help="also time the numba backend's every way to compute each "
                             "convolution against the way its rules choose")


def _versions():
    import numba
    import scipy

    import fastconv

    versions = {"fastconv": fastconv.__version__, "numpy": np.__version__,
                "numba": numba.__version__, "scipy": scipy.__version__,
                "python": platform.python_version()}
    try:
        import torch

        versions["torch"] = torch.__version__
        if torch.cuda.is_available():
            versions["torch TF32 (cuDNN, cuBLAS)"] = [torch.backends.cudnn.allow_tf32,
                                                      torch.backends.cuda.matmul.allow_tf32]
    except ImportError:
        pass
    if "cupy" in fastconv.available_backends():
        from ..backends import cupy_gpu

        versions["gpu"] = cupy_gpu.describe()
    return versions


def _set_torch_tf32(allowed):
    """PyTorch uses TF32 (10-bit mantissa) for float32 convolutions on CUDA by default; CuPy's
    cuBLAS does not, so the comparison is at equal precision unless ``--tf32`` asks."""
    try:
        import torch
    except ImportError:
        return
    torch.backends.cudnn.allow_tf32 = allowed
    torch.backends.cuda.matmul.allow_tf32 = allowed


def _case_argument(spec):
    """``--case``'s parser: a bad spec is a usage error, not a traceback."""
    try:
        return parse_case(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--case: ")) from None


def _set_threads(threads):
    """Give fastconv, PyTorch and BLAS the same thread count; return it."""
    import numba

    import fastconv

    threads = threads or numba.config.NUMBA_NUM_THREADS
    fastconv.set_num_threads(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass
    return threads


def ways_taken(contender, call):
    """The ways of computing the Numba backend took in ``call`` (e.g. ``winograd`` for the
    forward, ``winograd`` and ``gemm`` for the gradients), or ``None`` for other contenders
    and for ops without a choice (pooling)."""
    if contender.name != "fastconv-numba":
        return None
    from ..backends import numba_cpu

    with numba_cpu.trace_ways() as ways:
        call()
    return "/".join(ways) or None


def time_each_way(call, repeat):
    """``call`` with each way of the numba backend preferred wherever it can compute, and as
    its rules choose (``"chosen"``), timed interleaved: milliseconds per way."""
    from ..backends import numba_cpu
    from .measure import alternate

    def preferring(way):
        def run():
            with numba_cpu.prefer_way(way):
                return call()
        return run

    calls = {"chosen": call}
    for way in numba_cpu.WAYS:
        with numba_cpu.prefer_way(way), numba_cpu.trace_ways() as taken:
            call()  # compiles it, outside the times
        if way in taken:
            calls[way] = preferring(way)
    return {way: t * 1e3 for way, t in alternate(calls, repeat).items()}


def run(args):
    from threadpoolctl import threadpool_limits
    from tqdm import tqdm

    import fastconv

    from . import report
    from .contenders import contenders_for, make_data
    from .measure import alternate, ceilings, gpu_ceilings, peak_memory
    from .startup import startup, startup_table

    if args.compare:
        print(report.compare(*args.compare))
        return 0
    suite = args.suite or (None if args.case else "all")
    cases = (list(SUITES[suite]) if suite else []) + list(args.case)
    backends = (args.backends.split(",") if args.backends else fastconv.available_backends())
    unknown = set(backends) - set(fastconv.available_backends())
    if unknown:
        raise SystemExit(f"fastconv bench: backends not available here: {sorted(unknown)}; "
                         f"available: {fastconv.available_backends()}")
    dtype = np.dtype(args.dtype)
    threads = _set_threads(args.threads)
    if args.tune:
        fastconv.set_tuning(True)
    if "cupy" in backends:  # only PyTorch on CUDA has TF32
        _set_torch_tf32(args.tf32)
    rng = np.random.default_rng(args.seed)
    rows, notes = [], []
    with threadpool_limits(threads, user_api="blas"):
        ceil = ceilings(threads, dtype)
        print(f"ceilings here: {ceil['flops'] / 1e9:.0f} GFLOP/s ({args.dtype} matmul), "
              f"{ceil['bandwidth'] / 1e9:.1f} GB/s (copy); {threads} threads")
        gpu_ceil = gpu_ceilings(dtype) if "cupy" in backends else None
        if gpu_ceil:
            print(f"GPU ceilings: {gpu_ceil['flops'] / 1e9:.0f} GFLOP/s ({args.dtype} matmul), "
                  f"{gpu_ceil['bandwidth'] / 1e9:.0f} GB/s (copy)")
        for case in tqdm(cases, desc="bench", unit="case"):
            data = make_data(case, dtype, rng)
            ready = []
            for c in contenders_for(case, data, backends, peers=not args.no_peers):
                try:  # warm-up: compilation and first-touch allocations stay out of the times
                    c.forward()
                    if c.both:
                        c.both()
                except Exception as exc:  # a peer that cannot compute this case is left out
                    if c.is_fastconv:
                        raise
                    notes.append(f"{case.name}: {c.name} left out ({type(exc).__name__}: "
                                 f"{str(exc)[:80]})")
                    continue
                ready.append(c)
            fwd = (alternate({c.name: c.forward for c in ready}, args.repeat)
                   if case.times_forward else {})
            both = (alternate({c.name: c.both for c in ready if c.both}, args.repeat)
                    if case.times_backward else {})
            for c in ready:
                timed_call = c.both if case.times_backward and c.both else c.forward
                # the resident set says nothing of GPU memory: no peak for GPU contenders
                peak = peak_memory(timed_call) if c.is_fastconv and not c.on_gpu else None
                row = report.row_for(case, c.name, fwd.get(c.name), both.get(c.name),
                                     fwd.get(c.peer), both.get(c.peer), peak, dtype.itemsize,
                                     gpu_ceil if c.on_gpu else ceil)
                row["ways"] = ways_taken(c, timed_call)
                if args.ways and c.name == "fastconv-numba" and row["ways"]:
                    row["way_ms"] = time_each_way(timed_call, args.repeat)
                rows.append(row)
    means = report.geomeans(rows)
    print()
    print(report.table(rows))
    print()
    print(report.summary(means))
    if args.ways:
        print(report.way_check(rows))
    for note in notes:
        print(note)
    started = startup() if args.startup else None
    if started:
        print()
        print(startup_table(started))
    if args.json:
        meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                "machine": platform.machine(), "processor": platform.processor(),
                "dtype": args.dtype, "repeat": args.repeat, "threads": threads,
                "tuned": bool(args.tune),
                "backends": backends, "ceilings": ceil, "gpu_ceilings": gpu_ceil,
                "versions": _versions()}
        report.save_json(args.json, meta, rows, means, started)
        print(f"wrote {args.json}")
    if args.plot:
        report.plot(args.plot, rows)
        print(f"wrote {args.plot}")
    return 0
