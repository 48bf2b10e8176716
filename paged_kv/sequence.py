"""A sequence's record inside the cache manager, and the read-only view users get."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from paged_kv.block_table import BlockTable

GPU = "gpu"
HOST = "host"


@dataclass(slots=True)
class SequenceRecord:
    """Mutable per-sequence state the manager keeps (not part of the public API)."""

    #: the handle users name the sequence by
    seq_id: int
    #: logical -> physical blocks on the pool named by `location`
    table: BlockTable
    #: "gpu" or "host" (swapped out)
    location: str
    #: every token id, when the sequence was allocated with token ids; else None
    token_ids: list[int] | None
    #: prefix-cache keys of its full blocks, as far as they are known
    keys: list[Hashable]
    #: namespace of its prefix-cache keys
    salt: Hashable | None
    #: prompt tokens that were served from the prefix cache at allocation
    num_cached_tokens: int = 0


@dataclass(frozen=True)
class SequenceInfo:
    """A read-only picture of one live sequence (what `PagedKVCache.get` returns)."""

    #: the sequence's handle
    seq_id: int
    #: tokens stored
    num_tokens: int
    #: physical block ids, logical order, on the pool named by `location`
    block_table: tuple[int, ...]
    #: "gpu" or "host"
    location: str
    #: prompt tokens served from the prefix cache when it was allocated
    num_cached_tokens: int
    #: its token ids, if it tracks them
    token_ids: tuple[int, ...] | None

    @property
    def num_blocks(self) -> int:
        """Blocks held."""
        return len(self.block_table)

    @classmethod
    def of(cls, record: SequenceRecord) -> SequenceInfo:
        """The view of `record` at this moment."""
        return cls(
            seq_id=record.seq_id,
            num_tokens=record.table.num_tokens,
            block_table=tuple(record.table.blocks),
            location=record.location,
            num_cached_tokens=record.num_cached_tokens,
            token_ids=None if record.token_ids is None else tuple(record.token_ids),
        )
