"""Training and evaluating LeNet on Fashion-MNIST with :mod:`fastconv.nn` (``fastconv train``,
``fastconv evaluate``)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import _backend, checkpoint, nn
from ._backend import get_backend, use_backend
from ._compiling import CompileWatch
from .backends import _numba_first_use as first_use
from .data import CLASSES, load_fashion_mnist
from .models import lenet
from .nn.module import array_module, device_module, to_numpy

# The recipes: "lenet" is the textbook's (d2l.ai, chapter 7.6), "lenet-modern" ours.
MODELS = {"lenet": "classic", "lenet-modern": "modern"}
RECIPES = {
    "lenet": {"optimizer": "sgd", "lr": 0.9, "momentum": 0.0},
    "lenet-modern": {"optimizer": "adam", "lr": 2e-3, "momentum": 0.0},
}


@dataclass
class Config:
    """One training run's settings (what ``fastconv train`` takes)."""

    model: str = "lenet"
    epochs: int = 10
    batch_size: int = 256
    lr: float | None = None  # None: the model's recipe
    optimizer: str | None = None  # "sgd" or "adam"; None: the model's recipe
    momentum: float | None = None
    weight_decay: float = 0.0
    backend: str | None = None
    data: str | None = None
    limit: int | None = None
    seed: int = 0
    out: str = "runs/lenet"

    def resolved(self):
        """This config with the recipe's values filled in, checked."""
        if self.model not in MODELS:
            raise ValueError(f"train: model must be one of {sorted(MODELS)}, got {self.model!r}")
        recipe = RECIPES[self.model]
        c = Config(**asdict(self))
        c.optimizer = c.optimizer or recipe["optimizer"]
        c.lr = recipe["lr"] if c.lr is None else c.lr
        c.momentum = recipe["momentum"] if c.momentum is None else c.momentum
        if c.optimizer not in ("sgd", "adam"):
            raise ValueError(f"train: optimizer must be 'sgd' or 'adam', got {c.optimizer!r}")
        for name in ("epochs", "batch_size"):
            if getattr(c, name) < 1:
                raise ValueError(f"train: {name} must be at least 1, got {getattr(c, name)}")
        return c


def make_optimizer(config, parameters):
    if config.optimizer == "sgd":
        return nn.SGD(parameters, config.lr, config.momentum, config.weight_decay)
    return nn.Adam(parameters, config.lr, weight_decay=config.weight_decay)


def predict(model, x, batch_size=1000):
    """Class predictions (a NumPy array) of ``model`` (in evaluation mode) for the NumPy
    images ``x``, batches moved to the model's device."""
    model.eval()
    xp = array_module(model.parameters()[0].data)
    out = [to_numpy(model.forward(xp.asarray(x[i:i + batch_size])).argmax(axis=1))
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def confusion_matrix(labels, predictions, classes=10):
    """Counts of (true class, predicted class) pairs."""
    m = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(m, (labels, predictions), 1)
    return m


def train_step(model, loss_fn, optimizer, x, y):
    """One step of gradient descent on the batch ``(x, y)``; returns the batch's mean loss and
    its number of correct predictions (made before the step)."""
    logits = model.forward(x)
    loss = loss_fn(logits, y)
    model.zero_grad()
    model.backward(loss_fn.backward())
    optimizer.step()
    return loss, int((logits.argmax(axis=1) == y).sum())


def _progress(desc, total, enabled):
    from tqdm.auto import tqdm

    return tqdm(desc=desc, total=total, unit="batch", disable=not enabled, leave=False,
                dynamic_ncols=True)


def train(config: Config, resume=None, progress=True, log=print):
    """Train, evaluating on the test set after each epoch; write to ``config.out`` a
    checkpoint (``checkpoint.npz``), ``metrics.json`` and ``curves.png`` after every epoch.

    Returns the metrics (the contents of ``metrics.json``). The process's malloc is asked to
    keep freed memory (:func:`keep_freed_memory`).
    """
    config = config.resolved()
    keep_freed_memory()
    out = Path(config.out)
    model = lenet(MODELS[config.model], rng=np.random.default_rng(config.seed))
    # the cupy backend computes on the GPU: parameters there, each batch copied there
    device = _device(config.backend)
    model.to(device)
    xp = device_module(device)
    optimizer = make_optimizer(config, model.parameters())
    history, start = [], 0
    if resume is not None:
        model_state, optim_state, meta = checkpoint.load(resume)
        if meta.get("config", {}).get("model") != config.model:
            raise ValueError(f"train: {resume} holds a {meta.get('config', {}).get('model')!r} "
                             f"model, not {config.model!r}")
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        history, start = meta["history"], meta["epoch"]
    helper = _start_compiling_helper(config.backend)  # its start-up overlaps the loading
    x_train, y_train, x_test, y_test = load_fashion_mnist(config.data, config.limit)
    loss_fn = nn.SoftmaxCrossEntropy()
    n = len(x_train)
    steps = -(-n // config.batch_size)
    backend = use_backend(config.backend) if config.backend else contextlib.nullcontext()
    # the first step compiles the numba kernels (once per installation: they are cached); that
    # time is said, and kept out of the examples/s and of the progress bar's estimate
    say = _writer(progress, log)
    with backend, blas_single_thread(), CompileWatch(announce=say) as compiling:
        for epoch in range(start, config.epochs):
            # the order of an epoch depends on the seed and the epoch only: resuming replays it
            order = np.random.default_rng([config.seed, epoch]).permutation(n)
            model.train()
            loss_sum, correct = 0.0, 0
            started, compiled_before = time.perf_counter(), compiling.seconds
            with _progress(f"epoch {epoch + 1}/{config.epochs}", steps, progress) as bar:
                for b in range(0, n, config.batch_size):
                    idx = order[b:b + config.batch_size]
                    before = compiling.seconds
                    loss, hits = train_step(model, loss_fn, optimizer,
                                            xp.asarray(x_train[idx]), xp.asarray(y_train[idx]))
                    loss_sum += loss * len(idx)
                    correct += hits
                    first_use.stop_helper(helper)  # the step has compiled or loaded them all
                    helper = None
                    if compiling.seconds > before:
                        bar.unpause()  # the bar's clock skips the compiling
                        say(f"compiled in {compiling.seconds - before:.1f} s")
                    bar.update(1)
            compile_seconds = compiling.seconds - compiled_before
            seconds = time.perf_counter() - started - compile_seconds
            test_acc = float((predict(model, x_test) == y_test).mean())
            record = {"epoch": epoch + 1, "loss": loss_sum / n, "train_acc": correct / n,
                      "test_acc": test_acc, "seconds": seconds, "examples_per_s": n / seconds,
                      "compile_seconds": compile_seconds}
            history.append(record)
            log(f"epoch {epoch + 1:2d}/{config.epochs}  loss {record['loss']:.3f}  "
                f"train acc {record['train_acc']:.3f}  test acc {test_acc:.3f}  "
                f"{record['examples_per_s']:,.0f} examples/s"
                + (f" (not counting {compile_seconds:.1f} s of compiling)"
                   if compile_seconds >= 0.05 else ""))
            meta = {"config": asdict(config), "epoch": epoch + 1, "history": history}
            checkpoint.save(out / "checkpoint.npz", model.state_dict(), optimizer.state_dict(),
                            meta)
            metrics = _metrics(config, history)
            (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            plot_curves(history, out / "curves.png", config.model)
    first_use.stop_helper(helper)  # where no epoch was left to run
    return _metrics(config, history)


def _start_compiling_helper(backend):
    """On the numba backend, where LeNet's kernels are not cached yet, a helper process that
    compiles them from the other end of the list while the first step compiles them in order
    of use (``backends._numba_first_use``); each loads what the other has saved, and half the
    compiling comes off the wait for the first batch. ``None`` where there is nothing to
    gain. (After an error it ends by itself once it has compiled the list.)"""
    from .nn.lanes import numba_active

    with use_backend(backend) if backend else contextlib.nullcontext():
        if not numba_active(np.zeros(1, np.float32)):
            return None
    return None if first_use.cached() else first_use.start_helper()


def _writer(progress, log):
    """A function printing one line: between progress bars when they are shown."""
    if not progress:
        return log
    from tqdm.auto import tqdm

    return tqdm.write


def _device(backend):
    """Where the model lives: on the GPU for the cupy backend (which must load here)."""
    if backend != "cupy":
        return "cpu"
    _backend.require("train", "cupy")
    return "cuda"


def keep_freed_memory():
    """Ask glibc's malloc to keep freed memory for reuse rather than hand it back to the
    system: every large temporary of a step otherwise lands on fresh pages, which the kernel
    zeroes on first touch (a LeNet step 23.3 -> 21.2 ms, measured). Process-wide, so only the
    trainer does it; a no-op where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    limit = 32 << 20  # the largest mmap threshold glibc accepts on 64-bit systems
    return bool(mallopt(m_mmap_threshold, limit)) and bool(mallopt(m_trim_threshold, limit))


def blas_single_thread():
    """BLAS at one thread: the dense layers are small, and BLAS's idle threads, spinning after
    each call, slowed the convolutions that followed (a LeNet step 78 -> 35 ms, measured)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def _metrics(config, history):
    import fastconv

    return {"config": asdict(config), "history": history,
            "final_test_acc": history[-1]["test_acc"] if history else None,
            "machine": {"python": platform.python_version(), "platform": platform.platform(),
                        "fastconv": fastconv.__version__, "backend": config.backend
                        or get_backend(), "threads": fastconv.get_num_threads()}}


def plot_curves(history, path, title):
    """The textbook's plot: train loss, train accuracy and test accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(epochs, [r["loss"] for r in history], "-o", ms=3, label="train loss")
    ax.plot(epochs, [r["train_acc"] for r in history], "--s", ms=3, label="train acc")
    ax.plot(epochs, [r["test_acc"] for r in history], "-.^", ms=3, label="test acc")
    ax.set_xlabel("epoch")
    ax.set_title(f"{title} on Fashion-MNIST (fastconv)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate(path, data=None, backend=None, scheduler=None, workers=None, batch_size=1000):
    """Test accuracy and confusion matrix of the model in checkpoint ``path``.

    With ``scheduler`` (a ``dask.distributed`` scheduler's address) or ``workers`` (that many
    worker processes of a local cluster, started and stopped here) the test set is a Dask
    array of ``batch_size`` images per block, and the cluster computes the predictions (the
    ``dask`` extra); the figures are those of the in-memory run.
    """
    model_state, _, meta = checkpoint.load(path)
    name = meta.get("config", {}).get("model")
    if name not in MODELS:
        raise checkpoint.CheckpointError(f"{path}: unknown model {name!r}")
    model = lenet(MODELS[name])
    model.load_state_dict(model_state)
    model.to(_device(backend))
    _, _, x_test, y_test = load_fashion_mnist(data)
    with use_backend(backend) if backend else contextlib.nullcontext():
        if scheduler is None and workers is None:
            predictions = predict(model, x_test, batch_size)
        else:
            predictions = _predict_on_cluster(model, x_test, batch_size, scheduler, workers)
    return float((predictions == y_test).mean()), confusion_matrix(y_test, predictions), meta


def _predict_on_cluster(model, x, batch_size, scheduler, workers):
    """:func:`predict` on a ``dask.distributed`` cluster: the one at ``scheduler``, or a local
    one of ``workers`` processes (one task thread each, and the cores shared out among their
    Numba threads, so that the kernels do not oversubscribe them)."""
    try:
        import dask.array as da
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise RuntimeError(f"evaluate on a cluster needs the dask extra: pip install "
                           f"fastconv[dask] ({exc})") from exc
    with contextlib.ExitStack() as stack:
        if scheduler is None:
            import numba

            threads = max(1, numba.config.NUMBA_NUM_THREADS // workers)
            cluster = stack.enter_context(LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True,
                dashboard_address=None, env={"NUMBA_NUM_THREADS": str(threads)}))
            scheduler = cluster.scheduler_address
        client = stack.enter_context(Client(scheduler))
        model.eval()
        images = da.from_array(x, chunks=(batch_size,) + x.shape[1:])
        return model.forward(images).argmax(axis=1).compute(scheduler=client.get)


def format_confusion(matrix):
    """The confusion matrix as text, rows the true classes, with the class names."""
    width = max(len(c) for c in CLASSES)
    head = " " * (width + 2) + " ".join(f"{i:>5d}" for i in range(len(CLASSES)))
    rows = [f"{c:>{width}}  " + " ".join(f"{v:5d}" for v in row) + f"   ({i})"
            for i, (c, row) in enumerate(zip(CLASSES, matrix))]
    return "\n".join(["rows: true class, columns: predicted class", head, *rows])
