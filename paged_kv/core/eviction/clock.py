"""CLOCK: second-chance eviction with one reference bit per cached block."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from paged_kv.core.eviction.base import EvictionPolicy


class ClockPolicy(EvictionPolicy):
    """CLOCK (second chance; Corbato 1968) over the evictable cached blocks.

    Every cached block has a *reference bit*: `on_cached` clears it, `on_hit` sets it
    (in use or candidate). The candidates stand in a ring with a hand. Precisely:

    * a released block (`add`) enters the ring just behind the hand, so that it is the
      last block the hand reaches; its bit is left as it is (a block revived by a hit
      comes back with its bit set, one never hit since caching with it clear);
    * a revived block (`remove`) leaves the ring, keeping its bit; the hand does not move
      (if it pointed at that block it now points at the next);
    * `pop` sweeps from the hand: a block with its bit set has it cleared and the hand
      moves past it; the first block with a clear bit is evicted, and the hand is left
      on the block after it.

    The ring is stored unrolled from the hand, as an ordered dict whose first entry is
    the block under the hand: "behind the hand" is the end, passing a block moves it to
    the end. So with no other hook in between, the victims are the clear-bit candidates
    in ring order, then the set-bit ones in ring order (`order` computes exactly that,
    without sweeping). Ties cannot arise. Every hook is O(1) except `pop`, which is
    O(1) amortized: each bit it clears was set by one `on_hit`.
    """

    name = "clock"

    def __init__(self) -> None:
        #: reference bit of every cached block this policy knows (in use or candidate)
        self._bit: dict[int, bool] = {}
        # the ring, unrolled from the hand; values unused
        self._ring: OrderedDict[int, None] = OrderedDict()

    def on_cached(self, block_id: int, key: Hashable) -> None:
        """A freshly cached block starts with its bit clear."""
        if block_id in self._ring:
            raise ValueError(f"block {block_id} is an eviction candidate; it cannot be cached")
        self._bit[block_id] = False

    def on_hit(self, block_id: int) -> None:
        """Set `block_id`'s reference bit."""
        self._bit[block_id] = True

    def add(self, block_id: int) -> None:
        """Insert `block_id` just behind the hand, with its bit as it is."""
        if block_id in self._ring:
            raise ValueError(f"block {block_id} is already an eviction candidate")
        self._bit.setdefault(block_id, False)
        self._ring[block_id] = None

    def remove(self, block_id: int) -> None:
        """Take `block_id` out of the ring (O(1)); its bit is kept."""
        del self._ring[block_id]

    def pop(self) -> int:
        """Sweep from the hand, clearing set bits, and evict the first clear-bit block."""
        ring, bit = self._ring, self._bit
        if not ring:
            raise IndexError("no evictable block")
        while True:
            block = next(iter(ring))
            if bit[block]:
                bit[block] = False
                ring.move_to_end(block)
            else:
                del ring[block]
                del bit[block]
                return block

    def clear(self) -> None:
        """Drop every candidate and its bit; blocks still in use keep theirs."""
        for block in self._ring:
            del self._bit[block]
        self._ring.clear()

    def order(self) -> list[int]:
        """Clear-bit candidates from the hand on, then set-bit ones from the hand on."""
        bit = self._bit
        ring = list(self._ring)
        return [b for b in ring if not bit[b]] + [b for b in ring if bit[b]]

    def referenced(self, block_id: int) -> bool | None:
        """`block_id`'s reference bit, or None if the policy does not know the block."""
        return self._bit.get(block_id)

    def __len__(self) -> int:
        return len(self._ring)

    def __contains__(self, block_id: object) -> bool:
        return block_id in self._ring

    def state(self) -> object:
        """The ring from the hand on, and every known block's reference bit."""
        return (tuple(self._ring), tuple(sorted(self._bit.items())))
