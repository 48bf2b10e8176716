"""LFU: evict the block used least often since it was cached, ties least recently."""

from __future__ import annotations

from collections.abc import Hashable

from paged_kv.core.eviction._heap import LazyHeap
from paged_kv.core.eviction.base import EvictionPolicy


class LFUPolicy(EvictionPolicy):
    """Least frequently used, ties broken by LRU.

    A block's *frequency* counts its uses since it was cached: `on_cached` sets it to 1
    (the computation that produced the block is its first use) and each `on_hit` adds
    one, whether the block is in use or a candidate. The candidate with the lowest
    frequency is evicted; among equal frequencies, the one released (`add`) longest ago.
    Frequencies survive revival and release, and are forgotten when the block is
    evicted (`pop`) or dropped (`clear`): a block cached again starts at 1. A block
    added without ever being announced by `on_cached` counts as cached then.

    The candidates sit in a `LazyHeap` on ``(frequency, rank)``, the rank being the
    release stamp less the block's *lead* (0 here; `LengthAwarePolicy` gives deeper
    blocks a larger lead, so they go first among equal frequencies); entries made stale
    by a revival or a hit are skipped when they reach the top: O(log n) amortized per
    hook.
    """

    name = "lfu"

    def __init__(self) -> None:
        #: frequency of every cached block this policy knows (in use or candidate)
        self._freq: dict[int, int] = {}
        #: candidate -> its rank: release stamp (larger = released more recently) - lead
        self._released: dict[int, int] = {}
        #: cached block -> its lead, fixed while it is cached (absent: 0; LFU sets none)
        self._lead: dict[int, int] = {}
        # (frequency, rank, block); live when it matches the block's values
        self._heap = LazyHeap()
        self._clock = 0

    def _take(self, entry: tuple[int, int, int]) -> bool:
        """Evict the entry's block if the entry carries its current frequency and release
        stamp (`LazyHeap.take`)."""
        freq, stamp, block = entry
        if self._released.get(block) == stamp and self._freq[block] == freq:
            del self._released[block]
            del self._freq[block]
            if self._lead:
                self._lead.pop(block, None)
            return True
        return False

    def on_cached(self, block_id: int, key: Hashable) -> None:
        """A freshly cached block has been used once."""
        if block_id in self._released:
            raise ValueError(f"block {block_id} is an eviction candidate; it cannot be cached")
        self._freq[block_id] = 1

    def on_hit(self, block_id: int) -> None:
        """One more use of `block_id`."""
        freq = self._freq.get(block_id, 1) + 1
        self._freq[block_id] = freq
        stamp = self._released.get(block_id)
        if stamp is not None:  # a hit on a candidate reorders it at once
            if self._heap.push((freq, stamp, block_id), len(self._released)):
                self._rebuild()

    def add(self, block_id: int) -> None:
        """`block_id` becomes a candidate, the most recently released one."""
        if block_id in self._released:
            raise ValueError(f"block {block_id} is already an eviction candidate")
        freq = self._freq.setdefault(block_id, 1)
        self._clock = rank = self._clock + 1
        if self._lead:
            rank -= self._lead.get(block_id, 0)
        self._released[block_id] = rank
        if self._heap.push((freq, rank, block_id), len(self._released)):
            self._rebuild()

    def remove(self, block_id: int) -> None:
        """`block_id` is no longer a candidate; it keeps its frequency (O(1))."""
        del self._released[block_id]

    def pop(self) -> int:
        """Evict the least frequently used candidate (LRU among equals); forget it."""
        return self.pop_many(1)[0]

    def pop_many(self, n: int) -> list[int]:
        """`n` evictions in a row, in eviction order."""
        if n > len(self._released):
            raise IndexError(f"{n} evictions asked, {len(self._released)} candidates")
        return [block for _, _, block in self._heap.take(n, self._take)]

    def clear(self) -> None:
        """Drop every candidate and its frequency; blocks still in use keep theirs."""
        for block in self._released:
            del self._freq[block]
            self._lead.pop(block, None)
        self._released.clear()
        self._heap.clear()

    def _rebuild(self) -> None:
        """Rebuild the heap from the candidates' entries (stale ones outnumbered them)."""
        freq = self._freq
        self._heap.rebuild([(freq[b], s, b) for b, s in self._released.items()])

    def order(self) -> list[int]:
        """Candidates by (frequency, rank), ascending."""
        freq, released = self._freq, self._released
        return sorted(released, key=lambda b: (freq[b], released[b]))

    def frequency(self, block_id: int) -> int | None:
        """Uses of `block_id` since it was cached, or None if the policy does not know it."""
        return self._freq.get(block_id)

    def __len__(self) -> int:
        return len(self._released)

    def __contains__(self, block_id: object) -> bool:
        return block_id in self._released

    def state(self) -> object:
        """Eviction order, every known block's frequency, and the candidates' ranks."""
        return (
            tuple(self.order()),
            tuple(sorted(self._freq.items())),
            tuple(sorted(self._released.items())),
        )
