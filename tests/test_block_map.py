"""Block maps: exact per-block codes and fill counts on hand-built scenarios.

The expected block ids follow from the allocator's documented order: uncached free
blocks are taken from the left of the free queue (initially 0, 1, 2, ...), a freed
uncached block joins its right end, and a sequence's blocks are freed tail first.
"""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from matplotlib.colors import to_rgb

from paged_kv.cache import PagedKVCache
from paged_kv.core.config import CacheConfig
from paged_kv.core.errors import InvariantError
from paged_kv.plots import BLOCK_MAP_COLORS, plot_block_map
from paged_kv.studies.block_map import (
    EVICTABLE,
    FREE,
    SHARED,
    BlockMapRecorder,
    block_fill,
    block_states,
    scripted_serving,
)

F, E, S = FREE, EVICTABLE, SHARED


def _cache(**kw) -> PagedKVCache:
    return PagedKVCache(CacheConfig(block_size=4, num_gpu_blocks=8, **kw))


def test_codes_are_distinct_and_negative():
    assert len({FREE, EVICTABLE, SHARED}) == 3
    assert max(FREE, EVICTABLE, SHARED) < 0


def test_fork_cow_prefix_hit_and_eviction_step_by_step():
    cache = _cache(enable_prefix_caching=True)
    assert block_states(cache).tolist() == [F] * 8

    a = cache.allocate(token_ids=list(range(10)))  # blocks 0, 1 full; 2 holds 2 tokens
    cache.commit(a)  # computed: blocks 0 and 1 are published
    assert a == 0
    assert block_states(cache).tolist() == [0, 0, 0, F, F, F, F, F]
    assert block_fill(cache).tolist() == [4, 4, 2, 0, 0, 0, 0, 0]

    b = cache.fork(a)  # shares all three blocks
    assert b == 1
    assert block_states(cache).tolist() == [S, S, S, F, F, F, F, F]
    # one owner for both samples: the blocks are that owner's, not "shared"
    assert block_states(cache, {a: 7, b: 7}).tolist() == [7, 7, 7, F, F, F, F, F]
    assert block_fill(cache).tolist() == [4, 4, 2, 0, 0, 0, 0, 0]

    cache.append(b, token_ids=[10])  # COW: b copies the partial block 2 into block 3
    assert cache.get(b).block_table == (0, 1, 3)
    assert block_states(cache).tolist() == [S, S, a, b, F, F, F, F]
    assert block_fill(cache).tolist() == [4, 4, 2, 3, 0, 0, 0, 0]

    cache.free(a)  # block 2 (partial, uncached) is free; 0 and 1 stay with b
    assert block_states(cache).tolist() == [b, b, F, b, F, F, F, F]
    assert block_fill(cache).tolist() == [4, 4, 0, 3, 0, 0, 0, 0]

    c = cache.allocate(token_ids=[*range(8), 50, 51])  # hits blocks 0 and 1, new block 4
    assert c == 2 and cache.num_cached_tokens(c) == 8
    assert block_states(cache).tolist() == [S, S, F, b, c, F, F, F]
    assert block_states(cache, {b: 10, c: 11}).tolist() == [S, S, F, 10, 11, F, F, F]
    assert block_states(cache, {b: 10, c: 10}).tolist() == [10, 10, F, 10, 10, F, F, F]
    assert block_fill(cache).tolist() == [4, 4, 0, 3, 2, 0, 0, 0]

    cache.free(b)
    assert block_states(cache).tolist() == [c, c, F, F, c, F, F, F]
    cache.free(c)  # the two full prompt blocks stay cached: evictable
    assert block_states(cache).tolist() == [E, E, F, F, F, F, F, F]
    assert block_fill(cache).tolist() == [4, 4, 0, 0, 0, 0, 0, 0]

    d = cache.allocate(32)  # every block: the 6 uncached ones, then both evicted
    assert block_states(cache).tolist() == [d] * 8
    assert block_fill(cache).tolist() == [4] * 8
    cache.free(d)
    assert block_states(cache).tolist() == [F] * 8  # eviction dropped their keys


def test_swapped_out_sequence_is_not_on_the_gpu_map():
    cache = _cache(num_host_blocks=4)
    a = cache.allocate(6)
    b = cache.allocate(3)
    assert block_states(cache).tolist() == [a, a, b, F, F, F, F, F]
    cache.swap_out(a)
    assert block_states(cache).tolist() == [F, F, b, F, F, F, F, F]
    assert block_fill(cache).tolist() == [0, 0, 3, 0, 0, 0, 0, 0]


def test_inconsistent_ref_count_raises():
    cache = _cache()
    cache.allocate(4)
    cache.gpu.ref_counts[5] = 1  # a reference no block table accounts for
    with pytest.raises(InvariantError, match="block 5"):
        block_states(cache)


def test_negative_owner_is_refused():
    cache = _cache()
    seq = cache.allocate(4)
    with pytest.raises(ValueError, match="owner ids"):
        block_states(cache, {seq: -1})


def test_recorder_stacks_snapshots_and_reads_owners_live():
    cache = _cache(enable_prefix_caching=True)
    owners: dict[int, int] = {}
    rec = BlockMapRecorder(cache, owners)
    assert rec.states.shape == (0, 0) and len(rec) == 0
    a = cache.allocate(token_ids=list(range(6)))
    cache.commit(a)  # block 0 is computed and published
    owners[a] = 3
    rec.record("a")
    b = cache.fork(a)
    owners[b] = 3
    cache.append(b, token_ids=[6])  # COW into block 2
    rec.record()
    cache.free(a)
    cache.free(b)
    rec.record("empty")
    assert rec.labels == ["a", "1", "empty"]
    assert rec.states.tolist() == [
        [3, 3, F, F, F, F, F, F],
        [3, 3, 3, F, F, F, F, F],
        [E, F, F, F, F, F, F, F],
    ]
    assert rec.fill.tolist() == [
        [4, 2, 0, 0, 0, 0, 0, 0],
        [4, 2, 3, 0, 0, 0, 0, 0],
        [4, 0, 0, 0, 0, 0, 0, 0],
    ]
    counts = rec.counts()
    assert counts["owned"].tolist() == [2, 3, 0]
    assert counts["evictable"].tolist() == [0, 0, 1]
    assert counts["free"].tolist() == [6, 5, 7]
    assert counts["unfilled_slots"].tolist() == [2, 3, 0]
    assert counts["evictions"].tolist() == [0, 0, 0]


def test_scripted_serving_is_seeded_and_exercises_sharing_and_eviction():
    rec, log = scripted_serving(num_blocks=48, num_requests=16, seed=3)
    again, log2 = scripted_serving(num_blocks=48, num_requests=16, seed=3)
    assert np.array_equal(rec.states, again.states) and log.equals(log2)
    counts = rec.counts()
    assert rec.states.shape == (len(log), 48)
    assert (counts[["owned", "shared", "evictable", "free"]].sum(axis=1) == 48).all()
    assert counts["shared"].max() > 0  # prefix hits held by two requests at once
    assert counts["evictions"].iloc[-1] > 0
    assert log["cow_copies"].iloc[-1] > 0  # parallel samples copied their partial block
    assert log["admitted"].sum() - log["preempted"].sum() == 16
    assert counts["owned"].iloc[-1] == 0 and counts["shared"].iloc[-1] == 0
    assert ((rec.fill >= 0) & (rec.fill <= 4)).all()


def test_plot_block_map_colours_slots():
    cache = _cache(enable_prefix_caching=True)
    rec = BlockMapRecorder(cache)
    a = cache.allocate(token_ids=list(range(6)))  # block 0 full, block 1 holds 2 of 4
    cache.commit(a)
    b = cache.fork(a)
    rec.record()
    cache.free(a)
    cache.free(b)
    rec.record()
    fig = plot_block_map(rec)
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (8 * 4, 2, 3)  # slots down, snapshots across
    assert np.allclose(image[0, 0], to_rgb(BLOCK_MAP_COLORS["shared"]))
    assert np.allclose(image[5, 0], to_rgb(BLOCK_MAP_COLORS["shared"]))  # token 5
    assert np.allclose(image[6, 0], to_rgb(BLOCK_MAP_COLORS["unfilled"]))  # slot 6: empty
    assert np.allclose(image[0, 1], to_rgb(BLOCK_MAP_COLORS["evictable"]))
    assert np.allclose(image[4, 1], to_rgb(BLOCK_MAP_COLORS["free"]))
