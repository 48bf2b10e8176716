"""Admission: check a prompt, hash and match it once, and say what admitting it takes.

`Admission.plan` is the one place a prompt is looked at: its length and ids are checked,
its full blocks are keyed, the keys matched against the prefix cache (capped so the
last prompt token is computed), and the free GPU blocks counted as they would be after
the hits are revived. `can_allocate`, `try_allocate`, `allocate` and `lookup_prefix`
all start from a plan; `admit` turns one that fits into a new sequence's record.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import NamedTuple

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


class Admission:
    """Plans prompts against one GPU allocator and prefix cache, and admits them."""

    def __init__(
        self,
        gpu: BlockAllocator,
        prefix: PrefixCache,
        reserve_blocks: int,
        new_extents: Callable[[int], object],
    ) -> None:
        self._gpu = gpu
        self._prefix = prefix
        self._reserve = reserve_blocks
        self._new_extents = new_extents
        self._block_size = prefix.block_size

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
        return PromptPlan(n, token_ids, keys, counted, hits, new, new - available, salt)

    def admit(self, plan: PromptPlan, seq_id: int) -> SequenceRecord:
        """Take the plan's blocks (it must fit) and return the new sequence's record.

        The hits are its first computed tokens; the lookup is counted before the hits
        are revived, so eviction policies see the hit first.
        """
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
