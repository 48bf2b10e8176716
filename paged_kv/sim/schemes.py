"""Memory schemes the scheduler runs on: the real paged cache, and contiguous baselines.

Every scheme implements one interface, `MemoryScheme`, with one signature per
operation, so the scheduler never asks which kind it drives:

* `try_admit` admits a request's prompt for its ``n`` sequences in one call, or returns
  None and changes nothing (as vLLM's ``allocate_slots`` returns None): the prompt is
  hashed and matched once;
* `grow_cost` / `grow` extend the sequences from the length they hold by some tokens
  (the cost is in blocks the scheme must find; a contiguous reservation already holds
  them, so its cost is 0);
* `fork_step` re-parents beams, `release` frees, `commit` publishes computed tokens;
* `can_swap_out` / `swap_out` / `swap_in_cost` / `swap_in` move a group to host memory;
* `used` and `external` feed the Fig. 2 accounting.

`PagedScheme` is `PagedKVCache` in metadata-only mode: the same allocator, block
tables, fork, copy-on-write, swap and prefix cache that hold real KV elsewhere.
`ContiguousScheme` is one of the vLLM paper's Orca baselines (§6.1): each sequence
gets one contiguous range reserved at admission for its whole life,

* ``max``: the model's maximum sequence length (2,048 for OPT-13B);
* ``pow2``: the prompt plus the output length rounded up to a power of two ("if the
  true output length is 25, it reserves 32 positions for outputs"), capped at the
  maximum length;
* ``oracle``: exactly the prompt plus the output, known in advance;

placed by a buddy allocator (the paper's assumption) or, as an option, first-fit
(`paged_kv.sim.address_space`). A scheme answers in token slots and blocks; the
scheduler owns time, queues and the ledger.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from paged_kv.cache import PagedKVCache
from paged_kv.core.config import CacheConfig
from paged_kv.core.validate import cdiv, require_int
from paged_kv.sim.address_space import ALLOCATORS, make_space, next_power_of_two
from paged_kv.sim.request import Request

CONTIGUOUS_POLICIES = ("max", "pow2", "oracle")
_LABELS = {"max": "Max", "pow2": "Pow2", "oracle": "Oracle"}


@dataclass(frozen=True, slots=True)
class Admitted:
    """What `MemoryScheme.try_admit` gives a request it admits."""

    #: one opaque handle per sequence (sequence ids, or range starts)
    handles: list[int]
    #: slots each sequence holds for its own tokens (its blocks, or its reservation)
    alloc: int
    #: prompt tokens served from the prefix cache (not recomputed)
    cached_tokens: int
    #: whether the sequences share a partly filled last block (copied on first write)
    shared_partial: bool


class MemoryScheme(ABC):
    """The memory a simulated server keeps KV in. See the module docstring."""

    #: short name ("paged", "max", "pow2", "oracle")
    name: str
    #: label for tables and figures
    label: str
    #: slots in the GPU pool
    capacity: int
    #: slots per block of the attention kernel's KV layout; None for contiguous ranges
    kv_block_size: int | None
    #: whether a running request can ever need memory it was not given at admission
    #: (False for reservations, which cover the final length: nothing to preempt)
    may_preempt: bool
    #: set by the simulator: a scheme serves one simulation
    simulated: bool = False

    @abstractmethod
    def fits_alone(self, request: Request, num_seqs: int) -> bool:
        """Whether the request's `num_seqs` sequences could run to completion in an
        empty pool (without any sharing)."""

    @abstractmethod
    def try_admit(self, request: Request, prefill_len: int, num_seqs: int) -> Admitted | None:
        """Admit `prefill_len` tokens of prompt for `num_seqs` sequences, or return None
        changing nothing when they do not fit now."""

    @abstractmethod
    def grow_cost(self, handles: Sequence[int], length: int, delta: int) -> int:
        """Free blocks appending `delta` tokens to each sequence, which holds `length`
        tokens, takes (0: none)."""

    @abstractmethod
    def grow(self, handles: Sequence[int], length: int, delta: int) -> int:
        """Append `delta` tokens to each sequence holding `length` (the caller made
        `grow_cost` blocks free); the slots each sequence now holds for its tokens."""

    @abstractmethod
    def commit(self, handles: Sequence[int], num_tokens: int) -> None:
        """Mark the first `num_tokens` tokens of each sequence as computed (a prefix
        cache may publish their full blocks)."""

    @abstractmethod
    def fork_step(self, handles: Sequence[int], parents: Sequence[int]) -> list[int]:
        """Beam search: sequence ``i`` continues from ``handles[parents[i]]``
        (``parents[i] == i`` keeps it); the new handles."""

    @abstractmethod
    def release(self, handles: Sequence[int]) -> None:
        """Free the sequences' memory."""

    @property
    @abstractmethod
    def num_free_blocks(self) -> int:
        """Free blocks that `grow_cost` is measured against."""

    @property
    def watermark_blocks(self) -> int:
        """Blocks admission (and swap-in) keeps free."""
        return 0

    @property
    def supports_swap(self) -> bool:
        """Whether a host pool exists to swap groups out to."""
        return False

    def can_swap_out(self, handles: Sequence[int]) -> bool:
        """Whether the host pool has room for the group."""
        return False

    def swap_out(self, handles: Sequence[int]) -> int:
        """Move the group to the host pool; blocks moved."""
        raise NotImplementedError(f"{self.label} has no host pool to swap to")

    def swap_in_cost(self, handles: Sequence[int]) -> int:
        """GPU blocks a swap-in of the group takes."""
        raise NotImplementedError(f"{self.label} has no host pool to swap from")

    def swap_in(self, handles: Sequence[int]) -> int:
        """Move the group back to the GPU pool; blocks moved."""
        raise NotImplementedError(f"{self.label} has no host pool to swap from")

    @property
    @abstractmethod
    def used(self) -> int:
        """Slots held for sequences' tokens (blocks, or reservations without rounding)."""

    @abstractmethod
    def external(self, head: Request | None) -> int:
        """Slots lost to the allocator: its rounding, plus free slots the request at the
        head of the queue (if any) could not use."""

    @property
    def cow_copies(self) -> int:
        """Copy-on-write block copies made so far."""
        return 0


class PagedScheme(MemoryScheme):
    """Paged KV memory: `num_blocks` blocks of `block_size` slots, driven through the manager.

    ``watermark`` is the fraction of blocks admission keeps free (vLLM's default 1%).
    Prefix caching uses the requests' precomputed block keys: a key over
    ``key_block_size`` tokens names every ``block_size`` sub-block of it by
    ``(key, index)``, which is exact when ``key_block_size`` is a multiple of
    ``block_size`` (a sub-block is then shared only when its whole parent block is).
    """

    name = "paged"
    may_preempt = True

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
        if isinstance(watermark, bool) or not isinstance(watermark, (int, float)) \
                or not 0.0 <= watermark < 1.0:
            raise ValueError(f"watermark must be a number in [0, 1), got {watermark!r}")
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
        self.kv_block_size = block_size
        #: slots in the pool
        self.capacity = num_blocks * block_size
        self.label = f"paged (block {block_size})"

    def slots_for(self, length: int) -> int:
        """Slots a sequence of `length` tokens holds (whole blocks)."""
        return cdiv(length, self.block_size) * self.block_size

    def fits_alone(self, request: Request, num_seqs: int) -> bool:
        """Whether `num_seqs` unshared copies of the finished request fit the pool."""
        return num_seqs * self.slots_for(request.total_len) <= self.capacity

    def _block_keys(self, request: Request) -> list[Hashable] | None:
        """Keys of the prompt's full `block_size` blocks, from the trace's coarser keys."""
        keys, size = request.block_keys, request.key_block_size
        if self.cache.prefix is None or keys is None or size is None:
            return None
        if size % self.block_size:
            raise ValueError(
                f"block_size {self.block_size} must divide the trace's key block size "
                f"{size} for prefix caching"
            )
        per = size // self.block_size
        # full blocks only: after a recompute the prompt's partial block fills with
        # generated tokens, which its key does not describe; and only the blocks the
        # keys cover (a trace may key fewer blocks than the prompt has)
        count = min(request.prompt_len // self.block_size, len(keys) * per)
        return [(keys[i // per], i % per) for i in range(count)]

    def try_admit(self, request: Request, prefill_len: int, num_seqs: int) -> Admitted | None:
        """Allocate the prompt under the watermark and fork it; None if it does not fit.

        `PagedKVCache.try_allocate` hashes and matches the prompt once; the scheduler
        commits the prompt (`commit`) once the step that admits it has computed it.
        """
        cache = self.cache
        seq = cache.try_allocate(prefill_len, block_keys=self._block_keys(request),
                                 watermark=True)
        if seq is None:
            return None
        seqs = [cache.fork(seq) for _ in range(num_seqs - 1)]
        seqs.append(seq)  # the original last: its holders copy before it would
        return Admitted(
            handles=seqs,
            alloc=self.slots_for(prefill_len),
            cached_tokens=cache.num_cached_tokens(seq),
            shared_partial=num_seqs > 1 and prefill_len % self.block_size != 0,
        )

    def commit(self, handles: Sequence[int], num_tokens: int) -> None:
        """Mark the first `num_tokens` tokens computed: the prompt's full blocks go to
        the prefix cache (decode blocks have no keys, so nothing else is published)."""
        commit = self.cache.commit
        for seq in handles:
            commit(seq, num_tokens)

    def grow_cost(self, handles: Sequence[int], length: int, delta: int) -> int:
        """Free blocks appending `delta` tokens to each sequence takes (COW included)."""
        if delta <= 0:
            return 0
        if len(handles) == 1:  # a private sequence: new blocks only, no copy
            bs = self.block_size
            return cdiv(length + delta, bs) - cdiv(length, bs)
        return self.cache.append_cost(handles, delta)

    def grow(self, handles: Sequence[int], length: int, delta: int) -> int:
        """Append `delta` tokens to each sequence; the slots each now holds."""
        cache = self.cache
        if delta > 0:
            if len(handles) == 1:
                cache.append(handles[0], delta)
            else:
                cache.append_many(handles, delta)
        return self.slots_for(length + max(delta, 0))

    def fork_step(self, handles: Sequence[int], parents: Sequence[int]) -> list[int]:
        """Beams re-parented: a new fork for each moved beam; the replaced ones freed."""
        cache = self.cache
        children = [h if p == i else cache.fork(handles[p])
                    for i, (h, p) in enumerate(zip(handles, parents))]
        for i, (h, p) in enumerate(zip(handles, parents)):
            if p != i:
                cache.free(h)
        return children

    def release(self, handles: Sequence[int]) -> None:
        """Free the group's sequences."""
        for seq in handles:
            self.cache.free(seq)

    @property
    def num_free_blocks(self) -> int:
        """Free GPU blocks."""
        return self.cache.num_free_blocks

    @property
    def watermark_blocks(self) -> int:
        """Blocks admission keeps free."""
        return self.cache.config.watermark_reserve_blocks

    @property
    def supports_swap(self) -> bool:
        """Whether the cache has a host pool."""
        return self.cache.host is not None

    def can_swap_out(self, handles: Sequence[int]) -> bool:
        """Whether the host pool has room for the group."""
        return self.cache.can_swap_out(handles)

    def _distinct_blocks(self, handles: Sequence[int]) -> int:
        return len({b for s in handles for b in self.cache.get(s).block_table})

    def swap_out(self, handles: Sequence[int]) -> int:
        """Move the group's blocks to the host pool; blocks moved."""
        moved = self._distinct_blocks(handles)
        self.cache.swap_out(handles)
        return moved

    def swap_in_cost(self, handles: Sequence[int]) -> int:
        """GPU blocks a swap-in of the group takes."""
        return self._distinct_blocks(handles)

    def swap_in(self, handles: Sequence[int]) -> int:
        """Move the group's blocks back to the GPU pool; blocks moved."""
        moved = self._distinct_blocks(handles)
        self.cache.swap_in(handles)
        return moved

    @property
    def used(self) -> int:
        """Slots of blocks in use."""
        return self.cache.num_used_blocks * self.block_size

    def external(self, head: Request | None) -> int:
        """Paged memory has no external fragmentation: any free block serves anyone."""
        return 0

    @property
    def cow_copies(self) -> int:
        """Copy-on-write block copies the cache made."""
        return self.cache.stats().cow_copies


class ContiguousScheme(MemoryScheme):
    """An Orca baseline: one contiguous reservation per sequence, for its whole life.

    `policy` is the reservation rule (``max``, ``pow2``, ``oracle``; see the module
    docstring); `allocator` places the ranges (``buddy``, the paper's assumption, or
    ``first-fit``). A request of several sequences (parallel sampling, beam search)
    reserves one range per sequence, all or none: contiguous memory shares nothing.
    """

    kv_block_size = None
    may_preempt = False

    def __init__(self, capacity: int, policy: str, max_seq_len: int, *,
                 allocator: str = "buddy") -> None:
        if policy not in CONTIGUOUS_POLICIES:
            raise ValueError(
                f"unknown contiguous policy {policy!r}; valid names: "
                f"{', '.join(CONTIGUOUS_POLICIES)}"
            )
        if allocator not in ALLOCATORS:
            raise ValueError(
                f"unknown allocator {allocator!r}; valid names: {', '.join(ALLOCATORS)}"
            )
        capacity = require_int("capacity", capacity, 1)
        max_seq_len = require_int("max_seq_len", max_seq_len, 1)
        if max_seq_len > capacity:
            raise ValueError(f"max_seq_len {max_seq_len} exceeds the {capacity} slots")
        self.space = make_space(allocator, capacity, max_seq_len)
        #: slots in the pool
        self.capacity = capacity
        #: the reservation rule
        self.policy = policy
        #: how ranges are placed
        self.allocator = allocator
        #: the model's maximum sequence length
        self.max_seq_len = max_seq_len
        self.name = policy
        self.label = _LABELS[policy] if allocator == "buddy" else \
            f"{_LABELS[policy]} ({allocator})"
        self._reserved: dict[int, int] = {}  # range start -> reservation
        self._reserved_total = 0
        self._fits: dict[tuple[int, int], bool] = {}

    def reserve(self, request: Request) -> int:
        """Slots reserved for one sequence of `request` (prompt + output, as the policy
        knows or guesses the output)."""
        if self.policy == "max":
            return self.max_seq_len
        if self.policy == "pow2":
            return min(self.max_seq_len,
                       request.prompt_len + next_power_of_two(request.output_len))
        return request.total_len

    def fits_alone(self, request: Request, num_seqs: int) -> bool:
        """Whether `num_seqs` reservations fit an empty space."""
        if request.total_len > self.max_seq_len:
            return False
        key = (self.reserve(request), num_seqs)
        if key not in self._fits:
            empty = make_space(self.allocator, self.capacity, self.max_seq_len)
            self._fits[key] = all(empty.allocate(key[0]) is not None for _ in range(num_seqs))
        return self._fits[key]

    def try_admit(self, request: Request, prefill_len: int, num_seqs: int) -> Admitted | None:
        """Reserve one range per sequence, all or none."""
        length = self.reserve(request)
        starts: list[int] = []
        for _ in range(num_seqs):
            start = self.space.allocate(length)
            if start is None:
                for s in starts:
                    self.space.free(s)
                return None
            starts.append(start)
        for s in starts:
            self._reserved[s] = length
        self._reserved_total += num_seqs * length
        return Admitted(handles=starts, alloc=length, cached_tokens=0, shared_partial=False)

    def commit(self, handles: Sequence[int], num_tokens: int) -> None:
        """Contiguous memory caches no prefixes: nothing to publish."""

    def grow_cost(self, handles: Sequence[int], length: int, delta: int) -> int:
        """The reservation already holds every token: nothing to find."""
        return 0

    def grow(self, handles: Sequence[int], length: int, delta: int) -> int:
        """Tokens fill the reservation; it does not change."""
        return self._reserved[handles[0]]

    def fork_step(self, handles: Sequence[int], parents: Sequence[int]) -> list[int]:
        """Beams copy their parent's KV into their own ranges: memory does not change."""
        return list(handles)

    def release(self, handles: Sequence[int]) -> None:
        """Free the ranges."""
        for start in handles:
            self.space.free(start)
            self._reserved_total -= self._reserved.pop(start)

    @property
    def num_free_blocks(self) -> int:
        """Free slots (growth never needs any)."""
        return self.space.free_slots

    @property
    def used(self) -> int:
        """Reserved slots, without the allocator's rounding."""
        return self._reserved_total

    def external(self, head: Request | None) -> int:
        """The allocator's rounding, plus free slots in pieces too small for the head."""
        rounding = self.space.used - self._reserved_total
        if head is None:
            return rounding
        return rounding + self.space.unusable(self.reserve(head))
