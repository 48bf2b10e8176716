"""Block copy: copy whole blocks, every layer, K and V, for ``(src, dst)`` pairs.

One launch copies all pairs. In the pool layout (`paged_kv.gpu.storage`) block ``b`` of
layer ``l``, K or V (``lk = 2 * l + kv``) is one contiguous run of ``blk = block_size *
num_kv_heads * head_dim`` elements, a *slab row*; in copy units (`paged_kv.gpu.kernels._units`,
up to 16 bytes per thread) the flat pool places it at::

    lk * (num_blocks * blk) + b * blk

One CUDA block per (pair, lk): ``pair = blockIdx.x // (2 * num_layers)``, computed once
per thread; its threads stride over the run. A pair moves ``2 * num_layers`` runs. The
same kernel serves copy-on-write within the GPU pool and the ``"kernel"`` swap path
between the GPU pool and a mapped host pool (`paged_kv.gpu.kernels.swap`): it only loads
and stores, so it is agnostic to which memory each side lives in.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import types

from paged_kv.gpu import device
from paged_kv.gpu.kernels._launch import DeviceBuffers, default_buffers, launch
from paged_kv.gpu.kernels._units import copy_run, flat_units, plan_units, threads_for
from paged_kv.gpu.kernels._validate import (
    STORED_DTYPES,
    block_pairs,
    check_pool,
    device_block_pairs,
    is_cuda_array,
)

from numba import cuda  # isort: skip  (kernel intrinsics; the simulator swaps this name)


@device.jit
def block_copy_kernel(src, dst, pairs, num_slabs, src_slab, dst_slab, blk_units,
                      num_src_blocks, num_dst_blocks, vector, errors):
    """CUDA block ``b`` copies one slab row of one pair; see the module."""
    b = cuda.blockIdx.x
    p = b // num_slabs
    lk = b - p * num_slabs
    s = pairs[p, 0]
    d = pairs[p, 1]
    if s < 0 or s >= num_src_blocks or d < 0 or d >= num_dst_blocks:
        # only device-resident pairs can get here
        if lk == 0 and cuda.threadIdx.x == 0:
            cuda.atomic.add(errors, 0, 1)
        return
    copy_run(dst, lk * dst_slab + d * blk_units, src, lk * src_slab + s * blk_units,
             blk_units, vector, cuda.threadIdx.x, cuda.blockDim.x)


def signature(unit: str) -> Any:
    """The Numba signature `copy_blocks` and `swap_blocks` launch with, per unit dtype."""
    flat = types.Array(getattr(types, unit), 1, "C")
    return types.void(
        flat,  # src pool
        flat,  # dst pool
        types.Array(types.int32, 2, "C"),  # pairs
        types.int64,  # num_slabs = 2 * num_layers
        types.int64,  # src_slab
        types.int64,  # dst_slab
        types.int64,  # blk_units
        types.int64,  # num_src_blocks
        types.int64,  # num_dst_blocks
        types.boolean,  # vector
        types.Array(types.int32, 1, "C"),  # errors
    )


def launch_block_copy(src: Any, dst: Any, pairs: Any, stream: Any,
                      buffers: DeviceBuffers | None) -> None:
    """Launch `block_copy_kernel` for checked pairs (host int32 ``[n, 2]`` or device)."""
    buffers = default_buffers() if buffers is None else buffers
    if not is_cuda_array(pairs):
        pairs = buffers.upload("pairs", pairs, stream)
    num_layers, _, num_src, block_size, num_kv_heads, head_dim = (int(n) for n in src.shape)
    num_dst = int(dst.shape[2])
    itemsize = np.dtype(src.dtype).itemsize
    blk_bytes = block_size * num_kv_heads * head_dim * itemsize
    unit, vector, _ = plan_units(blk_bytes, itemsize, src, dst)
    blk_units = blk_bytes // unit.itemsize
    num_slabs = 2 * num_layers
    launch(
        block_copy_kernel,
        int(pairs.shape[0]) * num_slabs,
        threads_for(blk_units, vector),
        stream,
        flat_units(src, unit),
        flat_units(dst, unit),
        pairs,
        num_slabs,
        num_src * blk_units,
        num_dst * blk_units,
        blk_units,
        num_src,
        num_dst,
        vector,
        buffers.errors,
    )


def copy_blocks(
    pool: Any,
    pairs: Any,
    *,
    stream: Any = None,
    buffers: DeviceBuffers | None = None,
) -> None:
    """Copy block ``src`` onto block ``dst`` for every ``(src, dst)`` in `pairs`.

    `pool` is a device array ``[num_layers, 2, num_blocks, block_size, num_kv_heads,
    head_dim]`` of any element type in `STORED_DTYPES` (bytes are bytes: quantized
    codes, and the float32 scale arrays of an int8 cache, move alike); `pairs` is
    ``[n, 2]`` integers (list of tuples or NumPy array), or a device int32 ``[n, 2]``
    array. All layers, K and V, move in one launch, enqueued on
    `stream` (None: the default stream); an empty `pairs` launches nothing.

    Raises `ValueError` before any launch, pool untouched, when (host pairs) an id is
    outside ``[0, num_blocks)``, a dst appears twice, or a dst is also a src (within
    one launch the copy would read old or new bytes depending on thread order; split
    such chains into several calls). One src copied to several dsts is fine. Device
    pairs are not read back: the kernel skips a pair with an id outside the pool and
    counts it in ``buffers.errors``; the other two rules are the caller's to keep.
    """
    what = "copy_blocks"
    shape = check_pool(pool, what, dtypes=STORED_DTYPES)
    if is_cuda_array(pairs):
        pairs = device_block_pairs(pairs, what)
    else:
        pairs = block_pairs(pairs, shape[2], shape[2], same_pool=True, what=what)
    if int(pairs.shape[0]):
        launch_block_copy(pool, pool, pairs, stream, buffers)
