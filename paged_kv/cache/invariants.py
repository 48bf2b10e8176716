"""Checking a cache's whole state: the invariant checker, snapshots, and the per-block
counts they share with `paged_kv.studies.block_map` (holders per block, tokens per block)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from paged_kv.cache.tiers import Tiers
from paged_kv.core.block_allocator import BlockAllocator
from paged_kv.core.errors import InvariantError
from paged_kv.core.sequence import GPU, HOST, SequenceRecord
from paged_kv.core.validate import cdiv


def held_counts(records: Iterable[SequenceRecord], location: str) -> Counter:
    """Block id -> number of block tables on `location` that hold it."""
    held: Counter = Counter()
    for record in records:
        if record.location == location:
            held.update(record.table.blocks)
    return held


def ref_count_problems(pool: BlockAllocator, held: Counter) -> list[str]:
    """Blocks whose ref count differs from the number of tables holding them."""
    return [
        f"{pool.name} block {block}: ref_count {count} but held by {held[block]} tables"
        for block, count in enumerate(pool.ref_counts)
        if count != held[block]
    ]


def tokens_per_block(records: Iterable[SequenceRecord], block_size: int) -> dict[int, int]:
    """GPU block id -> tokens stored in it (holders of one block agree; the most is taken)."""
    fill: dict[int, int] = {}
    for record in records:
        if record.location != GPU:
            continue
        table = record.table
        full = table.num_full_blocks
        for block in table.blocks[:full]:
            fill[block] = block_size
        if full < len(table.blocks):
            block = table.blocks[full]
            fill[block] = max(fill.get(block, 0), table.num_tokens - full * block_size)
    return fill


def _record_problems(record: SequenceRecord, block_size: int) -> list[str]:
    problems = []
    table = record.table
    name = f"sequence {record.seq_id}"
    if len(table.blocks) != cdiv(table.num_tokens, block_size):
        problems.append(f"{name}: {len(table.blocks)} blocks for {table.num_tokens} tokens")
    if len(set(table.blocks)) != len(table.blocks):
        problems.append(f"{name} holds a block twice")
    if not 0 <= record.num_cached_tokens <= record.num_computed_tokens <= table.num_tokens:
        problems.append(
            f"{name}: cached {record.num_cached_tokens}, computed "
            f"{record.num_computed_tokens}, tokens {table.num_tokens} out of order"
        )
    return problems


def _published_problems(records: list[SequenceRecord], gpu: BlockAllocator,
                        block_size: int) -> list[str]:
    """A cached block is full in every table holding it.

    (Whether it was computed when published depends on history: a sharer that committed
    it may be gone. The state machines in tests/test_cache_stateful.py check that.)
    """
    keys = gpu.block_keys
    problems = []
    for record in records:
        if record.location != GPU:
            continue
        full = record.table.num_full_blocks
        for i, block in enumerate(record.table.blocks[full:], full):
            if keys[block] is not None:
                problems.append(f"sequence {record.seq_id}: cached block {block} "
                                f"(logical {i}) is not full")
    return problems


def check(
    records: list[SequenceRecord],
    gpu: BlockAllocator,
    host: BlockAllocator | None,
    block_size: int,
    tiers: Tiers | None = None,
) -> None:
    """Verify the invariants of a cache made of these sequences, pools and tiers; raise
    `InvariantError` listing every violation:

    * every block is free or referenced; ``ref_count`` == number of block tables
      holding it, on each pool;
    * free + used == total, no block twice in the free structures, evictable blocks
      (and only they among free blocks) carry a key; the key map and the blocks' keys
      agree; no host block carries one;
    * a cached block is full in every table holding it;
    * each table has exactly ``ceil(num_tokens / block_size)`` blocks, and
      ``num_cached_tokens <= num_computed_tokens <= num_tokens``;
    * live duplicates (a computed block whose key another block holds) are in use and
      unkeyed;
    * each tier below the GPU: its slots' own invariants, no slot pinned between
      operations, and every key it holds has its bytes written whole (storage).
    """
    pools = {GPU: gpu} if host is None else {GPU: gpu, HOST: host}
    problems = []
    for pool in pools.values():
        problems += pool.check()
    for record in records:
        if record.location not in pools:
            problems.append(f"sequence {record.seq_id} on unknown pool {record.location}")
            continue
        problems += _record_problems(record, block_size)
    problems += _published_problems(records, gpu, block_size)
    for name, pool in pools.items():
        problems += ref_count_problems(pool, held_counts(records, name))
    if host is not None and any(k is not None for k in host.block_keys):
        problems.append("a host block carries a prefix-cache key")
    if tiers is not None:
        problems += tiers.check()
    if problems:
        raise InvariantError("; ".join(problems))


def record_state(r: SequenceRecord) -> tuple:
    """One sequence's state as a comparable tuple (`PagedKVCache.snapshot`)."""
    return (
        r.seq_id,
        r.location,
        r.table.num_tokens,
        tuple(r.table.blocks),
        None if r.token_ids is None else tuple(r.token_ids),
        tuple(r.keys),
        r.salt,
        r.num_cached_tokens,
        r.num_computed_tokens,
        None if r.written is None else r.written.state(),
    )
