"""FirstFitSpace: first-fit placement, merging, and unusable holes."""

import pytest

from paged_kv.sim.address_space import FirstFitSpace


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
