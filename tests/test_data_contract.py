"""The data contract: a cached block is a computed block, and a published block never
changes. Computed tokens, commit, publishing on complete writes, immutability, the
concurrent-prompt interleavings on real storage (tiny model, CUDA simulator), and the
single owner of the key <-> block map."""

import numpy as np
import pytest

from paged_kv import (
    CacheConfig,
    ImmutableBlockError,
    MetadataOnlyError,
    PagedKVCache,
    get_model,
)
from paged_kv.core.sequence import WrittenExtents

MODEL = get_model("tiny")  # 2 layers, 2 KV heads, head_dim 8, float16
H, D = MODEL.num_kv_heads, MODEL.head_dim
BS = 4


def make(num_blocks=8, host=0, model=None, policy="lru"):
    config = CacheConfig(block_size=BS, num_gpu_blocks=num_blocks, num_host_blocks=host,
                         enable_prefix_caching=True, eviction_policy=policy)
    return PagedKVCache(config, model)


def kv(seed, n):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, H, D)).astype(np.float16),
            rng.standard_normal((n, H, D)).astype(np.float16))


def write_layers(cache, seq, seed, n, start=None, layers=None):
    """Write distinct KV for `n` positions in each of `layers` (default: all)."""
    out = {}
    for layer in range(MODEL.num_layers) if layers is None else layers:
        out[layer] = kv(seed * 10 + layer, n)
        cache.write_kv(seq, layer, *out[layer], start=start)
    return out


# ====================================================================================
# metadata-only: computed tokens and commit
# ====================================================================================


def test_nothing_is_published_until_committed():
    cache = make()
    a = cache.allocate(token_ids=list(range(10)))
    assert cache.num_computed_tokens(a) == 0 and len(cache.prefix) == 0
    b = cache.allocate(token_ids=list(range(10)))  # same prompt, allocated before a computed
    assert cache.num_cached_tokens(b) == 0 and cache.get(b).block_table == (3, 4, 5)
    cache.commit(a, 5)  # block 0 is computed; block 1 only half
    assert cache.num_computed_tokens(a) == 5 and len(cache.prefix) == 1
    cache.commit(a, 3)  # fewer than computed: nothing changes
    assert cache.num_computed_tokens(a) == 5
    cache.commit(a)
    assert cache.num_computed_tokens(a) == 10 and len(cache.prefix) == 2
    cache.commit(b)  # the same content under keys already cached: b's copies stay uncached
    assert len(cache.prefix) == 2 and cache.prefix.stats().stored_blocks == 2
    c = cache.allocate(token_ids=list(range(11)))
    assert cache.get(c).block_table[:2] == (0, 1)
    assert cache.num_cached_tokens(c) == cache.num_computed_tokens(c) == 8
    assert cache.get(c).num_computed_tokens == 8
    for bad in (11, -1, 2.0, True):
        with pytest.raises(ValueError):
            cache.commit(a, bad)
    cache.check_invariants()


def test_fork_copies_and_swap_keeps_the_computed_state():
    cache = make(num_blocks=8, host=8)
    a = cache.allocate(token_ids=list(range(10)))
    cache.commit(a, 6)  # block 0 published; block 1 half computed
    b = cache.fork(a)
    assert cache.num_computed_tokens(b) == 6
    cache.swap_out([a, b])
    assert cache.stats().prefix_cached_blocks == 1  # block 0 stays cached, evictable
    assert cache.evict_cached(8) == [0]
    cache.commit(b)  # computed while swapped out: published when it comes back
    assert len(cache.prefix) == 0
    cache.swap_in([a, b])
    # a republishes its computed full block (0); b its two; the blocks are shared
    assert cache.num_computed_tokens(a) == 6 and cache.num_computed_tokens(b) == 10
    table = cache.get(a).block_table
    assert cache.get(b).block_table == table and len(cache.prefix) == 2
    assert [cache.gpu.block_keys[x] is not None for x in table] == [True, True, False]
    cache.check_invariants()


def test_the_swap_and_evict_sequence_counts_each_block_once():
    """fork -> swap_out -> evict_cached -> swap_in with FIFO: each block stored and stamped
    once (two sharers swapped together do not count or stamp a block twice)."""
    cache = make(num_blocks=8, host=8, policy="fifo")
    a = cache.allocate(block_keys=["k0", "k1"], num_tokens=9)
    cache.commit(a)
    b = cache.fork(a)
    cache.swap_out([a, b])
    assert cache.evict_cached(8) == [0, 1]
    cache.swap_in([a, b])
    stats = cache.stats()
    assert (stats.prefix_stored_blocks, stats.prefix_evictions, stats.prefix_cached_blocks) == (
        4, 2, 2)  # 2 at the commit, 2 new ones at the swap-in: once each
    new = cache.get(a).block_table[:2]
    # FIFO's clock: stamps 1, 2 for the first caching, 3, 4 for the second; no more
    assert cache.gpu.policy.state() == ((), tuple(sorted(zip(new, (3, 4)))))
    cache.check_invariants()


def test_prefix_cache_stats_are_snapshots_and_the_live_counters_are_not_handed_out():
    cache = make()
    cache.commit(cache.allocate(token_ids=list(range(9))))
    stats = cache.stats()
    with pytest.raises(AttributeError):
        stats.prefix_hit_tokens = 99  # frozen
    prefix = cache.prefix.stats()
    with pytest.raises(AttributeError):
        prefix.hit_tokens = 99
    assert not hasattr(cache, "prefix_stats")
    assert cache.stats() == stats and cache.prefix.stats() == prefix


# ====================================================================================
# with storage: writes publish, published blocks are immutable
# ====================================================================================


def test_a_block_is_published_once_every_layer_is_written():
    cache = make(model=MODEL)
    a = cache.allocate(token_ids=list(range(10)))
    write_layers(cache, a, 1, 10, start=0, layers=[0])
    assert cache.num_computed_tokens(a) == 0 and len(cache.prefix) == 0
    write_layers(cache, a, 2, 6, start=0, layers=[1])  # layer 1 reaches position 6
    assert cache.num_computed_tokens(a) == 6 and len(cache.prefix) == 1
    write_layers(cache, a, 3, 2, start=8, layers=[1])  # past a gap: waits for it
    assert cache.num_computed_tokens(a) == 6
    write_layers(cache, a, 4, 2, start=6, layers=[1])  # the gap is filled
    assert cache.num_computed_tokens(a) == 10 and len(cache.prefix) == 2
    cache.check_invariants()


def test_writing_into_a_published_block_is_refused_and_changes_nothing():
    cache = make(model=MODEL)
    a = cache.allocate(token_ids=list(range(10)))
    write_layers(cache, a, 1, 10, start=0)
    before = cache.snapshot()
    k, v = kv(9, 2)
    for start in (0, 3, 6):  # inside block 0, across blocks 0 and 1, inside block 1
        with pytest.raises(ImmutableBlockError, match="published.*immutable"):
            cache.write_kv(a, 0, k, v, start=start)
    with pytest.raises(ValueError, match="immutable"):  # an ImmutableBlockError is one
        cache.write_kv_batch(1, [a], k[:1], v[:1], num_tokens=[1], starts=[4])
    assert cache.snapshot() == before
    cache.write_kv(a, 0, k, v, start=8)  # the partial block is not published: writable


def test_a_live_duplicate_is_immutable_like_the_copy_whose_key_it_may_take_over():
    """A computed block whose key another block holds takes that key over when the other
    copy is evicted, at an eviction its writer does not control: rewriting it would let
    a later hit read a block half of one computation and half of another."""
    cache = make(num_blocks=6, model=MODEL)
    prompt = list(range(5))
    a, b = cache.allocate(token_ids=prompt), cache.allocate(token_ids=prompt)
    write_layers(cache, a, 1, 5, start=0)
    own = write_layers(cache, b, 2, 5, start=0)
    duplicate = cache.get(b).block_table[0]
    assert duplicate in cache.gpu.duplicates()
    before = cache.snapshot()
    k, v = kv(9, 1)
    with pytest.raises(ImmutableBlockError, match="duplicate.*immutable"):
        cache.write_kv(b, 0, k, v, start=2)
    with pytest.raises(ImmutableBlockError, match="duplicate.*immutable"):
        cache.plan_step([b], starts=[0])
    assert cache.snapshot() == before
    cache.write_kv(b, 1, k, v, start=4)  # its partial last block stays writable
    cache.free(a)
    cache.evict_cached(1)  # a's copy goes; b's takes over the key, unchanged
    c = cache.allocate(token_ids=prompt)
    assert cache.get(c).block_table[0] == duplicate
    for layer in own:
        np.testing.assert_array_equal(cache.read_kv(c, layer, end=4)[0], own[layer][0][:4])
    cache.check_invariants()


@pytest.mark.parametrize("first", ["a", "b"])
def test_concurrent_requests_with_one_prompt_never_read_bytes_nobody_wrote(first):
    """Allocate A, allocate B with the same prompt, write one of them, read the other."""
    cache = make(model=MODEL)
    prompt = list(range(10))
    seqs = {"a": cache.allocate(token_ids=prompt), "b": cache.allocate(token_ids=prompt)}
    assert cache.num_cached_tokens(seqs["b"]) == 0  # nothing computed: no hit
    other = "b" if first == "a" else "a"
    written = write_layers(cache, seqs[first], 1, 10, start=0)
    assert len(cache.prefix) == 2
    # the other one reads its own blocks: nothing of the writer's, zeros where unwritten
    for layer in written:
        k, v = cache.read_kv(seqs[other], layer)
        assert not np.any(k) and not np.any(v)
        assert not np.array_equal(k[:8], written[layer][0][:8])
    # its own KV, once written, stays its own and is read back exactly; its full blocks
    # duplicate cached keys, so they stay unpublished
    own = write_layers(cache, seqs[other], 2, 10, start=0)
    for layer in own:
        np.testing.assert_array_equal(cache.read_kv(seqs[other], layer)[0], own[layer][0])
        np.testing.assert_array_equal(cache.read_kv(seqs[first], layer)[1], written[layer][1])
    assert cache.prefix.stats().stored_blocks == 2
    # a third request hits the first writer's blocks and reads what it wrote
    c = cache.allocate(token_ids=prompt + [99])
    assert cache.num_cached_tokens(c) == 8
    for layer in written:
        np.testing.assert_array_equal(cache.read_kv(c, layer, end=8)[0], written[layer][0][:8])
    cache.check_invariants()


def test_a_hit_of_a_swapped_in_sequence_reads_its_bytes():
    cache = make(num_blocks=6, host=6, model=MODEL)
    a = cache.allocate(token_ids=list(range(9)))
    written = write_layers(cache, a, 1, 9, start=0)
    cache.swap_out(a)
    cache.evict_cached(6)
    cache.swap_in(a)  # new GPU blocks; its computed full blocks are published again
    b = cache.allocate(token_ids=list(range(9)))
    assert cache.num_cached_tokens(b) == 8
    for layer in written:
        np.testing.assert_array_equal(cache.read_kv(b, layer, end=8)[0], written[layer][0][:8])


def test_metadata_only_cache_refuses_kv_io_first():
    cache = make()
    a = cache.allocate(4)
    k, v = kv(0, 1)
    for call in (lambda: cache.write_kv(a, 0, k, v), lambda: cache.read_kv(a, 0),
                 lambda: cache.write_kv_batch(99, [77], k, v, num_tokens=[5])):
        with pytest.raises(MetadataOnlyError):
            call()


def test_written_extents_merge_out_of_order_writes():
    w = WrittenExtents(2)
    w.add(0, 4, 6)
    w.add(0, 8, 9)
    assert w.frontier == [0, 0] and w.complete() == 0
    w.add(0, 0, 4)  # reaches 4..6, not 8..9
    assert w.frontier[0] == 6 and w.pending[0] == [(8, 9)]
    w.add(0, 5, 8)
    assert w.frontier[0] == 9 and w.pending[0] is None
    w.add(1, 0, 3)
    w.add(1, 2, 2)  # empty: nothing
    copy = w.copy()
    w.add(1, 3, 9)
    assert (w.complete(), copy.complete()) == (9, 3)


def test_the_write_that_completes_the_last_layer_publishes_the_block():
    """Found by the long fuzz run: layer 1 first, then layer 0 completes the block, which
    is published at once; rewriting layer 1 afterwards is refused."""
    cache = make(model=MODEL)
    a = cache.allocate(token_ids=[0, 1, 2, 3, 4])
    write_layers(cache, a, 1, 4, start=0, layers=[1])
    assert len(cache.prefix) == 0
    write_layers(cache, a, 2, 4, start=0, layers=[0])
    assert cache.num_computed_tokens(a) == 4 and len(cache.prefix) == 1
    with pytest.raises(ImmutableBlockError):
        write_layers(cache, a, 3, 4, start=0, layers=[1])
