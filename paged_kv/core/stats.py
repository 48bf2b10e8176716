"""Statistics snapshots: immutable values, never the live counters.

`PagedKVCache.stats()` returns a `CacheStats`; `PrefixCache.stats()` a
`PrefixCacheStats`. Both are frozen: changing one is an error, and the cache's own
counters cannot be reached through them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PrefixCacheStats:
    """Prefix-cache figures at one moment, counted in tokens, requests and blocks.

    Lookups and hits count since construction or the last `reset_stats`; so do the
    stored and evicted blocks. `cached_blocks` is the cache's size now.
    """

    #: prompt tokens looked up (one lookup per allocated prompt that gave ids or keys)
    query_tokens: int = 0
    #: prompt tokens served from cached blocks, in any tier
    hit_tokens: int = 0
    #: lookups made
    requests: int = 0
    #: lookups that hit at least one cached block
    hit_requests: int = 0
    #: full blocks published to the cache (each block counted once per publication)
    stored_blocks: int = 0
    #: cached blocks evicted to make room (a reset does not count)
    evictions: int = 0
    #: blocks holding a cached key now, in use or evictable
    cached_blocks: int = 0
    #: of `hit_tokens`, those loaded from the host tier
    host_hit_tokens: int = 0
    #: of `hit_tokens`, those loaded from the disk tier
    disk_hit_tokens: int = 0

    @property
    def hit_rate(self) -> float:
        """hit_tokens / query_tokens (0 when nothing was queried)."""
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0

    @property
    def gpu_hit_tokens(self) -> int:
        """Of `hit_tokens`, those served by cached GPU blocks."""
        return self.hit_tokens - self.host_hit_tokens - self.disk_hit_tokens


@dataclass(frozen=True)
class CacheStats:
    """Counts and sizes of one `PagedKVCache` at one moment.

    Blocks "used" have a reference count of at least 1; evictable cached blocks count
    as free. Byte figures are what the blocks hold, or would hold, for the cache's model
    (``bytes_per_block`` times blocks), with or without storage attached; a cache built
    without a model reports them as 0. Event counts run from the cache's construction,
    the prefix-cache ones from construction or `reset_prefix_stats`. The tier fields
    are 0 for a tier that is not configured.
    """

    #: blocks in the GPU pool
    gpu_total_blocks: int
    #: GPU blocks held by at least one sequence
    gpu_used_blocks: int
    #: GPU blocks an allocation can take (uncached free + evictable)
    gpu_free_blocks: int
    #: free GPU blocks still holding a cached full block
    gpu_evictable_blocks: int
    #: blocks in the host pool (0 without one)
    host_total_blocks: int
    #: host blocks held by swapped-out sequences
    host_used_blocks: int
    #: free host blocks
    host_free_blocks: int
    #: bytes of KV the GPU pool's used blocks occupy (used blocks x bytes per block)
    gpu_used_bytes: int
    #: bytes of the whole GPU pool
    gpu_capacity_bytes: int
    #: bytes of KV the host pool's used blocks occupy
    host_used_bytes: int
    #: bytes of the whole host pool
    host_capacity_bytes: int
    #: token slots that hold a token, over the slots of used GPU blocks (1.0 when empty)
    utilization: float
    #: tokens stored in GPU blocks, each physical slot counted once
    gpu_tokens: int
    #: live sequences (on either pool)
    num_sequences: int
    #: operations refused for lack of blocks (raised or answered None)
    allocation_failures: int
    #: blocks copied by copy-on-write
    cow_copies: int
    #: sequences swapped out (GPU -> host)
    swap_outs: int
    #: sequences swapped in (host -> GPU)
    swap_ins: int
    #: blocks moved GPU -> host
    blocks_swapped_out: int
    #: blocks moved host -> GPU
    blocks_swapped_in: int
    #: prompt tokens looked up in the prefix cache (0 when prefix caching is off)
    prefix_query_tokens: int
    #: prompt tokens served from cached blocks (any tier)
    prefix_hit_tokens: int
    #: prompts looked up
    prefix_requests: int
    #: prompts that hit at least one cached block
    prefix_hit_requests: int
    #: full blocks published to the prefix cache
    prefix_stored_blocks: int
    #: cached blocks evicted to make room
    prefix_evictions: int
    #: blocks holding a cached key now, in use or evictable
    prefix_cached_blocks: int
    #: of `prefix_hit_tokens`, those loaded from the host tier
    prefix_host_hit_tokens: int = 0
    #: of `prefix_hit_tokens`, those loaded from the disk tier
    prefix_disk_hit_tokens: int = 0
    #: slots of the host tier of the prefix cache
    host_tier_blocks: int = 0
    #: host-tier slots holding a block now
    host_tier_held_blocks: int = 0
    #: blocks loaded host tier -> GPU
    host_tier_loads: int = 0
    #: blocks evicted from the host tier to make room
    host_tier_evictions: int = 0
    #: slots of the disk tier
    disk_tier_blocks: int = 0
    #: disk-tier slots holding a block now
    disk_tier_held_blocks: int = 0
    #: blocks loaded disk tier -> GPU
    disk_tier_loads: int = 0
    #: blocks evicted from the disk tier to make room
    disk_tier_evictions: int = 0
    #: disk loads that failed (the blocks were recomputed)
    disk_tier_load_failures: int = 0
    #: disk stores that failed (the entries were dropped)
    disk_tier_store_failures: int = 0
    #: blocks copied GPU -> host tier
    blocks_gpu_to_host_tier: int = 0
    #: blocks copied GPU -> disk tier
    blocks_gpu_to_disk_tier: int = 0
    #: blocks copied host tier -> disk tier (write-back of a host eviction)
    blocks_host_to_disk_tier: int = 0

    @property
    def prefix_gpu_hit_tokens(self) -> int:
        """Of `prefix_hit_tokens`, those served by cached GPU blocks."""
        return self.prefix_hit_tokens - self.prefix_host_hit_tokens - self.prefix_disk_hit_tokens

    @property
    def gpu_usage(self) -> float:
        """Fraction of GPU blocks in use."""
        return self.gpu_used_blocks / self.gpu_total_blocks

    @property
    def prefix_hit_rate(self) -> float:
        """Prompt tokens served from the prefix cache over prompt tokens looked up."""
        queried = self.prefix_query_tokens
        return self.prefix_hit_tokens / queried if queried else 0.0

    def as_dict(self) -> dict[str, float]:
        """All fields plus the derived rates, for a DataFrame row."""
        row = asdict(self)
        row["gpu_usage"] = self.gpu_usage
        row["prefix_hit_rate"] = self.prefix_hit_rate
        row["prefix_gpu_hit_tokens"] = self.prefix_gpu_hit_tokens
        return row
