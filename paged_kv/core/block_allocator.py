"""Block allocator: reference counts, cache keys and the free queue of one pool (metadata only).

Every physical block id ``0 .. num_blocks-1`` is a real block; none is reserved (padding
in slot mappings is a negative slot, padding in padded block tables is -1, and neither is
ever handed out). A block is in exactly one of three states::

    in use       ref_count >= 1, held by that many block tables (+ a key if published)
    free         ref_count == 0, no cached content: in the uncached free queue
    evictable    ref_count == 0, holds a cached full block: an eviction-policy candidate

The *free queue* is the order in which free blocks are reused: uncached blocks first
(oldest freed first), then evictable ones in the eviction policy's order. Allocation is
O(1) (plus the policy's cost when it must evict); freeing is O(1).

The allocator is the one owner of the prefix cache's key <-> block map, as vLLM's block
pool is: ``block_keys[b]`` is the key on the block, and a dict maps each key back to its
block. Both change only here (`cache_block`, `cache_blocks`, eviction, `uncache`,
`uncache_all`), so they cannot disagree and every counter is counted where the change
happens. The `paged_kv.core.prefix_cache.PrefixCache` computes keys, matches prompts and
decides what to publish; it stores nothing of its own.

*Live duplicates.* When two sequences compute the same full block, the first one
published keeps the key; the other copy is a *live duplicate*: held by its sequence,
computed, but not in the key map. The allocator remembers it (key -> duplicates,
oldest first). When the published copy is evicted, the oldest live duplicate takes
over its key (vLLM keeps every copy under one hash for the same reason), so the
content stays cached while any copy of it is alive; a duplicate whose last holder lets
go is forgotten. Since that can happen at any eviction, a live duplicate is as
immutable as the published copy (the write paths refuse it: `duplicate_map`).

Two optional listeners let the cache's lower tiers follow the pool (`paged_kv.cache.tiers`):
`on_evict(blocks, keys)` hears of cached blocks evicted whose key left the pool (in
eviction order, before the caller reuses the blocks), `on_publish(blocks, keys)` of
blocks that just got their key. Both are None unless a tier asks.

This module never imports numba: the simulator runs it at full scale with no storage.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence

from paged_kv.core.errors import OutOfBlocksError
from paged_kv.core.eviction import EvictionPolicy, make_policy
from paged_kv.core.validate import is_int, require_int


class BlockAllocator:
    """Reference counts, cache keys and the free queue of one pool of `num_blocks` blocks.

    Invariants (see `check`): ``num_free + num_used == num_blocks``; a block is free or
    evictable exactly when its ref count is 0; evictable blocks, and only they among free
    blocks, carry a key; the key map and ``block_keys`` are each other's inverse; no
    block appears twice in the free structures; a live duplicate is in use, carries no
    key, and its key is cached by another block.
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
        #: ref_counts[b]: how many block tables hold block b (read-only outside)
        self.ref_counts: list[int] = [0] * num_blocks
        #: block_keys[b]: the prefix-cache key block b holds, or None (read-only outside)
        self.block_keys: list[Hashable | None] = [None] * num_blocks
        self._cached: dict[Hashable, int] = {}  # key -> block: the inverse of block_keys
        self._free: deque[int] = deque(range(num_blocks))  # uncached, reuse from the left
        self.policy: EvictionPolicy = make_policy(policy)
        policy_type = type(self.policy)
        # the policy's on_cached hook, or None when it keeps the base class's no-op
        self._on_cached = (
            None if policy_type.on_cached is EvictionPolicy.on_cached else self.policy.on_cached
        )
        #: blocks given a key since construction (each publication counted once)
        self.num_cached_total = 0
        #: cached blocks evicted since construction (their keys dropped to make room)
        self.num_evicted_total = 0
        self._dup_of: dict[int, Hashable] = {}  # live duplicate -> its key
        self._dups: dict[Hashable, dict[int, None]] = {}  # key -> live duplicates, oldest first
        #: listener for cached blocks evicted whose key left the pool: ``(blocks, keys)``
        self.on_evict: Callable[[list[int], list[Hashable]], None] | None = None
        #: listener for blocks that just got their key: ``(blocks, keys)``
        self.on_publish: Callable[[list[int], list[Hashable]], None] | None = None

    def require_id(self, block: object) -> int:
        """`block` as an id of this pool, or `ValueError` (a bool, a non-integer or an
        id outside ``[0, num_blocks)``: no wrap-around)."""
        if type(block) is not int:
            if not is_int(block):
                raise ValueError(f"a block id of the {self.name} pool must be an integer, "
                                 f"got {block!r}")
            block = int(block)
        if not 0 <= block < self.num_blocks:
            raise ValueError(f"block id {block} outside the {self.name} pool "
                             f"[0, {self.num_blocks})")
        return block

    def _check_ids(self, blocks: Sequence[int]) -> None:
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
    def num_cached(self) -> int:
        """Blocks holding a key now, in use or evictable."""
        return len(self._cached)

    @property
    def usage(self) -> float:
        """Fraction of blocks in use (evictable blocks count as free)."""
        return self.num_used / self.num_blocks

    def free_queue(self) -> list[int]:
        """Free blocks in the order allocation would take them (uncached first)."""
        return list(self._free) + self.policy.order()

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
        if type(n) is not int or n < 0:
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
        """Take `n` victims from the policy and drop their keys (both directions); a key
        with a live duplicate passes to it (class docstring)."""
        victims = self.policy.pop_many(n)
        keys = self.block_keys
        cached = self._cached
        self.num_evicted_total += len(victims)
        if not self._dups and self.on_evict is None:
            for block in victims:
                del cached[keys[block]]
                keys[block] = None
            return victims
        lost_blocks, lost_keys = [], []
        for block in victims:
            key = keys[block]
            keys[block] = None
            if key in self._dups:
                self._take_over(key)
            else:
                del cached[key]
                lost_blocks.append(block)
                lost_keys.append(key)
        if lost_blocks and self.on_evict is not None:
            self.on_evict(lost_blocks, lost_keys)
        return victims

    def _take_over(self, key: Hashable) -> None:
        """The oldest live duplicate of `key` becomes its cached block."""
        holders = self._dups[key]
        block = next(iter(holders))
        del holders[block]
        if not holders:
            del self._dups[key]
        del self._dup_of[block]
        self._cached[key] = block
        self.block_keys[block] = key
        self.num_cached_total += 1
        if self._on_cached is not None:
            self._on_cached(block, key)
        if self.on_publish is not None:
            self.on_publish([block], [key])

    def _forget_duplicates(self, blocks: Iterable[int]) -> None:
        """`blocks` just became free and uncached: those that were live duplicates are not
        any more."""
        dup_of, dups = self._dup_of, self._dups
        for block in blocks:
            key = dup_of.pop(block, None)
            if key is not None:
                holders = dups[key]
                del holders[block]
                if not holders:
                    del dups[key]

    def evict(self, n: int) -> list[int]:
        """Evict up to `n` evictable blocks in policy order; they become uncached free."""
        n = require_int("n", n)
        out = self._evict(min(n, len(self.policy)))
        self._free.extend(out)
        return out

    # -- sharing and release ---------------------------------------------------------
    def incref(self, block: int) -> None:
        """One more block table holds `block`; an evictable block is revived (0 -> 1)."""
        self.incref_many((block,))

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
                if self._dup_of:
                    self._forget_duplicates((block,))
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
            if self._dup_of:
                self._forget_duplicates(uncached)
            self._free.extend(uncached)
        if evictable:
            self.policy.add_many(evictable)

    def incref_many(self, blocks: Sequence[int]) -> None:
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

    # -- the key map -----------------------------------------------------------------
    def cached_block(self, key: Hashable) -> int | None:
        """The block holding `key`, in use or evictable, or None."""
        return self._cached.get(key)

    def match(self, keys: Sequence[Hashable], limit: int) -> list[int]:
        """Blocks holding ``keys[0], keys[1], ...`` up to the first key not cached, at
        most `limit` of them; changes nothing."""
        get = self._cached.get
        out: list[int] = []
        for i in range(min(limit, len(keys))):
            block = get(keys[i])
            if block is None:
                break
            out.append(block)
        return out

    def cache_block(self, block: int, key: Hashable) -> bool:
        """Give in-use `block` the key `key`; False if `key` is cached already (another
        block holds that content: the first stays the cached copy, and `block` is
        remembered as a live duplicate) or `block` already holds a key."""
        return self.cache_blocks((block,), (key,)) == 1

    def cache_blocks(self, blocks: Sequence[int], keys: Sequence[Hashable]) -> int:
        """`cache_block` each ``(block, key)`` pair in order; how many got their key.

        Every block must be in use (`ValueError`, changing nothing, otherwise). The
        eviction policy's `on_cached` hook is told once per block that gets a key.
        """
        if len(blocks) != len(keys):
            raise ValueError(f"{len(blocks)} blocks but {len(keys)} keys")
        self._check_ids(blocks)
        refs = self.ref_counts
        if 0 in map(refs.__getitem__, blocks):
            block = next(b for b in blocks if refs[b] <= 0)
            raise ValueError(f"block {block} is free; only a block in use can be cached")
        return self.cache_held(blocks, keys)

    def cache_held(self, blocks: Sequence[int], keys: Sequence[Hashable]) -> int:
        """`cache_blocks` for blocks the caller knows are in use (a live sequence's, as
        the prefix cache publishes them): the publishing hot path, unchecked.

        A block whose key another block holds is remembered as a live duplicate.
        """
        block_keys = self.block_keys
        setdefault = self._cached.setdefault
        on_cached = self._on_cached
        published = [] if self.on_publish is not None else None
        stored = 0
        for block, key in zip(blocks, keys):
            # a keyed block is skipped first, so setdefault never re-confirms a key
            if block_keys[block] is None:
                if setdefault(key, block) == block:
                    block_keys[block] = key
                    stored += 1
                    if on_cached is not None:
                        on_cached(block, key)
                    if published is not None:
                        published.append(block)
                elif block not in self._dup_of:
                    self._dup_of[block] = key
                    self._dups.setdefault(key, {})[block] = None
        self.num_cached_total += stored
        if published:
            self.on_publish(published, [block_keys[b] for b in published])
        return stored

    @property
    def key_map(self) -> dict[Hashable, int]:
        """Key -> block for every cached key (the inverse of `block_keys`): read-only
        outside, for loops that test many keys."""
        return self._cached

    def store_evictable(self, key: Hashable) -> tuple[int, Hashable | None] | None:
        """Give an uncached free block, or else the policy's victim, the key `key` and
        make it the newest eviction candidate at once: how a lower tier of the prefix
        cache stores a copy (the block is never held by a table).

        The policy hears what allocating, caching and freeing the block would tell it
        (``pop``, ``on_cached``, ``add``). Returns ``(block, the key evicted for it or
        None)``; None, changing nothing, when `key` is cached already or no block is
        free or evictable.
        """
        cached = self._cached
        if key in cached:
            return None
        evicted = None
        if self._free:
            block = self._free.popleft()
        elif len(self.policy):
            block = self.policy.pop()
            evicted = self.block_keys[block]
            del cached[evicted]
            self.num_evicted_total += 1
        else:
            return None
        self.block_keys[block] = key
        cached[key] = block
        self.num_cached_total += 1
        if self._on_cached is not None:
            self._on_cached(block, key)
        self.policy.add(block)
        return block, evicted

    def uncache(self, block: int) -> Hashable:
        """Drop the key of evictable `block` (its content is known to be lost); it joins
        the uncached free queue. Returns the key. `ValueError` unless it is evictable."""
        block = self.require_id(block)
        key = self.block_keys[block]
        if key is None or self.ref_counts[block]:
            raise ValueError(f"block {block} of the {self.name} pool is not evictable")
        self.policy.remove(block)
        del self._cached[key]
        self.block_keys[block] = None
        self._free.append(block)
        return key

    def refresh(self, block: int) -> None:
        """Make evictable `block` the most recently released candidate (as if revived and
        freed again, without a hit); a block in use is left as it is. `ValueError` for
        an id that is not one of this pool's."""
        block = self.require_id(block)
        if self.ref_counts[block] == 0 and self.block_keys[block] is not None:
            policy = self.policy
            policy.remove(block)
            policy.add(block)

    def duplicates(self) -> dict[int, Hashable]:
        """Live duplicates now: block -> the key another block holds (a copy)."""
        return dict(self._dup_of)

    @property
    def duplicate_map(self) -> dict[int, Hashable]:
        """Live duplicate -> its key, the live map (read-only outside): what a write path
        tests per block, since a live duplicate is as immutable as its published copy."""
        return self._dup_of

    def cached_in_use(self) -> list[int]:
        """Blocks that hold a key and are held by a block table, ascending."""
        refs = self.ref_counts
        return sorted(b for b in self._cached.values() if refs[b] > 0)

    def uncache_all(self) -> list[int]:
        """Forget every key; evictable blocks join the uncached free queue.

        Refused (`ValueError`, changing nothing) while a cached block is in use. Used by
        a prefix-cache reset. Returns the blocks dropped, in former eviction order.
        """
        in_use = self.cached_in_use()
        if in_use:
            raise ValueError(f"cached blocks {in_use[:8]} are in use")
        dropped = self.policy.order()
        self.policy.clear()
        keys = self.block_keys
        for block in dropped:
            keys[block] = None
        self._cached.clear()
        self._dups.clear()
        self._dup_of.clear()
        self._free.extend(dropped)
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
        keyed = {b: k for b, k in enumerate(self.block_keys) if k is not None}
        if keyed != {b: k for k, b in self._cached.items()}:
            problems.append(f"{self.name}: the key map and the blocks' keys disagree")
        if self.num_free + self.num_used != self.num_blocks:
            problems.append(f"{self.name}: free + used != total")
        listed = {b: k for k, holders in self._dups.items() for b in holders}
        if listed != self._dup_of or any(not h for h in self._dups.values()):
            problems.append(f"{self.name}: the live-duplicate maps disagree")
        for block, key in self._dup_of.items():
            if self.ref_counts[block] <= 0 or self.block_keys[block] is not None:
                problems.append(f"{self.name}: live duplicate {block} is free or keyed")
            owner = self._cached.get(key)
            if owner is None or owner == block:
                problems.append(f"{self.name}: live duplicate {block}'s key is not cached "
                                f"by another block")
        return problems

    def state(self) -> tuple:
        """A comparable picture of the whole state (tests snapshot it)."""
        return (
            tuple(self.ref_counts),
            tuple(self.block_keys),
            tuple(self._free),
            self.policy.state(),
            self.num_cached_total,
            self.num_evicted_total,
            tuple((k, tuple(h)) for k, h in self._dups.items()),
        )
