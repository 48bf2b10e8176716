"""Growth: appending tokens to sequences, one at a time or a decode batch.

A new block is taken only when a block boundary is crossed; a shared partial last block
is copied first (`paged_kv.cow`); a sequence that tracks token ids extends its chain of
prefix-cache keys as blocks fill up. New tokens are not computed: their blocks are
published only once written or committed.
"""

from __future__ import annotations

from collections.abc import Sequence

from paged_kv.block_allocator import BlockAllocator
from paged_kv.block_table import BlockTable
from paged_kv.cow import CopyOnWrite
from paged_kv.errors import OutOfBlocksError
from paged_kv.prefix_cache import PrefixCache
from paged_kv.sequence import GPU, SequenceRecord


class Growth:
    """Appends tokens to sequences on one GPU allocator, copies included."""

    def __init__(self, gpu: BlockAllocator, cow: CopyOnWrite, prefix: PrefixCache) -> None:
        self._gpu = gpu
        self._cow = cow
        self._prefix = prefix

    def cost(self, tables: Sequence[BlockTable], num_tokens: int) -> int:
        """Free GPU blocks appending `num_tokens` to each table takes, copies included:
        the new blocks plus one per table that must copy its shared partial last block
        (every holder appended but the last one left)."""
        if not num_tokens:
            return 0
        cost = sum(t.blocks_needed(num_tokens) for t in tables)
        return cost + len(self._cow.plan([t for t in tables if t.last_block_partial]))

    def append_many(self, records: Sequence[SequenceRecord], k: int) -> None:
        """Append `k` tokens to each of `records` (distinct, counts only), all or none:
        `OutOfBlocksError`, changing nothing, when `cost` exceeds the free blocks."""
        for record in records:
            if record.token_ids is not None:
                raise ValueError(f"sequence {record.seq_id} tracks token ids; use append")
        cost = self.cost([r.table for r in records], k)
        if cost > self._gpu.num_free:
            raise OutOfBlocksError(GPU, cost, self._gpu.num_free, "append to a batch")
        append = self.append
        for record in records:
            append(record, k, None)

    def append(self, record: SequenceRecord, k: int, token_ids: list[int] | None) -> None:
        """Append `k` tokens (`token_ids`, if the sequence tracks them) to `record`.

        Raises `OutOfBlocksError`, changing nothing, when the GPU pool lacks room.
        """
        table = record.table
        gpu = self._gpu
        copies = ()
        if k and table.last_block_partial and gpu.ref_counts[table.blocks[-1]] > 1:
            copies = self._cow.plan((table,))
        new = table.blocks_needed(k)
        if new + len(copies) > gpu.num_free:
            raise OutOfBlocksError(GPU, new + len(copies), gpu.num_free, f"append {k} tokens")
        if copies:
            self._cow.apply(copies)
        old_full = table.num_full_blocks
        if new == 1:
            table.blocks.append(gpu.allocate())
        elif new:
            table.blocks.extend(gpu.allocate_many(new))
        table.num_tokens += k
        if token_ids is not None:
            record.token_ids.extend(token_ids)
            self._prefix.extend_keys(record, old_full)
