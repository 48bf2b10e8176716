"""Prefix caching in the manager: hits, revival, the last-token rule, eviction, stats.

Metadata-only: a prompt's blocks are published when it is committed (computed).
"""

import pytest

from paged_kv import CacheConfig, OutOfBlocksError
from paged_kv.cache import PagedKVCache
from paged_kv.core.errors import PrefixCacheInUseError

BS = 4


def make(num_blocks=8, policy="lru", **kw):
    config = CacheConfig(
        block_size=BS, num_gpu_blocks=num_blocks, enable_prefix_caching=True,
        eviction_policy=policy,
    )
    return PagedKVCache(config, **kw)


def tokens(n, start=0):
    return list(range(start, start + n))


def test_second_request_shares_the_cached_prefix():
    cache = make()
    a = cache.allocate(token_ids=tokens(10))  # blocks 0, 1 full; 2 partial
    cache.commit(a)  # computed: 0 and 1 are published
    b = cache.allocate(token_ids=tokens(9))  # same first two blocks
    assert cache.get(b).block_table == (0, 1, 3)
    assert cache.get(b).num_cached_tokens == 8
    assert cache.gpu.ref_counts[:4] == [2, 2, 1, 1]
    stats = cache.prefix.stats()
    assert (stats.query_tokens, stats.hit_tokens, stats.requests, stats.hit_requests) == (
        19, 8, 2, 1,
    )
    assert (stats.stored_blocks, stats.cached_blocks) == (2, 2)
    assert cache.num_computed_tokens(b) == 8  # its hits are computed, the rest is not
    cache.check_invariants()
    cache.free(a)
    cache.free(b)


def test_free_queue_order_after_freeing_two_requests():
    cache = make()
    a = cache.allocate(token_ids=tokens(10))  # 0, 1 cached; 2 partial
    b = cache.allocate(token_ids=tokens(8, start=100))  # 3, 4 cached
    cache.commit(a)
    cache.commit(b)
    cache.free(a)  # 2 uncached; then tail first: 1, 0 evictable
    cache.free(b)  # 4, 3 evictable
    assert cache.gpu.free_queue() == [5, 6, 7, 2, 1, 0, 4, 3]
    assert cache.gpu.num_evictable == 4
    cache.check_invariants()


def test_freed_cached_prefix_is_revived_by_a_hit():
    cache = make()
    a = cache.allocate(token_ids=tokens(9))
    cache.commit(a)
    cache.free(a)
    assert cache.gpu.ref_counts[:2] == [0, 0]
    b = cache.allocate(token_ids=tokens(12))
    # blocks 0 and 1 revived (0 -> 1), a new block for the third (the last-token rule
    # caps the hit at 2 of 3 full blocks... here the third block was never cached anyway)
    assert cache.get(b).block_table[:2] == (0, 1)
    assert cache.gpu.ref_counts[:2] == [1, 1]
    assert 0 not in cache.gpu.policy and 1 not in cache.gpu.policy
    cache.check_invariants()


def test_fully_cached_prompt_still_computes_its_last_token():
    cache = make()
    a = cache.allocate(token_ids=tokens(8))
    cache.commit(a)
    cache.free(a)
    b = cache.allocate(token_ids=tokens(8))
    info = cache.get(b)
    # two full cached blocks, but the hit is capped at one so token 7 is computed
    assert info.num_cached_tokens == 4
    assert info.block_table[0] == 0 and info.block_table[1] != 1
    assert cache.lookup_prefix(tokens(8)) == 4
    assert cache.lookup_prefix(tokens(9)) == 8


def test_partial_blocks_are_cached_only_once_full():
    cache = make()
    a = cache.allocate(token_ids=tokens(6))
    assert len(cache.prefix) == 0  # nothing is computed yet
    cache.commit(a)
    assert len(cache.prefix) == 1  # only block 0
    assert cache.lookup_prefix(tokens(9)) == 4
    cache.append(a, token_ids=[6, 7])  # block 1 fills up ...
    assert len(cache.prefix) == 1 and cache.num_computed_tokens(a) == 6
    cache.commit(a, 7)  # ... but is published only once all of it is computed
    assert len(cache.prefix) == 1
    cache.commit(a)
    assert len(cache.prefix) == 2
    assert cache.lookup_prefix(tokens(9)) == 8
    cache.check_invariants()


def test_lru_evicts_the_least_recently_released_chain_tail_first():
    cache = make(num_blocks=4)
    a = cache.allocate(token_ids=tokens(9))  # blocks 0, 1 cached, 2 partial
    cache.commit(a)
    cache.free(a)  # free queue: 3, 2 | evictable 1, 0
    b = cache.allocate(token_ids=tokens(12, start=50))  # needs 3: takes 3, 2, evicts 1
    assert cache.get(b).block_table == (3, 2, 1)
    assert cache.stats().prefix_evictions == 1
    # the prefix's first block survives; its second is gone
    assert cache.lookup_prefix(tokens(9)) == 4
    cache.check_invariants()


def test_allocation_that_cannot_fit_changes_nothing():
    cache = make(num_blocks=4)
    a = cache.allocate(token_ids=tokens(9))
    cache.commit(a)
    cache.free(a)
    b = cache.allocate(token_ids=tokens(5, start=90))
    before = cache.snapshot()
    # would hit blocks 0, 1 (evictable) and need 3 more: only 1 left once they revive
    with pytest.raises(OutOfBlocksError):
        cache.allocate(token_ids=tokens(20))
    assert cache.snapshot() == before
    assert cache.stats().prefix_requests == 2  # the refused request counted nothing
    assert cache.try_allocate(token_ids=tokens(20)) is None
    assert cache.snapshot() == before and cache.stats().allocation_failures == 2
    cache.free(b)


def test_duplicate_keys_keep_the_first_block_cached():
    cache = make()
    a = cache.allocate(token_ids=tokens(3))
    b = cache.allocate(token_ids=tokens(3))
    cache.append(a, token_ids=[3])  # block of a becomes full ...
    cache.commit(a)  # ... and computed: cached
    cache.append(b, token_ids=[3])  # same content in another block: a duplicate
    cache.commit(b)
    assert cache.prefix.stats().stored_blocks == 1
    key_block = cache.prefix.block_of(cache._seqs.get(a).keys[0])
    assert key_block == cache.get(a).block_table[0]
    assert cache.gpu.block_keys[cache.get(b).block_table[0]] is None
    cache.free(b)  # its duplicate block goes back uncached
    assert cache.gpu.free_queue()[-1] != cache.get(a).block_table[0]
    cache.check_invariants()


def test_salted_tenants_never_share():
    cache = make()
    cache.commit(cache.allocate(token_ids=tokens(9), salt="tenant-a"))
    b = cache.allocate(token_ids=tokens(9), salt="tenant-b")
    cache.commit(b)
    assert cache.get(b).num_cached_tokens == 0
    c = cache.allocate(token_ids=tokens(9), salt="tenant-a")
    assert cache.get(c).num_cached_tokens == 8


def test_hash_collision_is_a_miss_not_someone_elses_kv():
    cache = make(hash_fn=lambda _: 0)  # every block key collides
    cache.commit(cache.allocate(token_ids=tokens(5)))
    b = cache.allocate(token_ids=tokens(5, start=1000))
    cache.commit(b)
    assert cache.get(b).num_cached_tokens == 0
    c = cache.allocate(token_ids=tokens(5))  # genuinely the same prefix
    assert cache.get(c).num_cached_tokens == 4


def test_precomputed_block_keys():
    cache = make()
    a = cache.allocate(block_keys=[11, 12, 13], num_tokens=10)  # 13 is the partial block
    cache.commit(a)
    assert len(cache.prefix) == 2
    b = cache.allocate(block_keys=[11, 12, 99], num_tokens=12)
    assert cache.get(b).num_cached_tokens == 8
    assert cache.get(b).block_table[:2] == cache.get(a).block_table[:2]


def test_statistics_after_a_known_sequence():
    cache = make(num_blocks=6)
    for start in (0, 0, 100, 0):
        s = cache.allocate(token_ids=tokens(9, start=start))
        cache.commit(s)
        cache.free(s)
    stats = cache.prefix.stats()
    # queries 4 x 9 tokens; hits: 2nd and 4th request hit two blocks (8 tokens) each
    assert (stats.query_tokens, stats.hit_tokens) == (36, 16)
    assert (stats.requests, stats.hit_requests) == (4, 2)
    assert stats.hit_rate == pytest.approx(16 / 36)
    # six blocks always held an uncached free one for each new block: nothing evicted
    assert stats.evictions == 0 and cache.gpu.num_evictable == 4
    assert cache.stats().prefix_stored_blocks == 4 and cache.stats().prefix_cached_blocks == 4
    cache.reset_prefix_stats()
    assert cache.prefix.stats() == type(stats)(cached_blocks=4)


def test_evict_and_reset_operations():
    cache = make()
    a = cache.allocate(token_ids=tokens(12))
    cache.commit(a)
    before = cache.snapshot()
    with pytest.raises(PrefixCacheInUseError, match="in use") as refused:
        cache.reset_prefix_cache()
    assert refused.value.blocks == [0, 1, 2] and cache.snapshot() == before
    cache.free(a)
    assert cache.evict_cached(1) == [2]  # LRU: block 2 (tail) goes first
    assert cache.lookup_prefix(tokens(13)) == 8
    assert cache.reset_prefix_cache() == [1, 0]  # the dropped blocks, in eviction order
    assert len(cache.prefix) == 0 and cache.gpu.num_evictable == 0
    assert cache.lookup_prefix(tokens(13)) == 0
    assert cache.evict_cached(5) == [] and cache.reset_prefix_cache() == []
    with pytest.raises(ValueError):
        cache.evict_cached(-1)
    cache.check_invariants()
