"""The lower tiers (host, disk) of the compiled replay engine: Numba-compiled key sets.

A lower tier (`paged_kv.core.tier.CacheTier` in the manager) holds copies of computed
prefix blocks, by key, up to its capacity. Its policy is one of `TIER_POLICY_CODES`,
driven as the manager's tier drives the `paged_kv.core.eviction` policy of that name:

* a store takes a free slot, or evicts the policy's victim among the keys not pinned
  (none: the store is refused), then announces the key (``on_cached``) and releases it
  (``add``: the most recent candidate);
* a hit (`tier_pin`) tells the policy (``on_hit``: ARC moves the key to T2) and pins
  the key until its load is issued: it stops being a candidate; `tier_unpin` releases
  it (the most recent candidate again);
* `tier_refresh` makes a held key the most recent candidate of its list (``remove``
  then ``add``), as the manager does when a sequence is freed.

``lru`` keeps one list in release order; ``arc`` the lists T1 and T2 in release order,
the ghost lists B1 and B2, the target ``p`` and the capacity ``c`` of
`paged_kv.core.eviction.arc.ARCPolicy` (built from its name: ``c`` is the most keys held
at once). Other policies run on the manager replay only.

Both tiers live in two arrays, indexed by tier ``t`` (0: host, 1: disk), and each
tier's counters (kept in arrays between the kernel's calls, as a tuple while one
runs)::

    nodes     int32[2, K, w]  per tier and key: class (0: not held, 1: held, ARC: in T1; 2: in T2),
                           prev and next in its list (LRU: list 0; ARC: T1 = 0, T2 = 1;
                           a pinned key is in none), ghost (ARC: 0 none, 1 in B1, 2 in
                           B2), prev and next in its ghost list
    ends      int64[2, 8]  per tier: head and tail of list 0, list 1, ghost list B1, B2
    counters  (policy, capacity, held, |T1|, |T2|, |B1|, |B2|, c, p)   p a float

One row per key keeps a key's fields in one cache line, and the tier as an index (not a
choice between arrays) keeps the reference counting of array variables out of the
inner loop (the kernel passes borrowed views: `paged_kv.sim.borrowed`). The functions
are inlined into the kernel and return the new counters, which so stay in registers.

Importing this module imports numba; `paged_kv.sim.replay_compiled` calls these
functions from its kernel.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: lower-tier policy name -> the code the kernel switches on
TIER_POLICY_CODES: dict[str, int] = {"lru": 0, "arc": 4}
_LRU, _ARC = 0, 4
_NIL = -1
#: what `tier_store` returns instead of a victim when every held key is pinned
REFUSED = -2
# columns of `nodes`
_CLS, _PREV, _NEXT, _GHOST, _GPREV, _GNEXT = range(6)


def tier_arrays(num_keys: int, policies: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(nodes, ends)`` of two empty tiers over `num_keys` keys (1 without any tier); only
    ARC uses the ghost columns, so without an ARC tier the rows are 4 wide (16 bytes)."""
    width = 6 if _ARC in policies else 4
    return np.zeros((2, num_keys, width), np.int32), np.full((2, 8), _NIL, np.int64)


def tier_counters(host: tuple[int, int], disk: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """``(counts, p)``: the counters of an empty host and disk tier, each given as
    ``(policy code, capacity)``, stored as int64[2, 8] and ARC's ``p`` as float64[2]."""
    counts = np.zeros((2, 8), np.int64)
    counts[0, :2] = host
    counts[1, :2] = disk
    return counts, np.zeros(2, np.float64)


@njit(cache=True, inline="always")
def load_counters(counts, p, t):
    """Tier `t`'s counters as the tuple the functions below take and return."""
    return (counts[t, 0], counts[t, 1], counts[t, 2], counts[t, 3], counts[t, 4],
            counts[t, 5], counts[t, 6], counts[t, 7], p[t])


@njit(cache=True, inline="always")
def save_counters(counts, p, t, counters):
    """Store tier `t`'s counters back."""
    policy, capacity, held, n1, n2, b1, b2, c, arc_p = counters
    counts[t, 2] = held
    counts[t, 3] = n1
    counts[t, 4] = n2
    counts[t, 5] = b1
    counts[t, 6] = b2
    counts[t, 7] = c
    p[t] = arc_p


@njit(cache=True, inline="always")
def _append(nodes, ends, t, lst, key, prev, nxt):
    """Append `key` to list `lst` (ends at ``2 lst``, ``2 lst + 1``) through columns
    `prev` and `nxt` of tier `t`'s rows of `nodes`."""
    tail = ends[t, 2 * lst + 1]
    nodes[t, key, prev] = tail
    nodes[t, key, nxt] = _NIL
    if tail == _NIL:
        ends[t, 2 * lst] = key
    else:
        nodes[t, tail, nxt] = key
    ends[t, 2 * lst + 1] = key


@njit(cache=True, inline="always")
def _unlink(nodes, ends, t, lst, key, prev, nxt):
    """Take `key` out of list `lst`."""
    p, q = nodes[t, key, prev], nodes[t, key, nxt]
    if p == _NIL:
        ends[t, 2 * lst] = q
    else:
        nodes[t, p, nxt] = q
    if q == _NIL:
        ends[t, 2 * lst + 1] = p
    else:
        nodes[t, q, prev] = p


@njit(cache=True, inline="always")
def _trim(nodes, ends, t, n1, n2, b1, b2, c):
    """ARC: |T1| + |B1| <= c and |T1| + |T2| + |B1| + |B2| <= 2c, oldest ghosts first."""
    while b1 > 0 and n1 + b1 > c:
        key = ends[t, 4]
        _unlink(nodes, ends, t, 2, key, _GPREV, _GNEXT)
        nodes[t, key, _GHOST] = 0
        b1 -= 1
    while b2 > 0 and n1 + n2 + b1 + b2 > 2 * c:
        key = ends[t, 6]
        _unlink(nodes, ends, t, 3, key, _GPREV, _GNEXT)
        nodes[t, key, _GHOST] = 0
        b2 -= 1
    return b1, b2


@njit(cache=True, inline="always")
def tier_holds(nodes, t, key):
    """Whether the tier holds `key`."""
    return nodes[t, key, _CLS] != 0


@njit(cache=True, inline="always")
def tier_pop(nodes, ends, t, counters):
    """Evict the tier's victim by its policy: ``(victim key, new counters)``."""
    policy, capacity, held, n1, n2, b1, b2, c, p = counters
    if policy == _ARC:
        lst = 0 if ends[t, 0] != _NIL and (n1 > p or ends[t, 2] == _NIL) else 1
        victim = ends[t, 2 * lst]
        _unlink(nodes, ends, t, lst, victim, _PREV, _NEXT)
        _append(nodes, ends, t, 2 + lst, victim, _GPREV, _GNEXT)
        nodes[t, victim, _GHOST] = lst + 1
        if lst == 0:
            n1 -= 1
            b1 += 1
        else:
            n2 -= 1
            b2 += 1
        b1, b2 = _trim(nodes, ends, t, n1, n2, b1, b2, c)
    else:
        victim = ends[t, 0]
        _unlink(nodes, ends, t, 0, victim, _PREV, _NEXT)
    nodes[t, victim, _CLS] = 0
    return victim, (policy, capacity, held - 1, n1, n2, b1, b2, c, p)


@njit(cache=True, inline="always")
def tier_store(nodes, ends, t, counters, key):
    """Store `key` (not held), evicting the victim first when the tier is full:
    ``(victim key, -1 or REFUSED, new counters)``; refused (nothing changes) when the
    tier is full of pinned keys."""
    victim = _NIL
    if counters[2] >= counters[1]:
        if ends[t, 0] == _NIL and ends[t, 2] == _NIL:
            return REFUSED, counters
        victim, counters = tier_pop(nodes, ends, t, counters)
    policy, capacity, held, n1, n2, b1, b2, c, p = counters
    held += 1
    if policy != _ARC:
        nodes[t, key, _CLS] = 1
        _append(nodes, ends, t, 0, key, _PREV, _NEXT)
        return victim, (policy, capacity, held, n1, n2, b1, b2, c, p)
    in_ghost = nodes[t, key, _GHOST]
    cls = 1
    if in_ghost == 0:
        n1 += 1
        c = max(c, n1 + n2)
    else:  # a ghost: its list was too small, so p moves towards it
        delta = max(1.0, b2 / b1) if in_ghost == 1 else max(1.0, b1 / b2)
        _unlink(nodes, ends, t, 1 + in_ghost, key, _GPREV, _GNEXT)
        if in_ghost == 1:
            b1 -= 1
        else:
            b2 -= 1
        n2 += 1
        c = max(c, n1 + n2)
        p = min(float(c), p + delta) if in_ghost == 1 else max(0.0, p - delta)
        cls = 2
        nodes[t, key, _GHOST] = 0
    nodes[t, key, _CLS] = cls
    b1, b2 = _trim(nodes, ends, t, n1, n2, b1, b2, c)
    _append(nodes, ends, t, cls - 1, key, _PREV, _NEXT)
    return victim, (policy, capacity, held, n1, n2, b1, b2, c, p)


@njit(cache=True, inline="always")
def tier_pin(nodes, ends, t, counters, key):
    """A hit on held `key`: ARC moves it to T2; it stops being a candidate until
    `tier_unpin`. The new counters."""
    policy, capacity, held, n1, n2, b1, b2, c, p = counters
    cls = nodes[t, key, _CLS]
    _unlink(nodes, ends, t, cls - 1, key, _PREV, _NEXT)
    if policy == _ARC and cls == 1:
        nodes[t, key, _CLS] = 2
        n1 -= 1
        n2 += 1
    return (policy, capacity, held, n1, n2, b1, b2, c, p)


@njit(cache=True, inline="always")
def tier_unpin(nodes, ends, t, key):
    """Pinned `key` becomes the most recent candidate of its list."""
    _append(nodes, ends, t, nodes[t, key, _CLS] - 1, key, _PREV, _NEXT)


@njit(cache=True, inline="always")
def _move_to_tail(nodes, ends, t, first, last):
    """Move the run ``first .. last`` (consecutive in their list) to the list's tail."""
    q = nodes[t, last, _NEXT]
    if q == _NIL:  # at the tail already
        return
    lst = nodes[t, first, _CLS] - 1
    p = nodes[t, first, _PREV]
    if p == _NIL:
        ends[t, 2 * lst] = q
    else:
        nodes[t, p, _NEXT] = q
    nodes[t, q, _PREV] = p
    tail = ends[t, 2 * lst + 1]
    nodes[t, first, _PREV] = tail
    nodes[t, tail, _NEXT] = first
    nodes[t, last, _NEXT] = _NIL
    ends[t, 2 * lst + 1] = last


@njit(cache=True, inline="always")
def tier_refresh(nodes, ends, t, keys, start, stop):
    """Each held, unpinned key of ``keys[start:stop]``, from the last to the first,
    becomes the most recent candidate of its list (``remove`` then ``add``).

    The same as moving them one by one, done run by run: keys that already follow one
    another in their list in this order move as one piece, so a prompt whose blocks
    were refreshed together last time costs one read per block."""
    first = _NIL
    last = _NIL
    for j in range(stop - 1, start - 1, -1):
        key = keys[j]
        if nodes[t, key, _CLS] == 0:
            continue
        if first != _NIL and nodes[t, last, _NEXT] == key:
            last = key
            continue
        if first != _NIL:
            _move_to_tail(nodes, ends, t, first, last)
        first = key
        last = key
    if first != _NIL:
        _move_to_tail(nodes, ends, t, first, last)


__all__ = ["REFUSED", "TIER_POLICY_CODES", "load_counters", "save_counters", "tier_arrays",
           "tier_counters", "tier_holds",
           "tier_pin", "tier_pop", "tier_refresh", "tier_store", "tier_unpin"]
