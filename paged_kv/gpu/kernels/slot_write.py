"""Slot write: scatter one layer's new keys and values into the pool.

Token ``i`` of ``k, v[num_tokens, num_kv_heads, head_dim]`` lands in slot
``slot_mapping[i]`` of layer ``layer``::

    slot   = block_id * block_size + offset
    pool[layer, 0, slot // block_size, slot % block_size, :, :] = k[i]
    pool[layer, 1, slot // block_size, slot % block_size, :, :] = v[i]

A negative slot marks a padding token and is skipped (vLLM ``reshape_and_cache_flash``
uses -1 the same way). One CUDA block per token (as vLLM): its threads stride over the
token's ``num_kv_heads * head_dim`` elements in copy units of up to 16 bytes (see
`paged_kv.gpu.kernels._units`). In units of ``tok = num_kv_heads * head_dim * itemsize / W``
the pool is flat, and slot ``s`` of layer ``l`` starts at::

    k: (2 * l) * num_slots * tok + s * tok        num_slots = num_blocks * block_size
    v: k + num_slots * tok

The layer bases are computed once on the host (64-bit); a thread computes its token's
base once, then adds its unit index.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import types

from paged_kv.core.config import SUPPORTED_DTYPES
from paged_kv.gpu import device
from paged_kv.gpu.kernels._launch import DeviceBuffers, default_buffers, launch
from paged_kv.gpu.kernels._units import copy_run, flat_units, plan_units, threads_for
from paged_kv.gpu.kernels._validate import (
    check_layer,
    check_pool,
    device_index_array,
    host_int_array,
    is_cuda_array,
    kv_argument,
    require_c_contiguous,
)

from numba import cuda  # isort: skip  (kernel intrinsics; the simulator swaps this name)


@device.jit
def slot_write_kernel(pool, k, v, slot_mapping, k_base, v_base, tok_units, num_slots,
                      vector, errors):
    """CUDA block ``t`` writes token ``t``'s K and V run; see the module."""
    t = cuda.blockIdx.x
    slot = slot_mapping[t]
    if slot < 0:
        return  # padding token
    if slot >= num_slots:  # only a device-resident slot_mapping can get here
        if cuda.threadIdx.x == 0:
            cuda.atomic.add(errors, 0, 1)
        return
    src = t * tok_units
    dst = slot * tok_units
    first = cuda.threadIdx.x
    step = cuda.blockDim.x
    copy_run(pool, k_base + dst, k, src, tok_units, vector, first, step)
    copy_run(pool, v_base + dst, v, src, tok_units, vector, first, step)


def signature(unit: str) -> Any:
    """The Numba signature `write_slots` launches `slot_write_kernel` with, per unit dtype."""
    flat = types.Array(getattr(types, unit), 1, "C")
    return types.void(
        flat,  # pool
        flat,  # k
        flat,  # v
        types.Array(types.int64, 1, "C"),  # slot_mapping
        types.int64,  # k_base
        types.int64,  # v_base
        types.int64,  # tok_units
        types.int64,  # num_slots
        types.boolean,  # vector
        types.Array(types.int32, 1, "C"),  # errors
    )


def write_slots(
    pool: Any,
    layer: int,
    k: Any,
    v: Any,
    slot_mapping: Any,
    *,
    stream: Any = None,
    buffers: DeviceBuffers | None = None,
) -> None:
    """Scatter ``k, v[num_tokens, num_kv_heads, head_dim]`` into `pool` at `slot_mapping`.

    `pool` is a device array ``[num_layers, 2, num_blocks, block_size, num_kv_heads,
    head_dim]``; `k` and `v` are device or NumPy arrays of the pool's dtype (no implicit
    cast); `slot_mapping` is a 1-D integer array of length ``num_tokens``: a list or
    NumPy array (any integer dtype), or a device int64 array. Negative slots are
    padding and write nothing. The work is enqueued on `stream` (None: the default
    stream); host inputs go through `buffers` (default: `default_buffers()`).

    Raises `ValueError`, before any launch and with the pool untouched, when: the layer
    is out of range; k or v has another shape or dtype; slot_mapping is not 1-D
    integer of length num_tokens; and, for a host slot_mapping, when a slot is ``>=
    num_blocks * block_size`` or a non-negative slot appears twice (two tokens, one
    slot: which one lands would depend on thread order). A device slot_mapping is not
    read back: the kernel skips a slot beyond the pool and counts it in
    ``buffers.errors``; duplicates are the caller's responsibility.
    """
    shape, layer, slots, k, v = check_write(pool, layer, k, v, slot_mapping, "write_slots")
    if slots is None:
        return  # nothing but padding (or nothing at all)
    _, _, num_blocks, block_size, num_kv_heads, head_dim = shape
    num_slots = num_blocks * block_size
    num_tokens = int(slots.shape[0])
    buffers = default_buffers() if buffers is None else buffers
    slots, k, v = upload_write_inputs(slots, k, v, stream, buffers)
    itemsize = np.dtype(pool.dtype).itemsize
    unit, vector, _ = plan_units(num_kv_heads * head_dim * itemsize, itemsize, pool, k, v)
    tok_units = num_kv_heads * head_dim * itemsize // unit.itemsize
    k_base = 2 * layer * num_slots * tok_units
    launch(
        slot_write_kernel,
        num_tokens,
        threads_for(tok_units, vector),
        stream,
        flat_units(pool, unit),
        flat_units(k, unit),
        flat_units(v, unit),
        slots,
        k_base,
        k_base + num_slots * tok_units,
        tok_units,
        num_slots,
        vector,
        buffers.errors,
    )


def check_write(
    pool: Any, layer: Any, k: Any, v: Any, slot_mapping: Any, what: str,
    pool_dtypes: tuple[str, ...] = SUPPORTED_DTYPES,
    kv_dtypes: tuple[str, ...] | None = None,
) -> tuple[tuple[int, ...], int, Any, Any, Any]:
    """`write_slots`' checks (its docstring), shared with the quantizing write:
    ``(pool shape, layer, slots, k, v)``, with ``slots`` None when there is nothing but
    padding to write. K/V must have the pool's dtype, or with `kv_dtypes` one of those
    (the same for both)."""
    shape = check_pool(pool, what, dtypes=pool_dtypes)
    num_layers, _, num_blocks, block_size, num_kv_heads, head_dim = shape
    layer = check_layer(layer, num_layers, what)
    num_slots = num_blocks * block_size
    if is_cuda_array(slot_mapping):
        slots = device_index_array(slot_mapping, what, "slot_mapping", np.int64, ndim=1)
        num_tokens = int(slots.shape[0])
    else:
        slots = host_slots(slot_mapping, num_slots, block_size, what)
        num_tokens = slots.shape[0]
    k, v = kv_argument(k), kv_argument(v)
    for name, arr in (("k", k), ("v", v)):
        if tuple(arr.shape) != (num_tokens, num_kv_heads, head_dim):
            raise ValueError(
                f"{what}: {name} must have shape [num_tokens={num_tokens}, "
                f"num_kv_heads={num_kv_heads}, head_dim={head_dim}], got {tuple(arr.shape)}"
            )
        dtype = np.dtype(arr.dtype)
        if kv_dtypes is None and dtype != np.dtype(pool.dtype):
            raise ValueError(
                f"{what}: {name} dtype {dtype.name} does not match the pool's "
                f"{np.dtype(pool.dtype).name}"
            )
        if kv_dtypes is not None and (dtype.name not in kv_dtypes or dtype != np.dtype(v.dtype)):
            raise ValueError(
                f"{what}: k and v must both be one of {kv_dtypes}, got "
                f"{np.dtype(k.dtype).name} and {np.dtype(v.dtype).name}"
            )
        if is_cuda_array(arr):
            require_c_contiguous(arr, what, name)
    if not is_cuda_array(slots) and not np.any(slots >= 0):
        slots = None
    return shape, layer, slots, k, v


def upload_write_inputs(slots: Any, k: Any, v: Any, stream: Any,
                        buffers: DeviceBuffers) -> tuple[Any, Any, Any]:
    """Host slots, k and v copied into `buffers` on `stream`; device arrays pass
    through."""
    if not is_cuda_array(slots):
        slots = buffers.upload("slot_mapping", slots, stream)
    if not is_cuda_array(k):
        k = buffers.upload("k", k, stream)
    if not is_cuda_array(v):
        v = buffers.upload("v", v, stream)
    return slots, k, v


def host_slots(slot_mapping: Any, num_slots: int, block_size: int, what: str) -> np.ndarray:
    """A host slot_mapping as int64, checked: every slot ``< num_slots``, none twice."""
    slots = host_int_array(slot_mapping, what, "slot_mapping", ndim=1)
    too_big = np.flatnonzero(slots >= num_slots)
    if too_big.size:
        i = int(too_big[0])
        raise ValueError(
            f"{what}: slot_mapping[{i}] = {int(slots[i])} out of range for "
            f"{num_slots // block_size} blocks * {block_size} slots = {num_slots} slots"
        )
    real = slots[slots >= 0]
    values, counts = np.unique(real, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(
            f"{what}: slot {int(values[counts > 1][0])} appears "
            f"{int(counts[counts > 1][0])} times in slot_mapping (ambiguous scatter)"
        )
    return slots
