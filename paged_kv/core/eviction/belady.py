"""Belady's MIN: the offline optimum for trace replay, evicting the farthest next use."""

from __future__ import annotations

import heapq
import math
import operator
from bisect import bisect_left
from collections.abc import Hashable, Sequence

from paged_kv.core.eviction._heap import LazyHeap
from paged_kv.core.eviction.base import EvictionPolicy

#: the next use of a key that is never accessed again at or after the current time
NEVER = math.inf

_NO_KEY = object()  # a block never given a key by on_cached


class BeladyPolicy(EvictionPolicy):
    """Belady's MIN (Belady, "A study of replacement algorithms for a virtual-storage
    computer", IBM Systems Journal 5(2), 1966), for replaying a known trace.

    ``accesses`` is the whole trace's key accesses in order: every request's block keys,
    request after request, flattened. The replay moves time forward with `advance`,
    passing the index in ``accesses`` of the current request's first key before
    processing that request. The *next use* of a key at time ``t`` is the smallest
    ``j >= t`` with ``accesses[j] == key``, or `NEVER` (infinitely far) if there is none.
    Note that at time ``t`` the current request's own keys count as used "now" or
    shortly: a cached block the request did not hit (its prefix match stopped earlier)
    is kept as if about to be used.

    `pop` evicts the candidate whose key's next use lies farthest in the future; ties
    (in practice: several keys never used again) go to the candidate released (`add`)
    longest ago, as in LRU. A candidate whose block was never given a key by
    `on_cached` counts as never used again. Hits do not change anything: a next use
    depends on the time only.

    Next uses are computed when a block is released and stored; one goes stale when
    time passes it without the block being revived (the request that used the key
    missed it, e.g. because its prefix match stopped earlier). `advance` refreshes
    exactly those entries, found through a min-heap on the stored next use, so `pop` and
    `order` are exact at every moment. A max-heap on the next use gives the victim (both
    heaps are `LazyHeap`s: entries of revived or refreshed blocks go stale in place).
    Each hook costs O(log n) amortized (plus O(log k) to look up the next of a key's
    ``k`` accesses); across a replay, each access of a key refreshes at most one entry.
    """

    name = "belady"

    def __init__(self, accesses: Sequence[Hashable]) -> None:
        positions: dict[Hashable, list[int]] = {}
        for index, key in enumerate(accesses):
            positions.setdefault(key, []).append(index)
        # key -> the indices at which it is accessed, ascending
        self._positions = positions
        # _after[i]: the next index accessing the key of index i, or NEVER
        after: list[float] = [NEVER] * len(accesses)
        for at in positions.values():
            for i, j in zip(at, at[1:]):
                after[i] = j
        self._after = after
        #: number of accesses in the trace (the largest time `advance` accepts)
        self.num_accesses = len(accesses)
        self._now = 0
        #: key of every cached block announced by `on_cached`
        self._key: dict[int, Hashable] = {}
        #: candidate -> (stored next use, release stamp)
        self._cand: dict[int, tuple[float, int]] = {}
        # (-next use, stamp, block): the victim is on top
        self._evict_heap = LazyHeap()
        # (next use, stamp, block) for finite next uses: the first to go stale on top
        self._stale_heap = LazyHeap()
        self._clock = 0

    # -- time ------------------------------------------------------------------------
    @property
    def now(self) -> int:
        """The current time: an index into the accesses."""
        return self._now

    def next_use(self, key: Hashable, time: int | None = None) -> float:
        """The first index ``j >= time`` (default: now) accessing `key`, or `NEVER`."""
        at = self._positions.get(key)
        if not at:
            return NEVER
        i = bisect_left(at, self._now if time is None else time)
        return at[i] if i < len(at) else NEVER

    def advance(self, position: int) -> None:
        """Set the current time to `position` (an index into the accesses; never back)."""
        if isinstance(position, bool) or not hasattr(position, "__index__"):
            raise ValueError(f"position must be an integer, got {position!r}")
        position = operator.index(position)  # numpy integers too
        if not self._now <= position <= self.num_accesses:
            raise ValueError(
                f"position must be in [{self._now}, {self.num_accesses}] (time only moves "
                f"forward), got {position}"
            )
        self._now = position
        stale, cand, after = self._stale_heap.entries, self._cand, self._after
        while stale and stale[0][0] < position:
            use, stamp, block = heapq.heappop(stale)
            if cand.get(block) == (use, stamp):
                while use < position:  # follow the key's accesses past the present
                    use = after[use]
                self._push(block, use, stamp)
        self._compact()

    def _push(self, block: int, use: float, stamp: int) -> None:
        """Make `block` a candidate with this next use (both heaps get an entry)."""
        self._cand[block] = (use, stamp)
        heapq.heappush(self._evict_heap.entries, (-use, stamp, block))
        if use != NEVER:
            heapq.heappush(self._stale_heap.entries, (use, stamp, block))

    def _compact(self) -> None:
        """Rebuild both heaps from the live entries once stale ones outnumber them."""
        cand = self._cand
        if self._evict_heap.bloated(len(cand)) or self._stale_heap.bloated(len(cand)):
            self._evict_heap.rebuild([(-u, s, b) for b, (u, s) in cand.items()])
            self._stale_heap.rebuild([(u, s, b) for b, (u, s) in cand.items() if u != NEVER])

    # -- hooks -----------------------------------------------------------------------
    def on_cached(self, block_id: int, key: Hashable) -> None:
        """Remember which key `block_id` holds."""
        if block_id in self._cand:
            raise ValueError(f"block {block_id} is an eviction candidate; it cannot be cached")
        self._key[block_id] = key

    def add(self, block_id: int) -> None:
        """`block_id` becomes a candidate, with its key's next use from now."""
        if block_id in self._cand:
            raise ValueError(f"block {block_id} is already an eviction candidate")
        key = self._key.get(block_id, _NO_KEY)
        at = None if key is _NO_KEY else self._positions.get(key)
        use: float = NEVER
        if at:
            i = bisect_left(at, self._now)
            if i < len(at):
                use = at[i]
        self._clock = stamp = self._clock + 1
        self._push(block_id, use, stamp)
        if self._evict_heap.bloated(len(self._cand)):  # the stale heap: at `advance`
            self._compact()

    def remove(self, block_id: int) -> None:
        """`block_id` is no longer a candidate (O(1); its heap entries go stale)."""
        del self._cand[block_id]

    def _take(self, entry: tuple[float, int, int]) -> bool:
        """Evict the entry's block if the entry carries its current next use and stamp
        (`LazyHeap.take` on the eviction heap)."""
        neg_use, stamp, block = entry
        if self._cand.get(block) == (-neg_use, stamp):
            del self._cand[block]
            self._key.pop(block, None)
            return True
        return False

    def pop(self) -> int:
        """Evict the candidate used farthest in the future (LRU among equals)."""
        return self.pop_many(1)[0]

    def pop_many(self, n: int) -> list[int]:
        """`n` evictions in a row, in eviction order."""
        if n > len(self._cand):
            raise IndexError(f"{n} evictions asked, {len(self._cand)} candidates")
        return [block for _, _, block in self._evict_heap.take(n, self._take)]

    def clear(self) -> None:
        """Drop every candidate and its key; the time stays where it is."""
        for block in self._cand:
            self._key.pop(block, None)
        self._cand.clear()
        self._evict_heap.clear()
        self._stale_heap.clear()

    # -- inspection ------------------------------------------------------------------
    def order(self) -> list[int]:
        """Candidates by next use, farthest first; LRU among equals."""
        cand = self._cand
        return sorted(cand, key=lambda b: (-cand[b][0], cand[b][1]))

    def __len__(self) -> int:
        return len(self._cand)

    def __contains__(self, block_id: object) -> bool:
        return block_id in self._cand

    def state(self) -> object:
        """The time, each candidate's (next use, release stamp), and the blocks' keys."""
        return (
            self._now,
            tuple(sorted(self._cand.items())),
            tuple(sorted(self._key.items(), key=lambda item: item[0])),
        )


def belady_needs_trace() -> EvictionPolicy:
    """The registry's factory for "belady": it cannot be built without the future."""
    raise ValueError(
        "the 'belady' eviction policy needs the whole trace in advance: construct "
        "BeladyPolicy(accesses) with the flattened list of every request's block keys, "
        "pass the instance itself (PagedKVCache(config, policy=...) or "
        "BlockAllocator(num_blocks, policy)), and call policy.advance(index of the "
        "request's first key) before each request"
    )
