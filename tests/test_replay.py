"""Trace replay through the manager: hit rates against independent references, warmup,
Belady, the capacity rule for prompts longer than the cache, errors."""

import importlib.util
from pathlib import Path

import pytest

from paged_kv.sim import Request, Workload, load_trace
from paged_kv.sim.replay import replay, unbounded_capacity
from paged_kv.sim.replay_sweep import sweep

_spec = importlib.util.spec_from_file_location(
    "_minimal_lru", Path(__file__).resolve().parents[1] / "benchmarks" / "_minimal_lru.py"
)
_minimal = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_minimal)


@pytest.fixture(scope="module")
def conversation():
    return load_trace("mooncake-conversation")


def unbounded_reference(requests, block_size):
    """Longest previously seen prefix of full blocks, capped so the last token is computed."""
    seen, hit = set(), 0
    for r in requests:
        cap = (r.prompt_len - 1) // block_size
        k = 0
        while k < cap and r.block_keys[k] in seen:
            k += 1
        hit += k * block_size
        seen.update(r.block_keys[: r.prompt_len // block_size])
    return hit


def test_unbounded_replay_matches_the_set_reference(conversation):
    result = replay(conversation, None, "lru")
    total = sum(r.prompt_len for r in conversation)
    assert result.requests["hit_tokens"].sum() == unbounded_reference(conversation, 512)
    assert result.hit_rate == pytest.approx(0.373379905854133, abs=1e-12)
    assert result.hit_rate == result.requests["hit_tokens"].sum() / total
    assert result.evictions == 0


@pytest.mark.parametrize("capacity", [300, 3000])
def test_lru_replay_matches_a_minimal_ordered_dict_loop(conversation, capacity):
    head = conversation.head(3000)
    result = replay(head, capacity, "lru")
    expected = _minimal.minimal_lru_replay(list(head), capacity, 512)
    assert result.requests["hit_tokens"].sum() == expected
    assert result.evictions > 0


def test_warmup_leaves_leading_requests_out(conversation):
    head = conversation.head(1000)
    full = replay(head, 2000, "lru")
    warm = replay(head, 2000, "lru", warmup=0.25)
    rows = full.requests.iloc[250:]
    assert warm.warmup_requests == 250
    assert warm.hit_rate == rows["hit_tokens"].sum() / rows["prompt_len"].sum()
    assert (warm.requests["hit_blocks"] == full.requests["hit_blocks"]).all()


def test_belady_is_an_upper_bound(conversation):
    head = conversation.head(1500)
    rates = {p: replay(head, 400, p).hit_rate for p in ("lru", "fifo", "lfu", "belady")}
    assert rates["belady"] >= max(rates.values())
    assert rates["belady"] > rates["lru"]


def test_hand_built_trace():
    bs = 4
    reqs = [
        Request(0, 0.0, 9, 1, (1, 2, 3), bs),   # nothing cached yet
        Request(1, 1.0, 9, 1, (1, 2, 7), bs),   # shares blocks 1, 2: 8 tokens
        Request(2, 2.0, 8, 1, (1, 2), bs),      # fully cached: capped at 1 block
    ]
    result = replay(Workload("hand", reqs), None, "lru")
    assert list(result.requests["hit_tokens"]) == [0, 8, 4]
    assert result.hit_rate == pytest.approx(12 / 26)
    assert unbounded_capacity(Workload("hand", reqs)) == 4 + 3


def test_bad_arguments(conversation):
    head = conversation.head(10)
    with pytest.raises(ValueError, match="valid names"):
        replay(head, 100, "random")
    with pytest.raises(ValueError, match="capacity must be an integer in"):
        replay(head, 0, "lru")
    with pytest.raises(ValueError, match="warmup"):
        replay(head, 100, "lru", warmup=1.0)
    with pytest.raises(ValueError, match="block keys"):
        replay(load_trace("azure-conv", limit=5), 100, "lru")


def test_a_prompt_longer_than_the_cache_caches_what_fits():
    bs = 4
    reqs = [
        Request(0, 0.0, 18, 1, (1, 2, 3, 4, 5), bs),  # 5 blocks > 3: served as 12 tokens
        Request(1, 1.0, 18, 1, (1, 2, 3, 4, 5), bs),  # hits 2 blocks (the third is capped)
        Request(2, 2.0, 9, 1, (1, 2, 9), bs),         # fits: hits 1, 2
        Request(3, 3.0, 5, 1, (1, 7), bs),             # fits: hits 1
    ]
    result = replay(Workload("long", reqs), 3, "lru")
    assert list(result.requests["hit_blocks"]) == [0, 2, 2, 1]
    assert result.hit_rate == pytest.approx((0 + 8 + 8 + 4) / (18 + 18 + 9 + 5))
    # a one-block cache: every prompt is its first block, always recomputed
    assert replay(Workload("long", reqs), 1, "lru").requests["hit_blocks"].sum() == 0


def test_sweep_has_a_row_per_run(conversation):
    frame = sweep(conversation.head(200), [500, None], ["lru", "fifo"], progress=False,
                  engine="manager", workers=1)
    assert list(frame["policy"]) == ["lru", "lru", "fifo", "fifo"]
    assert list(frame["capacity"].isna()) == [False, True, False, True]
    assert frame["hit_rate"].between(0, 1).all()
