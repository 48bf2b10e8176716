"""KV I/O: the manager's writes and reads of KV bytes, over a storage backend.

`KVIO` is the write and read path on top of a `paged_kv.cache.backend.KVBackend`:
position checks, the immutability rule (a block published to the prefix cache, or a
full block shared by several sequences, is never written), copy-on-write of a shared
partial block before it is written, and the bookkeeping of which positions hold written
KV in each layer (`paged_kv.core.sequence.WrittenExtents`): once every layer of a prefix
has been written, those tokens are computed and their full blocks are published
(`PrefixCache.commit`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from paged_kv.cache.backend import KVBackend
from paged_kv.cache.growth import CopyOnWrite
from paged_kv.core.block_allocator import BlockAllocator
from paged_kv.core.errors import ImmutableBlockError, OutOfBlocksError
from paged_kv.core.prefix_cache import PrefixCache
from paged_kv.core.sequence import GPU, SequenceRecord, SequenceRegistry
from paged_kv.core.validate import (
    cdiv,
    require_array,
    require_int,
    require_range,
    require_seq_ids,
)


class KVIO:
    """The write and read paths: checks, immutability, copy-on-write, auto-commit."""

    def __init__(
        self,
        backend: KVBackend,
        seqs: SequenceRegistry,
        gpu: BlockAllocator,
        cow: CopyOnWrite,
        prefix: PrefixCache,
    ) -> None:
        self._backend = backend
        self._seqs = seqs
        self._gpu = gpu
        self._cow = cow
        self._prefix = prefix
        self._block_size = prefix.block_size

    def _needs_copy(self, record: SequenceRecord, start: int, count: int) -> bool:
        """Check that positions ``start ..`` may be written; True if the write goes into
        a shared partial block (which must be copied first)."""
        if count == 0:
            return False
        table = record.table
        bs = self._block_size
        refs = self._gpu.ref_counts
        keys = self._gpu.block_keys
        for i in range(start // bs, (start + count - 1) // bs + 1):
            block = table.blocks[i]
            if keys[block] is not None:
                raise ImmutableBlockError(
                    f"sequence {record.seq_id}: block {block} (logical {i}) is published in "
                    f"the prefix cache, so it is immutable; its KV was computed already"
                )
            if refs[block] > 1:
                if i < table.num_full_blocks:
                    raise ImmutableBlockError(
                        f"sequence {record.seq_id}: block {block} (logical {i}) is full and "
                        f"shared by {refs[block]} sequences; shared full blocks are immutable"
                    )
                return True
        return False

    def write(
        self,
        layer: object,
        seq_ids: Sequence[int],
        k: object,
        v: object,
        num_tokens: Sequence[int],
        starts: Sequence[int] | None,
    ) -> None:
        """Write rows of `k`, `v` (``num_tokens[i]`` for sequence i, concatenated) of
        `layer` at positions ``starts[i] ..`` (default: each one's last ``num_tokens[i]``).

        All or nothing: `MetadataOnlyError` without storage, `ValueError`
        (`ImmutableBlockError` for an immutable block) or `OutOfBlocksError` (no block to
        copy into) change nothing.
        """
        backend = self._backend
        layer = backend.check_layer(layer)  # metadata-only: MetadataOnlyError first
        k, v = backend.check_kv(require_array("k", k), require_array("v", v))
        seq_ids = require_seq_ids(seq_ids)
        counts = [require_int("num_tokens[i]", c) for c in num_tokens]
        if len(counts) != len(seq_ids) or (starts is not None and len(starts) != len(seq_ids)):
            raise ValueError("seq_ids, num_tokens and starts must have the same length")
        if len(set(seq_ids)) != len(seq_ids):
            raise ValueError("a sequence appears twice in one batch write")
        records = [self._seqs.get(s) for s in seq_ids]
        if sum(counts) != len(k):
            raise ValueError(f"k has {len(k)} rows but num_tokens sums to {sum(counts)}")
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
        slots = np.concatenate(
            [r.table.slot_mapping(s, s + c) for r, s, c in zip(records, starts, counts)]
            or [np.empty(0, np.int64)]
        )
        backend.write(layer, k, v, slots)
        commit = self._prefix.commit
        for r, s, c in zip(records, starts, counts):
            written = r.written
            written.add(layer, s, s + c)
            complete = min(written.frontier)
            if complete > r.num_computed_tokens:
                commit(r, complete)

    def read(
        self,
        layer: object,
        seq_ids: Sequence[int],
        starts: Sequence[int] | None,
        ends: Sequence[int] | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """K and V of positions ``starts[i] .. ends[i]-1`` of each sequence (defaults: all
        tokens) in one gather launch, and the ``cu_seqlens`` row offsets."""
        layer = self._backend.check_layer(layer)
        records = [self._seqs.get(s) for s in require_seq_ids(seq_ids)]
        n = len(records)
        starts = [0] * n if starts is None else [require_int("starts[i]", s) for s in starts]
        ends = ([r.table.num_tokens for r in records] if ends is None
                else [require_int("ends[i]", e) for e in ends])
        if len(starts) != n or len(ends) != n:
            raise ValueError("seq_ids, starts and ends must have the same length")
        for r, s, e in zip(records, starts, ends):
            require_range(f"sequence {r.seq_id}", s, e, r.table.num_tokens)
        bs = self._block_size
        tables = [r.table.blocks[: cdiv(e, bs)] for r, e in zip(records, ends)]
        k, v = self._backend.gather(layer, tables, ends, starts)
        cu = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([e - s for s, e in zip(starts, ends)], out=cu[1:])
        return k, v, cu
