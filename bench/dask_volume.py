"""Bounded memory on a cluster: a 3-D convolution over a zarr volume larger than a worker's memory.

A float32 volume on disk (zarr; by default 2048 x 1024 x 1024, 8 GiB) is convolved with one
k x k x k kernel (zero padding k // 2, so the result has the volume's shape and chunks) and the
result written back to zarr, on a local ``dask.distributed`` cluster of worker processes capped
at ``--memory-limit`` each (1 GB by default). The same job runs through fastconv
(``conv3d`` on the Dask array) and through dask-image's ``ndfilters.correlate`` (SciPy's
``ndimage.correlate`` per block), with 1 and then 2 workers, each run on a fresh cluster.

Reported per run: wall time and throughput (input voxels per second, reading and writing zarr
included), each worker's peak resident memory (``getrusage``: the process's high-water mark,
imports and Numba's compiled kernels included), whether any worker was paused (at 80% of its
limit) or restarted, what the workers spilled to disk, and a check of the result: boxes at the
volume's corners and at random places, compared with ``scipy.ndimage.correlate`` on the box's
region read from the input.

Each worker runs one task at a time (``threads_per_worker=1``); Numba's threads per worker are
the cores divided by the workers, so that the cores are never oversubscribed. Dask's nanny
pins BLAS to one thread in workers (its default environment); this job uses no BLAS.

    python bench/dask_volume.py --store /scratch/volume --json bench/results/dask-volume-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import numpy as np


def worker_numbers():
    """The calling worker process's pid, resident memory and peak resident memory (bytes)."""
    import psutil
    return {"pid": os.getpid(), "rss": psutil.Process().memory_info().rss,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def spilled_bytes(dask_worker):
    """Bytes this worker wrote to its spill directory (0 when it never spilled)."""
    return int(getattr(getattr(dask_worker.data, "spilled_total", None), "disk", 0) or 0)


def warm_up(kernel):
    """Compile (or load) the Numba kernels a block will use before the clock starts."""
    import fastconv.functional as F
    x = np.ones((1, 1, 2 * kernel, 2 * kernel, 2 * kernel), np.float32)
    F.conv3d(x, np.ones((1, 1, kernel, kernel, kernel), np.float32), padding=kernel // 2)


def make_volume(path, shape, chunks, seed):
    """Write a reproducible float32 volume of standard normal values to ``path`` (zarr)."""
    import dask.array as da
    volume = da.random.default_rng(seed).standard_normal(shape, chunks=chunks, dtype=np.float32)
    da.to_zarr(volume, path, overwrite=True)


def convolved(tool, volume, weight):
    """The lazy result of ``tool`` on the Dask array ``volume``, shaped as ``volume``."""
    if tool == "fastconv":
        import fastconv.functional as F
        pad = weight.shape[0] // 2
        return F.conv3d(volume[None, None], weight[None, None], padding=pad)[0, 0]
    from dask_image.ndfilters import correlate
    return correlate(volume, weight, mode="constant", cval=0.0)


def run(tool, workers, args, weight):
    """One run on a fresh cluster; returns what it measured."""
    import dask.array as da
    import zarr
    from distributed import Client, LocalCluster

    numba_threads = max(1, os.cpu_count() // workers)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      memory_limit=args.memory_limit, dashboard_address=None,
                      env={"NUMBA_NUM_THREADS": str(numba_threads)}) as cluster, \
            Client(cluster) as client:
        if tool == "fastconv":
            client.run(warm_up, weight.shape[0])
        before = client.run(worker_numbers)
        volume = da.from_zarr(args.input)
        result = convolved(tool, volume, weight)
        start = time.perf_counter()
        da.to_zarr(result, args.output, overwrite=True)
        seconds = time.perf_counter() - start
        after = client.run(worker_numbers)
        spilled = client.run(spilled_bytes)
        paused = any("Pausing worker" in message for log in client.get_worker_logs().values()
                     for _, message in log)
        tasks = len(result.__dask_graph__())
    restarted = set(before) != set(after) or any(before[a]["pid"] != after[a]["pid"]
                                                 for a in before)
    voxels = int(np.prod(volume.shape))
    return {
        "tool": tool, "workers": workers, "numba_threads_per_worker": numba_threads,
        "seconds": round(seconds, 2), "mvoxels_per_s": round(voxels / seconds / 1e6, 1),
        "mib_per_s": round(voxels * 4 / seconds / 2**20, 1),
        "worker_rss_before_mib": [round(a["rss"] / 2**20) for a in before.values()],
        "peak_worker_rss_mib": [round(a["peak_rss"] / 2**20) for a in after.values()],
        "workers_restarted": restarted, "workers_paused": paused,
        "spilled_mib": round(sum(spilled.values()) / 2**20),
        "graph_tasks": tasks, "max_abs_error": check(args, weight, zarr.open_array(args.output)),
    }


def check(args, weight, output, boxes=6, size=24, seed=1):
    """Largest difference between ``output`` and SciPy on boxes (corners and random places)."""
    import scipy.ndimage as ndi
    import zarr
    volume = zarr.open_array(args.input, mode="r")
    shape = np.array(volume.shape)
    halo = weight.shape[0] // 2
    rng = np.random.default_rng(seed)
    corners = [np.zeros(3, int), shape - size]
    starts = corners + [rng.integers(0, shape - size + 1) for _ in range(boxes - len(corners))]
    worst = 0.0
    for start in starts:
        lo = np.maximum(start - halo, 0)
        hi = np.minimum(start + size + halo, shape)
        region = np.zeros(size + 2 * halo * np.ones(3, int), np.float32)
        inner = tuple(slice(a - (s - halo), b - (s - halo)) for a, b, s in zip(lo, hi, start))
        region[inner] = volume[tuple(slice(a, b) for a, b in zip(lo, hi))]
        expected = ndi.correlate(region, weight, mode="constant")[(slice(halo, halo + size),) * 3]
        got = output[tuple(slice(s, s + size) for s in start)]
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True,
                        help="directory for the input and output zarr arrays (needs twice the "
                             "volume's size free)")
    parser.add_argument("--shape", type=int, nargs=3, default=[2048, 1024, 1024])
    parser.add_argument("--chunks", type=int, nargs=3, default=[128, 256, 256])
    parser.add_argument("--kernel", type=int, default=3, help="odd kernel size (k x k x k)")
    parser.add_argument("--memory-limit", default="1GB", help="per worker, as Dask reads it")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tools", nargs="+", default=["fastconv", "dask-image"],
                        choices=["fastconv", "dask-image"])
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    if args.kernel % 2 == 0:
        parser.error("--kernel must be odd, so that the result keeps the volume's shape")

    args.input = os.path.join(args.store, "input.zarr")
    args.output = os.path.join(args.store, "output.zarr")
    if not os.path.exists(args.input):
        start = time.perf_counter()
        make_volume(args.input, tuple(args.shape), tuple(args.chunks), seed=0)
        print(f"wrote {args.input} in {time.perf_counter() - start:.0f} s", flush=True)
    weight = np.random.default_rng(2).standard_normal((args.kernel,) * 3).astype(np.float32)

    runs = []
    for tool in args.tools:
        for workers in args.workers:
            runs.append(run(tool, workers, args, weight))
            print(json.dumps(runs[-1]), flush=True)

    import dask
    import zarr
    volume = zarr.open_array(args.input, mode="r")
    report = {
        "job": f"{args.kernel}x{args.kernel}x{args.kernel} float32 convolution, zero padding "
               f"{args.kernel // 2}, zarr to zarr",
        "shape": list(volume.shape), "chunks": list(volume.chunks),
        "volume_gib": round(volume.nbytes / 2**30, 2), "memory_limit": args.memory_limit,
        "compressors": [str(c) for c in volume.compressors],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "versions": {"dask": dask.__version__, "zarr": zarr.__version__, "numpy": np.__version__},
        "runs": runs,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
