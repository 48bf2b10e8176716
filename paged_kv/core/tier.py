"""A lower tier of the prefix cache: the host or disk copies of cached blocks (metadata only).

Below the GPU pool, a tier holds copies of *published* prefix blocks (computed, hence
immutable), each in a slot ``0 .. capacity-1`` of its own pool, with its own eviction
policy. `CacheTier` is that bookkeeping, and it reuses `BlockAllocator` for it: a tier
slot lives exactly like a GPU block of the prefix cache::

    free        no key: the next store may take it
    evictable   holds a key: an eviction candidate of the tier's policy
    pinned      holds a key and is being loaded into the GPU (ref count >= 1): never
                evicted, so a store in the same operation cannot overwrite it

A store takes a free slot, or evicts the policy's victim (whose key it reports, so a
write-back cascade can copy it further down first), gives the slot its key and
releases it at once (most recent candidate). A hit tells the policy (``on_hit``) and
pins the slot until the load has been issued; releasing it makes it the most recent
candidate. `refresh` makes a held key the most recent candidate without a hit: the
cache does it when a sequence is freed, for every block of it the tier holds, from the
last block to the first (as the GPU pool releases a sequence tail first), so that the
start of a prompt, which every later turn needs, is evicted last.

Slots never hold anything but copies: nothing in a tier is "in use" by a sequence,
and a key is held at most once per tier. Which bytes a slot holds is the data layer's
business (`paged_kv.gpu.tier_pools`); this module never imports numba.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

from paged_kv.core.block_allocator import BlockAllocator
from paged_kv.core.eviction import ONLINE_POLICIES, EvictionPolicy, make_policy

#: tier names, top to bottom below the GPU
HOST_TIER, DISK_TIER = "host", "disk"

#: placement policies: when a cached GPU block is copied down (`paged_kv.cache.tiers`)
WRITE_THROUGH, WRITE_BACK, SELECTIVE = "write_through", "write_back", "selective"
PLACEMENTS: tuple[str, ...] = (WRITE_THROUGH, WRITE_BACK, SELECTIVE)


def require_tier_policy(field: str, policy: object) -> str:
    """`policy` lower-cased if a tier can use it (a policy built from its name alone: see
    `paged_kv.core.eviction.ONLINE_POLICIES`), else `ValueError` naming `field`."""
    if not isinstance(policy, str) or policy.lower() not in ONLINE_POLICIES:
        raise ValueError(
            f"{field}: unknown tier eviction policy {policy!r}; valid names: "
            f"{', '.join(ONLINE_POLICIES)}"
        )
    return policy.lower()


def require_placement(field: str, placement: object) -> str:
    """`placement` if it is one of `PLACEMENTS`, else `ValueError` naming `field`."""
    if placement not in PLACEMENTS:
        raise ValueError(
            f"{field} must be one of {', '.join(PLACEMENTS)}, got {placement!r}"
        )
    return placement


class CacheTier:
    """Slots, keys and the eviction policy of one lower tier of `capacity` blocks.

    `policy` is a name from `ONLINE_POLICIES` (or an `EvictionPolicy` instance). The
    counters (`stores`, `evictions`, `loads`, failures) run from construction.
    """

    def __init__(self, name: str, capacity: int, policy: str | EvictionPolicy = "lru") -> None:
        #: "host" or "disk"
        self.name = name
        #: the tier's slots: ref counts (pins), keys, free queue and policy
        self.allocator = BlockAllocator(capacity, make_policy(policy), name=f"{name} tier")
        #: key -> slot of every key held (read-only outside)
        self.key_map = self.allocator.key_map
        #: blocks loaded from this tier into GPU blocks that a prompt was served from
        self.loads = 0
        #: stores refused because every slot was pinned
        self.rejected_stores = 0
        #: loads that failed (the block was then recomputed)
        self.load_failures = 0
        #: stores that failed (the entry was dropped)
        self.store_failures = 0

    # -- what it holds -------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        """Slots in the tier."""
        return self.allocator.num_blocks

    @property
    def policy(self) -> EvictionPolicy:
        """The tier's eviction policy."""
        return self.allocator.policy

    def __len__(self) -> int:
        """Keys held now."""
        return self.allocator.num_cached

    def __contains__(self, key: object) -> bool:
        return key in self.key_map

    def slot_of(self, key: Hashable) -> int | None:
        """The slot holding `key`, or None."""
        return self.key_map.get(key)

    def keys(self) -> dict[int, Hashable]:
        """Slot -> key for every slot holding one."""
        return {s: k for s, k in enumerate(self.allocator.block_keys) if k is not None}

    @property
    def stores(self) -> int:
        """Keys stored since construction (each store counted once)."""
        return self.allocator.num_cached_total

    @property
    def evictions(self) -> int:
        """Keys evicted to make room since construction."""
        return self.allocator.num_evicted_total

    # -- changes -----------------------------------------------------------------------
    def store(self, key: Hashable) -> tuple[int, Hashable | None] | None:
        """Take a slot for `key`: ``(slot, key evicted from that slot or None)``.

        None, changing nothing, when the tier holds `key` already, or (counted in
        `rejected_stores`) when every slot is pinned.
        """
        if key in self.key_map:
            return None
        placed = self.allocator.store_evictable(key)
        if placed is None:
            self.rejected_stores += 1
        return placed

    def pin(self, slots: Sequence[int]) -> None:
        """A prompt hit these slots: the policy hears of each hit, in order, and each is
        pinned until `release`. `ValueError`, changing nothing, unless every slot is an
        id of a slot holding a key."""
        allocator = self.allocator
        keys = allocator.block_keys
        for slot in slots:
            if keys[allocator.require_id(slot)] is None:
                raise ValueError(f"{self.name} tier: slot {slot} holds no key to pin")
        on_hit = allocator.policy.on_hit
        for slot in slots:
            on_hit(slot)
        allocator.incref_many(slots)

    def release(self, slots: Iterable[int]) -> None:
        """Unpin slots (in the order given: the last one becomes the most recent)."""
        self.allocator.free_many(slots)

    def refresh(self, keys: Iterable[Hashable]) -> None:
        """Make each held key of `keys`, in order, the most recent candidate."""
        get, refresh = self.key_map.get, self.allocator.refresh
        for key in keys:
            slot = get(key)
            if slot is not None:
                refresh(slot)

    def drop(self, slot: int) -> Hashable:
        """Forget the (unpinned) `slot`'s key: its bytes are lost or wrong. Returns it."""
        return self.allocator.uncache(slot)

    def clear(self) -> None:
        """Forget every key (a prefix-cache reset); nothing may be pinned."""
        self.allocator.uncache_all()

    # -- checking ------------------------------------------------------------------------
    def check(self) -> list[str]:
        """Problems with the tier's state (empty when consistent): the allocator's own
        invariants, and no slot pinned between operations."""
        problems = self.allocator.check()
        pinned = [s for s, r in enumerate(self.allocator.ref_counts) if r]
        if pinned:
            problems.append(f"{self.name} tier: slots {pinned[:8]} pinned between operations")
        return problems

    def state(self) -> tuple:
        """A comparable picture of the whole state (snapshots)."""
        return (self.allocator.state(), self.loads, self.rejected_stores, self.load_failures,
                self.store_failures)

    def __repr__(self) -> str:
        return (f"CacheTier({self.name!r}, {len(self)}/{self.capacity} held, "
                f"policy={self.policy.name!r})")
