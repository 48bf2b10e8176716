"""LengthAware: LFU that evicts the deepest block first among equal frequencies."""

import pytest

from paged_kv.cache import PagedKVCache
from paged_kv.core.config import CacheConfig
from paged_kv.core.eviction import LengthAwarePolicy, make_policy


def test_lowest_frequency_first_then_deepest_then_least_recently_released():
    depths = {"a0": 0, "a1": 1, "a2": 2, "b0": 0, "b1": 1}
    p = LengthAwarePolicy(depths)
    for block, key in enumerate(["a0", "a1", "a2", "b0", "b1"]):
        p.on_cached(block, key)
    p.on_hit(0)  # a0 used twice
    p.add_many([2, 1, 0])  # released tail first
    p.add_many([4, 3])
    # frequency 1: a2 (depth 2), then a1 and b1 (depth 1: a1 released first), then b0
    assert p.order() == [2, 1, 4, 3, 0]
    assert [p.pop() for _ in range(5)] == [2, 1, 4, 3, 0]
    with pytest.raises(IndexError):
        p.pop()


def test_hits_reorder_candidates_and_frequencies_survive_revival():
    p = LengthAwarePolicy(lambda key: key)  # depth = the key itself
    for block, key in enumerate([0, 1, 2]):
        p.on_cached(block, key)
    p.add_many([0, 1, 2])
    p.on_hit(2)
    assert p.order() == [1, 0, 2]
    p.remove(2)
    p.add(2)
    assert p.order() == [1, 0, 2] and len(p) == 3 and 2 in p
    p.clear()
    assert p.order() == [] and p.state() == ((), (), (), ())


def test_unknown_depth_and_name_alone_are_refused():
    p = LengthAwarePolicy({"x": 0})
    with pytest.raises(ValueError, match="no depth known for key 'y'"):
        p.on_cached(0, "y")
    with pytest.raises(ValueError, match=r"LengthAwarePolicy\(depths\)"):
        make_policy("length_aware")
    with pytest.raises(ValueError, match="depths must map"):
        LengthAwarePolicy(3)


def test_in_the_cache_the_deeper_block_of_a_prompt_goes_first():
    bs = 4
    policy = LengthAwarePolicy({"p0": 0, "p1": 1, "q0": 0})
    cache = PagedKVCache(
        CacheConfig(block_size=bs, num_gpu_blocks=4, enable_prefix_caching=True,
                    eviction_policy="length_aware"),
        policy=policy,
    )
    for n, keys in ((2 * bs + 1, ["p0", "p1"]), (bs + 1, ["q0"])):
        seq = cache.allocate(n, block_keys=keys)
        cache.commit(seq)  # computed: its full blocks are published
        cache.free(seq)
    # three evictable blocks of frequency 1: p1 (depth 1) goes before p0 and q0
    seq = cache.allocate(2 * bs)  # uncached: takes the free block, then evicts one
    assert cache.stats().prefix_evictions == 1
    cache.free(seq)
    assert cache.lookup_prefix(block_keys=["p0", "p1"], num_tokens=2 * bs + 1) == bs
    assert cache.lookup_prefix(block_keys=["q0"], num_tokens=bs + 1) == bs
    cache.check_invariants()
