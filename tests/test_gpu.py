"""The ``cupy`` backend: its CUDA source compiles (everywhere nvcc is), and on a GPU, CuPy
arrays go through the public API, nn layers and training.

The oracle suite itself (every op and gradient against PyTorch) runs on the GPU backend's code
through the ``backend`` fixture of conftest.py: as "cuda-host" everywhere, as "cupy" on a GPU.
``make test-gpu`` runs everything marked ``gpu``.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from helpers import assert_close, gpu_missing

import fastconv as fc
from fastconv import nn
from fastconv.backends import _cuda_source

NO_GPU = gpu_missing()
if NO_GPU is None:
    import cupy

    from fastconv.backends import cupy_gpu
else:
    cupy = None




@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed here")
def test_cuda_source_compiles_with_nvcc(dtype, tmp_path):
    """The kernels as NVRTC compiles them on a GPU, here by nvcc, so that a source that does
    not compile never lands (the GPU tests skip where there is no GPU)."""
    source = tmp_path / "kernels.cu"
    source.write_text(_cuda_source.source(dtype))
    done = subprocess.run(["nvcc", "-ptx", "-std=c++14", "-Werror", "all-warnings",
                           "-o", str(tmp_path / "kernels.ptx"), str(source)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    entries = re.findall(r"\.entry\s+(\w+)", (tmp_path / "kernels.ptx").read_text())
    assert sorted(entries) == sorted(_cuda_source.KERNELS)


def test_every_kernel_is_listed():
    defined = re.findall(r'extern "C" __global__ void (\w+)\(', _cuda_source.PATH.read_text())
    assert sorted(defined) == sorted(_cuda_source.KERNELS)


# ---------------------------------------------------------------- on a GPU only

needs_gpu = pytest.mark.skipif(cupy is None, reason=str(NO_GPU))


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_public_ops_take_and_return_cupy_arrays(dtype, rng):
    x = rng.standard_normal((3, 4, 11, 9)).astype(dtype)
    w = rng.standard_normal((6, 2, 3, 3)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    with fc.use_backend("numpy"):
        want = fc.conv2d(x, w, b, padding=1, groups=2)
        want_grads = fc.conv2d_backward(np.ones_like(want), x, w, padding=1, groups=2)
        want_pool = fc.max_pool2d(x, 3, 2, ceil_mode=True)
    gx, gw, gb = map(cupy.asarray, (x, w, b))
    got = fc.conv2d(gx, gw, gb, padding=1, groups=2)
    assert isinstance(got, cupy.ndarray)
    assert_close(cupy.asnumpy(got), want, np.dtype(dtype), "conv2d")
    grads = fc.conv2d_backward(cupy.ones_like(got), gx, gw, padding=1, groups=2)
    for g, w_ in zip(grads, want_grads):
        assert_close(cupy.asnumpy(g), w_, np.dtype(dtype), "conv2d_backward")
    assert_close(cupy.asnumpy(fc.max_pool2d(gx, 3, 2, ceil_mode=True)), want_pool,
                 np.dtype(dtype), "max_pool2d")
    assert_close(cupy.asnumpy(fc.corr2d(gx[0, 0], gw[0, 0])), fc.corr2d(x[0, 0], w[0, 0]),
                 np.dtype(dtype), "corr2d")


@pytest.mark.gpu
@needs_gpu
def test_mixing_devices_is_an_error(rng):
    x = rng.standard_normal((1, 2, 5, 5))
    w = rng.standard_normal((3, 2, 3, 3))
    with pytest.raises(TypeError, match="conv2d: cannot mix NumPy and CuPy arrays"):
        fc.conv2d(cupy.asarray(x), w)
    with fc.use_backend("numba"), pytest.raises(TypeError, match="takes NumPy arrays"):
        fc.conv2d(cupy.asarray(x), cupy.asarray(w))
    with fc.use_backend("cupy"), pytest.raises(TypeError, match="takes CuPy arrays"):
        fc.conv2d(x, w)


@pytest.mark.gpu
@needs_gpu
def test_results_are_bitwise_repeatable(rng):
    x = cupy.asarray(rng.standard_normal((8, 16, 20, 20)).astype(np.float32))
    w = cupy.asarray(rng.standard_normal((32, 16, 3, 3)).astype(np.float32))
    gy = cupy.asarray(rng.standard_normal((8, 32, 10, 10)).astype(np.float32))
    first = fc.conv2d_backward(gy, x, w, stride=2, padding=1)
    for _ in range(3):
        for a, b in zip(first, fc.conv2d_backward(gy, x, w, stride=2, padding=1)):
            assert bool((a == b).all())


@pytest.mark.gpu
@needs_gpu
def test_lenet_trains_on_the_gpu_as_on_the_cpu(rng):
    """Two SGD steps of the classic LeNet on the GPU and on the CPU from the same weights."""
    from fastconv.models import lenet

    x = rng.standard_normal((16, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    losses = {}
    for device in ("cpu", "cuda"):
        model = lenet("classic", rng=np.random.default_rng(0)).to(device)
        xp = cupy if device == "cuda" else np
        optimizer, loss_fn = nn.SGD(model.parameters(), 0.1), nn.SoftmaxCrossEntropy()
        losses[device] = []
        for _ in range(2):
            losses[device].append(loss_fn(model.forward(xp.asarray(x)), xp.asarray(y)))
            model.zero_grad()
            model.backward(loss_fn.backward())
            optimizer.step()
        state = {k: nn.module.to_numpy(v) for k, v in model.state_dict().items()}
        losses[device].append(state)
    assert np.allclose(losses["cpu"][:2], losses["cuda"][:2], rtol=1e-4)
    for name, value in losses["cpu"][2].items():
        assert_close(losses["cuda"][2][name], value, np.dtype(np.float32), name)


@pytest.mark.gpu
@needs_gpu
def test_info_names_the_gpu():
    assert "gpu" in cupy_gpu.describe()
