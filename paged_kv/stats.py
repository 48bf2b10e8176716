"""A snapshot of a cache's statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class CacheStats:
    """Counts and sizes of one `PagedKVCache` at one moment.

    Blocks "used" have a reference count of at least 1; evictable cached blocks count
    as free. Byte figures are what the blocks hold, or would hold, for the cache's model
    (``bytes_per_block`` times blocks), with or without storage attached; a cache built
    without a model reports them as 0.
    """

    #: blocks in the GPU pool
    gpu_total_blocks: int
    #: GPU blocks held by at least one sequence
    gpu_used_blocks: int
    #: GPU blocks an allocation can take (uncached free + evictable)
    gpu_free_blocks: int
    #: free GPU blocks still holding a cached full block
    gpu_evictable_blocks: int
    #: blocks in the host pool
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
    #: operations refused for lack of blocks
    allocation_failures: int
    #: blocks copied by copy-on-write
    cow_copies: int
    #: sequences swapped out / in
    swap_outs: int
    swap_ins: int
    #: blocks moved GPU -> host / host -> GPU
    blocks_swapped_out: int
    blocks_swapped_in: int
    #: prefix-cache figures (0 when prefix caching is off)
    prefix_query_tokens: int
    prefix_hit_tokens: int
    prefix_requests: int
    prefix_hit_requests: int
    prefix_evictions: int

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
        return row
