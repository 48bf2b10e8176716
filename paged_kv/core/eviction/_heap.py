"""The lazy-deletion min-heap that FIFO, LFU and Belady keep their candidates in.

A policy pushes an entry (a tuple ordered by priority, the block id last) whenever a
block's priority is set; an entry goes *stale* when the block stops being a candidate
or gets a newer entry. Stale entries are not searched for and removed (that would be
O(n)): they are skipped when they reach the top, and the heap is rebuilt from the live
entries once stale ones outnumber them, so every operation is O(log n) amortized.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable

#: rebuild once the heap holds more than ``2 * live + SLACK`` entries
SLACK = 64


class LazyHeap:
    """A min-heap of tuples whose entries may go stale; the owner says which are live.

    The owner's *take* function gets each entry that reaches the top: for a live entry
    it removes the block from the owner's candidates and returns True; for a stale one
    it returns False (and the entry is dropped).
    """

    __slots__ = ("entries",)

    def __init__(self) -> None:
        #: the heap list (heapq order), always the same list object; owners read it and
        #: may ``heapq.heappush`` onto it on a hot path (then check `bloated` themselves)
        self.entries: list[tuple] = []

    def push(self, entry: tuple, num_live: int) -> bool:
        """Add `entry`; True when stale entries now outnumber the `num_live` live ones
        (time for the owner to `rebuild`)."""
        entries = self.entries
        heapq.heappush(entries, entry)
        return len(entries) > 2 * num_live + SLACK

    def take(self, n: int, take: Callable[[tuple], bool]) -> list[tuple]:
        """Pop entries until `take` accepted `n` of them (or the heap is empty); those."""
        entries = self.entries
        pop = heapq.heappop
        out: list[tuple] = []
        while len(out) < n and entries:
            entry = pop(entries)
            if take(entry):
                out.append(entry)
        return out

    def rebuild(self, live: Iterable[tuple]) -> None:
        """Replace the contents by `live` (the owner's live entries), in place: the
        `entries` list stays the same object."""
        entries = self.entries
        entries[:] = live
        heapq.heapify(entries)

    def bloated(self, num_live: int) -> bool:
        """Whether stale entries outnumber the `num_live` live ones (time to `rebuild`)."""
        return len(self.entries) > 2 * num_live + SLACK

    def clear(self) -> None:
        """Drop every entry."""
        self.entries.clear()

    def __len__(self) -> int:
        return len(self.entries)
