"""FIFO: evict the block that entered the prefix cache earliest."""

from __future__ import annotations

from collections.abc import Hashable

from paged_kv.core.eviction._heap import LazyHeap
from paged_kv.core.eviction.base import EvictionPolicy


class FIFOPolicy(EvictionPolicy):
    """First in, first out, by the time a block was *cached*.

    Each block is stamped when it is cached (`on_cached`, one stamp per caching, from a
    counter private to this policy). Among the candidates, the one with the oldest
    stamp is evicted. Releases (`add`) and hits (`on_hit`) do not move a block: a block
    revived and released again goes back to the position its stamp gives it. Stamps are
    distinct, so there are no ties. A block added without ever being announced by
    `on_cached` is stamped when it is added.

    The candidates sit in a `LazyHeap` on the stamp; a revived block's entry stays in the
    heap and is skipped (or reused, if the block is released again) when it reaches the
    top, so every hook is O(log n) amortized.
    """

    name = "fifo"

    def __init__(self) -> None:
        #: stamp of every cached block this policy knows (in use or candidate)
        self._stamp: dict[int, int] = {}
        #: the candidates (subset of `_stamp`'s keys)
        self._candidates: set[int] = set()
        # (stamp, block) entries; an entry is live when its block is a candidate with
        # that stamp. `_queued[b]` is the stamp of b's entry while b has one.
        self._heap = LazyHeap()
        self._queued: dict[int, int] = {}
        self._clock = 0

    def _next_stamp(self) -> int:
        self._clock += 1
        return self._clock

    def on_cached(self, block_id: int, key: Hashable) -> None:
        """Stamp `block_id` with the caching time."""
        if block_id in self._candidates:
            raise ValueError(f"block {block_id} is an eviction candidate; it cannot be cached")
        self._stamp[block_id] = self._next_stamp()

    def add(self, block_id: int) -> None:
        """`block_id` becomes a candidate at the position of its caching stamp."""
        if block_id in self._candidates:
            raise ValueError(f"block {block_id} is already an eviction candidate")
        stamp = self._stamp.get(block_id)
        if stamp is None:
            stamp = self._stamp[block_id] = self._next_stamp()
        self._candidates.add(block_id)
        if self._queued.get(block_id) != stamp:
            self._queued[block_id] = stamp
            if self._heap.push((stamp, block_id), len(self._candidates)):
                self._rebuild()

    def remove(self, block_id: int) -> None:
        """`block_id` is no longer a candidate; it keeps its stamp (O(1))."""
        self._candidates.remove(block_id)

    def _take(self, entry: tuple[int, int]) -> bool:
        """Evict the entry's block if the entry is its current one (`LazyHeap.take`)."""
        stamp, block = entry
        if self._queued.get(block) == stamp:
            del self._queued[block]
        if block in self._candidates and self._stamp[block] == stamp:
            self._candidates.remove(block)
            del self._stamp[block]
            return True
        return False

    def pop(self) -> int:
        """Evict the candidate cached earliest and forget it."""
        return self.pop_many(1)[0]

    def pop_many(self, n: int) -> list[int]:
        """`n` evictions in a row, oldest caching stamp first."""
        if n > len(self._candidates):
            raise IndexError(f"{n} evictions asked, {len(self._candidates)} candidates")
        return [block for _, block in self._heap.take(n, self._take)]

    def clear(self) -> None:
        """Drop every candidate and its stamp; blocks still in use keep theirs."""
        for block in self._candidates:
            del self._stamp[block]
        self._candidates.clear()
        stamp = self._stamp
        self._heap.rebuild([e for e in self._heap.entries if stamp.get(e[1]) == e[0]])
        self._queued = {b: s for s, b in self._heap.entries}

    def _rebuild(self) -> None:
        """Rebuild the heap from the candidates' entries (stale ones outnumbered them)."""
        stamp = self._stamp
        self._heap.rebuild([(stamp[b], b) for b in self._candidates])
        self._queued = {b: s for s, b in self._heap.entries}

    def order(self) -> list[int]:
        """Candidates by caching stamp, oldest first."""
        return sorted(self._candidates, key=self._stamp.__getitem__)

    def __len__(self) -> int:
        return len(self._candidates)

    def __contains__(self, block_id: object) -> bool:
        return block_id in self._candidates

    def state(self) -> object:
        """Eviction order and every known block's stamp.

        The stamp counter is left out: only the stamps' relative order matters.
        """
        return (tuple(self.order()), tuple(sorted(self._stamp.items())))
