"""Copy units: how many bytes each thread moves, and the loop that moves them.

Every copy kernel moves contiguous *runs* of bytes: one token's ``[num_kv_heads,
head_dim]`` (slot write, gather) or one block of one layer's K or V, ``[block_size,
num_kv_heads, head_dim]`` (block copy, swap). A kernel sees its arrays as flat 1-D views
of an unsigned integer *unit* type and copies whole units, so the KV dtype does not
matter to it (float16, float32 and any other 2- or 4-byte type move alike).

The unit rule (`plan_units`): each thread moves ``W`` bytes per step, the largest of
16, 8, 4 and 2 (never less than the KV item size) that divides the run's byte length
*and* the base address of every array involved::

    W = 16  uint64 units, two per thread through one ``ld/st.global.v2.u64`` (vLLM
            moves 8 halves per thread the same way); needs num_kv_heads * head_dim
            * itemsize % 16 == 0 and 16-byte aligned arrays
    W = 8   uint64 units, one per thread
    W = 4   uint32 units (float32 always qualifies)
    W = 2   uint16 units: the scalar fallback for float16 with an odd
            num_kv_heads * head_dim (or an odd address)

Fresh device and mapped allocations are 256-byte aligned, and run starts are multiples
of the run length, so only the run length and views with odd offsets push ``W`` down.

`copy_run` is the loop every kernel shares: the threads of one CUDA block stride over
one run (``threadIdx.x``, step ``blockDim.x``). Run bases are 64-bit and computed once
per thread; the per-unit path is one add and one load/store, with no division.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from paged_kv.gpu import device

#: Unit width in bytes -> (unit dtype, two units per thread through a vector load?).
UNIT_PLANS: dict[int, tuple[np.dtype, bool]] = {
    16: (np.dtype(np.uint64), True),
    8: (np.dtype(np.uint64), False),
    4: (np.dtype(np.uint32), False),
    2: (np.dtype(np.uint16), False),
}

#: The unit dtypes a kernel is compiled for (see `paged_kv.gpu.kernels.compile_check`).
UNIT_DTYPES = ("uint16", "uint32", "uint64")


def base_address(arr: Any) -> int:
    """The address of `arr`'s first element: device pointer, or the simulator's host one."""
    interface = getattr(arr, "__cuda_array_interface__", None)
    if interface is not None:
        return int(interface["data"][0])
    return int(arr.__array_interface__["data"][0])  # simulator arrays wrap NumPy


def plan_units(run_bytes: int, itemsize: int, *arrays: Any) -> tuple[np.dtype, bool, int]:
    """``(unit dtype, vector, W)`` for runs of `run_bytes` over `arrays` (module rule)."""
    addresses = [base_address(a) for a in arrays]
    for width, (unit, vector) in UNIT_PLANS.items():
        if width < itemsize:
            break
        if run_bytes % width == 0 and all(addr % width == 0 for addr in addresses):
            return unit, vector, width
    raise ValueError(  # cannot happen for C-contiguous float16/float32 arrays
        f"no copy unit fits runs of {run_bytes} bytes at addresses {addresses}"
    )


def flat_units(arr: Any, unit: np.dtype) -> Any:
    """`arr` (C-contiguous, device-addressable) as a flat 1-D array of `unit`, no copy."""
    nbytes = int(arr.size) * np.dtype(arr.dtype).itemsize
    if device.is_simulator():
        return arr.reshape(-1).view(unit)
    interface = {
        "shape": (nbytes // unit.itemsize,),
        "typestr": unit.str,
        "data": (base_address(arr), False),
        "strides": None,
        "version": 3,
    }
    return device.cuda_api().from_cuda_array_interface(interface, owner=arr, sync=False)


def threads_for(run_units: int, vector: bool, cap: int = 256) -> int:
    """Threads per CUDA block for runs of `run_units` units (one per step, at most `cap`)."""
    steps = run_units // 2 if vector else run_units
    return max(1, min(cap, steps))


# -- the per-thread copy loop and its vector loads -----------------------------------
# Helpers through `paged_kv.gpu.device.jitable`: plain functions in the simulator, compiled
# into each calling kernel on a GPU. They take the thread's first index and step from
# the kernel, so they need no ``cuda`` module of their own.

if device.is_simulator():

    def load2(array, i):
        """Units ``i`` and ``i + 1`` (the simulator's twin of the vector load)."""
        return array[i], array[i + 1]

    def store2(array, i, pair):
        """Store two units at ``i`` (the simulator's twin of the vector store)."""
        array[i] = pair[0]
        array[i + 1] = pair[1]

else:
    from paged_kv.gpu.kernels._vector_ptx import load2, store2


@device.jitable
def copy_run(dst, dst_start, src, src_start, num_units, vector, first, step):
    """Copy ``src[src_start:+num_units]`` to ``dst[dst_start:]``; this thread takes units
    ``first, first + step, ...`` (``threadIdx.x`` and ``blockDim.x`` of the caller).

    With `vector` (``num_units`` and both starts even, the addresses 16-byte aligned),
    each thread moves two units per step through one vector load and one vector store.
    """
    if vector:
        u = 2 * first
        while u < num_units:
            store2(dst, dst_start + u, load2(src, src_start + u))
            u += 2 * step
    else:
        u = first
        while u < num_units:
            dst[dst_start + u] = src[src_start + u]
            u += step


@device.jitable
def zero_run(dst, dst_start, num_units, first, step):
    """Zero ``dst[dst_start:+num_units]``; this thread takes ``first, first + step, ...``."""
    u = first
    while u < num_units:
        dst[dst_start + u] = 0
        u += step
