"""Copy-on-write: which sequences must copy their shared partial last block, and the copy.

After a fork, sequences share every block. A full shared block never changes (writing
into it is refused), so only the *partial* last block is ever copied: when a holder is
about to write into it (append a token, or write KV there), it gets a private copy first.
Of ``n`` holders writing, ``n - 1`` copy and the last one left keeps the original, as
appending one sequence at a time would. `CopyOnWrite.plan` is that rule, and the only
place it is written: appending (`paged_kv.growth`) and the KV write path both call it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from paged_kv.block_allocator import BlockAllocator
from paged_kv.block_table import BlockTable

if TYPE_CHECKING:
    from paged_kv.kv_io import KVBackend


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
