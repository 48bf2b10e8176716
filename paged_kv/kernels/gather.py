"""Gather: read a batch of sequences through their block tables into contiguous arrays.

Sequence ``s`` contributes its positions ``starts[s] .. seq_lens[s] - 1`` in order; the
sequences are concatenated, so output row ``t`` holds sequence ``s``'s position
``pos = starts[s] + (t - cu_out[s])`` where ``cu_out`` is the running sum of
``seq_lens - starts`` (``cu_out[0] = 0``)::

    block  = block_tables[s, pos // block_size]
    k_out[t] = pool[layer, 0, block, pos % block_size]
    v_out[t] = pool[layer, 1, block, pos % block_size]

A partial last block is read only up to ``seq_len``. One thread per output
``(token, head, dim)`` element finds its sequence by binary search over ``cu_out``
(``O(log batch)``), so no per-token index array crosses from the host.
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
    is_cuda_array,
    require_cuda_array,
    to_device,
)

#: The value that pads a block table past its last block; never read by the kernel.
PAD_BLOCK_ID = -1


@cuda.jit
def gather_kernel(pool, layer, block_tables, cu_out, starts, k_out, v_out):
    """Thread ``i`` fills element ``(t, head, d)`` of k_out and v_out; see the module."""
    i = cuda.grid(1)
    num_kv_heads = k_out.shape[1]
    head_dim = k_out.shape[2]
    token_elems = num_kv_heads * head_dim
    if i >= k_out.shape[0] * token_elems:
        return
    t = i // token_elems
    # Largest s with cu_out[s] <= t; empty sequences (cu_out[s] == cu_out[s + 1]) are
    # skipped because cu_out[s + 1] <= t for them.
    lo = 0
    hi = block_tables.shape[0]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cu_out[mid] <= t:
            lo = mid
        else:
            hi = mid
    pos = starts[lo] + (t - cu_out[lo])
    within = i - t * token_elems
    head = within // head_dim
    d = within - head * head_dim
    block_size = pool.shape[3]
    logical = pos // block_size
    block = block_tables[lo, logical]
    offset = pos - logical * block_size
    k_out[t, head, d] = pool[layer, 0, block, offset, head, d]
    v_out[t, head, d] = pool[layer, 1, block, offset, head, d]


def signature(dtype: str) -> Any:
    """The Numba signature `gather_kv` launches `gather_kernel` with, for `dtype`."""
    elem = getattr(types, dtype)
    return types.void(
        types.Array(elem, 6, "C"),  # pool
        types.int64,  # layer
        types.Array(types.int32, 2, "C"),  # block_tables
        types.Array(types.int64, 1, "C"),  # cu_out
        types.Array(types.int64, 1, "C"),  # starts
        types.Array(elem, 3, "C"),  # k_out
        types.Array(elem, 3, "C"),  # v_out
    )


def pad_block_tables(block_tables: Any, what: str = "gather_kv") -> np.ndarray:
    """Block tables as a padded 2-D int64 host array ``[batch, max_blocks]``.

    A list of lists is padded with `PAD_BLOCK_ID`; a 2-D integer array (NumPy or
    device) is taken as it is. At least one column, so an all-empty batch still has a
    well-formed table.
    """
    if not is_cuda_array(block_tables) and isinstance(block_tables, (list, tuple)) and all(
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
) -> tuple[Any, Any]:
    """Gather ``k, v[total_tokens, num_kv_heads, head_dim]`` for a batch of sequences.

    `block_tables` is a padded 2-D integer array ``[batch, max_blocks]`` (padding -1,
    never read) or a list of per-sequence lists (padded here); `seq_lens` and
    `starts` (default all 0) are 1-D integer arrays of length ``batch``. Sequence
    ``s`` contributes positions ``starts[s] .. seq_lens[s] - 1``; ``total_tokens =
    sum(seq_lens - starts)``. Returns two new device arrays of the pool's dtype
    (``KVStorage.gather`` returns NumPy copies).

    Raises `ValueError` before any launch when: the layer is out of range; the
    inputs are not integer arrays of matching batch; a seq_len is negative; a start is
    outside ``[0, seq_len]``; a table has fewer than ``ceil(seq_len / block_size)``
    entries; or a block id the gather reads (logical blocks ``start // block_size``
    up to the one holding ``seq_len - 1``) is outside ``[0, num_blocks)``, padding
    included. Entries before the first read block and after the last are ignored.
    """
    what = "gather_kv"
    num_layers, _, num_blocks, block_size, num_kv_heads, head_dim = check_pool(pool, what)
    require_cuda_array(pool, what, "pool")
    layer = check_layer(layer, num_layers, what)
    table = pad_block_tables(block_tables, what)
    batch, max_blocks = table.shape
    lens = host_int_array(seq_lens, what, "seq_lens", ndim=1)
    if lens.shape[0] != batch:
        raise ValueError(
            f"{what}: seq_lens has {lens.shape[0]} entries for {batch} block tables"
        )
    if starts is None:
        first = np.zeros(batch, dtype=np.int64)
    else:
        first = host_int_array(starts, what, "starts", ndim=1)
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
    cols = np.arange(max_blocks, dtype=np.int64)[None, :]
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
    cu_out = np.zeros(batch + 1, dtype=np.int64)
    np.cumsum(lens - first, out=cu_out[1:])
    total = int(cu_out[-1])
    k_out = cuda.device_array((total, num_kv_heads, head_dim), dtype=pool.dtype)
    v_out = cuda.device_array((total, num_kv_heads, head_dim), dtype=pool.dtype)
    if total == 0:
        return k_out, v_out
    # Ids outside the read range (padding, ignored entries) must not wrap in int32.
    safe = np.where(read, table, PAD_BLOCK_ID).astype(np.int32)
    launch(
        gather_kernel,
        total * num_kv_heads * head_dim,
        pool,
        layer,
        to_device(safe),
        to_device(cu_out),
        to_device(first),
        k_out,
        v_out,
    )
    return k_out, v_out
