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
    """A min-heap of tuples whose entries may go stale; the owner says which are live."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        #: the heap list (heapq order); read-only for owners
        self.entries: list[tuple] = []

    def push(self, entry: tuple) -> None:
        """Add `entry`."""
        heapq.heappush(self.entries, entry)

    def pop_live(self, is_live: Callable[[tuple], bool]) -> tuple | None:
        """Pop entries until one is live and return it (None once the heap is empty)."""
        entries = self.entries
        pop = heapq.heappop
        while entries:
            entry = pop(entries)
            if is_live(entry):
                return entry
        return None

    def top(self) -> tuple | None:
        """The smallest entry, live or stale, without removing it."""
        return self.entries[0] if self.entries else None

    def pop(self) -> tuple:
        """Remove and return the smallest entry, live or stale."""
        return heapq.heappop(self.entries)

    def rebuild(self, live: Iterable[tuple]) -> None:
        """Replace the contents by `live` (the owner's live entries)."""
        self.entries = list(live)
        heapq.heapify(self.entries)

    def bloated(self, num_live: int) -> bool:
        """Whether stale entries outnumber the `num_live` live ones (time to `rebuild`)."""
        return len(self.entries) > 2 * num_live + SLACK

    def clear(self) -> None:
        """Drop every entry."""
        self.entries.clear()

    def __len__(self) -> int:
        return len(self.entries)
