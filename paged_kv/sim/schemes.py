"""Memory schemes the scheduler can run on: the real paged cache, and contiguous baselines.

`PagedScheme` is `PagedKVCache` in metadata-only mode: the same allocator, block tables,
fork, copy-on-write, swap and prefix cache that hold real KV elsewhere. The contiguous
schemes are the vLLM paper's Orca baselines, one range of slots per request placed
first-fit in a `FirstFitSpace`, reserved at admission for the whole request:

* ``max``: the model's maximum sequence length;
* ``pow2``: the next power of two at least the request's final length (capped at max);
* ``oracle``: exactly the final length (prompt + output), known in advance.

A scheme answers in token slots; the scheduler owns time, queues and the ledger.
"""

from __future__ import annotations

from collections.abc import Hashable

from paged_kv.cache import PagedKVCache
from paged_kv.config import CacheConfig
from paged_kv.sim.address_space import FirstFitSpace

CONTIGUOUS_POLICIES = ("max", "pow2", "oracle")


class PagedScheme:
    """Paged KV memory: `num_blocks` blocks of `block_size` slots, driven through the manager.

    ``watermark`` is the fraction of blocks admission keeps free (vLLM's default 1%).
    Prefix caching uses the requests' precomputed block keys: a key over
    ``key_block_size`` tokens names every ``block_size`` sub-block of it by
    ``(key, index)``, which is exact when ``key_block_size`` is a multiple of
    ``block_size`` (a sub-block is then shared only when its whole parent block is).
    """

    name = "paged"

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        *,
        num_host_blocks: int = 0,
        watermark: float = 0.01,
        prefix_caching: bool = False,
        eviction_policy: str = "lru",
    ) -> None:
        if not 0.0 <= watermark < 1.0:
            raise ValueError(f"watermark must be in [0, 1), got {watermark!r}")
        high = 1.0 - watermark
        self.cache = PagedKVCache(
            CacheConfig(
                block_size=block_size,
                num_gpu_blocks=num_blocks,
                num_host_blocks=num_host_blocks,
                watermark_low=min(0.9, high),
                watermark_high=high,
                enable_prefix_caching=prefix_caching,
                eviction_policy=eviction_policy,
            )
        )
        #: slots per block
        self.block_size = block_size
        #: slots in the pool
        self.capacity = num_blocks * block_size
        self.label = f"paged (block {block_size})"
        #: set by the simulator: a scheme serves one simulation
        self.simulated = False

    # -- sizes ------------------------------------------------------------------------
    def slots_for(self, length: int) -> int:
        """Slots a sequence of `length` tokens holds (whole blocks)."""
        return -(-length // self.block_size) * self.block_size

    def fits_alone(self, final_len: int, num_seqs: int) -> bool:
        """Whether a request could run alone to completion (without any sharing)."""
        return num_seqs * self.slots_for(final_len) <= self.capacity

    @property
    def used(self) -> int:
        """Slots of blocks in use."""
        return self.cache.num_used_blocks * self.block_size

    def external(self, head_len: int) -> int:
        """Paged memory has no external fragmentation: any free block serves anyone."""
        return 0

    # -- keys -------------------------------------------------------------------------
    def block_keys(self, keys: tuple[Hashable, ...] | None, key_block_size: int | None,
                   prompt_len: int) -> list[Hashable] | None:
        """Keys of the prompt's `block_size` blocks derived from a trace's coarser keys."""
        if self.cache.prefix is None or keys is None or key_block_size is None:
            return None
        if key_block_size % self.block_size:
            raise ValueError(
                f"block_size {self.block_size} must divide the trace's key block size "
                f"{key_block_size} for prefix caching"
            )
        per = key_block_size // self.block_size
        # full blocks only: after a recompute the prompt's partial block fills with
        # generated tokens, which its key does not describe
        count = prompt_len // self.block_size
        return [(keys[i // per], i % per) for i in range(count)]

    # -- admission and growth ---------------------------------------------------------
    def can_admit(self, length: int, keys) -> bool:
        """Whether a prompt of `length` tokens is admitted under the watermark."""
        return self.cache.can_allocate(length, block_keys=keys, watermark=True)

    def admit(self, length: int, num_seqs: int, keys) -> tuple[list[int], int]:
        """Allocate the prompt and fork it `num_seqs - 1` times; (seq ids, cached tokens).

        The scheduler prefills a request in the step that admits it, so the prompt is
        committed (computed: its full blocks are published to the prefix cache) here.
        Decode tokens are never committed: their blocks have no keys to publish.
        """
        cache = self.cache
        seq = cache.allocate(length, block_keys=keys)
        cache.commit(seq)
        seqs = [cache.fork(seq) for _ in range(num_seqs - 1)]
        seqs.append(seq)  # the original last: its holders copy before it would
        return seqs, cache.num_cached_tokens(seq)

    def length(self, seqs: list[int]) -> int:
        """Tokens the manager holds for the group (all its sequences are in lockstep)."""
        return self.cache.num_tokens(seqs[0])

    def grow_cost(self, seqs: list[int], delta: int) -> int:
        """Free blocks appending `delta` tokens to each sequence takes."""
        return self.cache.append_cost(seqs, delta)

    def grow(self, seqs: list[int], delta: int) -> None:
        """Append `delta` tokens to each sequence (the caller checked `grow_cost`)."""
        if not delta:
            return
        if len(seqs) == 1:
            self.cache.append(seqs[0], delta)
        else:
            self.cache.append_many(seqs, delta)

    @property
    def num_free_blocks(self) -> int:
        """Free GPU blocks."""
        return self.cache.num_free_blocks

    def fork_step(self, seqs: list[int], parents: list[int]) -> list[int]:
        """Beam search: new beams forked from ``seqs[parents[i]]``; the old ones freed."""
        cache = self.cache
        children = [cache.fork(seqs[p]) for p in parents]
        for seq in seqs:
            cache.free(seq)
        return children

    def release(self, seqs: list[int]) -> None:
        """Free the group's sequences."""
        for seq in seqs:
            self.cache.free(seq)

    # -- swapping ---------------------------------------------------------------------
    def can_swap_out(self, seqs: list[int]) -> bool:
        """Whether the host pool has room for the group."""
        return self.cache.can_swap_out(seqs)

    def swap_out(self, seqs: list[int]) -> None:
        """Move the group's blocks to the host pool."""
        self.cache.swap_out(seqs)

    def swap_in_cost(self, seqs: list[int]) -> int:
        """GPU blocks a swap-in of the group takes."""
        return len({b for s in seqs for b in self.cache.get(s).block_table})

    def swap_in(self, seqs: list[int]) -> None:
        """Move the group's blocks back to the GPU pool."""
        self.cache.swap_in(seqs)

    @property
    def watermark_blocks(self) -> int:
        """Blocks admission keeps free."""
        return self.cache.config.watermark_reserve_blocks


class ContiguousScheme:
    """One contiguous range per request, reserved at admission; first-fit placement."""

    def __init__(self, capacity: int, policy: str, max_seq_len: int) -> None:
        if policy not in CONTIGUOUS_POLICIES:
            raise ValueError(
                f"unknown contiguous policy {policy!r}; valid names: "
                f"{', '.join(CONTIGUOUS_POLICIES)}"
            )
        if max_seq_len > capacity:
            raise ValueError(f"max_seq_len {max_seq_len} exceeds the {capacity} slots")
        self.space = FirstFitSpace(capacity)
        #: slots in the pool
        self.capacity = capacity
        #: the reservation rule
        self.policy = policy
        #: the model's maximum sequence length
        self.max_seq_len = max_seq_len
        self.name = policy
        self.label = {"max": "Max", "pow2": "Pow2", "oracle": "Oracle"}[policy]
        #: set by the simulator: a scheme serves one simulation
        self.simulated = False

    def reserve(self, final_len: int) -> int:
        """Slots reserved for a request whose prompt + output is `final_len`."""
        if self.policy == "max":
            return self.max_seq_len
        if self.policy == "pow2":
            return min(self.max_seq_len, 1 << (final_len - 1).bit_length())
        return final_len

    def fits_alone(self, final_len: int, num_seqs: int) -> bool:
        """Whether the request's reservation fits an empty space (one sequence only)."""
        return num_seqs == 1 and final_len <= self.max_seq_len

    @property
    def used(self) -> int:
        """Reserved slots."""
        return self.space.used

    def external(self, head_final_len: int) -> int:
        """Free slots in holes too small for the head request's reservation."""
        return self.space.unusable(self.reserve(head_final_len))

    def can_admit(self, final_len: int) -> bool:
        """Whether some hole holds the request's reservation."""
        return self.space.can_fit(self.reserve(final_len))

    def admit(self, final_len: int) -> tuple[int, int]:
        """Reserve a range; (its start, its length)."""
        length = self.reserve(final_len)
        start = self.space.allocate(length)
        if start is None:
            raise RuntimeError("admit called without can_admit")
        return start, length

    def release(self, start: int) -> None:
        """Free the range at `start`."""
        self.space.free(start)
