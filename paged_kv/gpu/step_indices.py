"""A step's index arrays on the device: checked on the host once, uploaded once, read by
every layer.

One forward step of a model writes the new tokens' K/V into the pool and runs
attention, in every layer, with the same indices: the slot mapping, the block tables,
and the query tiles the paged-attention kernel is launched over. `upload_step` checks
them as the kernels' host wrappers would (slots inside the pool and none twice, every
block id a row reads inside the pool, tables wide enough), then moves them in at most
two copies, whatever the number of layers:

* the slot mapping and the query tiles, packed into one int64 buffer
  (`paged_kv.gpu.kernels._launch.DeviceBuffers`, input ``"step_indices"``);
* the block tables, into a `paged_kv.gpu.device_block_table.DeviceBlockTable` that
  stays on the device, so only the rows that changed since the last step travel.

The result, `StepIndices`, holds device views of both. They stay valid until the next
`upload_step` on the same buffers and table, which reuses them: the cache manager
enforces this by refusing a plan older than its newest one. The copies are enqueued
on `stream`; `paged_kv.cache.step_plan` uses the default stream, which orders them
after earlier work on every blocking stream (numba's ``cuda.stream()``), so a kernel
of the previous step still reading the old indices finishes first. A kernel that reads
them on a non-blocking stream (PyTorch's) waits for the default stream first
(`paged_kv.gpu.storage.KVStorage.after_default_stream`, which planned attention calls);
a previous step's kernel on such a stream must have finished before the next plan is
made (the caller synchronizes, or keeps to one stream).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from paged_kv.gpu.device_block_table import DeviceBlockTable
from paged_kv.gpu.kernels._attention_kernel import TILE_COLUMNS
from paged_kv.gpu.kernels._launch import DeviceBuffers
from paged_kv.gpu.kernels._validate import STORED_DTYPES, check_pool, host_int_array
from paged_kv.gpu.kernels.gather import read_blocks_only
from paged_kv.gpu.kernels.paged_attention import QueryTiles, query_tiles
from paged_kv.gpu.kernels.slot_write import host_slots

#: Upload name of the packed slot mapping and query tiles.
UPLOAD_NAME = "step_indices"


@dataclass(frozen=True, eq=False)
class StepIndices:
    """A step's indices on the device (module doc); valid until the next upload."""

    #: device int64 ``[num_tokens]``: slot of each new token, for the slot write
    slot_mapping: Any
    #: device int32 ``[batch, max_blocks]``: the resident tables' first rows, -1 padded
    block_tables: Any
    #: the query tiles of the step's rows, on the device, for `planned_attention`
    tiles: QueryTiles
    #: GPU blocks the slot write touches (host int64, for the fences)
    write_blocks: np.ndarray
    #: GPU blocks attention reads (host int64, for the fences)
    read_blocks: np.ndarray


def upload_step(
    pool: Any,
    buffers: DeviceBuffers,
    tables: DeviceBlockTable,
    q_heads: int,
    slot_mapping: Any,
    block_tables: Any,
    seq_lens: Any,
    row_seq: Any,
    row_len: Any,
    *,
    stream: Any = None,
) -> StepIndices:
    """Check a step's indices against `pool` and upload them (module doc).

    `slot_mapping` (1-D, ``block_id * block_size + offset``, -1 padding) is where the
    step's tokens are written; `block_tables` (2-D, -1 padded) and `seq_lens` (1-D)
    are the batch's tables and stored lengths; query row ``r`` (one per token that
    attends) belongs to batch row ``row_seq[r]`` and attends to its keys ``0 ..
    row_len[r] - 1``, with `q_heads` heads. Raises `ValueError`, uploading nothing,
    when a slot is outside the pool or given twice, a table is too short for its
    length or reads an id outside the pool, or a query row reads past its sequence's
    length.
    """
    what = "upload_step"
    shape = check_pool(pool, what, dtypes=STORED_DTYPES)
    _, _, num_blocks, block_size, _, _ = shape
    slots = host_slots(slot_mapping, num_blocks * block_size, block_size, what)
    table = host_int_array(block_tables, what, "block_tables", ndim=2)
    lens = host_int_array(seq_lens, what, "seq_lens", ndim=1)
    row_seq = host_int_array(row_seq, what, "row_seq", ndim=1)
    row_len = host_int_array(row_len, what, "row_len", ndim=1)
    if lens.shape[0] != table.shape[0] or row_len.shape != row_seq.shape:
        raise ValueError(f"{what}: {table.shape[0]} tables, {lens.shape[0]} seq_lens, "
                         f"{row_seq.shape[0]} row_seq and {row_len.shape[0]} row_len")
    needed = -(-lens // block_size)
    if lens.size and (lens.min() < 0 or needed.max() > table.shape[1]):
        s = int(np.argmax((lens < 0) | (needed > table.shape[1])))
        raise ValueError(f"{what}: seq_lens[{s}] = {int(lens[s])} does not fit a table of "
                         f"{table.shape[1]} blocks of {block_size}")
    if row_seq.size and (row_seq.min() < 0 or row_seq.max() >= lens.shape[0]
                         or np.any(row_len < 1) or np.any(row_len > lens[row_seq])):
        raise ValueError(f"{what}: every query row must read 1 .. seq_len keys of a "
                         f"sequence of the batch")
    table = read_blocks_only(table, np.zeros_like(lens), lens, block_size, num_blocks, what)
    tiles = query_tiles(pool, q_heads, row_seq, row_len)
    packed = np.concatenate([slots, tiles.table.reshape(-1)])
    device_packed = buffers.upload(UPLOAD_NAME, packed, stream)
    tables.update(table, stream=stream)
    n = int(slots.shape[0])
    device_tiles = device_packed[n:].reshape(tiles.num_tiles, TILE_COLUMNS)
    return StepIndices(
        slot_mapping=device_packed[:n],
        block_tables=tables.view(int(table.shape[0])),
        tiles=tiles.on_device(device_tiles),
        write_blocks=np.unique(slots[slots >= 0] // block_size),
        read_blocks=np.unique(table[table >= 0]).astype(np.int64),
    )
