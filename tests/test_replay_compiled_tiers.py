"""The compiled engine with tiers below the GPU against the manager replay: identical
per-request frames (hits by tier, blocks loaded and copied down) for every placement,
LRU and ARC tiers, both shipped traces, several capacities."""

import itertools

import numpy as np
import pytest

from paged_kv.core.eviction import policy_names
from paged_kv.core.tier import PLACEMENTS
from paged_kv.sim import Request, Workload, load_trace
from paged_kv.sim.replay import replay
from paged_kv.sim.replay_arrays import TraceArrays
from paged_kv.sim.replay_compiled import compile_engine, compiled_replay, replay_hit_blocks
from paged_kv.sim.replay_compiled_tiers import TIER_POLICY_CODES

HEAD = 300
#: (GPU, host, disk) capacities in blocks: host only, disk only, both, tiers smaller
#: than the GPU (the conversation trace's reuse is far apart: only big tiers serve it)
TIERS = [(8, 3000, 0), (25, 0, 4000), (25, 300, 4000), (40, 10, 20)]


@pytest.fixture(scope="module", params=["mooncake-conversation", "mooncake-synthetic"])
def trace(request):
    workload = load_trace(request.param).head(HEAD)
    compile_engine()
    return workload, TraceArrays.from_workload(workload)


def assert_same(workload, arrays, capacity, policy, **tiers):
    expected = replay(workload, capacity, policy, warmup=0.1, **tiers)
    got = compiled_replay(arrays, capacity, policy, warmup=0.1, **tiers)
    assert got.requests.equals(expected.requests), (capacity, policy, tiers)
    assert got.evictions == expected.evictions
    assert got.tier_summary() == expected.tier_summary()
    return got


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("tier_policy", sorted(TIER_POLICY_CODES))
def test_identical_frames_to_the_manager(trace, placement, tier_policy):
    workload, arrays = trace
    lower = 0
    for gpu, host, disk in TIERS:
        got = assert_same(workload, arrays, gpu, "lru", host_capacity=host,
                          disk_capacity=disk, host_policy=tier_policy,
                          disk_policy=tier_policy, placement=placement)
        lower += int(got.requests[["host_hit_tokens", "disk_hit_tokens"]].to_numpy().sum())
    # the tiers served something (selective copies only blocks hit on the GPU, which the
    # conversation trace's first requests barely have)
    assert lower > 0 or (placement == "selective" and workload.name.endswith("conversation"))


@pytest.mark.parametrize("policy", sorted(set(policy_names()) - {"lru"}))
def test_identical_frames_with_every_gpu_policy(trace, policy):
    workload, arrays = trace
    # the manager's offline policies are slow: one placement each (LRU covers them all)
    offline = policy in ("belady", "length_aware")
    for placement in ("write_back",) if offline else PLACEMENTS:
        assert_same(workload, arrays, 20, policy, host_capacity=300, disk_capacity=3000,
                    host_policy="arc", placement=placement)


def test_no_tiers_is_the_one_tier_replay(trace):
    _, arrays = trace
    plain = compiled_replay(arrays, 30, "arc")
    hits, evictions = replay_hit_blocks(arrays, 30, "arc")
    assert plain.requests["hit_blocks"].tolist() == hits.tolist()
    assert plain.evictions == evictions
    frame = plain.requests
    assert (frame["gpu_hit_tokens"] == frame["hit_tokens"]).all()
    assert not frame[["host_hit_tokens", "disk_hit_tokens", "stored_gpu_host"]].any().any()


def hand_trace(requests, block_size=4):
    workload = Workload("hand", [Request(i, float(i), n, 1, keys, block_size)
                                 for i, (n, keys) in enumerate(requests)])
    return workload, TraceArrays.from_workload(workload)


def test_a_store_into_a_tier_full_of_pinned_keys_is_refused():
    # GPU 2 blocks, host 1, write-back. Request 0 caches 1, 2; request 1 evicts them to
    # the host (2, then 1, which evicts 2); request 2 hits 1 in the host (pinned) and
    # evicts 6 and 5 from the GPU: the host is full of a pinned key, so both are dropped.
    workload, arrays = hand_trace([(9, (1, 2, 3)), (9, (5, 6, 7)), (8, (1, 9))])
    got = assert_same(workload, arrays, 2, "lru", host_capacity=1, placement="write_back")
    frame = got.requests
    assert frame["stored_gpu_host"].tolist() == [0, 2, 0]
    assert frame["host_hit_tokens"].tolist() == [0, 0, 4]
    assert frame["gpu_hit_tokens"].tolist() == [0, 0, 0]


def test_hand_built_cases_at_tiny_capacities():
    # repeated prompts, the last-token cap, broken chains, prompts longer than the GPU
    requests = [
        (9, (1, 2, 3)), (8, (1, 2)), (8, (1, 2)), (13, (5, 2, 3, 4)), (9, (1, 2, 6)),
        (30, (1, 2, 3, 4, 7, 8, 9, 10)), (16, (1, 2, 3, 11)), (5, (1, 12)), (9, (1, 2, 3)),
        (17, (5, 2, 3, 4, 13)), (13, (1, 2, 6, 14)),
    ]
    workload, arrays = hand_trace(requests)
    served = 0
    for gpu, host, disk in itertools.product((1, 2, 3), (0, 1, 3), (0, 2, 5)):
        if not host and not disk:
            continue
        for placement in PLACEMENTS:
            for policy in ("lru", "fifo", "arc"):
                got = assert_same(workload, arrays, gpu, policy, host_capacity=host,
                                  disk_capacity=disk, host_policy="arc" if gpu == 2 else "lru",
                                  placement=placement)
                served += int(got.requests["host_hit_tokens"].sum()
                              + got.requests["disk_hit_tokens"].sum())
    assert served > 0


def test_tier_policies_the_compiled_engine_does_not_run_are_refused(trace):
    workload, arrays = trace
    with pytest.raises(ValueError, match="host_policy 'lfu'.*manager replay"):
        compiled_replay(arrays, 10, "lru", host_capacity=5, host_policy="lfu")
    with pytest.raises(ValueError, match="placement"):
        compiled_replay(arrays, 10, "lru", host_capacity=5, placement="write_around")
    with pytest.raises(ValueError, match="host_capacity"):
        compiled_replay(arrays, 10, "lru", host_capacity=-1)
    # a policy is not checked for a tier that is not there
    assert compiled_replay(arrays, 10, "lru", disk_policy="clock").hit_rate >= 0
    replay(workload.head(20), 10, "lru", host_capacity=5, host_policy="lfu")  # the manager


def test_tiers_only_add_hits_to_an_lru_gpu(trace):
    _, arrays = trace
    alone = compiled_replay(arrays, 25, "lru").requests
    for placement in PLACEMENTS:
        tiered = compiled_replay(arrays, 25, "lru", host_capacity=60, disk_capacity=200,
                                 placement=placement).requests
        assert np.array_equal(tiered["gpu_hit_tokens"], alone["hit_tokens"])
        assert (tiered["hit_tokens"] >= alone["hit_tokens"]).all()
