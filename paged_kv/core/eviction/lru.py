"""LRU: evict the block that became evictable longest ago."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from paged_kv.core.eviction.base import EvictionPolicy


class LRUPolicy(EvictionPolicy):
    """Least recently used, the vLLM v1 default.

    "Used" means released: a block enters the candidate order when its last user frees
    it, so the block freed longest ago is evicted first. A hit on an evictable block
    revives it (it leaves the order); when freed again it goes to the most-recent end.
    The allocator releases a sequence's blocks tail first, so among blocks freed
    together the end of the chain is evicted before its start, which keeps the shared
    beginning of prompts cached longest.
    """

    name = "lru"

    def __init__(self) -> None:
        # insertion order == eviction order; values unused
        self._order: OrderedDict[int, None] = OrderedDict()

    def add(self, block_id: int) -> None:
        """Append `block_id` at the most-recently-used end.

        The allocator adds a block only on its 1 -> 0 reference-count transition, so a
        block is never added twice; `BlockAllocator.check` verifies it.
        """
        self._order[block_id] = None

    def add_many(self, block_ids: Iterable[int]) -> None:
        """Append each block at the most-recently-used end, in order."""
        order = self._order
        for block_id in block_ids:
            order[block_id] = None

    def remove(self, block_id: int) -> None:
        """Take `block_id` out of the order (O(1))."""
        del self._order[block_id]

    def pop(self) -> int:
        """Evict from the least-recently-used end."""
        if not self._order:
            raise IndexError("no evictable block")
        return self._order.popitem(last=False)[0]

    def pop_many(self, n: int) -> list[int]:
        """`n` evictions from the least-recently-used end."""
        if n > len(self._order):
            raise IndexError(f"{n} evictions asked, {len(self._order)} candidates")
        popitem = self._order.popitem
        return [popitem(False)[0] for _ in range(n)]

    def clear(self) -> None:
        """Drop every candidate."""
        self._order.clear()

    def order(self) -> list[int]:
        """Least recently used first."""
        return list(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, block_id: object) -> bool:
        return block_id in self._order
