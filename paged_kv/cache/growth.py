"""Growth: sequences taking new tokens, and copy-on-write of a shared partial last block.

A new block is taken only when a block boundary is crossed; a sequence that tracks token
ids extends its chain of prefix-cache keys as blocks fill up. New tokens are not
computed: their blocks are published only once written or committed.

After a fork, sequences share every block. A full shared block never changes (writing
into it is refused), so only the *partial* last block is ever copied: when a holder is
about to write into it (append a token, or write KV there), it gets a private copy first.
Of ``n`` holders writing, ``n - 1`` copy and the last one left keeps the original, as
appending one sequence at a time would. `CopyOnWrite.plan` is that rule, and the only
place it is written: appending (`Growth`) and the KV write path's step plans
(`paged_kv.cache.step_plan`) both call it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from paged_kv.cache.backend import KVBackend
from paged_kv.core.block_allocator import BlockAllocator
from paged_kv.core.block_table import BlockTable
from paged_kv.core.errors import OutOfBlocksError
from paged_kv.core.prefix_cache import PrefixCache
from paged_kv.core.sequence import GPU, SequenceRecord


class CopyOnWrite:
    """Plans and performs copy-on-write of shared partial last blocks on the GPU pool."""

    def __init__(self, gpu: BlockAllocator, backend: KVBackend) -> None:
        self._gpu = gpu
        self._backend = backend
        #: blocks copied since construction
        self.copies = 0

    def plan(self, tables: Iterable[BlockTable]) -> list[BlockTable]:
        """Of `tables` about to write into their last block, in order, those that must
        copy it first: a holder copies while another holder is left."""
        refs = self._gpu.ref_counts
        remaining: dict[int, int] = {}
        out = []
        for table in tables:
            last = table.blocks[-1]
            holders = remaining.get(last, refs[last])
            if holders > 1:
                out.append(table)
                remaining[last] = holders - 1
        return out

    def apply(self, tables: Sequence[BlockTable]) -> None:
        """Give each table (from `plan`) a private copy of its last block, bytes included.

        The caller has checked that enough blocks are free. New blocks are all taken
        before any old one is released, so a source can never be handed out as a
        destination within one copy launch.
        """
        gpu = self._gpu
        pairs = []
        for table, new in zip(tables, gpu.allocate_many(len(tables))):
            pairs.append((table.blocks[-1], new))
            table.blocks[-1] = new
        self._backend.copy_blocks(pairs)
        for old, _ in pairs:
            gpu.free(old)
        self.copies += len(pairs)


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
