"""Contiguous address spaces: first-fit placement and the buddy allocator."""

import random

import pytest

from paged_kv.sim.address_space import BuddySpace, FirstFitSpace, make_space, next_power_of_two


def test_first_fit_places_at_the_lowest_hole_that_fits():
    space = FirstFitSpace(100)
    a, b, c = space.allocate(30), space.allocate(30), space.allocate(30)
    assert (a, b, c) == (0, 30, 60)
    space.free(a)
    assert space.allocate(40) is None  # holes of 30 and 10
    assert space.allocate(20) == 0  # lowest hole first
    assert space.holes() == [(20, 10), (90, 10)]
    assert space.unusable(15) == 20 and space.unusable(5) == 0
    assert (space.used, space.free_slots) == (80, 20)
    assert space.held(37) == 37


def test_free_merges_neighbours():
    space = FirstFitSpace(60)
    starts = [space.allocate(10) for _ in range(6)]
    for s in (starts[1], starts[3], starts[2]):
        space.free(s)
    assert space.holes() == [(10, 30)]
    space.free(starts[0])
    space.free(starts[5])
    assert space.holes() == [(0, 40), (50, 10)]
    space.free(starts[4])
    assert space.holes() == [(0, 60)] and space.used == 0


def test_bad_arguments():
    space = FirstFitSpace(10)
    with pytest.raises(ValueError):
        space.free(3)
    with pytest.raises(ValueError):
        space.allocate(0)
    with pytest.raises(ValueError):
        FirstFitSpace(0)
    with pytest.raises(ValueError, match="power of two"):
        BuddySpace(100, 48)
    with pytest.raises(ValueError, match="no range"):
        BuddySpace(64, 64).free(0)
    with pytest.raises(ValueError, match="valid names"):
        make_space("slab", 64, 64)


@pytest.mark.parametrize("space", [FirstFitSpace(64), BuddySpace(64, 64)],
                         ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("length", [3.5, True, "4"])
def test_a_length_must_be_an_integer(space, length):
    # not placed as 3.5 slots (first-fit) nor an AttributeError (buddy): a ValueError
    with pytest.raises(ValueError, match="length must be an integer"):
        space.allocate(length)
    assert space.used == 0


def test_the_papers_pool_holds_seven_max_chunks_and_a_useless_tail():
    # 12 GiB of OPT-13B KV = 15,728 slots: 7 x 2,048 and chunks of 1,024, 256, 64, 32, 16
    space = BuddySpace(15_728, 2048)
    assert space.chunks()[7:] == [(14_336, 1024), (15_360, 256), (15_616, 64),
                                  (15_680, 32), (15_712, 16)]
    starts = [space.allocate(2048) for _ in range(7)]
    assert starts == [i * 2048 for i in range(7)]
    assert space.allocate(2048) is None and not space.can_fit(2048)
    # the tail is the Max bar's external fragmentation in the paper's Fig. 2: 8.9%
    assert space.unusable(2048) == 1392 and round(100 * 1392 / 15_728, 1) == 8.9
    assert space.can_fit(1000) and space.unusable(1000) == 368


def test_buddy_rounds_up_splits_low_and_merges_back():
    space = BuddySpace(64, 64)
    assert space.held(25) == 32 and next_power_of_two(32) == 32
    a = space.allocate(25)  # a chunk of 32 split from 64: [0, 32) taken, [32, 64) free
    b = space.allocate(5)  # 8 from the upper 32: [32, 40); [40, 48) and [48, 64) free
    assert (a, b) == (0, 32)
    assert space.chunks() == [(40, 8), (48, 16)]
    assert space.used == 40 and space.free_slots == 24
    assert space.unusable(9) == 8  # a 16-slot request fits only the chunk at 48
    space.free(a)
    assert space.chunks() == [(0, 32), (40, 8), (48, 16)]
    space.free(b)  # 32+8 -> 16 with 40, -> 32 with 48, -> 64 with 0
    assert space.chunks() == [(0, 64)] and space.used == 0


def test_buddy_random_workout_keeps_its_invariants():
    rng = random.Random(7)
    space = BuddySpace(1000, 256)
    live = {}
    for _ in range(3000):
        if live and rng.random() < 0.5:
            start = rng.choice(list(live))
            space.free(start)
            del live[start]
        else:
            length = rng.randint(1, 256)
            start = space.allocate(length)
            if start is not None:
                live[start] = space.held(length)
                assert start % live[start] == 0  # chunks are aligned to their size
        chunks = space.chunks()
        assert space.used == sum(live.values())
        assert space.used + sum(n for _, n in chunks) == 1000
        taken = sorted([(s, n) for s, n in live.items()] + chunks)
        assert all(s + n <= t for (s, n), (t, _) in zip(taken, taken[1:]))  # no overlap
        free = set(chunks)
        # no two free buddies of one size below the maximum chunk: they would have merged
        assert not any(n < 256 and (s ^ n, n) in free for s, n in chunks)
    for start in list(live):
        space.free(start)
    assert space.chunks() == [(0, 256), (256, 256), (512, 256), (768, 128), (896, 64),
                              (960, 32), (992, 8)]
