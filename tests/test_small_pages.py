"""Pooling's fresh arrays are advised into small pages (fastconv.backends._small_pages)."""

import numpy as np
import pytest

from fastconv.backends import _small_pages as small_pages

linux_only = pytest.mark.skipif(small_pages._MADVISE is None,
                                reason="huge-page advice is Linux's")


def _vm_flags(address):
    """The VmFlags of the mapping in /proc/self/smaps that holds ``address``."""
    inside = False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()[0]
            if "-" in head and ":" not in head:  # a mapping's first line: "start-end perms ..."
                start, end = (int(v, 16) for v in head.split("-"))
                inside = start <= address < end
            elif inside and head == "VmFlags:":
                return set(line.split()[1:])
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.parametrize("shape, dtype", [((3, 5), np.float32), ((2, 1 << 20), np.float64),
                                          ((1 << 20, 1), np.int64)])
def test_empty_is_np_empty(shape, dtype):
    a = small_pages.empty(shape, dtype)
    assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.owndata
    a[...] = 7  # writable over its whole length
    assert (a == 7).all()


@linux_only
def test_large_arrays_get_small_pages():
    large = small_pages.empty((small_pages.HUGE_PAGE_ADVICE_BYTES // 4 + 4096,), np.float32)
    middle = large.ctypes.data + large.nbytes // 2
    assert "nh" in _vm_flags(middle)  # no huge pages
    assert "hg" not in _vm_flags(middle)
    # the advice NumPy gives (when it gives one) is what the helper takes back
    plain = np.empty_like(large)
    assert "nh" not in _vm_flags(plain.ctypes.data + plain.nbytes // 2)


@linux_only
def test_pooling_arrays_get_small_pages(rng):
    """Max and average pooling's outputs, indices and input gradients (each >= 4 MiB here)."""
    import fastconv as fc

    x = rng.standard_normal((1, 64, 256, 256), dtype=np.float32)  # 16 MiB; outputs 4 MiB
    with fc.use_backend("numba"):
        y, idx = fc.max_pool2d(x, 2, return_indices=True)
        gx = fc.max_pool2d_backward(y, x, 2, indices=idx)
        ya = fc.avg_pool2d(x, 2)
        gxa = fc.avg_pool2d_backward(ya, x, 2)
    for name, a in (("max output", y), ("indices", idx), ("max gradient", gx),
                    ("avg output", ya), ("avg gradient", gxa)):
        assert a.nbytes >= small_pages.HUGE_PAGE_ADVICE_BYTES, name
        assert "nh" in _vm_flags(a.ctypes.data + a.nbytes // 2), name
