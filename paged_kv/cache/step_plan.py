"""Step plans: a step's slot mapping, block tables and lengths, built once for every layer.

A forward step of a model writes the new tokens' K/V and runs attention in every layer
with the same indices. `PagedKVCache.plan_step` builds them once: it checks the
sequences and positions, performs any copy-on-write the writes need (so every layer
writes into the same, private blocks), computes the slot mapping
(``slot = block_id * block_size + offset``), the padded block tables and the stored
lengths, and uploads them to the device once (`paged_kv.gpu.step_indices`: the tables
stay resident, and only rows that changed since the previous step travel). Every
layer then reuses the plan::

    cache.append_many(seq_ids)                      # or append / allocate
    plan = cache.plan_step(seq_ids)                 # one new token per sequence
    for layer in range(num_layers):
        cache.write_kv_batch(layer, plan, k, v)     # no index upload
        out = attention.decode(cache, layer, plan, q)

A plan is immutable (its arrays are read-only) and valid only while nothing has
changed the cache's tables since it was made: an append, a free, a fork, a swap, a
copy-on-write, or a newer plan (which reuses the device buffers) makes it stale. The
cache counts those changes in a generation number; a plan carries the number it was
made at, and one that is stale, or made by another cache, is refused with a
`ValueError` before anything is written (`PagedKVCache.check_plan`). So no write can
land in a slot that has changed hands. Allocating a new sequence, committing and
evicting cached blocks leave plans valid: they change no live sequence's table, and a
block published after the plan was made is caught by the per-layer check below.

What a plan does not freeze: the checks of each layer's write still run per layer, as
for `PagedKVCache.write_kv_batch` without a plan. A block published to the prefix cache
(or become a live duplicate of a published block) since the plan was made is refused
(`ImmutableBlockError`), each write records its positions in the sequence's written
extents, and once every layer holds a position its full blocks are published.

`StepPlanner` makes the plans and owns the generation number; the manager calls
`StepPlanner.invalidate` whenever it changes a table. Without a device upload (the
one-use plans `write_kv_batch(layer, seq_ids, ...)` makes) a plan holds only the host
arrays and leaves the other plans valid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from paged_kv.cache.backend import KVBackend
from paged_kv.cache.growth import CopyOnWrite
from paged_kv.core.block_allocator import BlockAllocator
from paged_kv.core.errors import ImmutableBlockError, MetadataOnlyError, OutOfBlocksError
from paged_kv.core.sequence import GPU, SequenceRecord, SequenceRegistry
from paged_kv.core.validate import require_int, require_range, require_seq_ids

#: Block-table padding: an entry past a sequence's last block.
PAD_BLOCK_ID = -1


def _read_only(arr: np.ndarray) -> np.ndarray:
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class StepPlan:
    """One step's indices for a batch of GPU sequences, reused by every layer.

    Made by `PagedKVCache.plan_step`; read it, never build one. Token ``j`` of
    sequence ``i`` (``j < num_tokens[i]``) is position ``starts[i] + j``; the rows of a
    write's ``k``, ``v`` are these tokens, sequence after sequence.
    """

    #: the batch, in order
    seq_ids: tuple[int, ...]
    #: new tokens per sequence (written by each layer)
    num_tokens: tuple[int, ...]
    #: position of each sequence's first new token
    starts: tuple[int, ...]
    #: int64 ``[sum(num_tokens)]``: each new token's slot ``block_id * block_size +
    #: offset`` (read-only)
    slot_mapping: np.ndarray
    #: int32 ``[len(seq_ids), max_blocks]``: each sequence's blocks, -1 padded (read-only);
    #: None in the one-use plan a ``write_kv_batch(layer, seq_ids, ...)`` call makes for
    #: itself, which is never attended through (its cost would grow with the tables)
    block_tables: np.ndarray | None
    #: int64 ``[len(seq_ids)]``: tokens each sequence stores (read-only)
    seq_lens: np.ndarray
    #: the cache's generation the plan was made at (`PagedKVCache.check_plan`)
    generation: int
    #: the indices on the device (`paged_kv.gpu.step_indices.StepIndices`), or None
    device: Any = field(repr=False)
    #: ``(seq_id, logical block, block id)`` of every block the writes touch
    writes: tuple[tuple[int, int, int], ...] = field(repr=False)
    #: the planner that made the plan (refuses another cache's plans)
    planner: StepPlanner = field(repr=False)

    @property
    def batch_size(self) -> int:
        """Sequences in the plan."""
        return len(self.seq_ids)

    @property
    def total_tokens(self) -> int:
        """New tokens in the plan: the rows of each layer's ``k`` and ``v``."""
        return int(self.slot_mapping.shape[0])

    @property
    def is_decode(self) -> bool:
        """True when each sequence has one new token, its last position (a decode
        step: what `paged_kv.cache.attention.decode` takes)."""
        return all(c == 1 and s + 1 == n for c, s, n in
                   zip(self.num_tokens, self.starts, self.seq_lens.tolist()))


class StepPlanner:
    """Makes `StepPlan` objects for one cache and says which are current (module doc)."""

    def __init__(self, backend: KVBackend, seqs: SequenceRegistry, gpu: BlockAllocator,
                 cow: CopyOnWrite, block_size: int) -> None:
        self._backend = backend
        self._seqs = seqs
        self._gpu = gpu
        self._cow = cow
        self._block_size = block_size
        self._generation = 0

    @property
    def generation(self) -> int:
        """Changes to the cache's tables (and device plans made) so far."""
        return self._generation

    def invalidate(self) -> None:
        """The cache's tables changed: every plan made so far is stale."""
        self._generation += 1

    def check(self, plan: object) -> StepPlan:
        """`plan` if it is a current plan of this cache, else `ValueError`."""
        if not isinstance(plan, StepPlan):
            raise ValueError(f"plan must be a StepPlan (PagedKVCache.plan_step), got "
                             f"{type(plan).__name__}")
        if plan.planner is not self:
            raise ValueError("this plan was made by another cache")
        if plan.generation != self._generation:
            raise ValueError(
                f"stale plan: made at generation {plan.generation}, the cache is at "
                f"{self._generation} (its tables changed, or a newer plan was made); "
                f"call plan_step again"
            )
        return plan

    def _needs_copy(self, record: SequenceRecord, start: int, count: int) -> bool:
        """Check that positions ``start ..`` may be written; True if the write goes into
        a shared partial block (which must be copied first)."""
        if count == 0:
            return False
        table = record.table
        bs = self._block_size
        refs = self._gpu.ref_counts
        keys = self._gpu.block_keys
        dups = self._gpu.duplicate_map
        for i in range(start // bs, (start + count - 1) // bs + 1):
            block = table.blocks[i]
            if keys[block] is not None or block in dups:
                raise published_error(record.seq_id, block, i, dups)
            if refs[block] > 1:
                if i < table.num_full_blocks:
                    raise ImmutableBlockError(
                        f"sequence {record.seq_id}: block {block} (logical {i}) is full and "
                        f"shared by {refs[block]} sequences; shared full blocks are immutable"
                    )
                return True
        return False

    def plan(
        self,
        seq_ids: Sequence[int],
        num_tokens: int | Sequence[int],
        starts: Sequence[int] | None,
        *,
        rows: int | None = None,
        upload: bool = True,
    ) -> StepPlan:
        """A plan writing ``num_tokens[i]`` tokens of ``seq_ids[i]`` from ``starts[i]``
        (default: its last ``num_tokens[i]`` positions); an int `num_tokens` is the same
        for each. `rows`, if given, must equal the total (the rows of ``k``). With
        `upload`, the indices go to the device and every older plan turns stale.

        All or nothing: `MetadataOnlyError` without storage (when uploading),
        `UnknownSequenceError`, `SequenceStateError` (a swapped-out sequence),
        `ValueError` (`ImmutableBlockError` for a write into an immutable block), or
        `OutOfBlocksError` (no block to copy a shared partial block into) change
        nothing.
        """
        if upload and self._backend.storage is None:
            raise MetadataOnlyError(
                "this cache is metadata-only (no model or storage=False): it holds no KV to "
                "plan a step for"
            )
        seq_ids = require_seq_ids(seq_ids)
        if isinstance(num_tokens, (Sequence, np.ndarray)) and not isinstance(num_tokens, str):
            counts = [require_int("num_tokens[i]", c) for c in num_tokens]
        else:
            counts = [require_int("num_tokens", num_tokens)] * len(seq_ids)
        if starts is not None and not isinstance(starts, (Sequence, np.ndarray)):
            raise ValueError(f"starts must be a sequence of positions, got {starts!r}")
        if len(counts) != len(seq_ids) or (starts is not None and len(starts) != len(seq_ids)):
            raise ValueError("seq_ids, num_tokens and starts must have the same length")
        if len(set(seq_ids)) != len(seq_ids):
            raise ValueError("a sequence appears twice in one batch write")
        records = [self._seqs.get(s) for s in seq_ids]
        if rows is not None and sum(counts) != rows:
            raise ValueError(f"k has {rows} rows but num_tokens sums to {sum(counts)}")
        if starts is None:
            starts = [r.table.num_tokens - c for r, c in zip(records, counts)]
        else:
            starts = [require_int("starts[i]", s) for s in starts]
        for r, s, c in zip(records, starts, counts):
            require_range(f"sequence {r.seq_id}", s, s + c, r.table.num_tokens, "append first")
        copies = self._cow.plan(
            [r.table for r, s, c in zip(records, starts, counts) if self._needs_copy(r, s, c)]
        )
        if len(copies) > self._gpu.num_free:
            raise OutOfBlocksError(GPU, len(copies), self._gpu.num_free, "copy shared blocks")
        if copies:
            self._cow.apply(copies)
            self.invalidate()
        return self._build(records, counts, starts, upload)

    def _build(self, records: list[SequenceRecord], counts: list[int], starts: list[int],
               upload: bool) -> StepPlan:
        """The plan's arrays (after any copy-on-write), uploaded if asked."""
        bs = self._block_size
        slots = np.concatenate(
            [r.table.slot_mapping(s, s + c) for r, s, c in zip(records, starts, counts)]
            or [np.empty(0, np.int64)]
        )
        lens = np.array([r.table.num_tokens for r in records], dtype=np.int64)
        writes = tuple(
            (r.seq_id, i, r.table.blocks[i])
            for r, s, c in zip(records, starts, counts) if c
            for i in range(s // bs, (s + c - 1) // bs + 1)
        )
        device = tables = None
        if upload:
            width = max([1] + [len(r.table.blocks) for r in records])
            tables = np.full((len(records), width), PAD_BLOCK_ID, dtype=np.int32)
            for i, r in enumerate(records):
                tables[i, : len(r.table.blocks)] = r.table.blocks
            row_seq = np.repeat(np.arange(len(records), dtype=np.int64), counts)
            row_len = np.concatenate(
                [np.arange(s + 1, s + c + 1, dtype=np.int64) for s, c in zip(starts, counts)]
                or [np.empty(0, np.int64)]
            )
            device = self._backend.upload_step(slots, tables, lens, row_seq, row_len)
            self.invalidate()  # the device buffers now hold this plan's indices
        return StepPlan(
            seq_ids=tuple(r.seq_id for r in records),
            num_tokens=tuple(counts),
            starts=tuple(starts),
            slot_mapping=_read_only(slots),
            block_tables=None if tables is None else _read_only(tables),
            seq_lens=_read_only(lens),
            generation=self._generation,
            device=device,
            writes=writes,
            planner=self,
        )

    def check_writable(self, plan: StepPlan) -> None:
        """The per-layer immutability check: `ImmutableBlockError` if a block the plan
        writes has been published to the prefix cache since (or become a live duplicate
        of a published block)."""
        keys = self._gpu.block_keys
        dups = self._gpu.duplicate_map
        for seq_id, logical, block in plan.writes:
            if keys[block] is not None or block in dups:
                raise published_error(seq_id, block, logical, dups)


def published_error(seq_id: int, block: int, logical: int,
                    duplicates: dict | None = None) -> ImmutableBlockError:
    """The refusal of a write into a block published to the prefix cache, or into a live
    duplicate of one (`paged_kv.core.block_allocator`: it takes the key over when the
    published copy is evicted, so it is as immutable)."""
    if duplicates and block in duplicates:
        return ImmutableBlockError(
            f"sequence {seq_id}: block {block} (logical {logical}) is a live duplicate of a "
            f"block published in the prefix cache, so it is immutable; its KV was computed "
            f"already"
        )
    return ImmutableBlockError(
        f"sequence {seq_id}: block {block} (logical {logical}) is published in the prefix "
        f"cache, so it is immutable; its KV was computed already"
    )
