"""BlockAllocator: exact free-queue order, ref counts and all-or-nothing allocation."""

import pytest

from paged_kv.core.block_allocator import BlockAllocator
from paged_kv.core.errors import OutOfBlocksError


def test_fresh_pool_hands_out_ids_in_order():
    alloc = BlockAllocator(4)
    assert alloc.free_queue() == [0, 1, 2, 3]
    assert [alloc.allocate() for _ in range(2)] == [0, 1]
    assert alloc.ref_counts == [1, 1, 0, 0]
    assert (alloc.num_free, alloc.num_used, alloc.usage) == (2, 2, 0.5)


def test_freed_blocks_are_reused_after_older_free_ones():
    alloc = BlockAllocator(4)
    assert alloc.allocate_many(4) == [0, 1, 2, 3]
    alloc.free(2)
    alloc.free(0)
    assert alloc.free_queue() == [2, 0]
    assert alloc.allocate() == 2


def test_ref_counting_frees_only_at_zero():
    alloc = BlockAllocator(2)
    b = alloc.allocate()
    alloc.incref(b)
    alloc.free(b)
    assert alloc.ref_counts[b] == 1 and alloc.num_free == 1
    alloc.free(b)
    assert alloc.ref_counts[b] == 0 and alloc.free_queue() == [1, 0]


def test_allocate_many_is_all_or_nothing():
    alloc = BlockAllocator(3)
    alloc.allocate()
    before = alloc.state()
    with pytest.raises(OutOfBlocksError) as err:
        alloc.allocate_many(3)
    assert (err.value.needed, err.value.available, err.value.pool) == (3, 2, "gpu")
    assert alloc.state() == before


def test_double_free_and_bad_sizes_are_value_errors():
    alloc = BlockAllocator(2)
    with pytest.raises(ValueError, match="already free"):
        alloc.free(0)
    with pytest.raises(ValueError, match="num_blocks"):
        BlockAllocator(0)
    with pytest.raises(ValueError, match="uncached"):
        alloc.incref(1)


def test_cached_blocks_become_evictable_and_are_taken_last():
    alloc = BlockAllocator(4)
    blocks = alloc.allocate_many(4)
    assert alloc.cache_block(blocks[0], "k0") and alloc.cache_block(blocks[1], "k1")
    for b in reversed(blocks):  # tail first, as the manager frees
        alloc.free(b)
    # uncached 3, 2 first; then evictable in LRU order: 1 (released first), then 0
    assert alloc.free_queue() == [3, 2, 1, 0]
    assert alloc.num_evictable == 2 and alloc.num_cached == 2
    assert alloc.allocate_many(3) == [3, 2, 1]
    # the eviction dropped block 1's key in both directions, and was counted once
    assert alloc.block_keys[1] is None and alloc.cached_block("k1") is None
    assert alloc.block_keys[0] == "k0" and alloc.cached_block("k0") == 0
    assert (alloc.num_evicted_total, alloc.num_cached_total) == (1, 2)
    alloc.incref(0)  # a hit revives the evictable block
    assert alloc.ref_counts[0] == 1 and alloc.num_free == 0
    assert alloc.check() == []


def test_the_key_map_has_one_owner_and_counts_each_block_once():
    alloc = BlockAllocator(4, "fifo")
    a, b, c = alloc.allocate_many(3)
    assert alloc.cache_blocks([a, b], ["x", "y"]) == 2
    # the same blocks again: nothing changes
    before = alloc.state()
    assert alloc.cache_blocks([a, b], ["x", "y"]) == 0
    assert not alloc.cache_block(a, "z")
    assert alloc.state() == before and alloc.num_cached_total == 2
    # another block under a cached key stays uncached, remembered as a live duplicate
    assert not alloc.cache_block(c, "x") and not alloc.cache_block(c, "x")
    assert alloc.block_keys == ["x", "y", None, None] and alloc.num_cached_total == 2
    assert alloc.duplicates() == {c: "x"}
    assert alloc.policy.state() == ((), ((a, 1), (b, 2)))  # one FIFO stamp each
    assert alloc.match(["x", "y", "q"], 3) == [a, b] and alloc.match(["x", "y"], 1) == [a]
    alloc.free_many([c])
    assert alloc.duplicates() == {}  # its last holder let go
    with pytest.raises(ValueError, match="in use"):
        alloc.cache_block(c, "w")  # a free block cannot be cached
    with pytest.raises(ValueError, match="2 blocks but 1 keys"):
        alloc.cache_blocks([a, b], ["x"])
    assert alloc.check() == []


def test_uncache_all_forgets_keys():
    alloc = BlockAllocator(2)
    a, b = alloc.allocate_many(2)
    alloc.cache_block(a, "x")
    with pytest.raises(ValueError, match="in use"):
        alloc.uncache_all()
    alloc.free(a)
    alloc.free(b)
    assert alloc.uncache_all() == [a]
    assert alloc.free_queue() == [b, a] and alloc.block_keys == [None, None]
    assert alloc.num_cached == 0 and alloc.cached_block("x") is None
    assert alloc.check() == []


def test_free_many_is_all_or_nothing():
    alloc = BlockAllocator(4)
    a, b, c = alloc.allocate_many(3)
    before = alloc.state()
    with pytest.raises(ValueError, match="already free"):
        alloc.free_many([a, b, 3])  # 3 was never allocated
    with pytest.raises(ValueError, match=f"block {b}"):
        alloc.free_many([c, b, b])  # b is held once, named twice
    assert alloc.state() == before
    alloc.free_many([c, a])
    assert alloc.free_queue() == [3, c, a]


def test_ids_outside_the_pool_are_refused_without_wrapping():
    alloc = BlockAllocator(4)
    a = alloc.allocate()
    before = alloc.state()
    for call in (lambda: alloc.free(-1), lambda: alloc.incref(4),
                 lambda: alloc.free_many([a, 99]), lambda: alloc.incref_many([a, -2]),
                 lambda: alloc.allocate_many(-1)):
        with pytest.raises(ValueError):
            call()
    assert alloc.state() == before
    import numpy as np

    assert BlockAllocator(np.int64(3)).num_blocks == 3
