"""The prefix cache's tiers below the GPU, metadata only: which tier holds which key after
every operation, the placement policies, the lookup across tiers, pins, recency, live
duplicates, statistics, and the replay's per-request columns.

Prompts are given by precomputed block keys (as a trace replays them), two tokens per
block, so a prompt of keys ``[a, b, c]`` and 7 tokens has three full blocks and the
last-token cap allows hits on at most all three.
"""

import pytest

from paged_kv import CacheConfig, InvariantError, OutOfBlocksError, PagedKVCache
from paged_kv.core.errors import TierLoadError
from paged_kv.core.tier import CacheTier
from paged_kv.sim.replay import (
    TIER_COLUMNS,
    ReplayResult,
    TierSetting,
    replay,
    unbounded_capacity,
)
from paged_kv.sim.request import Request, Workload

BS = 2


def make(gpu: int = 4, host: int = 0, disk: int = 0, placement: str = "write_through",
         **extra) -> PagedKVCache:
    return PagedKVCache(CacheConfig(
        block_size=BS, num_gpu_blocks=gpu, enable_prefix_caching=True,
        host_cache_blocks=host, disk_cache_blocks=disk, tier_placement=placement, **extra))


def held(tier: CacheTier) -> set:
    return set(tier.keys().values())


def lru(tier: CacheTier) -> list:
    """The tier's keys in eviction order."""
    keys = tier.allocator.block_keys
    return [keys[s] for s in tier.policy.order()]


def run(cache: PagedKVCache, keys: list, extra_tokens: int = 1) -> int:
    """Allocate a prompt of `keys` (+ a partial block), commit it, free it; its hit tokens."""
    seq = cache.allocate(len(keys) * BS + extra_tokens, block_keys=keys)
    cache.commit(seq)
    hit = cache.num_cached_tokens(seq)
    cache.free(seq)
    cache.check_invariants()
    return hit


# -- configuration ---------------------------------------------------------------------

@pytest.mark.parametrize("fields, message", [
    (dict(host_cache_blocks=2), r"host_cache_blocks=2 needs enable_prefix_caching=True"),
    (dict(enable_prefix_caching=True, disk_cache_blocks=-1),
     r"disk_cache_blocks must be an integer >= 0, got -1"),
    (dict(host_cache_policy="belady"), r"host_cache_policy: unknown tier eviction policy "
                                       r"'belady'; valid names: arc, clock, fifo, lfu, lru"),
    (dict(tier_placement="write_around"), r"tier_placement must be one of write_through, "
                                          r"write_back, selective, got 'write_around'"),
    (dict(disk_cache_dir=5), r"disk_cache_dir must be a path or None, got 5"),
])
def test_bad_tier_settings_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        CacheConfig(**fields)


def test_no_tier_means_none_and_zero_figures():
    cache = make()
    assert cache.tiers is None and not cache.config.has_tiers
    stats = cache.stats()
    assert stats.host_tier_blocks == stats.disk_tier_held_blocks == 0
    assert CacheConfig(host_cache_policy="ARC").host_cache_policy == "arc"


# -- one tier's bookkeeping ------------------------------------------------------------

def test_a_tier_stores_evicts_by_its_policy_and_reports_the_victim():
    tier = CacheTier("host", 2, "lru")
    assert tier.store("a") == (0, None) and tier.store("b") == (1, None)
    assert tier.store("a") is None  # held already: nothing changes
    assert tier.store("c") == (0, "a")  # full: the least recent key leaves its slot
    assert tier.keys() == {0: "c", 1: "b"} and tier.stores == 3 and tier.evictions == 1
    tier.refresh(["b"])  # b becomes the most recent
    assert lru(tier) == ["c", "b"]
    tier.pin([1])  # b is being loaded: never a victim
    assert tier.store("d") == (0, "c") and tier.store("e") == (0, "d")
    assert lru(tier) == ["e"]
    tier.pin([0])
    assert tier.store("f") is None and tier.rejected_stores == 1  # every slot pinned
    assert tier.check() == ["host tier: slots [0, 1] pinned between operations"]
    tier.release([1, 0])  # in this order: e ends most recent
    assert lru(tier) == ["b", "e"] and tier.check() == []
    assert tier.drop(1) == "b" and tier.keys() == {0: "e"} and tier.check() == []
    tier.clear()
    assert len(tier) == 0 and tier.check() == []


def test_an_arc_tier_promotes_what_is_hit():
    tier = CacheTier("disk", 4, "arc")
    for key in "abc":
        tier.store(key)
    tier.pin([1])  # a hit on b: ARC moves it to T2
    tier.release([1])
    t1, t2 = tier.policy.state()[:2]
    assert t1 == (0, 2) and t2 == (1,)


# -- placement --------------------------------------------------------------------------

def test_write_through_copies_every_published_block_down_tail_first():
    cache = make(gpu=4, host=2, disk=4)
    seq = cache.allocate(7, block_keys=["a", "b", "c"])
    assert len(cache.tiers.host) == 0  # nothing is copied before it is computed
    cache.commit(seq)
    # c, b, a in that order: the host keeps the last two it stored, b and a
    host, disk = cache.tiers.host, cache.tiers.disk
    assert host.keys() == {0: "a", 1: "b"} and disk.keys() == {0: "c", 1: "b", 2: "a"}
    assert host.evictions == 1
    cache.free(seq)
    assert lru(host) == ["b", "a"] and lru(disk) == ["c", "b", "a"]  # refreshed tail first
    stats = cache.stats()
    assert (stats.blocks_gpu_to_host_tier, stats.blocks_gpu_to_disk_tier,
            stats.blocks_host_to_disk_tier) == (3, 3, 0)
    assert (stats.host_tier_blocks, stats.host_tier_held_blocks, stats.host_tier_evictions,
            stats.disk_tier_blocks, stats.disk_tier_held_blocks) == (2, 2, 1, 4, 3)
    cache.check_invariants()


def test_write_back_copies_on_gpu_eviction_and_cascades_host_evictions_to_disk():
    cache = make(gpu=3, host=2, disk=4, placement="write_back")
    host, disk = cache.tiers.host, cache.tiers.disk
    assert run(cache, ["a", "b"]) == 0  # 3 GPU blocks: a, b and the partial one
    assert len(host) == len(disk) == 0  # nothing copied while the GPU keeps them
    assert run(cache, ["x", "y"]) == 0  # evicts b then a (released tail first)
    assert host.keys() == {0: "b", 1: "a"} and len(disk) == 0
    assert run(cache, ["p"]) == 0  # one free block, one eviction: y -> host, b -> disk
    assert host.keys() == {0: "y", 1: "a"} and disk.keys() == {0: "b"}
    stats = cache.stats()
    assert (stats.blocks_gpu_to_host_tier, stats.blocks_gpu_to_disk_tier,
            stats.blocks_host_to_disk_tier) == (3, 0, 1)


def test_write_back_without_a_host_tier_goes_to_disk():
    cache = make(gpu=3, disk=2, placement="write_back")
    run(cache, ["a", "b"])
    run(cache, ["x", "y"])
    assert cache.tiers.disk.keys() == {0: "b", 1: "a"}
    assert cache.stats().blocks_gpu_to_disk_tier == 2


def test_selective_copies_a_block_when_it_is_hit_and_loses_blocks_never_hit():
    cache = make(gpu=4, host=4, placement="selective")
    host = cache.tiers.host
    run(cache, ["a", "b"])
    assert len(host) == 0  # computed, not hit yet
    assert run(cache, ["a", "b", "c"]) == 4  # a, b hit on the GPU: copied down now
    assert held(host) == {"a", "b"}
    run(cache, ["x", "y", "z"])  # evicts the GPU's c, b, a: c was never hit
    assert run(cache, ["a", "b", "c"]) == 4  # a, b from the host; c is lost
    stats = cache.stats()
    assert (stats.prefix_host_hit_tokens, stats.host_tier_loads) == (4, 2)


# -- lookup across tiers -----------------------------------------------------------------

def test_lookup_is_the_longest_prefix_across_tiers_each_block_from_the_fastest():
    cache = make(gpu=6, host=2, disk=6)
    host, disk = cache.tiers.host, cache.tiers.disk
    run(cache, ["a", "b", "c", "d"])  # copied tail first: the host keeps b, a
    assert held(host) == {"a", "b"} and held(disk) == {"a", "b", "c", "d"}
    cache.free(cache.allocate(10))  # no keys, nothing published: the GPU evicts d, c, b
    assert cache.gpu.cached_block("a") is not None and cache.gpu.cached_block("b") is None
    # a from the GPU, b from the host, c and d from the disk, e nowhere
    before = cache.stats()
    seq = cache.allocate(11, block_keys=["a", "b", "c", "d", "e"])
    assert cache.num_cached_tokens(seq) == 8
    stats = cache.stats()
    assert (stats.prefix_hit_tokens - before.prefix_hit_tokens,
            stats.prefix_gpu_hit_tokens - before.prefix_gpu_hit_tokens,
            stats.prefix_host_hit_tokens, stats.prefix_disk_hit_tokens) == (8, 2, 2, 4)
    assert (stats.host_tier_loads, stats.disk_tier_loads) == (1, 2)
    # the loaded blocks are cached GPU blocks now, in the sequence's table
    table = cache.get(seq).block_table
    assert [cache.gpu.block_keys[b] for b in table[:4]] == ["a", "b", "c", "d"]
    assert cache.lookup_prefix(block_keys=["a", "b", "c", "d", "e"], num_tokens=11) == 8
    cache.check_invariants()


def test_a_block_the_gpu_holds_past_the_gpu_prefix_is_revived_not_loaded():
    cache = make(gpu=6, host=4)
    seq = cache.allocate(4, block_keys=["a", "b"])
    cache.commit(seq)
    cache.free(seq)
    cache.gpu.uncache(cache.gpu.cached_block("a"))  # the GPU loses a, keeps b
    seq = cache.allocate(5, block_keys=["a", "b"])
    table = cache.get(seq).block_table
    assert cache.num_cached_tokens(seq) == 4
    assert cache.stats().host_tier_loads == 1 and cache.stats().prefix_gpu_hit_tokens == 2
    assert cache.gpu.block_keys[table[1]] == "b" and cache.gpu.ref_counts[table[1]] == 1


def test_the_walk_stops_at_the_first_block_no_tier_holds_and_at_the_cap():
    cache = make(gpu=4, host=8)
    run(cache, ["a", "b", "c"])
    run(cache, ["w", "x", "y"])  # the GPU forgets a, b, c; the host keeps everything
    cache.tiers.host.drop(cache.tiers.host.slot_of("b"))
    assert cache.lookup_prefix(block_keys=["a", "b", "c"], num_tokens=7) == 2
    # the cap: a prompt of exactly three blocks recomputes its last one
    assert cache.lookup_prefix(block_keys=["w", "x", "y"], num_tokens=6) == 4


def test_pinned_slots_are_never_evicted_by_the_stores_of_the_same_admission():
    # the host holds a and b; loading them needs two GPU blocks, whose evictions are
    # written back to the full host: the stores must not take the slots being loaded
    cache = make(gpu=3, host=2, placement="write_back")
    host = cache.tiers.host
    run(cache, ["a", "b"])
    run(cache, ["x", "y"])
    assert held(host) == {"a", "b"}
    assert run(cache, ["a", "b"]) == 4  # evicts x, y: the host has no unpinned slot
    assert host.rejected_stores == 2 and held(host) == {"a", "b"}


def test_freeing_refreshes_the_tiers_tail_first():
    cache = make(gpu=8, host=4)
    host = cache.tiers.host
    run(cache, ["a", "b"])
    run(cache, ["c", "d"])
    assert lru(host) == ["b", "a", "d", "c"]
    run(cache, ["a", "b"])  # hits on the GPU: the host copies are refreshed all the same
    assert lru(host) == ["d", "c", "b", "a"]


def test_failed_admission_changes_nothing_and_reset_clears_every_tier():
    cache = make(gpu=3, host=4, disk=4)
    run(cache, ["a", "b"])
    keep = cache.allocate(6)
    before = cache.snapshot()
    with pytest.raises(OutOfBlocksError):
        cache.allocate(7, block_keys=["a", "b", "c"])
    assert cache.snapshot() == before
    cache.free(keep)
    cache.reset_prefix_cache()
    assert len(cache.tiers.host) == len(cache.tiers.disk) == 0
    assert cache.lookup_prefix(block_keys=["a", "b"], num_tokens=5) == 0


def test_only_a_block_holding_its_key_on_the_gpu_is_copied_down():
    cache = make(gpu=4, host=2, disk=2)
    seq = cache.allocate(5, block_keys=["a", "b"])
    cache.commit(seq, 2)  # block 0 holds "a"; block 1 is not computed, so holds nothing
    a, b = cache.get(seq).block_table[:2]
    before = cache.snapshot()
    for blocks, keys in (([b], ["b"]), ([a], ["b"]), ([a, b], ["a", "b"]), ([True], ["a"])):
        with pytest.raises(ValueError, match="holds no published copy"):
            cache.tiers.copy_down(blocks, keys)
    with pytest.raises(ValueError, match="2 blocks but 1 keys"):
        cache.tiers.copy_down([a, b], ["a"])
    assert cache.snapshot() == before


def test_tier_slots_are_ids_and_a_refused_pin_tells_the_policy_nothing():
    cache = make(gpu=4, host=2, host_cache_policy="arc")
    run(cache, ["a"])
    host = cache.tiers.host
    held_slot = host.slot_of("a")
    free_slot = 1 - held_slot
    before = cache.snapshot()
    for slots in ([held_slot, free_slot], [held_slot, 2], [held_slot, True], [-1]):
        with pytest.raises(ValueError, match="slot|block"):
            host.pin(slots)
    for bad in (True, -1, 2, 0.0):
        with pytest.raises(ValueError, match="block id"):
            host.drop(bad)
        with pytest.raises(ValueError, match="block id"):
            host.allocator.refresh(bad)
        with pytest.raises(ValueError, match="block id"):
            cache.gpu.refresh(bad if bad != 2 else 4)
    assert cache.snapshot() == before
    host.pin([held_slot])
    host.release([held_slot])
    cache.check_invariants()


def test_check_invariants_and_snapshot_cover_the_tiers():
    cache = make(gpu=4, host=2)
    run(cache, ["a"])
    snap = cache.snapshot()
    cache.tiers.host.allocator.refresh(cache.tiers.host.slot_of("a"))  # recency only
    assert cache.snapshot() == snap  # one candidate: nothing observable changed
    cache.tiers.host.store("z")
    assert cache.snapshot() != snap
    cache.tiers.host.allocator.incref(0)  # a slot left pinned
    with pytest.raises(InvariantError, match="pinned between operations"):
        cache.check_invariants()


# -- live duplicates ----------------------------------------------------------------------

def test_a_live_duplicate_takes_over_the_key_when_the_published_copy_is_evicted():
    cache = PagedKVCache(CacheConfig(block_size=BS, num_gpu_blocks=4,
                                     enable_prefix_caching=True))
    tokens = [1, 2, 3]
    first = cache.allocate(token_ids=tokens)
    second = cache.allocate(token_ids=tokens)  # computed at the same time: no hit
    cache.commit(first)
    cache.commit(second)
    published, duplicate = (cache.get(s).block_table[0] for s in (first, second))
    key = cache.gpu.block_keys[published]
    assert cache.gpu.duplicates() == {duplicate: key}
    cache.free(first)
    assert cache.evict_cached(1) == [published]
    # the key is still cached: by the live duplicate
    assert cache.gpu.block_keys[duplicate] == key and cache.gpu.duplicates() == {}
    assert cache.lookup_prefix(tokens) == 2
    stats = cache.stats()
    assert (stats.prefix_stored_blocks, stats.prefix_evictions, stats.prefix_cached_blocks) \
        == (2, 1, 1)
    cache.check_invariants()


def test_a_duplicate_whose_holder_lets_go_is_forgotten():
    cache = PagedKVCache(CacheConfig(block_size=BS, num_gpu_blocks=4,
                                     enable_prefix_caching=True))
    first, second = (cache.allocate(token_ids=[1, 2, 3]) for _ in range(2))
    cache.commit(first)
    cache.commit(second)
    cache.free(second)
    assert cache.gpu.duplicates() == {}
    cache.free(first)
    cache.evict_cached(1)
    assert cache.lookup_prefix([1, 2, 3]) == 0
    cache.check_invariants()


# -- errors and counts ------------------------------------------------------------------

def test_tier_errors_are_paged_kv_errors_with_what_was_done():
    err = TierLoadError("disk", 3, 2, "the file is missing")
    assert str(err) == "load failed on the disk tier slot 3: the file is missing"
    assert (err.tier, err.slot, err.done) == ("disk", 3, 2)


# -- the replay ---------------------------------------------------------------------------

def workload(*prompts: list) -> Workload:
    """Requests whose prompts are the given keys (512-token blocks) plus 100 tokens."""
    return Workload("tiny", [Request(i, float(i), len(keys) * 512 + 100, 1,
                                     block_keys=tuple(keys), key_block_size=512)
                             for i, keys in enumerate(prompts)])


TRACE = workload([1, 2, 3], [4, 5, 6], [1, 2, 3, 7], [4, 5], [1, 2, 3, 7, 8])


def test_replay_without_tiers_has_zero_tier_columns():
    result = replay(TRACE, 4, "lru")
    frame = result.requests
    assert list(frame.columns) == [
        "request_id", "prompt_len", "num_blocks", "hit_blocks", "hit_tokens",
        "gpu_hit_tokens", "host_hit_tokens", "disk_hit_tokens", "miss_tokens",
        "loaded_host", "loaded_disk", "stored_gpu_host", "stored_gpu_disk",
        "stored_host_disk", "measured"]
    assert frame["gpu_hit_tokens"].equals(frame["hit_tokens"])
    assert (frame[list(TIER_COLUMNS[2:])] == 0).all().all()
    assert (frame["miss_tokens"] == frame["prompt_len"] - frame["hit_tokens"]).all()
    assert result.tiers == TierSetting() and not result.tiers.enabled


@pytest.mark.parametrize("placement, hits, host, disk, moves", [
    # GPU of 4 blocks (requests 2 and 4 are cut to 4 keys, capped at 3 hits), host 4,
    # disk 8, every tier LRU. Derived by hand, request by request:
    # write-through: r2 finds 1 on the host, 2 3 on the disk (the host's 2 and 3 gave way
    # to 5 and 4 in r1); its loads copy 3, 2 up to the host and its computed 7 down to
    # both. r3 finds 4 5 on the disk. r4: 1 on the GPU, 2 on the host, 3 on the disk.
    ("write_through", [0, 0, 3, 2, 3], [0, 0, 1, 0, 1], [0, 0, 2, 2, 1],
     {"stored_gpu_host": [3, 3, 3, 2, 2], "stored_gpu_disk": [3, 3, 1, 0, 0]}),
    # write-back: r1's evictions 3 2 1 fill the host; r2 loads them and writes back 6 5 4
    # (the host's unpinned 6 and 5 go on to the disk); r3 finds 4 on the host, 5 on the
    # disk, and writes back 7 3 2 (3 2 1 cascade); r4: 1 on the GPU, 2 3 on the host
    ("write_back", [0, 0, 3, 2, 3], [0, 0, 3, 1, 2], [0, 0, 0, 1, 0],
     {"stored_gpu_host": [0, 3, 3, 3, 1], "stored_host_disk": [0, 0, 2, 3, 1]}),
    # selective: nothing is hit before r4 (1 on the GPU), which copies 1 to both tiers
    ("selective", [0, 0, 0, 0, 1], [0] * 5, [0] * 5,
     {"stored_gpu_host": [0, 0, 0, 0, 1], "stored_gpu_disk": [0, 0, 0, 0, 1]}),
])
def test_replay_reports_hits_by_tier_and_moves(placement, hits, host, disk, moves):
    result = replay(TRACE, 4, "lru", host_capacity=4, disk_capacity=8, placement=placement)
    frame = result.requests
    assert frame["hit_blocks"].tolist() == hits
    assert frame["host_hit_tokens"].tolist() == [512 * h for h in host]
    assert frame["disk_hit_tokens"].tolist() == [512 * d for d in disk]
    assert frame["loaded_host"].tolist() == host and frame["loaded_disk"].tolist() == disk
    for column in ("stored_gpu_host", "stored_gpu_disk", "stored_host_disk"):
        assert frame[column].tolist() == moves.get(column, [0] * 5), column
    rates = result.tier_hit_rates()
    assert sum(rates.values()) == pytest.approx(result.hit_rate)


def test_tiers_leave_the_gpu_hits_of_an_lru_replay_unchanged():
    """Loaded blocks are published on the GPU as computed ones would be, and an LRU GPU
    never keeps a block whose parent it evicted (a request releases its blocks tail
    first), so the GPU's hits are the same with or without tiers."""
    trace = workload(*[[1000 * s + j for j in range(t + 2)] for t in range(6) for s in range(4)])
    plain = replay(trace, 12, "lru").requests
    assert plain["hit_tokens"].sum() == 11 * 512
    for placement in ("write_through", "write_back", "selective"):
        tiered = replay(trace, 12, "lru", host_capacity=7, host_policy="arc",
                        disk_capacity=12, placement=placement).requests
        assert tiered["gpu_hit_tokens"].equals(plain["hit_tokens"]), placement
        assert tiered["hit_tokens"].sum() > plain["hit_tokens"].sum()


@pytest.mark.parametrize("placement", ["write_through", "write_back"])
@pytest.mark.parametrize("tier", ["host", "disk"])
def test_a_tier_that_never_evicts_reaches_the_unbounded_hit_rate(placement, tier):
    """Every block ever computed stays below the GPU: the hits are an unbounded cache's
    (when every prompt fits the GPU: here 8 blocks at most)."""
    trace = workload(*[[1000 * s + j for j in range(t + 2)] for t in range(6) for s in range(4)])
    unbounded = replay(trace, None, "lru").requests
    tiered = replay(trace, 8, "lru", placement=placement,
                    **{f"{tier}_capacity": unbounded_capacity(trace)}).requests
    assert tiered["hit_tokens"].equals(unbounded["hit_tokens"])
    assert tiered[f"{tier}_hit_tokens"].sum() > 0


def test_replay_refuses_bad_tier_arguments():
    with pytest.raises(ValueError, match="host_capacity must be an integer >= 0"):
        replay(TRACE, 4, host_capacity=-1)
    with pytest.raises(ValueError, match="disk_policy: unknown tier eviction policy 'belady'"):
        replay(TRACE, 4, disk_capacity=2, disk_policy="belady")
    with pytest.raises(ValueError, match="placement must be one of"):
        replay(TRACE, 4, host_capacity=2, placement="lazy")
    with pytest.raises(ValueError, match="tier_blocks: unknown column 'x'"):
        ReplayResult.from_hits(trace="t", policy="lru", capacity=1, block_size=1,
                               request_ids=[0], prompt_lens=[1], num_blocks=[1],
                               hit_blocks=[0], evictions=0, warmup=0.0,
                               tier_blocks={"x": [1]})
