"""Gather: read a batch of sequences through their block tables into contiguous arrays.

Sequence ``s`` contributes its positions ``starts[s] .. seq_lens[s] - 1`` in order; the
sequences are concatenated, so output row ``t`` holds sequence ``s``'s position
``pos = starts[s] + (t - cu_out[s])`` where ``cu_out`` is the running sum of
``seq_lens - starts`` (``cu_out[0] = 0``)::

    block  = block_tables[s, pos // block_size]
    k_out[t] = pool[layer, 0, block, pos % block_size]
    v_out[t] = pool[layer, 1, block, pos % block_size]

A partial last block is read only up to ``seq_len``. One CUDA block per output token
finds its sequence by binary search over ``cu_out`` (``O(log batch)``, once per thread,
so no per-token index array crosses from the host), then its threads stride over the
token's run in copy units of up to 16 bytes (`paged_kv.gpu.kernels._units`); the pool
offsets are those of `paged_kv.gpu.kernels.slot_write`, read instead of written.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import types

from paged_kv.core.config import SUPPORTED_DTYPES
from paged_kv.gpu import device
from paged_kv.gpu.kernels._launch import DeviceBuffers, default_buffers, launch
from paged_kv.gpu.kernels._units import copy_run, flat_units, plan_units, threads_for, zero_run
from paged_kv.gpu.kernels._validate import (
    check_layer,
    check_pool,
    device_index_array,
    host_int_array,
    is_cuda_array,
)

from numba import cuda  # isort: skip  (kernel intrinsics; the simulator swaps this name)

#: The value that pads a block table past its last block; never read by the kernel.
PAD_BLOCK_ID = -1


@device.jitable
def row_sequence(cu_out, batch, t):
    """The sequence output row `t` belongs to: the largest s with ``cu_out[s] <= t``.

    Empty sequences (``cu_out[s] == cu_out[s + 1]``) are skipped because ``cu_out[s + 1]
    <= t`` for them. Binary search, ``O(log batch)``.
    """
    lo = 0
    hi = batch
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cu_out[mid] <= t:
            lo = mid
        else:
            hi = mid
    return lo


@device.jit
def gather_kernel(pool, k_out, v_out, block_tables, cu_out, starts, k_base, v_base,
                  tok_units, block_size, num_blocks, vector, errors):
    """CUDA block ``t`` copies output token ``t``'s K and V run; see the module."""
    t = cuda.blockIdx.x
    lo = row_sequence(cu_out, block_tables.shape[0], t)
    pos = starts[lo] + (t - cu_out[lo])
    logical = pos // block_size
    block = block_tables[lo, logical]
    first = cuda.threadIdx.x
    step = cuda.blockDim.x
    dst = t * tok_units
    if block < 0 or block >= num_blocks:  # only a device-resident table can get here
        if first == 0:
            cuda.atomic.add(errors, 0, 1)
        zero_run(k_out, dst, tok_units, first, step)
        zero_run(v_out, dst, tok_units, first, step)
        return
    src = (block * block_size + pos - logical * block_size) * tok_units
    copy_run(k_out, dst, pool, k_base + src, tok_units, vector, first, step)
    copy_run(v_out, dst, pool, v_base + src, tok_units, vector, first, step)


def signature(unit: str) -> Any:
    """The Numba signature `gather_kv` launches `gather_kernel` with, per unit dtype."""
    flat = types.Array(getattr(types, unit), 1, "C")
    return types.void(
        flat,  # pool
        flat,  # k_out
        flat,  # v_out
        types.Array(types.int32, 2, "C"),  # block_tables
        types.Array(types.int64, 1, "C"),  # cu_out
        types.Array(types.int64, 1, "C"),  # starts
        types.int64,  # k_base
        types.int64,  # v_base
        types.int64,  # tok_units
        types.int64,  # block_size
        types.int64,  # num_blocks
        types.boolean,  # vector
        types.Array(types.int32, 1, "C"),  # errors
    )


def pad_block_tables(block_tables: Any, what: str = "gather_kv") -> np.ndarray:
    """Host block tables as a padded 2-D int64 array ``[batch, max_blocks]``.

    A list of lists is padded with `PAD_BLOCK_ID`; a 2-D integer NumPy array is taken
    as it is. At least one column, so an all-empty batch still has a well-formed table.
    """
    if isinstance(block_tables, (list, tuple)) and all(
        isinstance(row, (list, tuple, np.ndarray)) for row in block_tables
    ):
        rows = [host_int_array(row, what, f"block_tables[{s}]", ndim=1)
                for s, row in enumerate(block_tables)]
        width = max([1] + [row.shape[0] for row in rows])
        table = np.full((len(rows), width), PAD_BLOCK_ID, dtype=np.int64)
        for s, row in enumerate(rows):
            table[s, : row.shape[0]] = row
        return table
    table = host_int_array(block_tables, what, "block_tables", ndim=2)
    if table.shape[1] == 0:
        table = np.full((table.shape[0], 1), PAD_BLOCK_ID, dtype=np.int64)
    return table


def gather_kv(
    pool: Any,
    layer: int,
    block_tables: Any,
    seq_lens: Any,
    starts: Any = None,
    *,
    stream: Any = None,
    buffers: DeviceBuffers | None = None,
) -> tuple[Any, Any]:
    """Gather ``k, v[total_tokens, num_kv_heads, head_dim]`` for a batch of sequences.

    `block_tables` is a padded 2-D integer array ``[batch, max_blocks]`` (padding -1,
    never read) or a list of per-sequence lists (padded here), or a device int32
    ``[batch, max_blocks]`` array; `seq_lens` and `starts` (default all 0) are 1-D
    integer arrays of length ``batch``. Sequence ``s`` contributes positions
    ``starts[s] .. seq_lens[s] - 1``; ``total_tokens = sum(seq_lens - starts)``.
    Returns two new device arrays of the pool's dtype (``KVStorage.gather`` returns
    NumPy copies), filled by work enqueued on `stream` (None: the default stream).
    `seq_lens` and `starts` size the output, so they are needed on the host: device
    arrays there are copied back.

    Raises `ValueError` before any launch when: the layer is out of range; the
    inputs are not integer arrays of matching batch; a seq_len is negative; a start is
    outside ``[0, seq_len]``; a table has fewer than ``ceil(seq_len / block_size)``
    entries; or, for a host table, a block id the gather reads (logical blocks
    ``start // block_size`` up to the one holding ``seq_len - 1``) is outside
    ``[0, num_blocks)``, padding included. Entries before the first read block and
    after the last are ignored. A device table is not read back: the kernel writes
    zeros for a token whose block id is out of range and counts it in
    ``buffers.errors``.
    """
    shape, layer, table, first, cu_out = check_gather(pool, layer, block_tables, seq_lens,
                                                      starts, "gather_kv", stream=stream)
    _, _, num_blocks, block_size, num_kv_heads, head_dim = shape
    total = int(cu_out[-1])
    api = device.cuda_api()
    k_out = api.device_array((total, num_kv_heads, head_dim), dtype=pool.dtype)
    v_out = api.device_array((total, num_kv_heads, head_dim), dtype=pool.dtype)
    if total == 0:
        return k_out, v_out
    buffers = default_buffers() if buffers is None else buffers
    if not is_cuda_array(table):
        table = buffers.upload("block_tables", table, stream)
    itemsize = np.dtype(pool.dtype).itemsize
    tok_bytes = num_kv_heads * head_dim * itemsize
    unit, vector, _ = plan_units(tok_bytes, itemsize, pool, k_out, v_out)
    tok_units = tok_bytes // unit.itemsize
    num_slots = num_blocks * block_size
    k_base = 2 * layer * num_slots * tok_units
    launch(
        gather_kernel,
        total,
        threads_for(tok_units, vector),
        stream,
        flat_units(pool, unit),
        flat_units(k_out, unit),
        flat_units(v_out, unit),
        table,
        buffers.upload("cu_out", cu_out, stream),
        buffers.upload("starts", first, stream),
        k_base,
        k_base + num_slots * tok_units,
        tok_units,
        block_size,
        num_blocks,
        vector,
        buffers.errors,
    )
    return k_out, v_out


def check_gather(
    pool: Any, layer: Any, block_tables: Any, seq_lens: Any, starts: Any, what: str,
    pool_dtypes: tuple[str, ...] = SUPPORTED_DTYPES, stream: Any = None,
) -> tuple[tuple[int, ...], int, Any, np.ndarray, np.ndarray]:
    """`gather_kv`'s checks (its docstring), shared with the dequantizing gather:
    ``(pool shape, layer, table, starts, cu_out)``; the table is int32 (host, with the
    entries the gather does not read set to `PAD_BLOCK_ID`) or the device table;
    ``cu_out`` is the running sum of ``seq_lens - starts`` from 0. Device `seq_lens`
    and `starts` are copied back on `stream`."""
    shape = check_pool(pool, what, dtypes=pool_dtypes)
    num_layers, _, num_blocks, block_size, _, _ = shape
    layer = check_layer(layer, num_layers, what)
    if is_cuda_array(block_tables):
        table = device_index_array(block_tables, what, "block_tables", np.int32, ndim=2)
    else:
        table = pad_block_tables(block_tables, what)
    batch, max_blocks = (int(n) for n in table.shape)
    lens = host_int_array(seq_lens, what, "seq_lens", ndim=1, stream=stream)
    if lens.shape[0] != batch:
        raise ValueError(
            f"{what}: seq_lens has {lens.shape[0]} entries for {batch} block tables"
        )
    if starts is None:
        first = np.zeros(batch, dtype=np.int64)
    else:
        first = host_int_array(starts, what, "starts", ndim=1, stream=stream)
        if first.shape[0] != batch:
            raise ValueError(
                f"{what}: starts has {first.shape[0]} entries for {batch} block tables"
            )
    for name, bad in (("seq_lens", lens < 0), ("starts", (first < 0) | (first > lens))):
        if np.any(bad):
            s = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{what}: sequence {s} has start {int(first[s])} and seq_len "
                f"{int(lens[s])} ({name}: need 0 <= start <= seq_len)"
            )
    needed = (lens + block_size - 1) // block_size
    short = np.flatnonzero(needed > max_blocks)
    if short.size:
        s = int(short[0])
        raise ValueError(
            f"{what}: block table {s} has {max_blocks} entries, seq_len {int(lens[s])} "
            f"needs {int(needed[s])} blocks of {block_size}"
        )
    if not is_cuda_array(table):
        table = read_blocks_only(table, first, lens, block_size, num_blocks, what)
    cu_out = np.zeros(batch + 1, dtype=np.int64)
    np.cumsum(lens - first, out=cu_out[1:])
    return shape, layer, table, first, cu_out


def read_blocks_only(
    table: np.ndarray, first: np.ndarray, lens: np.ndarray, block_size: int,
    num_blocks: int, what: str,
) -> np.ndarray:
    """Check every block id the gather reads; return the table as int32 with every
    entry it does not read set to `PAD_BLOCK_ID` (so none can wrap in int32)."""
    needed = (lens + block_size - 1) // block_size
    cols = np.arange(table.shape[1], dtype=np.int64)[None, :]
    read = (cols >= (first // block_size)[:, None]) & (cols < needed[:, None])
    read &= (first < lens)[:, None]  # an empty range reads no block at all
    bad = read & ((table < 0) | (table >= num_blocks))
    if np.any(bad):
        s, j = (int(x) for x in np.argwhere(bad)[0])
        found = "padding" if table[s, j] == PAD_BLOCK_ID else "out of range"
        raise ValueError(
            f"{what}: block_tables[{s}][{j}] = {int(table[s, j])} is {found} (valid ids: "
            f"[0, {num_blocks})) but positions {int(first[s])}..{int(lens[s]) - 1} read it"
        )
    return np.where(read, table, PAD_BLOCK_ID).astype(np.int32)
