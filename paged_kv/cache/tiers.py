"""Tiers below the GPU: where cached prefix blocks are copied down, and loaded back from.

`Tiers` wires the lower tiers' bookkeeping (`paged_kv.core.tier.CacheTier`: host, then
disk) to the GPU allocator and to the storage backend, which moves the bytes
(`paged_kv.gpu.tier_pools`; nothing in metadata-only mode). Only published blocks, which
are computed and immutable, are ever copied, so a copy in any tier is valid for as long
as the tier keeps it.

**Placement** (``CacheConfig.tier_placement``):

* ``write_through``: a block that becomes a cached GPU block (published after it was
  computed, or loaded from a tier) is copied to every tier that lacks it.
* ``write_back``: a cached GPU block is copied to the host tier (the disk tier when
  there is no host tier) when the GPU evicts it, if that tier lacks it; a key the host
  tier evicts to make room is copied on to the disk tier, if it lacks it.
* ``selective``: a cached block is copied to every tier that lacks it each time a prompt
  is served from it (a GPU hit or a load), as HiCache's ``write_through_selective``
  copies a node on its second use; a block never hit is lost when the GPU evicts it.

Copies of one batch go from the last block to the first, host before disk for each
block; a store into a full tier first evicts that tier's victim by its own policy.

**Lookup** (`match`): after the GPU's own longest prefix, the walk goes on block by
block, each block served by the fastest tier holding it (GPU, then host, then disk),
up to the first block no tier holds (and the cap that leaves the last prompt token to
compute). A block found on the GPU is revived; one found below is *loaded*: pinned in
its tier, copied into a newly allocated GPU block through the copy engines on the
storage's tier stream (fenced like a swap, so nothing reads the block before the copy
lands), then published on the GPU.

**Failures.** A load that fails (`paged_kv.core.errors.TierLoadError`: the disk tier's file
missing, truncated, unreadable, or a block whose checksum changed) ends the prompt's
hit at that block: it and every block after it are recomputed (a GPU block revived
past it is swapped for a fresh one), and the tier forgets the slot. A store that fails
(`TierStoreError`) drops the entry. Nothing is served that was not loaded whole.

**Recency.** Freeing a sequence refreshes, in each tier, the keys of its computed blocks
the tier holds, from the last block to the first, so a prompt's start is evicted last
(vLLM's CPU LRU touches every block of a request in reverse for the same reason).

The host tier is not the swap pool (``num_host_blocks``): preempted sequences never
take tier slots, and tier copies never take swap blocks.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from paged_kv.cache.backend import KVBackend
from paged_kv.core.block_allocator import BlockAllocator
from paged_kv.core.config import CacheConfig
from paged_kv.core.errors import TierLoadError, TierStoreError
from paged_kv.core.sequence import SequenceRecord
from paged_kv.core.tier import DISK_TIER, HOST_TIER, SELECTIVE, WRITE_BACK, WRITE_THROUGH, CacheTier

#: one block of a lookup's continuation: (tier, slot), or (None, GPU block) when the GPU
#: holds it
Source = tuple[CacheTier | None, int]


class Tiers:
    """The host and disk tiers of one cache, their placement, loads and copy counts."""

    def __init__(self, gpu: BlockAllocator, config: CacheConfig, backend: KVBackend) -> None:
        self._gpu = gpu
        self._backend = backend
        #: the host tier, or None
        self.host = (CacheTier(HOST_TIER, config.host_cache_blocks, config.host_cache_policy)
                     if config.host_cache_blocks else None)
        #: the disk tier, or None
        self.disk = (CacheTier(DISK_TIER, config.disk_cache_blocks, config.disk_cache_policy)
                     if config.disk_cache_blocks else None)
        #: the tiers present, top to bottom
        self.lower: list[CacheTier] = [t for t in (self.host, self.disk) if t is not None]
        #: the placement policy
        self.placement = config.tier_placement
        #: blocks copied GPU -> host tier, GPU -> disk tier, host tier -> disk tier
        self.gpu_to_host = self.gpu_to_disk = self.host_to_disk = 0
        if self.placement == WRITE_BACK:
            gpu.on_evict = self._gpu_evicted
        elif self.placement == WRITE_THROUGH:
            gpu.on_publish = self.copy_down

    @property
    def pools(self) -> Any:
        """The tiers' bytes (`paged_kv.gpu.tier_pools.TierPools`), or None when the cache
        stores no KV."""
        return self._backend.tier_pools

    # -- lookup ------------------------------------------------------------------------
    def match(self, keys: Sequence[Hashable], start: int, limit: int) -> list[Source]:
        """Where blocks ``start, start+1, ...`` of `keys` are served from, up to the first
        block no tier holds or index `limit`; changes nothing."""
        out: list[Source] = []
        gpu_get = self._gpu.key_map.get
        lower = [(tier, tier.key_map.get) for tier in self.lower]
        for i in range(start, min(limit, len(keys))):
            key = keys[i]
            block = gpu_get(key)
            if block is not None:
                out.append((None, block))
                continue
            for tier, get in lower:
                slot = get(key)
                if slot is not None:
                    out.append((tier, slot))
                    break
            else:
                break
        return out

    def pin(self, more: Sequence[Source]) -> None:
        """Pin the lower-tier hits of a continuation (each tier's policy hears of them)."""
        for tier in self.lower:
            slots = [slot for t, slot in more if t is tier]
            if slots:
                tier.pin(slots)

    # -- serving a prompt --------------------------------------------------------------
    def serve(
        self, hits: list[int], more: Sequence[Source], new: list[int], keys: Sequence[Hashable]
    ) -> tuple[list[int], int, list[int]]:
        """Lay out a prompt's blocks and load its lower-tier hits.

        `hits` are the GPU prefix, `more` the continuation (`match`; its lower-tier
        slots pinned, its GPU blocks revived), `new` the blocks allocated for the rest.
        Returns the block table, how many leading blocks were served (the rest are to
        be computed) and, per lower tier in `lower` order, how many blocks it served.
        Unpins every slot, forgets a slot whose load failed, publishes the loaded
        blocks on the GPU and, under ``selective``, copies every served block down.
        """
        start = len(hits)
        blocks = list(hits)
        fresh = iter(new)
        loads: dict[int, list[tuple[int, int, int]]] = {id(t): [] for t in self.lower}
        for i, (tier, ident) in enumerate(more, start):
            if tier is None:
                blocks.append(ident)
            else:
                block = next(fresh)
                blocks.append(block)
                loads[id(tier)].append((i, ident, block))
        blocks.extend(fresh)
        end = limit = start + len(more)
        failed: list[tuple[CacheTier, int]] = []
        for tier in reversed(self.lower):  # the disk first: a failure there shortens the rest
            todo = [entry for entry in loads[id(tier)] if entry[0] < limit]
            if not todo:
                continue
            try:
                self._backend.tier_load(tier.name, [(slot, block) for _, slot, block in todo])
            except TierLoadError as err:
                index, slot, _ = todo[err.done]
                limit = index
                tier.load_failures += 1
                failed.append((tier, slot))
        served = []
        for tier in self.lower:
            mine = loads[id(tier)]
            tier.release([slot for _, slot, _ in reversed(mine)])
            done = [entry for entry in mine if entry[0] < limit]
            tier.loads += len(done)
            served.append(len(done))
        for tier, slot in failed:
            tier.drop(slot)
        gpu = self._gpu
        for i in range(limit, end):  # a revived GPU block past a failure: recompute it
            if more[i - start][0] is None:
                gpu.free(blocks[i])
                blocks[i] = gpu.allocate()
        loaded = sorted(block_i for entries in loads.values() for block_i, _, _ in entries
                        if block_i < limit)
        if loaded:
            gpu.cache_held([blocks[i] for i in loaded], [keys[i] for i in loaded])
        if self.placement == SELECTIVE and limit:
            self.copy_down(blocks[:limit], keys[:limit])
        return blocks, limit, served

    def release(self, record: SequenceRecord, block_size: int) -> None:
        """A sequence was freed: refresh its computed blocks in every tier, tail first."""
        keys = record.keys[: record.num_computed_tokens // block_size]
        if keys:
            for tier in self.lower:
                tier.refresh(reversed(keys))

    # -- copies down -------------------------------------------------------------------
    def copy_down(self, blocks: Sequence[int], keys: Sequence[Hashable]) -> None:
        """Copy cached GPU `blocks` (holding `keys`) to every tier that lacks them, from
        the last block to the first (the ``write_through`` and ``selective`` rule).

        Only published blocks move: `ValueError`, copying nothing, unless each block
        holds its key on the GPU."""
        if len(blocks) != len(keys):
            raise ValueError(f"{len(blocks)} blocks but {len(keys)} keys")
        held, n = self._gpu.block_keys, self._gpu.num_blocks
        for block, key in zip(blocks, keys):
            if not (type(block) is int and 0 <= block < n) or (
                    held[block] is not key and held[block] != key):
                raise ValueError(f"GPU block {block!r} holds no published copy of key "
                                 f"{key!r}: only published blocks are copied down")
        lower = [(tier, tier.key_map) for tier in self.lower]
        for i in range(len(blocks) - 1, -1, -1):
            key = keys[i]
            for tier, held in lower:
                if key not in held:
                    self._store(tier, key, blocks[i])

    def _gpu_evicted(self, blocks: list[int], keys: list[Hashable]) -> None:
        """``write_back``: the GPU evicted these cached blocks (their bytes are still
        there until the caller reuses them): copy each down, in eviction order."""
        tier = self.lower[0]
        for block, key in zip(blocks, keys):
            if key not in tier:
                self._store(tier, key, block)

    def _store(self, tier: CacheTier, key: Hashable, block: int) -> None:
        """Copy GPU `block` (holding `key`) into `tier`; under write-back, the key the
        host tier evicts for it goes on to the disk tier first."""
        placed = tier.store(key)
        if placed is None:
            return
        slot, evicted = placed
        if evicted is not None and tier is self.host and self.placement == WRITE_BACK:
            self._host_to_disk(evicted, slot)
        try:
            self._backend.tier_store(tier.name, [(block, slot)])
        except TierStoreError:
            tier.store_failures += 1
            tier.drop(slot)
            return
        if tier is self.host:
            self.gpu_to_host += 1
        else:
            self.gpu_to_disk += 1

    def _host_to_disk(self, key: Hashable, host_slot: int) -> None:
        """Copy the host tier's `host_slot` (still holding `key`) to the disk tier."""
        disk = self.disk
        if disk is None or key in disk:
            return
        placed = disk.store(key)
        if placed is None:
            return
        slot, _ = placed
        try:
            self._backend.tier_copy(HOST_TIER, DISK_TIER, [(host_slot, slot)])
        except TierStoreError:
            disk.store_failures += 1
            disk.drop(slot)
            return
        self.host_to_disk += 1

    # -- whole-tier operations and reporting ------------------------------------------
    def clear(self) -> None:
        """Forget every key in every tier (a prefix-cache reset)."""
        for tier in self.lower:
            tier.clear()

    def moves(self) -> tuple[int, int, int, int, int]:
        """Blocks moved so far: host -> GPU, disk -> GPU, GPU -> host, GPU -> disk,
        host -> disk (the counts a replay reports per request)."""
        host, disk = self.host, self.disk
        return (host.loads if host else 0, disk.loads if disk else 0,
                self.gpu_to_host, self.gpu_to_disk, self.host_to_disk)

    def stats(self) -> dict[str, int]:
        """The tier fields of `paged_kv.core.stats.CacheStats`."""
        out: dict[str, int] = {}
        for name, tier in ((HOST_TIER, self.host), (DISK_TIER, self.disk)):
            if tier is None:
                continue
            out[f"{name}_tier_blocks"] = tier.capacity
            out[f"{name}_tier_held_blocks"] = len(tier)
            out[f"{name}_tier_loads"] = tier.loads
            out[f"{name}_tier_evictions"] = tier.evictions
        if self.disk is not None:
            out["disk_tier_load_failures"] = self.disk.load_failures
            out["disk_tier_store_failures"] = self.disk.store_failures
        out["blocks_gpu_to_host_tier"] = self.gpu_to_host
        out["blocks_gpu_to_disk_tier"] = self.gpu_to_disk
        out["blocks_host_to_disk_tier"] = self.host_to_disk
        return out

    def check(self) -> list[str]:
        """Problems with the tiers' state: each tier's own, and the data layer's (every
        key a tier holds has bytes written whole)."""
        problems = []
        for tier in self.lower:
            problems += tier.check()
            problems += self._backend.tier_problems(tier.name, sorted(tier.keys()))
        return problems

    def state(self) -> tuple:
        """A comparable picture (snapshots)."""
        return (tuple(t.state() for t in self.lower), self.gpu_to_host, self.gpu_to_disk,
                self.host_to_disk)
