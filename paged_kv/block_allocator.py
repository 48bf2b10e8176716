"""Block allocator: reference counts and the free queue of one pool (metadata only).

Every physical block id ``0 .. num_blocks-1`` is a real block; none is reserved (padding
in slot mappings is a negative slot, padding in padded block tables is -1, and neither is
ever handed out). A block is in exactly one of three states::

    in use       ref_count >= 1, held by that many block tables
    free         ref_count == 0, no cached content: in the uncached free queue
    evictable    ref_count == 0, holds a cached full block: an eviction-policy candidate

The *free queue* is the order in which free blocks are reused: uncached blocks first
(oldest freed first), then evictable ones in the eviction policy's order. Allocation is
O(1) (plus the policy's cost when it must evict); freeing is O(1).

This module never imports numba: the simulator runs it at full scale with no storage.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable

from paged_kv.checks import require_int
from paged_kv.errors import OutOfBlocksError
from paged_kv.eviction import EvictionPolicy, make_policy

#: Called with the victims when cached blocks are evicted; it must forget their keys
#: (set ``block_keys[b] = None``), as the allocator does itself when no hook is set.
EvictHook = Callable[[list[int]], None]


class BlockAllocator:
    """Reference counts, cache keys and the free queue of one pool of `num_blocks` blocks.

    Invariants (see `check`): ``num_free + num_used == num_blocks``; a block is free or
    evictable exactly when its ref count is 0; evictable blocks, and only they among free
    blocks, carry a key; no block appears twice in the free structures.
    """

    def __init__(
        self,
        num_blocks: int,
        policy: str | EvictionPolicy = "lru",
        *,
        name: str = "gpu",
    ) -> None:
        num_blocks = require_int("num_blocks", num_blocks, 1)
        #: pool name used in error messages ("gpu" or "host")
        self.name = name
        #: number of blocks in the pool
        self.num_blocks = num_blocks
        #: ref_counts[b]: how many block tables hold block b
        self.ref_counts: list[int] = [0] * num_blocks
        #: block_keys[b]: the prefix-cache key block b holds, or None if uncached
        self.block_keys: list[Hashable | None] = [None] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))  # uncached, reuse from the left
        self.policy: EvictionPolicy = make_policy(policy)
        self._on_evict: EvictHook | None = None

    def _check_ids(self, blocks: list[int]) -> None:
        """Raise ValueError unless every id is in ``[0, num_blocks)`` (no wrap-around)."""
        if blocks and (min(blocks) < 0 or max(blocks) >= self.num_blocks):
            bad = next(b for b in blocks if not 0 <= b < self.num_blocks)
            raise ValueError(
                f"block id {bad} outside the {self.name} pool [0, {self.num_blocks})"
            )

    # -- counts ----------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        """Blocks that an allocation can take: uncached free plus evictable."""
        return len(self._free) + len(self.policy)

    @property
    def num_used(self) -> int:
        """Blocks with a reference count of at least 1."""
        return self.num_blocks - len(self._free) - len(self.policy)

    @property
    def num_evictable(self) -> int:
        """Free blocks that still hold a cached full block."""
        return len(self.policy)

    @property
    def usage(self) -> float:
        """Fraction of blocks in use (evictable blocks count as free)."""
        return self.num_used / self.num_blocks

    def free_queue(self) -> list[int]:
        """Free blocks in the order allocation would take them (uncached first)."""
        return list(self._free) + self.policy.order()

    def set_evict_hook(self, hook: EvictHook | None) -> None:
        """Register the function told when a cached block is evicted (the prefix cache)."""
        self._on_evict = hook

    # -- allocation ------------------------------------------------------------------
    def allocate(self) -> int:
        """Take one free block (ref count 0 -> 1), evicting a cached one if need be."""
        if self._free:
            block = self._free.popleft()
        elif len(self.policy):
            block = self._evict(1)[0]
        else:
            raise OutOfBlocksError(self.name, 1, 0)
        self.ref_counts[block] = 1
        return block

    def allocate_many(self, n: int) -> list[int]:
        """Take `n` free blocks, all or none (raises `OutOfBlocksError`, changing nothing).

        Uncached free blocks go first, oldest freed first; the rest are evicted in the
        policy's order.
        """
        n = require_int("n", n)
        free = self._free
        if n > len(free) + len(self.policy):
            raise OutOfBlocksError(self.name, n, self.num_free)
        take = min(n, len(free))
        popleft = free.popleft
        out = [popleft() for _ in range(take)]
        if take < n:
            out.extend(self._evict(n - take))
        refs = self.ref_counts
        for block in out:
            refs[block] = 1
        return out

    def _evict(self, n: int) -> list[int]:
        """Take `n` victims from the policy and drop their keys (through the hook if set)."""
        victims = self.policy.pop_many(n)
        if self._on_evict is not None:
            self._on_evict(victims)
        else:
            keys = self.block_keys
            for block in victims:
                keys[block] = None
        return victims

    def evict(self, n: int) -> list[int]:
        """Evict up to `n` evictable blocks in policy order; they become uncached free."""
        n = require_int("n", n)
        out = self._evict(min(n, len(self.policy)))
        self._free.extend(out)
        return out

    # -- sharing and release ---------------------------------------------------------
    def incref(self, block: int) -> None:
        """One more block table holds `block`; an evictable block is revived (0 -> 1)."""
        if not 0 <= block < self.num_blocks:
            self._check_ids([block])  # raises with the message
        refs = self.ref_counts
        if refs[block] == 0:
            if self.block_keys[block] is None:
                raise ValueError(f"block {block} is free and uncached: allocate it instead")
            self.policy.remove(block)
        refs[block] += 1

    def free(self, block: int) -> None:
        """One block table lets go of `block`; at ref count 0 it joins the free queue.

        A cached block becomes an eviction candidate; an uncached one is appended to
        the uncached free queue.
        """
        if not 0 <= block < self.num_blocks:
            self._check_ids([block])  # raises with the message
        refs = self.ref_counts
        count = refs[block]
        if count <= 0:
            raise ValueError(f"block {block} of the {self.name} pool is already free")
        refs[block] = count - 1
        if count == 1:
            if self.block_keys[block] is None:
                self._free.append(block)
            else:
                self.policy.add(block)

    def free_many(self, blocks: Iterable[int]) -> None:
        """`free` each block, in the order given (the hot path of releasing a sequence).

        All or nothing: a block already free (or named more often than it is held)
        raises `ValueError` with every count restored.
        """
        blocks = list(blocks)
        self._check_ids(blocks)
        refs = self.ref_counts
        keys = self.block_keys
        uncached = []
        evictable = []
        to_free, to_policy = uncached.append, evictable.append
        bad = False
        for block in blocks:
            count = refs[block]
            refs[block] = count - 1
            if count == 1:
                if keys[block] is None:
                    to_free(block)
                else:
                    to_policy(block)
            elif count <= 0:
                bad = True
        if bad:  # undo every decrement; the free structures were not touched yet
            for block in blocks:
                refs[block] += 1
            culprit = next(b for b in blocks if blocks.count(b) > refs[b])
            raise ValueError(f"block {culprit} of the {self.name} pool is already free")
        if uncached:
            self._free.extend(uncached)
        if evictable:
            self.policy.add_many(evictable)

    def incref_many(self, blocks: list[int]) -> None:
        """`incref` each block (a prefix hit revives evictable ones), all or none."""
        refs = self.ref_counts
        keys = self.block_keys
        n = self.num_blocks
        for block in blocks:  # check everything before changing anything
            if not 0 <= block < n:
                raise ValueError(f"block id {block} outside the {self.name} pool [0, {n})")
            if refs[block] == 0 and keys[block] is None:
                raise ValueError(f"block {block} is free and uncached: allocate it instead")
        remove = self.policy.remove
        for block in blocks:
            if refs[block] == 0:
                remove(block)
            refs[block] += 1

    # -- cache keys ------------------------------------------------------------------
    def set_key(self, block: int, key: Hashable) -> None:
        """Mark in-use `block` as holding the cached block `key`."""
        if not 0 <= block < self.num_blocks:
            self._check_ids([block])  # raises with the message
        if self.ref_counts[block] <= 0:
            raise ValueError(f"block {block} is free; only a block in use can be cached")
        if self.block_keys[block] is not None:
            raise ValueError(f"block {block} already holds cached key {self.block_keys[block]!r}")
        self.block_keys[block] = key
        self.policy.on_cached(block, key)

    def drop_all_evictable(self) -> list[int]:
        """Forget every evictable block's key; they join the uncached free queue.

        Used by a prefix-cache reset. Returns the blocks dropped, in former eviction order.
        """
        dropped = self.policy.order()
        self.policy.clear()
        for block in dropped:
            self.block_keys[block] = None
            self._free.append(block)
        return dropped

    # -- checking --------------------------------------------------------------------
    def check(self) -> list[str]:
        """Problems with this allocator's own invariants (empty when consistent)."""
        problems = []
        free = list(self._free)
        evictable = self.policy.order()
        if len(set(free)) != len(free):
            problems.append(f"{self.name}: a block appears twice in the free queue")
        if set(free) & set(evictable):
            problems.append(f"{self.name}: a block is both uncached-free and evictable")
        if len(evictable) != len(self.policy) or len(set(evictable)) != len(evictable):
            problems.append(f"{self.name}: the policy's order disagrees with its size")
        zero = {b for b, r in enumerate(self.ref_counts) if r == 0}
        if zero != set(free) | set(evictable):
            problems.append(
                f"{self.name}: ref-count-0 blocks {sorted(zero)[:8]} != free blocks "
                f"{sorted(set(free) | set(evictable))[:8]}"
            )
        if any(r < 0 for r in self.ref_counts):
            problems.append(f"{self.name}: negative ref count")
        if any(self.block_keys[b] is not None for b in free):
            problems.append(f"{self.name}: an uncached free block carries a key")
        if any(self.block_keys[b] is None for b in evictable):
            problems.append(f"{self.name}: an evictable block has no key")
        if self.num_free + self.num_used != self.num_blocks:
            problems.append(f"{self.name}: free + used != total")
        return problems

    def state(self) -> tuple:
        """A comparable picture of the whole state (tests snapshot it)."""
        return (
            tuple(self.ref_counts),
            tuple(self.block_keys),
            tuple(self._free),
            self.policy.state(),
        )
