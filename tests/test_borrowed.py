"""`paged_kv.sim.borrowed`: a view Numba does not reference-count, of the caller's array."""

import sys

import numpy as np
from numba import njit

from paged_kv.sim.borrowed import borrowed


@njit(inline="always")
def _bump(values, i, by):
    values[i] += by


@njit
def _bump_all(values, counts):
    values = borrowed(values)
    counts = borrowed(counts)
    for i in range(values.shape[0]):
        _bump(values, i, counts[i % counts.shape[0]])
    return values.sum(), values.shape, values.strides


def test_a_borrowed_view_reads_and_writes_the_callers_array():
    values = np.arange(6, dtype=np.int64).reshape(3, 2)[:, 0]  # not contiguous
    counts = np.array([10, 20], dtype=np.int32)
    expected = values + np.array([10, 20, 10])
    total, shape, strides = _bump_all(values, counts)
    assert values.tolist() == expected.tolist()
    assert total == expected.sum()
    assert shape == (3,) and strides == values.strides
    assert counts.tolist() == [10, 20]


def test_borrowing_leaves_the_callers_reference_counts_as_they_were():
    values = np.zeros(4, dtype=np.int64)
    counts = np.ones(1, dtype=np.int32)
    _bump_all(values, counts)  # compiled
    refs = sys.getrefcount(values), sys.getrefcount(counts)
    for _ in range(3):
        _bump_all(values, counts)
    assert (sys.getrefcount(values), sys.getrefcount(counts)) == refs
    assert values.tolist() == [4, 4, 4, 4]
