"""Swapping: moving whole sequences' blocks between the GPU pool and the host pool.

The block tables change pool and the bytes move through the storage's swap kernel in
one launch per direction. Sequences that share blocks should move together: a block
they share moves once and stays shared on the other side (its ref count is the number
of moving holders). A block also held by a sequence that stays behind is copied, not
moved. Freed GPU blocks that hold cached prefix blocks stay evictable-cached: their
bytes are still there.
"""

from __future__ import annotations

from collections import Counter

from paged_kv.cache.backend import KVBackend
from paged_kv.core.block_allocator import BlockAllocator
from paged_kv.core.errors import NoHostPoolError, OutOfBlocksError
from paged_kv.core.sequence import GPU, HOST, SequenceRecord


class Swapper:
    """Moves sequences between the GPU and host allocators and counts what moved."""

    def __init__(
        self, gpu: BlockAllocator, host: BlockAllocator | None, backend: KVBackend
    ) -> None:
        self._gpu = gpu
        self._host = host
        self._backend = backend
        #: sequences swapped out / in since construction
        self.swap_outs = 0
        self.swap_ins = 0
        #: blocks moved GPU -> host / host -> GPU since construction
        self.blocks_out = 0
        self.blocks_in = 0

    def _require_host(self, what: str) -> BlockAllocator:
        if self._host is None:
            raise NoHostPoolError(what)
        return self._host

    @staticmethod
    def blocks_needed(records: list[SequenceRecord]) -> int:
        """Distinct blocks the sequences hold (what a swap of them takes on the other side)."""
        return len({b for r in records for b in r.table.blocks})

    def can_swap_out(self, records: list[SequenceRecord]) -> bool:
        """Whether the host pool has room (`NoHostPoolError` without a host pool)."""
        return self.blocks_needed(records) <= self._require_host("swap out").num_free

    def can_swap_in(self, records: list[SequenceRecord]) -> bool:
        """Whether the GPU pool has room for these swapped-out sequences."""
        self._require_host("swap in")
        return self.blocks_needed(records) <= self._gpu.num_free

    def swap_out(self, records: list[SequenceRecord]) -> None:
        """GPU -> host; `OutOfBlocksError` (changing nothing) when the host lacks room."""
        host = self._require_host("swap out")
        self.blocks_out += self._move(records, self._gpu, host, HOST, self._backend.swap_out)
        self.swap_outs += len(records)

    def swap_in(self, records: list[SequenceRecord]) -> None:
        """Host -> GPU; `OutOfBlocksError` (changing nothing) when the GPU lacks room."""
        host = self._require_host("swap in")
        self.blocks_in += self._move(records, host, self._gpu, GPU, self._backend.swap_in)
        self.swap_ins += len(records)

    @staticmethod
    def _move(records, src: BlockAllocator, dst: BlockAllocator, dst_name: str, copy) -> int:
        holders = Counter(b for r in records for b in r.table.blocks)
        if len(holders) > dst.num_free:
            raise OutOfBlocksError(
                dst_name, len(holders), dst.num_free, f"swap {len(records)} sequences"
            )
        mapping = dict(zip(holders, dst.allocate_many(len(holders))))
        extra = [mapping[b] for b, count in holders.items() for _ in range(count - 1)]
        dst.incref_many(extra)
        pairs = list(mapping.items())
        if pairs:
            copy(pairs)
        for record in records:
            old = record.table.blocks
            record.table.blocks = [mapping[b] for b in old]
            record.location = dst_name
            src.free_many(reversed(old))
        return len(pairs)
