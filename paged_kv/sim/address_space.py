"""A contiguous address space with first-fit placement: the memory of the baselines.

The contiguous baselines of the vLLM paper (Orca's Max, Pow2 and Oracle) give each
request one contiguous range of token slots. Placement is first-fit: the lowest-address
hole large enough. Freed ranges merge with free neighbours. Holes too small for the
request waiting at the head of the queue are *external fragmentation*.
"""

from __future__ import annotations

import bisect


class FirstFitSpace:
    """`size` token slots; ranges are placed first-fit and merged back on release."""

    def __init__(self, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        #: slots in the space
        self.size = size
        self._starts: list[int] = [0]  # sorted hole starts
        self._lengths: list[int] = [size]  # hole lengths, parallel to _starts
        self._live: dict[int, int] = {}  # start -> length of placed ranges
        #: slots in placed ranges
        self.used = 0

    def allocate(self, length: int) -> int | None:
        """Place `length` slots at the lowest hole that fits; its start, or None."""
        if length <= 0:
            raise ValueError(f"length must be positive, got {length}")
        for i, hole in enumerate(self._lengths):
            if hole >= length:
                start = self._starts[i]
                if hole == length:
                    del self._starts[i]
                    del self._lengths[i]
                else:
                    self._starts[i] = start + length
                    self._lengths[i] = hole - length
                self._live[start] = length
                self.used += length
                return start
        return None

    def can_fit(self, length: int) -> bool:
        """Whether some hole holds `length` slots."""
        return any(hole >= length for hole in self._lengths)

    def free(self, start: int) -> None:
        """Release the range placed at `start`, merging it with adjacent holes."""
        length = self._live.pop(start, None)
        if length is None:
            raise ValueError(f"no range is placed at {start}")
        self.used -= length
        starts, lengths = self._starts, self._lengths
        i = bisect.bisect_left(starts, start)
        merge_left = i > 0 and starts[i - 1] + lengths[i - 1] == start
        merge_right = i < len(starts) and start + length == starts[i]
        if merge_left and merge_right:
            lengths[i - 1] += length + lengths[i]
            del starts[i]
            del lengths[i]
        elif merge_left:
            lengths[i - 1] += length
        elif merge_right:
            starts[i] = start
            lengths[i] += length
        else:
            starts.insert(i, start)
            lengths.insert(i, length)

    def holes(self) -> list[tuple[int, int]]:
        """Free ranges as (start, length), by address."""
        return list(zip(self._starts, self._lengths))

    def unusable(self, length: int) -> int:
        """Free slots in holes smaller than `length` (external fragmentation for it)."""
        return sum(hole for hole in self._lengths if hole < length)

    @property
    def free_slots(self) -> int:
        """Free slots in all holes."""
        return self.size - self.used
