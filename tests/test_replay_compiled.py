"""The compiled replay engine against the manager replay: identical per-request hits.

By default each Mooncake trace is cut to its first requests (CI time); set
``PAGED_KV_FULL_TRACES=1`` to compare the full traces (a few minutes).
"""

import os

import numpy as np
import pytest

from paged_kv.core.eviction import policy_names
from paged_kv.sim import Request, Workload, load_trace
from paged_kv.sim.replay import replay
from paged_kv.sim.replay_arrays import NEVER, TraceArrays
from paged_kv.sim.replay_compiled import (
    POLICY_CODES,
    _replay_kernel,
    compile_engine,
    compiled_replay,
)

FULL = os.environ.get("PAGED_KV_FULL_TRACES", "") not in ("", "0")
HEAD = None if FULL else 700
#: from a cache smaller than most prompts (the capacity rule) to one that never evicts
CAPACITIES = [2, 25, 300, 3000, None] if not FULL else [2, 100, 1000, 10000, 50000, None]


pytestmark = pytest.mark.slow  # the first test compiles the replay engine (Numba JIT)


@pytest.fixture(scope="module", params=["mooncake-conversation", "mooncake-synthetic"])
def trace(request):
    workload = load_trace(request.param)
    if HEAD is not None:
        workload = workload.head(HEAD)
    compile_engine()
    return workload, TraceArrays.from_workload(workload)


def test_every_policy_has_a_kernel():
    assert set(POLICY_CODES) == set(policy_names())


@pytest.mark.parametrize("policy", sorted(POLICY_CODES))
def test_identical_hits_to_the_manager(trace, policy):
    workload, arrays = trace
    for capacity in CAPACITIES:
        expected = replay(workload, capacity, policy)
        got = compiled_replay(arrays, capacity, policy)
        assert np.array_equal(got.requests["hit_tokens"], expected.requests["hit_tokens"]), (
            policy, capacity)
        assert got.evictions == expected.evictions, (policy, capacity)
        assert got.hit_rate == expected.hit_rate
        assert got.requests.equals(expected.requests)
    if policy != "belady":
        assert got.hit_rate > 0


def test_warmup_and_result_fields_match(trace):
    workload, arrays = trace
    a = replay(workload, 400, "lfu", warmup=0.3)
    b = compiled_replay(arrays, 400, "lfu", warmup=0.3)
    assert (a.warmup_requests, a.hit_rate, a.block_hit_rate) == (
        b.warmup_requests, b.hit_rate, b.block_hit_rate)
    assert a.summary() == b.summary()


def hand_trace(requests, block_size=4):
    workload = Workload("hand", [Request(i, float(i), n, 1, keys, block_size)
                                 for i, (n, keys) in enumerate(requests)])
    return workload, TraceArrays.from_workload(workload)


def test_hand_built_cases_for_every_policy():
    # repeated prompts, a prompt that is a multiple of the block size (the cap), a key
    # cached but not hit (the chain broke before it), and prompts longer than the cache
    requests = [
        (9, (1, 2, 3)), (8, (1, 2)), (8, (1, 2)), (13, (5, 2, 3, 4)), (9, (1, 2, 6)),
        (30, (1, 2, 3, 4, 7, 8, 9, 10)), (16, (1, 2, 3, 11)), (5, (1, 12)), (9, (1, 2, 3)),
    ]
    workload, arrays = hand_trace(requests)
    for policy in POLICY_CODES:
        for capacity in (1, 2, 3, 4, 6, None):
            expected = replay(workload, capacity, policy).requests["hit_blocks"].tolist()
            got = compiled_replay(arrays, capacity, policy).requests["hit_blocks"].tolist()
            assert got == expected, (policy, capacity)


def test_one_compiled_signature_for_every_policy_and_trace(trace):
    # compile_engine's tiny trace (dense int64 keys, cast to int32), a shipped trace and a
    # hand-built one, every policy (read-only stand-ins for the derived arrays a policy
    # does not use), with tiers and without: the kernel compiles once (about 45 s cold)
    _, arrays = trace
    _, hand = hand_trace([(9, (1, 2, 3)), (8, (1, 2))])
    for policy in POLICY_CODES:
        for each in (arrays, hand):
            compiled_replay(each, 3, policy)
            compiled_replay(each, 3, policy, host_capacity=2, host_policy="arc",
                            disk_capacity=2, placement="write_back")
    assert len(_replay_kernel.signatures) == 1, _replay_kernel.signatures


def test_trace_arrays_derived_arrays():
    _, arrays = hand_trace([(9, (10, 20, 30)), (8, (10, 20)), (9, (10, 40, 50))])
    assert arrays.keys.tolist() == [0, 1, 2, 0, 1, 0, 3, 4]
    assert arrays.offsets.tolist() == [0, 3, 5, 8]
    assert arrays.next_access.tolist() == [3, 4, NEVER, 5, NEVER, NEVER, NEVER, NEVER]
    assert arrays.depth.tolist() == [0, 1, 2, 1, 2]
    assert arrays.unbounded_capacity() == 5 + 3
    assert arrays.head(2).num_keys == 3
    same = hand_trace([(9, (7, 8, 9)), (8, (7, 8)), (9, (7, 1, 2))])[1]
    assert same.checksum == arrays.checksum  # interned: key values do not matter
    assert hand_trace([(9, (7, 8, 9)), (8, (7, 8))])[1].checksum != arrays.checksum


def test_trace_arrays_built_from_raw_keys_are_interned():
    # raw (sparse) keys are interned: otherwise depth would have 5 entries for num_keys 10
    # (the kernel would read past its end for LengthAware) and the checksum would differ
    _, interned = hand_trace([(9, (10, 20, 30)), (8, (10, 20)), (9, (10, 40, 50))])
    raw = TraceArrays("raw", interned.block_size, interned.offsets,
                      np.array([9, 7, 5, 9, 7, 9, 3, 1]), interned.prompt_lens,
                      interned.request_ids)
    assert raw.keys.tolist() == interned.keys.tolist() == [0, 1, 2, 0, 1, 0, 3, 4]
    assert raw.num_keys == len(raw.depth) == 5
    assert raw.checksum == interned.checksum
    with pytest.raises(ValueError, match="must be integers"):  # silently truncated before
        TraceArrays("bad", 4, np.array([0, 1]), np.array([0.5]), np.array([4]), np.array([0]))


def test_trace_arrays_refuse_bad_traces():
    with pytest.raises(ValueError, match="repeats a block key"):
        TraceArrays("bad", 4, np.array([0, 2]), np.array([3, 3]), np.array([8]),
                    np.array([0]))
    with pytest.raises(ValueError, match="request 5: 3 block keys for 8 prompt tokens"):
        TraceArrays("bad", 4, np.array([0, 3]), np.array([0, 1, 2]), np.array([8]),
                    np.array([5]))
    with pytest.raises(ValueError, match="no block keys"):
        TraceArrays.from_workload(load_trace("azure-conv", limit=3))


def test_compiled_replay_refuses_bad_arguments(trace):
    _, arrays = trace
    with pytest.raises(ValueError, match="valid names"):
        compiled_replay(arrays, 10, "mru")
    with pytest.raises(ValueError, match="capacity"):
        compiled_replay(arrays, 0, "lru")
    with pytest.raises(ValueError, match="warmup"):
        compiled_replay(arrays, 10, "lru", warmup=1.5)
