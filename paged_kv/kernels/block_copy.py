"""Block copy: copy whole blocks, every layer, K and V, for ``(src, dst)`` pairs.

One launch copies all pairs. Pair ``p`` moves ``num_layers * 2 * block_size *
num_kv_heads * head_dim`` elements; thread ``i`` handles element ``e`` of pair ``p``::

    p = i // per_pair          per_pair  = num_layers * 2 * per_block
    lk, e = divmod(i % per_pair, per_block)    per_block = block_size * heads * head_dim
    dst[lk // 2, lk % 2, dst_ids[p], e...] = src[lk // 2, lk % 2, src_ids[p], e...]

Consecutive threads touch consecutive elements of one ``[block_size, heads, head_dim]``
block, which is contiguous in both pools, so loads and stores coalesce. The same
kernel serves copy-on-write within the GPU pool (``src is dst``) and swapping between
the GPU pool and a mapped host pool (`paged_kv.kernels.swap`): it only loads and
stores, so it is agnostic to which memory each side lives in.
"""

from __future__ import annotations

from typing import Any

from numba import cuda, types

from paged_kv.kernels._launch import launch
from paged_kv.kernels._validate import block_pairs, check_pool, require_cuda_array, to_device


@cuda.jit
def block_copy_kernel(src, dst, src_ids, dst_ids):
    """Thread ``i`` copies one element of one pair's block; see the module."""
    i = cuda.grid(1)
    block_size = src.shape[3]
    num_kv_heads = src.shape[4]
    head_dim = src.shape[5]
    token_elems = num_kv_heads * head_dim
    per_block = block_size * token_elems
    per_pair = src.shape[0] * 2 * per_block
    if i >= src_ids.shape[0] * per_pair:
        return
    p = i // per_pair
    r = i - p * per_pair
    lk = r // per_block
    e = r - lk * per_block
    layer = lk // 2
    kv = lk - layer * 2
    offset = e // token_elems
    r = e - offset * token_elems
    head = r // head_dim
    d = r - head * head_dim
    dst[layer, kv, dst_ids[p], offset, head, d] = src[layer, kv, src_ids[p], offset, head, d]


def signature(dtype: str) -> Any:
    """The Numba signature `copy_blocks` and `swap_blocks` launch with, for `dtype`."""
    elem = getattr(types, dtype)
    return types.void(
        types.Array(elem, 6, "C"),  # src pool
        types.Array(elem, 6, "C"),  # dst pool
        types.Array(types.int32, 1, "C"),  # src block ids
        types.Array(types.int32, 1, "C"),  # dst block ids
    )


def launch_block_copy(src: Any, dst: Any, src_ids: Any, dst_ids: Any) -> None:
    """Launch `block_copy_kernel` for already validated id columns (host int32 arrays)."""
    num_layers, _, _, block_size, num_kv_heads, head_dim = (int(n) for n in src.shape)
    per_pair = num_layers * 2 * block_size * num_kv_heads * head_dim
    launch(
        block_copy_kernel,
        len(src_ids) * per_pair,
        src,
        dst,
        to_device(src_ids),
        to_device(dst_ids),
    )


def copy_blocks(pool: Any, pairs: Any) -> None:
    """Copy block ``src`` onto block ``dst`` for every ``(src, dst)`` in `pairs`.

    `pool` is a device array ``[num_layers, 2, num_blocks, block_size, num_kv_heads,
    head_dim]``; `pairs` is ``[n, 2]`` integers (list of tuples, NumPy or device array).
    All layers, K and V, move in one launch; an empty `pairs` launches nothing.

    Raises `ValueError` before any launch, pool untouched, when an id is outside
    ``[0, num_blocks)``, a dst appears twice, or a dst is also a src (within one launch
    the copy would read old or new bytes depending on thread order; split such chains
    into several calls). One src copied to several dsts is fine.
    """
    what = "copy_blocks"
    shape = check_pool(pool, what)
    require_cuda_array(pool, what, "pool")
    src_ids, dst_ids = block_pairs(pairs, shape[2], shape[2], same_pool=True, what=what)
    if len(src_ids):
        launch_block_copy(pool, pool, src_ids, dst_ids)
