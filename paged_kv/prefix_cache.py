"""Prefix cache: which physical block holds which full block of tokens (metadata only).

Follows the vLLM v1 model. Only *full* blocks are cached. Block ``i``'s key chains its
parent's key with its own token ids::

    key[0] = hash((root, tokens[0 : bs]))          root = None, or the salt's namespace
    key[i] = hash((key[i-1], tokens[i*bs : (i+1)*bs]))

so equal keys mean equal prefixes up to a hash collision, and a salt (namespace) on the
first block keeps tenants apart. When token ids are known a hit is *confirmed*: the
cached block's parent key and token ids must equal the query's, so a collision is a miss,
never someone else's KV. A caller may pass precomputed keys instead (trace replay, e.g.
Mooncake ``hash_ids``); those are trusted as given.

The cache owns only the key -> block map and the hit statistics; the `BlockAllocator`
owns reference counts, the free queue and the eviction policy, and tells the cache
when it evicts a block.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from paged_kv.block_allocator import BlockAllocator
from paged_kv.eviction import EvictionPolicy


@dataclass(slots=True)
class PrefixCacheStats:
    """Hit statistics, counted in tokens and requests."""

    #: prompt tokens looked up
    query_tokens: int = 0
    #: prompt tokens served from cached blocks
    hit_tokens: int = 0
    #: lookups made (one per allocated prompt)
    requests: int = 0
    #: lookups with at least one cached block
    hit_requests: int = 0
    #: full blocks published to the cache
    stored_blocks: int = 0
    #: cached blocks evicted to make room
    evictions: int = 0

    @property
    def hit_rate(self) -> float:
        """hit_tokens / query_tokens (0 when nothing was queried)."""
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0


class PrefixCache:
    """Map from block keys to the physical blocks that hold them, on one allocator."""

    def __init__(
        self,
        allocator: BlockAllocator,
        block_size: int,
        *,
        hash_fn: Callable[[object], Hashable] = hash,
    ) -> None:
        self.allocator = allocator
        self.block_size = block_size
        #: function turning (parent_key, token tuple) into a key; injectable for tests
        self.hash_fn = hash_fn
        self._blocks: dict[Hashable, int] = {}
        # block -> (parent_key, tokens) for blocks published with their token ids
        self._identity: dict[int, tuple[Hashable, tuple[int, ...]]] = {}
        self.stats = PrefixCacheStats()
        allocator.set_evict_hook(self._on_evict)

    # -- keys ------------------------------------------------------------------------
    def root_key(self, salt: Hashable | None) -> Hashable | None:
        """The parent key of a first block: None, or the salt's namespace."""
        return None if salt is None else self.hash_fn(("paged_kv.salt", salt))

    def token_keys(
        self,
        token_ids: Sequence[int],
        *,
        salt: Hashable | None = None,
        parent: Hashable | None = None,
        first_block: int = 0,
    ) -> list[Hashable]:
        """Keys of the full blocks of `token_ids` from logical block `first_block` on.

        `parent` is the key of block ``first_block - 1`` (ignored when first_block is 0,
        where the salt's root is used).
        """
        bs = self.block_size
        key = self.root_key(salt) if first_block == 0 else parent
        keys = []
        h = self.hash_fn
        for i in range(first_block, len(token_ids) // bs):
            key = h((key, tuple(token_ids[i * bs : (i + 1) * bs])))
            keys.append(key)
        return keys

    @staticmethod
    def external_keys(keys: Sequence[Hashable], salt: Hashable | None = None) -> list[Hashable]:
        """Precomputed keys (e.g. trace hash ids), namespaced by `salt` if given."""
        return list(keys) if salt is None else [(salt, k) for k in keys]

    # -- lookup ----------------------------------------------------------------------
    def match(
        self,
        keys: Sequence[Hashable],
        *,
        token_ids: Sequence[int] | None = None,
        salt: Hashable | None = None,
        max_blocks: int | None = None,
    ) -> list[int]:
        """Blocks holding the longest cached prefix of `keys`; changes nothing.

        With `token_ids`, each candidate is confirmed by its parent key and tokens.
        """
        limit = len(keys) if max_blocks is None else min(max_blocks, len(keys))
        blocks = self._blocks
        out: list[int] = []
        if token_ids is None:
            for i in range(limit):
                block = blocks.get(keys[i])
                if block is None:
                    break
                out.append(block)
            return out
        bs = self.block_size
        parent = self.root_key(salt)
        identity = self._identity
        for i in range(limit):
            block = blocks.get(keys[i])
            if block is None or identity.get(block) != (
                parent,
                tuple(token_ids[i * bs : (i + 1) * bs]),
            ):
                break
            out.append(block)
            parent = keys[i]
        return out

    def record_lookup(self, num_tokens: int, hit_blocks: Sequence[int]) -> None:
        """Count one prompt's lookup in the statistics and tell the policy of its hits."""
        stats = self.stats
        stats.requests += 1
        stats.query_tokens += num_tokens
        if hit_blocks:
            stats.hit_requests += 1
            stats.hit_tokens += len(hit_blocks) * self.block_size
            policy = self.allocator.policy
            if type(policy).on_hit is not EvictionPolicy.on_hit:
                on_hit = policy.on_hit
                for block in hit_blocks:
                    on_hit(block)

    # -- publishing ------------------------------------------------------------------
    def store(
        self,
        block: int,
        key: Hashable,
        *,
        parent: Hashable | None = None,
        tokens: Sequence[int] | None = None,
    ) -> bool:
        """Publish in-use `block` as holding the full block `key`.

        Returns False, changing nothing, when `key` is already cached (another block
        holds the same content: the first one stays the cached copy) or `block` already
        holds a key.
        """
        if key in self._blocks or self.allocator.block_keys[block] is not None:
            return False
        self._blocks[key] = block
        if tokens is not None:
            self._identity[block] = (parent, tuple(tokens))
        self.allocator.set_key(block, key)
        self.stats.stored_blocks += 1
        return True

    def store_many(self, blocks: Sequence[int], keys: Sequence[Hashable]) -> int:
        """Publish fresh (uncached, in-use) blocks under precomputed keys; how many were new.

        The trace-replay hot path: no token ids to confirm. A key already cached keeps
        its first block, as in `store`.
        """
        cached = self._blocks
        block_keys = self.allocator.block_keys
        setdefault = cached.setdefault
        on_cached = self._policy_on_cached
        stored = 0
        if on_cached is None:  # the common case, one loop with nothing else in it
            skipped = 0
            for block, key in zip(blocks, keys):
                if setdefault(key, block) == block:
                    block_keys[block] = key
                else:
                    skipped += 1
            stored = min(len(blocks), len(keys)) - skipped
        else:
            for block, key in zip(blocks, keys):
                if setdefault(key, block) == block:
                    block_keys[block] = key
                    on_cached(block, key)
                    stored += 1
        self.stats.stored_blocks += stored
        return stored

    @property
    def _policy_on_cached(self):
        """The policy's on_cached hook, or None when it keeps the base class's no-op."""
        policy = self.allocator.policy
        if type(policy).on_cached is EvictionPolicy.on_cached:
            return None
        return policy.on_cached

    def _on_evict(self, blocks: list[int]) -> None:
        """The allocator evicted `blocks`: forget their keys (both directions)."""
        cached = self._blocks
        keys = self.allocator.block_keys
        for block in blocks:
            del cached[keys[block]]
            keys[block] = None
        if self._identity:
            pop = self._identity.pop
            for block in blocks:
                pop(block, None)
        self.stats.evictions += len(blocks)

    # -- the reference design's prefix operations ------------------------------------
    def __contains__(self, key: object) -> bool:
        return key in self._blocks

    def __len__(self) -> int:
        """Cached blocks, in use or evictable."""
        return len(self._blocks)

    def block_of(self, key: Hashable) -> int | None:
        """The block holding `key`, or None."""
        return self._blocks.get(key)

    def evict(self, n: int) -> list[int]:
        """Evict up to `n` evictable cached blocks in policy order; returns their ids."""
        return self.allocator.evict(n)

    def reset(self) -> tuple[bool, str]:
        """Drop the whole cache, if no cached block is in use.

        Returns ``(True, "")`` on success, or ``(False, reason)`` and changes nothing
        while some cached block is held by a sequence.
        """
        refs = self.allocator.ref_counts
        in_use = [b for b in self._blocks.values() if refs[b] > 0]
        if in_use:
            return False, (
                f"{len(in_use)} cached blocks are in use by live sequences "
                f"(e.g. block {in_use[0]}); free them first"
            )
        self.allocator.drop_all_evictable()
        self._blocks.clear()
        self._identity.clear()
        return True, ""

    def reset_stats(self) -> None:
        """Zero the hit statistics."""
        self.stats = PrefixCacheStats()

    def check(self) -> list[str]:
        """Problems with the key map's consistency with the allocator (empty if none)."""
        problems = []
        keys = self.allocator.block_keys
        for key, block in self._blocks.items():
            if keys[block] != key:
                problems.append(f"prefix cache maps {key!r} to block {block}, which holds "
                                f"{keys[block]!r}")
        cached = sum(k is not None for k in keys)
        if cached != len(self._blocks):
            problems.append(f"allocator has {cached} keyed blocks, cache maps {len(self._blocks)}")
        if not set(self._identity) <= set(self._blocks.values()):
            problems.append("token identity kept for a block that is not cached")
        return problems

    def state(self) -> tuple:
        """A comparable picture of the key map (tests snapshot it)."""
        return (
            tuple(sorted(self._blocks.items(), key=lambda kv: kv[1])),
            tuple(sorted(self._identity.items())),
        )
