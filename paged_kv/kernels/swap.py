"""Swap: move blocks between the GPU pool and the host pool, either way.

The host pool is page-locked and mapped into the device's address space
(``cuda.mapped_array``), so `block_copy_kernel` reads or writes it directly over the
bus: one launch moves any set of blocks, however scattered, without staging buffers.
GPU -> host is ``swap_blocks(gpu_pool, host_pool, pairs)``; host -> GPU is
``swap_blocks(host_pool, gpu_pool, pairs)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from paged_kv.kernels._validate import block_pairs, check_pool, require_cuda_array
from paged_kv.kernels.block_copy import launch_block_copy


def swap_blocks(src_pool: Any, dst_pool: Any, pairs: Any) -> None:
    """Copy block ``src`` of `src_pool` onto block ``dst`` of `dst_pool` for each pair.

    Both pools are device-addressable arrays (device array, mapped host array, or the
    simulator's arrays) with the same layout and dtype except ``num_blocks`` (axis 2).
    `pairs` is ``[n, 2]`` integers; an empty `pairs` launches nothing.

    Raises `ValueError` before any launch, both pools untouched, when the layouts or
    dtypes differ, a src id is outside ``[0, src num_blocks)``, a dst id is outside
    ``[0, dst num_blocks)``, or a dst appears twice. A dst that equals a src id is
    fine between two pools (they are different blocks); only when `src_pool` is
    `dst_pool` is it rejected, as in `copy_blocks`.
    """
    what = "swap_blocks"
    src_shape = check_pool(src_pool, what, "src_pool")
    dst_shape = check_pool(dst_pool, what, "dst_pool")
    require_cuda_array(src_pool, what, "src_pool")
    require_cuda_array(dst_pool, what, "dst_pool")
    if src_shape[:2] + src_shape[3:] != dst_shape[:2] + dst_shape[3:]:
        raise ValueError(
            f"{what}: pools differ in more than num_blocks (axis 2): src_pool {src_shape}, "
            f"dst_pool {dst_shape}"
        )
    if np.dtype(src_pool.dtype) != np.dtype(dst_pool.dtype):
        raise ValueError(
            f"{what}: src_pool dtype {np.dtype(src_pool.dtype).name} differs from dst_pool "
            f"dtype {np.dtype(dst_pool.dtype).name}"
        )
    src_ids, dst_ids = block_pairs(
        pairs, src_shape[2], dst_shape[2], same_pool=src_pool is dst_pool, what=what
    )
    if len(src_ids):
        launch_block_copy(src_pool, dst_pool, src_ids, dst_ids)
