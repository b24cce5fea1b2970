"""Models on Dask arrays: the whole model on each batch block, lazily.

A model's layers need every channel and pixel of an image, and nothing of the other images, so
a Dask array chunked along the batch is the natural unit: each batch block goes through the
in-memory model (with every fast path it has there, batch lanes included), and the blocks run
wherever Dask's scheduler puts them, a ``dask.distributed`` cluster included.
"""

from __future__ import annotations

import copy
import threading

import numpy as np

# One model's forward at a time per process: a model keeps per-call state (the activations
# backward would read, the batch-lane workspaces), and the CPU kernels use every core anyway
_ONE_AT_A_TIME = threading.Lock()


def forward_blocks(model, x):
    """``model.forward`` of a Dask array ``x`` ``(N, ...)``, lazily, block by batch block.

    The model must be in evaluation mode (training on Dask arrays is not supported: backward
    would need each block's activations). Every axis but the batch is merged into one chunk.
    The graph holds a copy of the model as it is now, once; later training does not change
    what it computes.
    """
    import dask
    import dask.array as da

    if model.training:
        raise ValueError(f"{model.layer_name}.forward: a Dask array needs evaluation mode "
                         "(call model.eval() first); training on Dask arrays is not supported")
    x = x.rechunk({axis: -1 for axis in range(1, x.ndim)})
    out_shape = tuple(model.output_shape(tuple(x.shape)))
    extra = {}
    if len(out_shape) < x.ndim:
        extra["drop_axis"] = list(range(len(out_shape), x.ndim))
    elif len(out_shape) > x.ndim:
        extra["new_axis"] = list(range(x.ndim, len(out_shape)))
    from .._backend import get_backend

    snapshot = dask.delayed(copy.deepcopy(model), pure=False)
    return da.map_blocks(_forward_block, x, snapshot, backend=get_backend(),
                         chunks=(x.chunks[0],) + tuple((s,) for s in out_shape[1:]),
                         dtype=x.dtype, meta=x._meta.reshape((0,) * len(out_shape)), **extra)


def _forward_block(block, model, backend):
    """The model on one block, under the backend setting of the call that built the graph;
    a block is moved to the model's device and the result back to the block's."""
    from .._backend import use_backend
    from .._params import array_module
    from .module import to_numpy

    xp = array_module(model.parameters()[0].data) if model.parameters() else array_module(block)
    with _ONE_AT_A_TIME, use_backend(backend):
        out = model.forward(xp.asarray(block))
        # a copy: the model may hand back memory that its next call reuses
        return (to_numpy(out) if isinstance(block, np.ndarray) else out).copy()
