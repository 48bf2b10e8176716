"""PagedKVCache metadata: allocate, append, fork/COW, free, swap, pressure, stats, errors.

These run in metadata-only mode (no storage); tests/test_cache_data.py checks the bytes.
"""

import pytest

from paged_kv import CacheConfig, OutOfBlocksError, UnknownSequenceError
from paged_kv.cache import PagedKVCache
from paged_kv.core.errors import (
    ConfigurationError,
    MetadataOnlyError,
    NoHostPoolError,
    SequenceStateError,
)
from paged_kv.core.pressure import PressureLevel


def make(num_blocks=8, block_size=4, host=0, **kw):
    return PagedKVCache(
        CacheConfig(block_size=block_size, num_gpu_blocks=num_blocks, num_host_blocks=host, **kw)
    )


def test_allocate_takes_ceil_blocks_and_append_only_at_boundaries():
    cache = make()
    a = cache.allocate(6)
    assert cache.get(a).block_table == (0, 1)
    cache.append(a)  # 7 tokens: still 2 blocks
    cache.append(a)  # 8
    assert cache.get(a).block_table == (0, 1) and cache.num_free_blocks == 6
    cache.append(a)  # 9: crosses into a third block
    assert cache.get(a).block_table == (0, 1, 2) and cache.get(a).num_tokens == 9
    cache.append(a, 8)  # 17 tokens -> 5 blocks
    assert cache.get(a).block_table == (0, 1, 2, 3, 4)
    cache.check_invariants()


def test_free_returns_blocks_tail_first_and_ids_are_reused():
    cache = make()
    a = cache.allocate(12)
    b = cache.allocate(4)
    cache.free(a)
    assert cache.gpu.free_queue() == [4, 5, 6, 7, 2, 1, 0]
    assert cache.handles() == [b]
    with pytest.raises(UnknownSequenceError, match=f"sequence {a}"):
        cache.free(a)
    cache.check_invariants()


def test_fork_shares_and_cow_copies_once_per_writer():
    cache = make()
    a = cache.allocate(6)
    b = cache.fork(a)
    assert cache.gpu.ref_counts[:2] == [2, 2]
    cache.append(b)  # b writes into the shared partial block 1: copy it
    assert cache.get(b).block_table == (0, 2) and cache.get(a).block_table == (0, 1)
    assert cache.gpu.ref_counts[:3] == [2, 1, 1]
    cache.append(b)  # already private: no second copy
    cache.append(a)  # a is now the only holder of block 1: no copy either
    assert cache.stats().cow_copies == 1
    cache.check_invariants()


def test_full_shared_block_is_never_copied():
    cache = make()
    a = cache.allocate(8)
    b = cache.fork(a)
    cache.append(b)  # crosses a boundary: a new block, the two full ones stay shared
    assert cache.get(b).block_table == (0, 1, 2)
    assert cache.gpu.ref_counts[:3] == [2, 2, 1]
    assert cache.stats().cow_copies == 0


def test_three_way_fork_copies_for_each_writer_but_the_last():
    cache = make()
    a = cache.allocate(2)
    b, c = cache.fork(a), cache.fork(a)
    for s in (a, b, c):
        cache.append(s)
    # a and b each copy; c is then the sole holder of the original block
    assert cache.stats().cow_copies == 2
    assert cache.get(c).block_table == (0,)
    cache.check_invariants()


def test_out_of_blocks_changes_nothing():
    cache = make(num_blocks=3)
    a = cache.allocate(8)
    before = cache.snapshot()
    with pytest.raises(OutOfBlocksError) as err:
        cache.allocate(5)
    assert (err.value.needed, err.value.available) == (2, 1)
    assert cache.snapshot() == before
    b = cache.fork(a)
    cache.append(b, 4)  # takes the last block
    before = cache.snapshot()
    with pytest.raises(OutOfBlocksError):
        cache.append(a, 1)
    assert cache.snapshot() == before
    assert cache.stats().allocation_failures == 2
    assert not cache.can_append(a) and not cache.can_allocate(1)


def test_bad_arguments_are_value_errors_that_change_nothing():
    cache = make()
    a = cache.allocate(3)
    before = cache.snapshot()
    for call in (
        lambda: cache.allocate(-1),
        lambda: cache.allocate(2, token_ids=[1, 2, 3]),
        lambda: cache.allocate(),
        lambda: cache.allocate(1, seq_id=a),
        lambda: cache.append(a, -2),
        lambda: cache.allocate(4, block_keys=[1, 2]),
    ):
        with pytest.raises(ValueError):
            call()
    assert cache.snapshot() == before
    with pytest.raises(UnknownSequenceError):
        cache.fork(99)
    with pytest.raises(MetadataOnlyError):
        cache.read_kv(a, 0)


def test_swap_out_and_in_moves_tables_between_pools():
    cache = make(num_blocks=4, host=4)
    a = cache.allocate(6)
    b = cache.allocate(4)
    cache.swap_out(a)
    assert cache.get(a).location == "host" and cache.get(a).block_table == (0, 1)
    assert cache.num_free_blocks == 3 and cache.host.num_used == 2
    with pytest.raises(SequenceStateError, match="swap_in"):
        cache.append(a)
    cache.swap_in(a)
    assert cache.get(a).location == "gpu" and cache.host.num_used == 0
    # GPU blocks 3, then 0 (a's old block 1 was freed tail first: 1 then 0)
    assert cache.get(a).block_table == (3, 1)
    stats = cache.stats()
    assert (stats.swap_outs, stats.swap_ins, stats.blocks_swapped_out) == (1, 1, 2)
    cache.free(b)
    cache.check_invariants()


def test_swap_of_forked_group_moves_shared_blocks_once():
    cache = make(num_blocks=4, host=3)
    a = cache.allocate(6)
    b = cache.fork(a)
    cache.swap_out([a, b])
    assert cache.host.num_used == 2 and cache.host.ref_counts[:2] == [2, 2]
    assert cache.num_free_blocks == 4
    cache.swap_in([a, b])
    assert cache.gpu.ref_counts.count(2) == 2
    cache.check_invariants()


def test_swap_without_room_changes_nothing():
    cache = make(num_blocks=4, host=1)
    a = cache.allocate(6)
    before = cache.snapshot()
    with pytest.raises(OutOfBlocksError, match="host"):
        cache.swap_out(a)
    assert cache.snapshot() == before
    assert not cache.can_swap_out(a)


def test_swap_without_a_host_pool_is_a_configuration_error():
    cache = make()
    s, empty = cache.allocate(1), cache.allocate(0)
    before = cache.snapshot()
    for call in (lambda: cache.swap_out(s), lambda: cache.swap_out(empty),
                 lambda: cache.swap_out([]), lambda: cache.can_swap_out(s),
                 lambda: cache.swap_in([]), lambda: cache.can_swap_in([])):
        with pytest.raises(NoHostPoolError, match="no host pool.*num_host_blocks"):
            call()
    assert cache.snapshot() == before and cache.stats().allocation_failures == 0
    assert issubclass(NoHostPoolError, ConfigurationError)
    assert not issubclass(NoHostPoolError, OutOfBlocksError)


def test_swap_in_without_room_changes_nothing():
    cache = make(num_blocks=2, host=2)
    a = cache.allocate(8)
    cache.swap_out(a)
    cache.allocate(1)
    before = cache.snapshot()
    with pytest.raises(OutOfBlocksError, match="gpu"):
        cache.swap_in(a)
    assert cache.snapshot() == before


def test_pressure_callbacks_fire_on_level_changes():
    cache = make(num_blocks=10, watermark_low=0.5, watermark_high=0.9)
    seen = []
    cache.on_pressure_change(lambda old, new, usage: seen.append((old, new, usage)))
    a = cache.allocate(16)  # 4 of 10 blocks: still NORMAL
    assert seen == []
    b = cache.allocate(4)  # 5/10 -> ELEVATED
    c = cache.allocate(16)  # 9/10 -> CRITICAL
    cache.free(c)  # 5/10 -> ELEVATED
    cache.free(b)  # 4/10 -> NORMAL
    assert seen == [
        (PressureLevel.NORMAL, PressureLevel.ELEVATED, 0.5),
        (PressureLevel.ELEVATED, PressureLevel.CRITICAL, 0.9),
        (PressureLevel.CRITICAL, PressureLevel.ELEVATED, 0.5),
        (PressureLevel.ELEVATED, PressureLevel.NORMAL, 0.4),
    ]
    assert cache.pressure == PressureLevel.NORMAL
    cache.free(a)


def test_watermark_admission_keeps_headroom():
    cache = make(num_blocks=10, watermark_low=0.5, watermark_high=0.8)
    assert cache.can_allocate(32)  # 8 blocks fit
    assert cache.can_allocate(32, watermark=True)  # and leave 2 = 20% free
    assert not cache.can_allocate(36, watermark=True)
    assert cache.can_allocate(36)


def test_stats_count_unique_tokens_and_utilization():
    cache = make()
    a = cache.allocate(6)
    cache.fork(a)
    stats = cache.stats()
    # two blocks, shared: 6 distinct tokens in 8 slots
    assert (stats.gpu_used_blocks, stats.gpu_tokens, stats.utilization) == (2, 6, 0.75)
    assert (stats.num_sequences, stats.gpu_free_blocks) == (2, 6)


def test_metadata_only_at_realistic_scale():
    # OPT-13B on an A100-40GB: 12 GiB of KV = 15.7k token slots
    from paged_kv import blocks_for_bytes, get_model

    opt = get_model("opt-13b")
    blocks = blocks_for_bytes(12 * 2**30, opt, 16)
    cache = PagedKVCache(CacheConfig(block_size=16, num_gpu_blocks=blocks), opt, storage=False)
    assert blocks * 16 == 15_728
    seqs = [cache.allocate(500) for _ in range(30)]
    assert cache.stats().gpu_used_bytes == 30 * 32 * 16 * 819_200
    for s in seqs:
        cache.free(s)
    big = make(num_blocks=100_000, block_size=16)
    ids = [big.allocate(1600) for _ in range(1000)]
    assert big.num_free_blocks == 0
    for s in ids:
        big.free(s)
    assert big.num_free_blocks == 100_000


def test_invariant_checker_catches_corruption():
    from paged_kv.core.errors import InvariantError

    cache = make()
    a = cache.allocate(5)
    cache.check_invariants()
    cache.gpu.ref_counts[0] += 1  # simulate a bug
    with pytest.raises(InvariantError, match="ref_count 2 but held by 1"):
        cache.check_invariants()
    cache.gpu.ref_counts[0] -= 1
    cache._seqs.get(a).table.num_tokens = 9
    with pytest.raises(InvariantError, match="2 blocks for 9 tokens"):
        cache.check_invariants()


def test_ten_allocate_free_cycles_leak_nothing():
    cache = make(num_blocks=6)
    for i in range(10):
        s = cache.allocate(5 + i)
        cache.append(s, 3)
        cache.free(s)
        assert cache.num_free_blocks == 6
    cache.check_invariants()


def test_append_cost_counts_cow_once_per_writer_but_the_last():
    cache = make(num_blocks=10)
    a = cache.allocate(6)
    kids = [cache.fork(a) for _ in range(2)]
    group = [*kids, a]
    # three holders of the partial block: two copies; no boundary crossed by one token
    assert cache.append_cost(group, 1) == 2
    assert cache.append_cost(group, 3) == 2 + 3  # and each crosses into a new block
    free = cache.num_free_blocks
    cache.append_many(group, 1)
    assert cache.num_free_blocks == free - 2 and cache.stats().cow_copies == 2
    assert cache.get(a).block_table == (0, 1)  # the last holder kept the original
    cache.check_invariants()


def test_append_many_is_all_or_nothing():
    cache = make(num_blocks=3)
    a = cache.allocate(4)
    b = cache.allocate(4)
    before = cache.snapshot()
    with pytest.raises(OutOfBlocksError):
        cache.append_many([a, b], 1)  # needs 2, 1 free
    assert cache.snapshot() == before
    with pytest.raises(ValueError, match="twice"):
        cache.append_many([a, a], 1)


def test_repeated_block_keys_and_fractional_positions_are_refused():
    cache = PagedKVCache(CacheConfig(block_size=4, num_gpu_blocks=8, enable_prefix_caching=True))
    with pytest.raises(ValueError, match="repeat a key"):
        cache.allocate(13, block_keys=["x", "y", "x", "y"])
    assert len(cache) == 0


def test_watermark_reserve_is_exact():
    config = CacheConfig(num_gpu_blocks=100, watermark_low=0.1, watermark_high=0.29)
    assert config.watermark_reserve_blocks == 71  # 0.29 * 100 is 28.999... in floats


def test_removing_a_pressure_callback():
    cache = make(num_blocks=10, watermark_low=0.5, watermark_high=0.9)
    seen = []
    callback = cache.on_pressure_change(lambda old, new, usage: seen.append(new))
    cache.remove_pressure_callback(callback)
    cache.allocate(40)
    assert seen == []
    with pytest.raises(ValueError, match="not a registered"):
        cache.remove_pressure_callback(callback)
