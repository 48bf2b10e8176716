"""Prefix cache: prompt keys, longest-prefix matching and publishing (metadata only).

Follows the vLLM v1 model. Only *full* blocks are cached, and only once their KV is
*computed* (see `commit`). Block ``i``'s key chains its parent's hash with its own token
ids, and carries both, so that a match compares token ids and not only the hash::

    h[-1]  = root                    None, or the salt's namespace hash
    h[i]   = hash_fn((h[i-1], tokens[i*bs : (i+1)*bs]))
    key[i] = (h[i], h[i-1], tokens[i*bs : (i+1)*bs])

Equal keys mean equal block contents after an equal parent hash, so a collision of a
block's own hash (an injected ``hash_fn`` that collides) is a miss when its tokens
differ; a salt on the first block keeps tenants apart. Two different parents whose
hashes collide are not told apart (vLLM's keys have the same limit): the chain is as
strong as ``hash_fn``. A caller may pass precomputed keys instead (trace
replay, e.g. Mooncake ``hash_ids``); those are trusted as given.

The key <-> block map itself lives in the `BlockAllocator` (one owner, as in vLLM's
block pool): this class computes keys, matches prompts against the allocator's map,
publishes a sequence's computed full blocks into it, and counts lookups. A disabled
prefix cache (``enabled=False``) makes no keys, so it matches and publishes nothing,
while `commit` still records computed tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from paged_kv.core.block_allocator import BlockAllocator
from paged_kv.core.errors import PrefixCacheInUseError
from paged_kv.core.eviction import EvictionPolicy
from paged_kv.core.sequence import GPU, SequenceRecord
from paged_kv.core.stats import PrefixCacheStats
from paged_kv.core.validate import require_token_ids

__all__ = ["PrefixCache", "PrefixCacheStats"]


class PrefixCache:
    """Keys, matching and publishing over one allocator's key map, plus hit statistics."""

    def __init__(
        self,
        allocator: BlockAllocator,
        block_size: int,
        *,
        hash_fn: Callable[[object], Hashable] = hash,
        enabled: bool = True,
    ) -> None:
        #: the GPU pool's allocator, which owns the key <-> block map
        self.allocator = allocator
        #: token slots per block
        self.block_size = block_size
        #: function turning (parent hash, token tuple) into a hash; injectable for tests
        self.hash_fn = hash_fn
        #: False: no keys are made, nothing is matched or published
        self.enabled = enabled
        policy = allocator.policy
        # the policy's on_hit hook, or None when it keeps the base class's no-op
        self._on_hit = None if type(policy).on_hit is EvictionPolicy.on_hit else policy.on_hit
        self._requests = self._query_tokens = self._hit_requests = self._hit_tokens = 0
        self._host_hit_tokens = self._disk_hit_tokens = 0
        self._stored_base = allocator.num_cached_total
        self._evicted_base = allocator.num_evicted_total

    # -- keys ------------------------------------------------------------------------
    def root_key(self, salt: Hashable | None) -> Hashable | None:
        """The parent hash of a first block: None, or the salt's namespace."""
        return None if salt is None else self.hash_fn(("paged_kv.salt", salt))

    def token_keys(
        self,
        token_ids: Sequence[int],
        *,
        salt: Hashable | None = None,
        parent: tuple | None = None,
        first_block: int = 0,
    ) -> list[tuple]:
        """Keys of the full blocks of `token_ids` from logical block `first_block` on.

        `parent` is the key of block ``first_block - 1`` (ignored when first_block is 0,
        where the salt's root is used). Token ids are checked (`ValueError` for a
        non-integer).
        """
        token_ids = require_token_ids(token_ids)
        root = self.root_key(salt) if first_block == 0 else parent[0]
        return self._chain(token_ids, root, first_block)

    def _chain(self, token_ids: list[int], h: Hashable | None, first_block: int) -> list[tuple]:
        """Keys of blocks `first_block`.. of checked `token_ids`, after parent hash `h`."""
        bs = self.block_size
        keys = []
        hash_fn = self.hash_fn
        for i in range(first_block, len(token_ids) // bs):
            tokens = tuple(token_ids[i * bs : (i + 1) * bs])
            parent_hash, h = h, hash_fn((h, tokens))
            keys.append((h, parent_hash, tokens))
        return keys

    @staticmethod
    def external_keys(keys: Sequence[Hashable], salt: Hashable | None = None) -> list[Hashable]:
        """Precomputed keys (e.g. trace hash ids), namespaced by `salt` if given."""
        return list(keys) if salt is None else [(salt, k) for k in keys]

    def prompt_keys(
        self,
        num_tokens: int,
        token_ids: list[int] | None,
        block_keys: Sequence[Hashable] | None,
        salt: Hashable | None,
    ) -> list[Hashable]:
        """Keys of a prompt's full blocks (empty when disabled or nothing identifies it).

        `token_ids` must have been checked (`paged_kv.core.validate.require_prompt`).
        """
        if not self.enabled:
            return []
        if token_ids is not None:
            return self._chain(token_ids, self.root_key(salt), 0)
        if block_keys is not None:
            return self.external_keys(block_keys[: num_tokens // self.block_size], salt)
        return []

    def extend_keys(self, record: SequenceRecord, old_full: int) -> None:
        """Append the keys of `record`'s blocks that became full since `old_full` were,
        when its chain of keys is known (token ids, every earlier block keyed)."""
        if not self.enabled or record.token_ids is None or len(record.keys) != old_full:
            return  # counts only, or a chain broken by a trace's own keys: no caching
        h = record.keys[-1][0] if record.keys else self.root_key(record.salt)
        record.keys.extend(self._chain(record.token_ids, h, old_full))

    # -- lookup ----------------------------------------------------------------------
    def match(self, keys: Sequence[Hashable], max_blocks: int | None = None) -> list[int]:
        """Blocks holding the longest cached prefix of `keys` (at most `max_blocks`);
        changes nothing."""
        limit = len(keys) if max_blocks is None else max_blocks
        return self.allocator.match(keys, limit) if keys else []

    def record_lookup(self, num_tokens: int, hit_blocks: Sequence[int]) -> None:
        """Count one prompt's lookup in the statistics and tell the policy of its hits."""
        self.count_lookup(num_tokens, len(hit_blocks), 0, 0)
        self.notify_hits(hit_blocks)

    def notify_hits(self, hit_blocks: Sequence[int]) -> None:
        """Tell the GPU policy of hits on these blocks, in order (before they are revived)."""
        on_hit = self._on_hit
        if on_hit is not None:
            for block in hit_blocks:
                on_hit(block)

    def count_lookup(self, num_tokens: int, gpu_blocks: int, host_blocks: int,
                     disk_blocks: int) -> None:
        """Count one prompt's lookup whose hits came from the GPU and the tiers below
        (the policies were told through `notify_hits` and the tiers)."""
        self._requests += 1
        self._query_tokens += num_tokens
        hit = gpu_blocks + host_blocks + disk_blocks
        if hit:
            bs = self.block_size
            self._hit_requests += 1
            self._hit_tokens += hit * bs
            self._host_hit_tokens += host_blocks * bs
            self._disk_hit_tokens += disk_blocks * bs

    # -- computed tokens and publishing ----------------------------------------------
    def commit(self, record: SequenceRecord, num_tokens: int) -> None:
        """Mark the first `num_tokens` tokens of `record` computed and publish every
        full block they newly cover (a GPU sequence's; a swapped-out one publishes on
        swap-in). Never lowers the computed count."""
        old = record.num_computed_tokens
        if num_tokens <= old:
            return
        record.num_computed_tokens = num_tokens
        self.publish(record, old // self.block_size)

    def publish(self, record: SequenceRecord, first: int) -> int:
        """Offer `record`'s computed full blocks from logical block `first` on; how many
        got their key (a key cached already keeps its first block)."""
        last = min(record.num_computed_tokens // self.block_size, len(record.keys))
        if first >= last or record.location != GPU:
            return 0
        blocks = record.table.blocks
        if first == 0 and last == len(record.keys):  # zip stops at the last key
            return self.allocator.cache_held(blocks, record.keys)
        return self.allocator.cache_held(blocks[first:last], record.keys[first:last])

    # -- key lookup, eviction and reset: the operations of a prefix cache ------------
    def __contains__(self, key: object) -> bool:
        return self.allocator.cached_block(key) is not None

    def __len__(self) -> int:
        """Cached blocks, in use or evictable."""
        return self.allocator.num_cached

    def block_of(self, key: Hashable) -> int | None:
        """The block holding `key`, or None."""
        return self.allocator.cached_block(key)

    def evict(self, n: int) -> list[int]:
        """Evict up to `n` evictable cached blocks in policy order; their ids."""
        return self.allocator.evict(n)

    def reset(self) -> list[int]:
        """Drop every cached block; the ids dropped, in former eviction order.

        Raises `PrefixCacheInUseError`, changing nothing, while a live sequence holds a
        cached block.
        """
        in_use = self.allocator.cached_in_use()
        if in_use:
            raise PrefixCacheInUseError(in_use)
        return self.allocator.uncache_all()

    # -- statistics ------------------------------------------------------------------
    def stats(self) -> PrefixCacheStats:
        """The figures at this moment (an immutable snapshot)."""
        allocator = self.allocator
        return PrefixCacheStats(
            query_tokens=self._query_tokens,
            hit_tokens=self._hit_tokens,
            requests=self._requests,
            hit_requests=self._hit_requests,
            stored_blocks=allocator.num_cached_total - self._stored_base,
            evictions=allocator.num_evicted_total - self._evicted_base,
            cached_blocks=allocator.num_cached,
            host_hit_tokens=self._host_hit_tokens,
            disk_hit_tokens=self._disk_hit_tokens,
        )

    def reset_stats(self) -> None:
        """Zero the lookup, hit, stored and eviction counts."""
        self._requests = self._query_tokens = self._hit_requests = self._hit_tokens = 0
        self._host_hit_tokens = self._disk_hit_tokens = 0
        self._stored_base = self.allocator.num_cached_total
        self._evicted_base = self.allocator.num_evicted_total

    def state(self) -> tuple:
        """The statistics as a comparable tuple (the key map is the allocator's state)."""
        return (
            self._requests, self._query_tokens, self._hit_requests, self._hit_tokens,
            self._host_hit_tokens, self._disk_hit_tokens, self._stored_base,
            self._evicted_base,
        )
