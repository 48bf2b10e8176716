"""The manager's public surface: token ids checked where they enter, one admission call
(`try_allocate`), configuration checked at construction, consistent return types, and
the typed errors (metadata-only)."""

import numpy as np
import pytest

import paged_kv
from paged_kv import CacheConfig, OutOfBlocksError, PagedKVCache
from paged_kv.core.errors import (
    ConfigurationError,
    PagedKVError,
    SchemeStateError,
    SimulationError,
    UnservableRequestError,
)
from paged_kv.core.eviction import BeladyPolicy, FIFOPolicy, LRUPolicy, policy_names


def make(num_blocks=8, policy=None, **kw):
    config = CacheConfig(block_size=4, num_gpu_blocks=num_blocks, enable_prefix_caching=True,
                         **kw)
    return PagedKVCache(config, policy=policy)


BAD_TOKEN_IDS = [  # (token ids, what the message must name)
    ([1.5, 2.9, 3.2, 4.7, 5], "1.5"),  # truncated, these would hit [1, 2, 3, 4, 5]'s blocks
    (["a", "b"], "'a'"),
    ("abcd", "'abcd'"),
    ([1, 2, True], "True"),
    ([1, None], "None"),
    (np.array([1.0, 2.0]), "float64"),
    (np.array([[1, 2]]), "(1, 2)"),
    (5, "5"),
]


@pytest.mark.parametrize(("bad", "named"), BAD_TOKEN_IDS, ids=repr)
def test_token_ids_must_be_integers_wherever_they_enter(bad, named):
    cache = make()
    seq = cache.allocate(token_ids=[1, 2, 3, 4, 5])
    cache.commit(seq)
    before = cache.snapshot()
    calls = (
        lambda: cache.allocate(token_ids=bad),
        lambda: cache.try_allocate(token_ids=bad),
        lambda: cache.can_allocate(token_ids=bad),
        lambda: cache.lookup_prefix(bad),
        lambda: cache.append(seq, token_ids=bad),
        lambda: cache.prefix.token_keys(bad),
    )
    for call in calls:
        with pytest.raises(ValueError, match="token_ids") as err:
            call()
        assert named in str(err.value)
    assert cache.snapshot() == before


def test_numpy_integer_token_ids_are_accepted_as_ints():
    cache = make()
    a = cache.allocate(token_ids=np.arange(9, dtype=np.int32))
    cache.commit(a)
    b = cache.allocate(token_ids=[np.int64(t) for t in range(9)] + [7])
    assert cache.num_cached_tokens(b) == 8
    assert all(type(t) is int for t in cache.get(b).token_ids)
    cache.append(b, token_ids=np.array([3], dtype=np.uint8))
    assert cache.lookup_prefix(tuple(range(9))) == 8
    cache.check_invariants()


@pytest.mark.parametrize(("start", "end"), [(0.5, 3), (True, 3), (0, 2.0), ("0", 3)], ids=repr)
def test_positions_must_be_integers(start, end):
    cache = make()
    seq = cache.allocate(6)
    with pytest.raises(ValueError, match="positions must be integers"):
        cache.slot_mapping(seq, start, end)  # 0.5 must not be read as the slots of 0..2


def test_a_length_given_beside_token_ids_must_be_an_integer():
    cache = make()
    with pytest.raises(ValueError, match="num_tokens must be an integer >= 0, got '2'"):
        cache.allocate("2", token_ids=[1, 2])  # said "num_tokens=2 disagrees with 2 ..."
    seq = cache.allocate(token_ids=[1, 2])
    with pytest.raises(ValueError, match="got 1.0"):
        cache.append(seq, 1.0, token_ids=[3])  # 1.0 == 1: accepted
    assert cache.num_tokens(seq) == 2


def test_try_allocate_admits_or_returns_none_changing_nothing():
    cache = make(num_blocks=4, watermark_low=0.5, watermark_high=0.75)  # keeps 1 block free
    a = cache.try_allocate(token_ids=list(range(9)))  # 3 blocks
    assert a == 0 and cache.num_free_blocks == 1
    cache.commit(a)
    before = cache.snapshot()
    assert cache.try_allocate(8) is None  # 2 blocks, 1 free
    assert cache.try_allocate(4, watermark=True) is None  # would leave none free
    assert cache.snapshot() == before and cache.stats().allocation_failures == 2
    assert cache.stats().prefix_requests == 1  # refused prompts are not counted lookups
    b = cache.try_allocate(token_ids=[*range(8), 5])  # 2 hits + 1 new block
    assert b == 1 and cache.num_cached_tokens(b) == 8 and cache.num_free_blocks == 0
    with pytest.raises(ValueError, match="already a live sequence"):
        cache.try_allocate(1, seq_id=b)
    with pytest.raises(OutOfBlocksError) as err:
        cache.allocate(4)
    assert (err.value.needed, err.value.available) == (1, 0)


def test_try_allocate_hashes_and_matches_the_prompt_once(monkeypatch):
    cache = make()
    calls = []
    real = cache.gpu.match
    monkeypatch.setattr(cache.gpu, "match", lambda *a: calls.append(a) or real(*a))
    cache.try_allocate(block_keys=["x", "y"], num_tokens=9)
    assert len(calls) == 1


def test_an_unknown_policy_name_fails_in_the_config_listing_the_valid_names():
    with pytest.raises(ValueError, match="'nope'.*valid names: arc, belady, clock, fifo, "
                                         "length_aware, lfu, lru"):
        CacheConfig(eviction_policy="nope")
    with pytest.raises(ValueError, match="valid names"):
        CacheConfig(eviction_policy=3)
    assert CacheConfig(eviction_policy="FIFO").eviction_policy == "fifo"
    assert set(policy_names()) == {"arc", "belady", "clock", "fifo", "length_aware", "lfu",
                                   "lru"}


def test_a_policy_instance_must_agree_with_the_configured_name():
    with pytest.raises(ConfigurationError, match="'fifo' policy.*eviction_policy is 'lru'"):
        make(policy=FIFOPolicy())  # the config says lru (the default)
    with pytest.raises(ValueError, match="EvictionPolicy instance"):
        make(policy="fifo")
    fifo = FIFOPolicy()
    assert make(policy=fifo, eviction_policy="fifo").gpu.policy is fifo
    with pytest.raises(ValueError, match=r"BeladyPolicy\(accesses\)"):
        make(eviction_policy="belady")  # the name alone cannot build it


def test_an_empty_policy_is_still_true():
    belady = BeladyPolicy([])
    assert len(belady) == 0 and bool(belady) and bool(LRUPolicy())
    cache = PagedKVCache(CacheConfig(block_size=4, enable_prefix_caching=True,
                                     eviction_policy="belady"), policy=belady)
    assert cache.gpu.policy is belady


def test_evict_and_reset_return_the_block_ids_everywhere():
    cache = make()
    a = cache.allocate(block_keys=["x", "y"], num_tokens=9)
    cache.commit(a)
    cache.free(a)
    assert cache.prefix.evict(1) == [1]  # LRU: the chain's tail first
    assert cache.evict_cached(5) == [0]
    assert cache.reset_prefix_cache() == []
    plain = PagedKVCache(CacheConfig(block_size=4, num_gpu_blocks=4))  # caching off
    assert plain.prefix is None
    assert plain.evict_cached(2) == [] and plain.reset_prefix_cache() == []
    assert plain.stats().prefix_cached_blocks == 0


def test_typed_errors_and_the_public_exports():
    for name in ("ConfigurationError", "ImmutableBlockError", "NoHostPoolError",
                 "PrefixCacheInUseError", "PrefixCacheStats"):
        assert name in paged_kv.__all__ and hasattr(paged_kv, name)
    for error in (SimulationError, SchemeStateError, UnservableRequestError):
        assert issubclass(error, PagedKVError)
    assert issubclass(SchemeStateError, SimulationError)
    assert issubclass(paged_kv.ImmutableBlockError, ValueError)
    assert issubclass(ConfigurationError, ValueError)


def test_block_keys_must_be_a_sequence():
    cache = make()
    with pytest.raises(ValueError, match="block_keys must be a sequence"):
        cache.allocate(4, block_keys="ab")
    assert cache.allocate(8, block_keys=np.array([5, 6])) == 0


def test_the_manager_guide_lists_exactly_the_public_surface_of_the_manager():
    import re
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[1] / "docs" / "guide" / "manager.md").read_text()
    start = guide.index("What the manager offers")
    paragraph = guide[start:guide.index("\n\n", start)]
    named = set(re.findall(r"`(\w+)(?:\(\))?`", paragraph))
    cache = PagedKVCache(CacheConfig())
    public = {n for n in dir(cache) if not n.startswith("_")}
    not_members = {"PagedKVCache", "OutOfBlocksError", "PagedKVError", "ValueError",
                   "UnknownSequenceError", "CacheStats", "PrefixCache", "KVStorage"}
    assert public == named - not_members
