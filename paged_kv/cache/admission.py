"""Admission: check a prompt, hash and match it once, and say what admitting it takes.

`Admission.plan` is the one place a prompt is looked at: its length and ids are checked,
its full blocks are keyed, the keys matched against the prefix cache (capped so the
last prompt token is computed), and the free GPU blocks counted as they would be after
the hits are revived. With tiers below the GPU, the match goes on past the GPU's prefix
through them (`paged_kv.cache.tiers.Tiers.match`). `can_allocate`, `try_allocate`,
`allocate` and `lookup_prefix` all start from a plan; `admit` turns one that fits into
a new sequence's record.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import NamedTuple

from paged_kv.cache.tiers import Source, Tiers
from paged_kv.core.block_allocator import BlockAllocator
from paged_kv.core.block_table import BlockTable
from paged_kv.core.prefix_cache import PrefixCache
from paged_kv.core.sequence import GPU, SequenceRecord
from paged_kv.core.validate import cdiv, require_prompt


class PromptPlan(NamedTuple):
    """What admitting one prompt takes, computed once."""

    #: prompt length in tokens
    num_tokens: int
    #: checked token ids, or None
    token_ids: list[int] | None
    #: prefix-cache keys of its full blocks (empty when nothing identifies them)
    keys: list[Hashable]
    #: whether the lookup counts in the prefix-cache statistics
    counted: bool
    #: cached blocks serving its first tokens
    hits: list[int]
    #: blocks to allocate besides the hits
    new_blocks: int
    #: blocks missing for the allocation (<= 0: it fits)
    short: int
    #: the namespace of its keys
    salt: Hashable | None
    #: after `hits`, the blocks served from the GPU or a tier below (`Tiers.match`)
    more: Sequence[Source] = ()


class Admission:
    """Plans prompts against one GPU allocator and prefix cache (and the tiers below it,
    if any), and admits them."""

    def __init__(
        self,
        gpu: BlockAllocator,
        prefix: PrefixCache,
        reserve_blocks: int,
        new_extents: Callable[[int], object],
        tiers: Tiers | None = None,
    ) -> None:
        self._gpu = gpu
        self._prefix = prefix
        self._reserve = reserve_blocks
        self._new_extents = new_extents
        self._block_size = prefix.block_size
        self._tiers = tiers

    def plan(
        self,
        num_tokens: int | None,
        token_ids: Sequence[int] | None,
        block_keys: Sequence[Hashable] | None,
        salt: Hashable | None,
        watermark: bool,
    ) -> PromptPlan:
        """Check and match a prompt (`ValueError` for a bad one); changes nothing.

        With `watermark`, the allocation must leave the configured reserve free.
        """
        bs = self._block_size
        n, token_ids = require_prompt(num_tokens, token_ids, block_keys, bs)
        prefix, gpu = self._prefix, self._gpu
        keys = prefix.prompt_keys(n, token_ids, block_keys, salt)
        hits = gpu.match(keys, (n - 1) // bs) if keys and n else []
        available = gpu.num_free
        if hits:
            refs = gpu.ref_counts
            available -= [refs[b] for b in hits].count(0)  # revived: no longer free
        if watermark:
            available -= self._reserve
        new = cdiv(n, bs) - len(hits)
        counted = prefix.enabled and (token_ids is not None or block_keys is not None)
        tiers = self._tiers
        if tiers is None or not keys or len(hits) >= (n - 1) // bs:
            return PromptPlan(n, token_ids, keys, counted, hits, new, new - available, salt)
        more = tiers.match(keys, len(hits), (n - 1) // bs)
        revived = [b for tier, b in more if tier is None]
        if revived:
            refs = gpu.ref_counts
            available -= [refs[b] for b in revived].count(0)
            new -= len(revived)
        return PromptPlan(n, token_ids, keys, counted, hits, new, new - available, salt, more)

    def admit(self, plan: PromptPlan, seq_id: int) -> SequenceRecord:
        """Take the plan's blocks (it must fit) and return the new sequence's record.

        The hits are its first computed tokens; the lookup is counted before the hits
        are revived, so eviction policies see the hit first.
        """
        if self._tiers is not None:
            return self._admit_tiered(plan, seq_id)
        if plan.counted:
            self._prefix.record_lookup(plan.num_tokens, plan.hits)
        gpu = self._gpu
        hits = plan.hits
        gpu.incref_many(hits)
        blocks = hits + gpu.allocate_many(plan.new_blocks) if plan.new_blocks else hits
        cached = len(hits) * self._block_size
        return SequenceRecord(
            seq_id, BlockTable(self._block_size, blocks, plan.num_tokens), GPU,
            plan.token_ids, plan.keys, plan.salt, cached, cached, self._new_extents(cached),
        )

    def _admit_tiered(self, plan: PromptPlan, seq_id: int) -> SequenceRecord:
        """`admit` with tiers below the GPU: the policies hear of every hit (GPU blocks in
        prompt order, then each tier's), GPU hits are revived, the rest allocated (under
        write-back the GPU's evictions are copied down here), the tiers' hits loaded
        (`Tiers.serve`); the tokens served are what the loads delivered."""
        gpu, prefix, tiers = self._gpu, self._prefix, self._tiers
        hits, more = plan.hits, plan.more
        revive = hits + [b for tier, b in more if tier is None] if more else hits
        prefix.notify_hits(revive)
        tiers.pin(more)
        gpu.incref_many(revive)
        new = gpu.allocate_many(plan.new_blocks) if plan.new_blocks else []
        blocks, served, per_tier = tiers.serve(hits, more, new, plan.keys)
        if plan.counted:
            prefix.count_lookup(plan.num_tokens, served - sum(per_tier), *_host_disk(
                tiers, per_tier))
        cached = served * self._block_size
        return SequenceRecord(
            seq_id, BlockTable(self._block_size, blocks, plan.num_tokens), GPU,
            plan.token_ids, plan.keys, plan.salt, cached, cached, self._new_extents(cached),
        )


def _host_disk(tiers: Tiers, per_tier: list[int]) -> tuple[int, int]:
    """Blocks served by the host and the disk tier, from counts in `Tiers.lower` order."""
    counts = dict(zip((t.name for t in tiers.lower), per_tier))
    return counts.get("host", 0), counts.get("disk", 0)
