"""Swap: move blocks between the GPU pool and the host pool, either way.

Two paths, selected by ``method``:

* ``"memcpy"`` (the default): the copy engines. Pairs are coalesced into runs of
  consecutive block ids (`paged_kv.gpu.kernels.copy_engine.block_runs`) and each run moves
  as one asynchronous 2-D memcpy on the stream: ``2 * num_layers`` rows of ``count``
  blocks. The SMs stay free for compute while it runs. Its cost is one driver call per
  run, so scattered blocks (runs of one) cost one call per pair.
* ``"kernel"``: `paged_kv.gpu.kernels.block_copy` reads or writes the mapped host pool
  directly over the bus, one launch for any set of blocks, however scattered. It
  occupies SMs while it runs, but pays no per-run call.

Which one should be the default is a question for a GPU: ``benchmarks/kernels.py``
times both, for contiguous and for scattered blocks, against a plain page-locked
``cudaMemcpy`` of the same bytes (``scripts/gpu_check.sh`` runs it). Until that has run,
the default follows the copy-engine design that vLLM uses (``swap_blocks`` is a
``cudaMemcpyAsync`` per block there) and the kernel path stays selectable.

GPU -> host is ``swap_blocks(gpu_pool, host_pool, pairs)``; host -> GPU is
``swap_blocks(host_pool, gpu_pool, pairs)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from paged_kv.gpu.kernels._launch import DeviceBuffers
from paged_kv.gpu.kernels._validate import (
    STORED_DTYPES,
    block_pairs,
    check_pool,
    device_block_pairs,
    host_int_array,
    is_cuda_array,
    same_or_disjoint,
)
from paged_kv.gpu.kernels.block_copy import launch_block_copy
from paged_kv.gpu.kernels.copy_engine import block_runs, copy_block_runs

#: The swap paths (module docstring), the default first.
SWAP_METHODS = ("memcpy", "kernel")
DEFAULT_SWAP_METHOD = SWAP_METHODS[0]


def swap_blocks(
    src_pool: Any,
    dst_pool: Any,
    pairs: Any,
    *,
    stream: Any = None,
    method: str = DEFAULT_SWAP_METHOD,
    buffers: DeviceBuffers | None = None,
) -> None:
    """Copy block ``src`` of `src_pool` onto block ``dst`` of `dst_pool` for each pair.

    Both pools are device-addressable arrays (device array, mapped host array, or the
    simulator's arrays) with the same layout and dtype except ``num_blocks`` (axis 2);
    any element type in `STORED_DTYPES` moves (quantized codes included).
    `pairs` is ``[n, 2]`` integers (host), or a device int32 ``[n, 2]`` array; an
    empty `pairs` moves nothing. The copies are enqueued on `stream` (None: the default
    stream) by `method`, ``"memcpy"`` or ``"kernel"`` (module docstring).

    Raises `ValueError` before anything moves, both pools untouched, when the layouts
    or dtypes differ, the pools overlap in memory without being the same pool (a view
    of one passed as the other), the method is unknown, a src id is outside ``[0, src
    num_blocks)``, a dst id is outside ``[0, dst num_blocks)``, or a dst appears twice.
    A dst that equals a src id is fine between two pools (they are different blocks);
    only within one pool is it rejected, as in `copy_blocks`.

    Device-resident pairs: the kernel path does not read them back (out-of-range ids
    are skipped on the device and counted in ``buffers.errors``); the memcpy path must
    know the ids on the host to issue its copies, so it copies them back on `stream`
    (and waits for it) and then checks them like host pairs.
    """
    what = "swap_blocks"
    if method not in SWAP_METHODS:
        raise ValueError(f"{what}: method must be one of {SWAP_METHODS}, got {method!r}")
    src_shape = check_pool(src_pool, what, "src_pool", STORED_DTYPES)
    dst_shape = check_pool(dst_pool, what, "dst_pool", STORED_DTYPES)
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
    same_pool = same_or_disjoint(src_pool, dst_pool, what, ("src_pool", "dst_pool"))
    if is_cuda_array(pairs) and method == "kernel":
        pairs = device_block_pairs(pairs, what)
    else:
        if is_cuda_array(pairs):
            pairs = host_int_array(pairs, what, "pairs", ndim=2, stream=stream)
        pairs = block_pairs(pairs, src_shape[2], dst_shape[2], same_pool=same_pool, what=what)
    if not int(pairs.shape[0]):
        return
    if method == "kernel":
        launch_block_copy(src_pool, dst_pool, pairs, stream, buffers)
    else:
        copy_block_runs(src_pool, dst_pool, block_runs(pairs), stream)
