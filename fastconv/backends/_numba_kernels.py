"""The Numba kernels that ``numba_cpu`` and ``fastconv.nn`` call, in one namespace
(``K._conv_forward``), each defined in the module of its family:

- :mod:`._numba_simd`: explicit 512-bit vectors (a type and intrinsics);
- :mod:`._numba_band`: the jit options, in-bounds ranges, the direct kernels' band copies;
- :mod:`._numba_direct`: direct and register-blocked convolutions, the exact weight gradient,
  the bias gradient, the finiteness check;
- :mod:`._numba_kvector`: the direct convolution vectorised over output channels;
- :mod:`._numba_depthwise`: depthwise convolutions vectorised over channels;
- :mod:`._numba_grouped`: grouped convolutions vectorised over groups;
- :mod:`._numba_pooling`, :mod:`._numba_packing` (im2col / col2im),
  :mod:`._numba_winograd_kernels`, :mod:`._numba_lane_kernels`, :mod:`._numba_elementwise`.

Numba stamps a cached kernel with its own file only; :mod:`._numba_cache` stamps all of these
modules with one hash of their sources, so that a kernel is recompiled when a helper it calls
from another module changes.

Kernels trust their inputs (contiguous 5-D arrays, canonical tuples); ``fastconv.functional``
guarantees that. Indices are unsigned (``np.uintp``) on flat views wherever a loop should
vectorise: with signed ones Numba adds negative-index handling that kept the loops scalar.

Kernels write their outputs into arrays the caller allocated with NumPy, which asks Linux
for transparent huge pages on large arrays where Numba's allocator does not: a fresh 100 MB
output filled in parallel took 25 ms allocated in Numba, 8 ms allocated by NumPy (4 ms
reused). Pooling's arrays are the exception, allocated in small pages
(:mod:`._small_pages` says why). Inside are allocated only scratch and weight-sized results
(weight and bias gradients).
"""

from __future__ import annotations

from ._numba_depthwise import _depthwise_forward, _depthwise_weight_grad  # noqa: F401
from ._numba_direct import (  # noqa: F401
    _all_finite_parallel,
    _bias_grad,
    _conv_forward,
    _conv_forward_blocked,
    _conv_transpose_forward,
    _conv_weight_grad,
    _conv_weight_grad_exact,
    _frame_finite_parallel,
    _transposed_as_conv_weights,
)
from ._numba_elementwise import _sigmoid_backward, _sigmoid_forward_f32  # noqa: F401
from ._numba_grouped import (  # noqa: F401
    GROUPED_FILTERS,
    GROUPED_POSITIONS,
    _conv_forward_grouped,
    _conv_weight_grad_grouped,
    _group_weights,
    _groups_last_padded,
    group_vector,
)
from ._numba_kvector import (  # noqa: F401
    KVECTOR_POSITIONS,
    _channels_last_padded,
    _conv_forward_kvector,
    _conv_forward_kvector_skipping,
    _conv_weight_grad_kvector,
    _grad_channels_last,
    block_filters,
)
from ._numba_lane_kernels import (  # noqa: F401
    _from_lanes,
    _lane_avg_pool_backward,
    _lane_avg_pool_forward,
    _lane_channel_sums,
    _lanes_padded,
    _to_lanes,
)
from ._numba_packing import _bias_array, _put_phase  # noqa: F401
from ._numba_pooling import (  # noqa: F401
    _avg_pool_backward,
    _avg_pool_forward,
    _max_pool_backward,
    _max_pool_forward,
)
