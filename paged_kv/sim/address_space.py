"""Contiguous address spaces: the memory of the contiguous (Orca) baselines.

The contiguous baselines of the vLLM paper (Orca's Max, Pow2 and Oracle) give each
sequence one contiguous range of token slots, reserved at admission for its whole life.
Two placements are modelled, behind one interface (`ContiguousSpace`):

`BuddySpace`
    the binary buddy allocator the vLLM paper assumes Orca uses (§6.1: "We assume Orca
    uses the buddy allocation algorithm to determine the memory address to store KV
    cache"). A request of ``n`` slots takes a chunk of ``2**ceil(log2 n)`` slots, split
    from the smallest free chunk large enough; a freed chunk merges with its buddy
    (the chunk at ``start ^ size``) whenever that one is free too. Chunks never exceed
    `max_chunk` (the model's maximum sequence length rounded up to a power of two), so
    a pool that is not a multiple of it keeps a remainder that no request of the
    maximum length can use: 15,728 slots hold seven chunks of 2,048 and a useless
    1,392-slot tail, the 8.9% external fragmentation of the paper's Orca (Max) bar.
`FirstFitSpace`
    first-fit placement of exactly ``n`` slots at the lowest-address hole that fits,
    merging freed ranges with free neighbours (kept as an option: the paper's text
    does not use it).

Both answer in token slots: `held(n)` is what a request of ``n`` slots really occupies
(its chunk), so ``held(n) - n`` is the allocator's rounding, and `unusable(n)` is the
free memory in pieces too small for ``n`` slots. The simulator counts both as external
fragmentation, as the paper's Fig. 2 legend does ("External frag. & Others").
"""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod

from paged_kv.core.validate import require_int

#: placements `make_space` knows
ALLOCATORS = ("buddy", "first-fit")


def next_power_of_two(n: int) -> int:
    """The smallest power of two >= `n` (n >= 1)."""
    return 1 << (n - 1).bit_length()


class ContiguousSpace(ABC):
    """`size` token slots handed out as contiguous ranges."""

    #: slots in the space
    size: int
    #: slots in placed ranges, counting each range as `held` (its chunk)
    used: int

    @abstractmethod
    def held(self, length: int) -> int:
        """Slots a range of `length` slots occupies once placed (>= length)."""

    @abstractmethod
    def allocate(self, length: int) -> int | None:
        """Place a range of `length` slots; its start, or None when nothing fits."""

    @abstractmethod
    def free(self, start: int) -> None:
        """Release the range placed at `start` (`ValueError` if none is)."""

    @abstractmethod
    def can_fit(self, length: int) -> bool:
        """Whether a range of `length` slots would be placed now."""

    @abstractmethod
    def unusable(self, length: int) -> int:
        """Free slots in pieces too small for a range of `length` slots."""

    @property
    def free_slots(self) -> int:
        """Free slots, usable or not."""
        return self.size - self.used


class FirstFitSpace(ContiguousSpace):
    """`size` token slots; ranges are placed first-fit and merged back on release."""

    def __init__(self, size: int) -> None:
        #: slots in the space
        self.size = require_int("size", size, 1)
        self._starts: list[int] = [0]  # sorted hole starts
        self._lengths: list[int] = [size]  # hole lengths, parallel to _starts
        self._live: dict[int, int] = {}  # start -> length of placed ranges
        #: slots in placed ranges
        self.used = 0

    def held(self, length: int) -> int:
        """First fit places exactly `length` slots."""
        return length

    def allocate(self, length: int) -> int | None:
        """Place `length` slots at the lowest hole that fits; its start, or None."""
        if type(length) is not int or length <= 0:
            length = require_int("length", length, 1)
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


class BuddySpace(ContiguousSpace):
    """`size` token slots under a binary buddy allocator with chunks of at most `max_chunk`.

    The space starts as the largest aligned power-of-two chunks that tile it, lowest
    addresses first (15,728 slots with ``max_chunk=2048``: seven chunks of 2,048, then
    1,024, 256, 64, 32 and 16). An allocation of ``n`` slots takes the lowest-addressed
    free chunk of the smallest order that holds ``2**ceil(log2 n)`` slots, halving it
    until it has that size; the halves it does not take stay free. Invariants: free
    chunks never overlap placed ones, no two free buddies of the same order coexist
    below `max_chunk` (they merge), and ``used + sum(free chunks) == size``.
    """

    def __init__(self, size: int, max_chunk: int) -> None:
        #: slots in the space
        self.size = require_int("size", size, 1)
        max_chunk = require_int("max_chunk", max_chunk, 1)
        if max_chunk & (max_chunk - 1):
            raise ValueError(f"max_chunk must be a power of two, got {max_chunk}")
        #: the largest chunk (a power of two)
        self.max_chunk = max_chunk
        self._max_order = max_chunk.bit_length() - 1
        # free chunk starts by order, each list sorted by address
        self._free: list[list[int]] = [[] for _ in range(self._max_order + 1)]
        self._live: dict[int, int] = {}  # start -> order of placed chunks
        #: slots in placed chunks
        self.used = 0
        start = 0
        while start < size:
            order = min(self._max_order, (size - start).bit_length() - 1)
            while start % (1 << order):  # keep every chunk aligned to its size
                order -= 1
            self._free[order].append(start)
            start += 1 << order

    def _order(self, length: int) -> int:
        return (length - 1).bit_length()

    def held(self, length: int) -> int:
        """The chunk a range of `length` slots takes: the next power of two."""
        return next_power_of_two(length)

    def allocate(self, length: int) -> int | None:
        """Place `length` slots in a chunk of the next power of two; its start, or None."""
        if type(length) is not int or length <= 0:
            length = require_int("length", length, 1)
        order = self._order(length)
        if order > self._max_order:
            return None
        found = next((o for o in range(order, self._max_order + 1) if self._free[o]), None)
        if found is None:
            return None
        start = self._free[found].pop(0)
        while found > order:  # split: keep the lower half, free the upper one
            found -= 1
            bisect.insort(self._free[found], start + (1 << found))
        self._live[start] = order
        self.used += 1 << order
        return start

    def can_fit(self, length: int) -> bool:
        """Whether a free chunk of at least the next power of two >= `length` exists."""
        order = self._order(length)
        return any(self._free[o] for o in range(order, self._max_order + 1))

    def free(self, start: int) -> None:
        """Release the chunk at `start`, merging it with its free buddy, repeatedly."""
        order = self._live.pop(start, None)
        if order is None:
            raise ValueError(f"no range is placed at {start}")
        self.used -= 1 << order
        while order < self._max_order:
            buddy = start ^ (1 << order)
            chunks = self._free[order]
            i = bisect.bisect_left(chunks, buddy)
            if i == len(chunks) or chunks[i] != buddy:
                break
            del chunks[i]
            start = min(start, buddy)
            order += 1
        bisect.insort(self._free[order], start)

    def chunks(self) -> list[tuple[int, int]]:
        """Free chunks as (start, length), by address."""
        return sorted((s, 1 << o) for o, starts in enumerate(self._free) for s in starts)

    def unusable(self, length: int) -> int:
        """Free slots in chunks smaller than the chunk `length` slots need."""
        order = self._order(length)
        return sum(len(self._free[o]) << o for o in range(min(order, self._max_order + 1)))


def make_space(allocator: str, size: int, max_len: int) -> ContiguousSpace:
    """A `BuddySpace` (chunks up to `max_len` rounded up to a power of two) or a
    `FirstFitSpace` of `size` slots."""
    if allocator == "buddy":
        return BuddySpace(size, next_power_of_two(max_len))
    if allocator == "first-fit":
        return FirstFitSpace(size)
    raise ValueError(f"unknown allocator {allocator!r}; valid names: {', '.join(ALLOCATORS)}")
