"""Slot write: scatter one layer's new keys and values into the pool.

Token ``i`` of ``k, v[num_tokens, num_kv_heads, head_dim]`` lands in slot
``slot_mapping[i]`` of layer ``layer``::

    slot   = block_id * block_size + offset
    pool[layer, 0, slot // block_size, slot % block_size, :, :] = k[i]
    pool[layer, 1, slot // block_size, slot % block_size, :, :] = v[i]

A negative slot marks a padding token and is skipped (vLLM ``reshape_and_cache_flash``
uses -1 the same way). One thread per ``(token, head, dim)`` element moves the K and
the V element at that position.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import cuda, types

from paged_kv.kernels._launch import launch
from paged_kv.kernels._validate import (
    check_layer,
    check_pool,
    host_int_array,
    kv_argument,
    require_cuda_array,
    to_device,
)


@cuda.jit
def slot_write_kernel(pool, layer, k, v, slot_mapping):
    """Thread ``i`` moves element ``(token, head, d)`` of k and v; see the module."""
    i = cuda.grid(1)
    num_kv_heads = k.shape[1]
    head_dim = k.shape[2]
    token_elems = num_kv_heads * head_dim
    if i >= k.shape[0] * token_elems:
        return
    token = i // token_elems
    slot = slot_mapping[token]
    if slot < 0:
        return  # padding token
    within = i - token * token_elems
    head = within // head_dim
    d = within - head * head_dim
    block_size = pool.shape[3]
    block = slot // block_size
    offset = slot - block * block_size
    pool[layer, 0, block, offset, head, d] = k[token, head, d]
    pool[layer, 1, block, offset, head, d] = v[token, head, d]


def signature(dtype: str) -> Any:
    """The Numba signature `write_slots` launches `slot_write_kernel` with, for `dtype`."""
    elem = getattr(types, dtype)
    return types.void(
        types.Array(elem, 6, "C"),  # pool
        types.int64,  # layer
        types.Array(elem, 3, "C"),  # k
        types.Array(elem, 3, "C"),  # v
        types.Array(types.int64, 1, "C"),  # slot_mapping
    )


def write_slots(pool: Any, layer: int, k: Any, v: Any, slot_mapping: Any) -> None:
    """Scatter ``k, v[num_tokens, num_kv_heads, head_dim]`` into `pool` at `slot_mapping`.

    `pool` is a device array ``[num_layers, 2, num_blocks, block_size, num_kv_heads,
    head_dim]``; `k` and `v` are device or NumPy arrays of the pool's dtype (no implicit
    cast); `slot_mapping` is a 1-D integer array (list, NumPy or device) of length
    ``num_tokens``. Negative slots are padding and write nothing.

    Raises `ValueError`, before any launch and with the pool untouched, when: the layer
    is out of range; k or v has another shape or dtype; slot_mapping is not 1-D
    integer of length num_tokens; a slot is ``>= num_blocks * block_size``; or a
    non-negative slot appears twice (two tokens, one slot: which one lands would depend
    on thread order, so the scatter is rejected as ambiguous).
    """
    what = "write_slots"
    num_layers, _, num_blocks, block_size, num_kv_heads, head_dim = check_pool(pool, what)
    require_cuda_array(pool, what, "pool")
    layer = check_layer(layer, num_layers, what)
    slots = host_int_array(slot_mapping, what, "slot_mapping", ndim=1)
    num_tokens = slots.shape[0]
    k = kv_argument(k)
    v = kv_argument(v)
    for name, arr in (("k", k), ("v", v)):
        if tuple(arr.shape) != (num_tokens, num_kv_heads, head_dim):
            raise ValueError(
                f"{what}: {name} must have shape [num_tokens={num_tokens}, "
                f"num_kv_heads={num_kv_heads}, head_dim={head_dim}], got {tuple(arr.shape)}"
            )
        if np.dtype(arr.dtype) != np.dtype(pool.dtype):
            raise ValueError(
                f"{what}: {name} dtype {np.dtype(arr.dtype).name} does not match the pool's "
                f"{np.dtype(pool.dtype).name}"
            )
    num_slots = num_blocks * block_size
    too_big = np.flatnonzero(slots >= num_slots)
    if too_big.size:
        i = int(too_big[0])
        raise ValueError(
            f"{what}: slot_mapping[{i}] = {int(slots[i])} out of range for "
            f"{num_blocks} blocks * {block_size} slots = {num_slots} slots"
        )
    real = slots[slots >= 0]
    values, counts = np.unique(real, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(
            f"{what}: slot {int(values[counts > 1][0])} appears "
            f"{int(counts[counts > 1][0])} times in slot_mapping (ambiguous scatter)"
        )
    if real.size == 0:
        return  # nothing but padding
    launch(
        slot_write_kernel,
        num_tokens * num_kv_heads * head_dim,
        pool,
        layer,
        to_device(k),
        to_device(v),
        to_device(slots, np.int64),
    )
