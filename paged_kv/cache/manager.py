"""The paged KV cache manager: a facade over the parts that each own one concern.

`PagedKVCache` is where metadata and data meet. Every operation first checks that it
can succeed (arguments, free blocks on the pool it needs), then updates the metadata
and issues the matching data operation: copy-on-write copies the block's bytes, swapping
moves them, `read_kv` returns them. An operation that raises has changed nothing.

The parts, one concern each: the sequence registry (`paged_kv.core.sequence`), admission
(`paged_kv.cache.admission`: a prompt hashed and matched once), the allocators
(`paged_kv.core.block_allocator`: ref counts, free queue, eviction, the key <-> block map),
the prefix cache (`paged_kv.core.prefix_cache`: keys, computed tokens, publishing),
growth and copy-on-write (`paged_kv.cache.growth`), swapping (`paged_kv.cache.swap`), the
tiers below the GPU (`paged_kv.cache.tiers`: host and disk copies of cached blocks), KV
I/O over a storage interface (`paged_kv.cache.kv_io`, `paged_kv.cache.backend`), step
plans (`paged_kv.cache.step_plan`), the pressure monitor (`paged_kv.core.pressure`),
statistics (`paged_kv.core.stats`) and the invariant checker (`paged_kv.cache.invariants`).

**The data contract.** A sequence's computed tokens are its prefix hits, what `commit`
names, and with storage the positions written in every layer; only full computed blocks
are published to the prefix cache, and a published block is immutable. So a prefix hit
never serves KV that nobody wrote. Metadata-only, nothing is published until `commit`.

Without a model, or with ``storage=False``, the cache runs in *metadata-only* mode: the
same code paths, no arrays, so a simulation can drive 100k blocks at full speed.

    >>> from paged_kv import CacheConfig, PagedKVCache
    >>> cache = PagedKVCache(CacheConfig(block_size=4, num_gpu_blocks=8))
    >>> a = cache.allocate(6)                   # 2 blocks: 4 + 2 tokens
    >>> b = cache.fork(a)                       # shares both blocks
    >>> cache.append(b)                         # COW: b gets its own copy of block 2
    >>> cache.get(a).block_table, cache.get(b).block_table
    ((0, 1), (0, 2))
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

import numpy as np

from paged_kv.cache import invariants
from paged_kv.cache.admission import Admission, PromptPlan
from paged_kv.cache.backend import make_backend
from paged_kv.cache.growth import CopyOnWrite, Growth
from paged_kv.cache.kv_io import KVIO
from paged_kv.cache.step_plan import StepPlan, StepPlanner
from paged_kv.cache.swap import Swapper
from paged_kv.cache.tiers import Tiers
from paged_kv.core.block_allocator import BlockAllocator
from paged_kv.core.config import CacheConfig, ModelSpec
from paged_kv.core.errors import OutOfBlocksError
from paged_kv.core.eviction import EvictionPolicy
from paged_kv.core.prefix_cache import PrefixCache
from paged_kv.core.pressure import PressureCallback, PressureLevel, PressureMonitor
from paged_kv.core.sequence import (
    GPU,
    HOST,
    SequenceInfo,
    SequenceRecord,
    SequenceRegistry,
    require_growth,
)
from paged_kv.core.stats import CacheStats
from paged_kv.core.validate import (
    require_array,
    require_int,
    require_range,
    require_seq_id,
    require_seq_ids,
)


class PagedKVCache:
    """A paged KV cache: a GPU block pool, an optional host pool, and the sequences in them.

    `config`: block size, pool sizes, watermarks, prefix caching and its eviction
    policy, and the prefix cache's host and disk tiers (`paged_kv.cache.tiers`).
    `model`: the model whose KV is stored (a `ModelSpec` or a preset name); without one
    the cache is metadata-only. `storage`: attach device arrays (default:
    whenever a model is given); ``False`` gives a metadata-only cache that still knows
    the model's sizes for its statistics. `hash_fn`: the function that chains block keys
    (tests inject a colliding one). `policy`: an eviction-policy instance (one that
    needs constructor arguments, such as `BeladyPolicy`), named ``config.eviction_policy``.
    """

    def __init__(
        self,
        config: CacheConfig,
        model: ModelSpec | str | None = None,
        *,
        storage: bool | None = None,
        hash_fn: Callable[[object], Hashable] = hash,
        policy: EvictionPolicy | None = None,
    ) -> None:
        if not isinstance(config, CacheConfig):
            raise ValueError(f"config must be a CacheConfig, got {type(config).__name__}")
        model, self._kv = make_backend(config, model, storage)
        #: the configuration this cache was built with
        self.config = config
        #: the model whose KV is stored (None: sizes unknown)
        self.model = model
        #: token slots per block
        self.block_size = bs = config.block_size
        #: the GPU pool's allocator (ref counts, free queue, eviction, key map)
        self.gpu = BlockAllocator(config.num_gpu_blocks, config.eviction_policy_for(policy))
        #: the host pool's allocator, or None without a host pool
        self.host = (
            BlockAllocator(config.num_host_blocks, "lru", name=HOST)
            if config.num_host_blocks else None
        )
        self._prefix = PrefixCache(self.gpu, bs, hash_fn=hash_fn,
                                   enabled=config.enable_prefix_caching)
        self._tiers = Tiers(self.gpu, config, self._kv) if config.has_tiers else None
        self._seqs = SequenceRegistry()
        self._cow = CopyOnWrite(self.gpu, self._kv)
        self._growth = Growth(self.gpu, self._cow, self._prefix)
        self._swap = Swapper(self.gpu, self.host, self._kv)
        self._plans = StepPlanner(self._kv, self._seqs, self.gpu, self._cow, bs)
        self._io = KVIO(self._kv, self._seqs, self._plans, self._prefix)
        self._pressure = PressureMonitor(self.gpu, config.watermark_low, config.watermark_high)
        reserve = config.watermark_reserve_blocks
        self._admission = Admission(self.gpu, self._prefix, reserve, self._kv.new_extents,
                                    self._tiers)
        self._failures = 0  # operations refused for lack of blocks

    @property
    def prefix(self) -> PrefixCache | None:
        """The prefix cache, or None when prefix caching is off."""
        return self._prefix if self._prefix.enabled else None

    @property
    def tiers(self) -> Tiers | None:
        """The prefix cache's tiers below the GPU, or None without any: ``tiers.host``
        and ``tiers.disk`` (`paged_kv.core.tier.CacheTier`: which key each slot holds,
        the policy, the counts; the host tier is not the swap pool), the placement and
        the blocks copied between tiers."""
        return self._tiers

    @property
    def storage(self) -> Any:
        """The `KVStorage` holding the pools, or None in metadata-only mode."""
        return self._kv.storage

    def _apply(self, operation: Callable[..., Any], *args: Any, tables: bool = False) -> Any:
        """Run a part's operation; count a refusal for lack of blocks; if it changed
        block tables (`tables`), make every plan stale; then update pressure, whose
        callbacks so see the operation whole."""
        try:
            result = operation(*args)
        except OutOfBlocksError:
            self._failures += 1
            raise
        if tables:
            self._plans.invalidate()
        self._pressure.update()
        return result

    # -- sequences -----------------------------------------------------------------------
    def get(self, seq_id: int) -> SequenceInfo:
        """A read-only picture of sequence `seq_id`."""
        return SequenceInfo.of(self._seqs.get(seq_id, None))

    def handles(self) -> list[int]:
        """Ids of the live sequences, in the order they were created."""
        return self._seqs.ids()

    def __contains__(self, seq_id: object) -> bool:
        return seq_id in self._seqs

    def __len__(self) -> int:
        return len(self._seqs)

    def num_tokens(self, seq_id: int) -> int:
        """Tokens stored for `seq_id`."""
        return self._seqs.get(seq_id, None).table.num_tokens

    def num_cached_tokens(self, seq_id: int) -> int:
        """Prompt tokens of `seq_id` that the prefix cache served when it was allocated."""
        return self._seqs.get(seq_id, None).num_cached_tokens

    def num_computed_tokens(self, seq_id: int) -> int:
        """Leading tokens of `seq_id` whose KV is computed (hits, commits, full writes)."""
        return self._seqs.get(seq_id, None).num_computed_tokens

    # -- admission -----------------------------------------------------------------------
    def can_allocate(
        self,
        num_tokens: int | None = None,
        *,
        token_ids: Sequence[int] | None = None,
        block_keys: Sequence[Hashable] | None = None,
        salt: Hashable | None = None,
        watermark: bool = False,
    ) -> bool:
        """Whether `allocate` with these arguments would find enough free GPU blocks.

        Prefix hits are taken into account. With ``watermark=True`` the allocation must
        also leave `CacheConfig.watermark_reserve_blocks` free, i.e. use at most the high
        watermark's share of the pool (how a scheduler admits work).
        """
        return self._admission.plan(num_tokens, token_ids, block_keys, salt, watermark).short <= 0

    def try_allocate(
        self,
        num_tokens: int | None = None,
        *,
        token_ids: Sequence[int] | None = None,
        block_keys: Sequence[Hashable] | None = None,
        salt: Hashable | None = None,
        seq_id: int | None = None,
        watermark: bool = False,
    ) -> int | None:
        """`allocate` if the GPU pool has room (under the watermark if asked), else None.

        One call hashes and matches the prompt once and either admits it, returning the
        new sequence's id, or changes nothing but the `allocation_failures` count.
        """
        plan = self._admission.plan(num_tokens, token_ids, block_keys, salt, watermark)
        return self._admit(plan, seq_id)

    def allocate(
        self,
        num_tokens: int | None = None,
        *,
        token_ids: Sequence[int] | None = None,
        block_keys: Sequence[Hashable] | None = None,
        salt: Hashable | None = None,
        seq_id: int | None = None,
    ) -> int:
        """Create a sequence holding a prompt and return its id.

        Give the prompt's length (`num_tokens`), its `token_ids` (integers: they let its
        full blocks be cached and confirmed), or precomputed `block_keys` of its blocks
        (trace replay). With prefix caching on, the longest cached prefix is reused,
        capped so that at least the last prompt token is computed; the tokens it serves
        are the sequence's first computed tokens (`num_cached_tokens`). The rest of the
        prompt is published once computed: see `commit`.

        Raises `OutOfBlocksError` (changing nothing) when the GPU pool lacks room.
        """
        plan = self._admission.plan(num_tokens, token_ids, block_keys, salt, False)
        seq = self._admit(plan, seq_id)
        if seq is None:
            need, what = plan.new_blocks, f"allocate {plan.num_tokens} tokens"
            raise OutOfBlocksError(GPU, need, need - plan.short, what)
        return seq

    def _admit(self, plan: PromptPlan, seq_id: int | None) -> int | None:
        """Admit a planned prompt as a new sequence; None (a failure counted) if it is short."""
        seq_id = self._seqs.new_id(seq_id)
        if plan.short > 0:
            self._failures += 1
            return None
        self._seqs.add(self._admission.admit(plan, seq_id))
        self._pressure.update()
        return seq_id

    def commit(self, seq_id: int, num_tokens: int | None = None) -> None:
        """Mark the first `num_tokens` tokens of `seq_id` (default: all) as computed.

        Every full block they cover is published to the prefix cache (if its key is
        known and not cached already), and is immutable from then on. Committing fewer
        tokens than are computed changes nothing. With storage, blocks are committed
        automatically once written in every layer; call this when the KV got there by
        other means. A swapped-out sequence's blocks are published when it swaps in.
        """
        record = self._seqs.get(seq_id, None)
        total = record.table.num_tokens
        n = total if num_tokens is None else require_int("num_tokens", num_tokens)
        if n > total:
            raise ValueError(f"cannot commit {n} tokens of sequence {seq_id}: it has {total}")
        self._prefix.commit(record, n)

    # -- growth, release, sharing --------------------------------------------------------
    def can_append(self, seq_id: int, num_tokens: int = 1) -> bool:
        """Whether `append(seq_id, num_tokens)` would find enough free GPU blocks."""
        table = self._seqs.get(seq_id).table
        cost = self._growth.cost([table], require_int("num_tokens", num_tokens))
        return cost <= self.gpu.num_free

    def append(
        self, seq_id: int, num_tokens: int | None = None, *, token_ids: Sequence[int] | None = None
    ) -> None:
        """Extend a sequence by `num_tokens` (default 1) or by `token_ids`.

        A new block is taken only when a block boundary is crossed. If the last block
        is partial and shared (after a fork), it is first copied (copy-on-write): the
        bytes move through the block-copy kernel, once per shared block and writer.
        A sequence allocated with token ids must be given token ids. New tokens are not
        computed until written or committed.
        """
        record = self._seqs.get(seq_id)
        if token_ids is None and record.token_ids is None and type(num_tokens) is int:
            k = num_tokens if num_tokens >= 0 else require_int("num_tokens", num_tokens)
        else:
            k, token_ids = require_growth(num_tokens, token_ids, record)
        try:  # _apply, inlined: a decode step's hot path
            self._growth.append(record, k, token_ids)
        except OutOfBlocksError:
            self._failures += 1
            raise
        self._plans.invalidate()
        self._pressure.update()

    def append_cost(self, seq_ids: Sequence[int], num_tokens: int = 1) -> int:
        """Free GPU blocks that `append_many(seq_ids, num_tokens)` would take.

        Exact, copy-on-write included: of the sequences sharing a partial last block,
        each one appended copies it except the last holder.
        """
        if type(num_tokens) is not int or num_tokens < 0:
            num_tokens = require_int("num_tokens", num_tokens)
        get = self._seqs.get
        return self._growth.cost([get(s).table for s in require_seq_ids(seq_ids)], num_tokens)

    def append_many(self, seq_ids: Sequence[int], num_tokens: int = 1) -> None:
        """Append `num_tokens` to each sequence (a decode step), all or none.

        Raises `OutOfBlocksError`, changing nothing, when `append_cost` exceeds the
        free blocks. Sequences that track token ids must use `append`.
        """
        seq_ids = require_seq_ids(seq_ids)
        if len(set(seq_ids)) != len(seq_ids):
            raise ValueError("a sequence is named twice")
        if type(num_tokens) is not int or num_tokens < 0:
            num_tokens = require_int("num_tokens", num_tokens)
        get = self._seqs.get
        self._apply(self._growth.append_many, [get(s) for s in seq_ids], num_tokens,
                    tables=True)

    def free(self, seq_id: int) -> None:
        """Release a sequence; each block whose last holder it was joins the free queue.

        Blocks go back tail first, so that among them the end of the chain is evicted
        before its beginning; the tiers below the GPU refresh the blocks they hold of it
        the same way.
        """
        record = self._seqs.get(seq_id, None)
        pool = self.gpu if record.location == GPU else self.host
        pool.free_many(reversed(record.table.blocks))
        self._seqs.remove(seq_id)
        self._plans.invalidate()
        if self._tiers is not None:
            self._tiers.release(record, self.block_size)
        self._pressure.update()

    def fork(self, seq_id: int, *, child_id: int | None = None) -> int:
        """A new sequence sharing every block and the computed state of `seq_id`; its id.

        Nothing is copied now: a later write into the shared partial last block copies it.
        """
        record = self._seqs.get(seq_id)
        child_id = self._seqs.new_id(child_id, "child_id")
        self.gpu.incref_many(record.table.blocks)
        self._seqs.add(record.fork(child_id))
        self._plans.invalidate()  # the parent's partial last block is shared now
        return child_id

    # -- KV data -------------------------------------------------------------------------
    def write_kv(
        self, seq_id: int, layer: int, k: np.ndarray, v: np.ndarray, *, start: int | None = None
    ) -> None:
        """Write one layer's K and V for positions ``start .. start+len(k)-1``.

        `k`, `v` are ``[num_tokens, num_kv_heads, head_dim]`` in the model's dtype;
        `start` defaults to the last ``len(k)`` positions (the tokens just appended).
        A shared partial block is copied first; a shared full block, a block
        published to the prefix cache or a live duplicate of one (it may take the key
        over) is refused (`ImmutableBlockError`). Once every
        layer of a block is written, its tokens are computed and it is published.
        """
        seq_id = require_seq_id(seq_id)
        k, v = require_array("k", k, device_ok=True), require_array("v", v, device_ok=True)
        self.write_kv_batch(
            layer, [seq_id], k, v, num_tokens=[len(k)], starts=None if start is None else [start]
        )

    def write_kv_batch(
        self,
        layer: int,
        seq_ids: Sequence[int] | StepPlan,
        k: np.ndarray,
        v: np.ndarray,
        *,
        num_tokens: Sequence[int] | None = None,
        starts: Sequence[int] | None = None,
    ) -> None:
        """Write one layer's K and V for many sequences in one slot-write launch.

        Rows of `k`, `v` are the sequences' tokens concatenated in `seq_ids` order,
        ``num_tokens[i]`` rows for sequence i, written at positions ``starts[i] ..``
        (default: its last ``num_tokens[i]`` positions). A decode step is
        ``num_tokens=[1] * len(seq_ids)``. The rules of `write_kv` apply to each.

        In place of `seq_ids`, a `StepPlan` from `plan_step` (and no `num_tokens` or
        `starts`): the write goes to the plan's slots, uploaded once for every layer,
        and a stale plan is refused (`ValueError`, nothing written). The checks that
        depend on the layer (immutability, written positions, publishing) run per call
        either way.
        """
        if isinstance(seq_ids, StepPlan):
            if num_tokens is not None or starts is not None:
                raise ValueError("a plan fixes the tokens: pass no num_tokens or starts")
            self._io.write_planned(layer, seq_ids, k, v)
            return
        if num_tokens is None:
            raise ValueError("write_kv_batch needs num_tokens with seq_ids (or a StepPlan)")
        self._apply(self._io.write, layer, seq_ids, k, v, num_tokens, starts)

    def plan_step(
        self,
        seq_ids: Sequence[int],
        *,
        num_tokens: int | Sequence[int] = 1,
        starts: Sequence[int] | None = None,
    ) -> StepPlan:
        """The indices of one step over GPU sequences, built, checked and uploaded once
        for every layer: a `StepPlan` (`paged_kv.cache.step_plan`).

        Sequence ``seq_ids[i]`` gets ``num_tokens[i]`` new tokens (an int: the same for
        each; default 1, a decode step) at positions ``starts[i] ..`` (default: its last
        ``num_tokens[i]``, the tokens just appended). Pass the plan to `write_kv_batch`,
        `paged_kv.cache.attention.decode` and `prefill` in every layer. A shared partial
        block the tokens fall into is copied now (copy-on-write), before any layer
        writes. The plan turns stale at the next append, free, fork, swap, copy-on-write
        or plan (`check_plan`).

        All or nothing: `MetadataOnlyError` without storage, `UnknownSequenceError`,
        `SequenceStateError` for a swapped-out sequence, `ValueError` for bad
        arguments (`ImmutableBlockError` for a write into a published or shared full
        block) and `OutOfBlocksError` (no block for a copy) change nothing.
        """
        return self._apply(self._plans.plan, seq_ids, num_tokens, starts)

    def check_plan(self, plan: StepPlan) -> None:
        """`ValueError` unless `plan` is a current plan of this cache: made by its
        `plan_step`, with no table change or newer plan since."""
        self._plans.check(plan)

    def slot_mapping(self, seq_id: int, start: int, end: int) -> np.ndarray:
        """Slots ``block_id * block_size + offset`` of positions ``start .. end-1``."""
        table = self._seqs.get(seq_id).table
        require_range(f"sequence {seq_id}", start, end, table.num_tokens)
        return table.slot_mapping(start, end)

    def read_kv(
        self, seq_id: int, layer: int, *, start: int = 0, end: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One layer's K and V of positions ``start .. end-1`` (default: all tokens)."""
        k, v, _ = self.read_kv_batch(
            layer, [require_seq_id(seq_id)], starts=[start], ends=None if end is None else [end]
        )
        return k, v

    def read_kv_batch(
        self,
        layer: int,
        seq_ids: Sequence[int],
        *,
        starts: Sequence[int] | None = None,
        ends: Sequence[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One layer's K and V of many sequences, gathered in one launch.

        Returns ``k, v`` of shape ``[total_tokens, num_kv_heads, head_dim]`` (sequence i's
        positions ``starts[i] .. ends[i]-1``, concatenated) and ``cu_seqlens`` (int64,
        ``len(seq_ids) + 1`` offsets into the rows).
        """
        return self._io.read(layer, seq_ids, starts, ends)

    # -- swap ----------------------------------------------------------------------------
    def can_swap_out(self, seq_ids: int | Iterable[int]) -> bool:
        """Whether the host pool has room for these sequences' blocks.

        Raises `NoHostPoolError` on a cache built without a host pool.
        """
        return self._swap.can_swap_out(self._seqs.get_many(seq_ids, GPU))

    def can_swap_in(self, seq_ids: int | Iterable[int]) -> bool:
        """Whether the GPU pool has room for these swapped-out sequences' blocks."""
        return self._swap.can_swap_in(self._seqs.get_many(seq_ids, HOST))

    def swap_out(self, seq_ids: int | Iterable[int]) -> None:
        """Move whole sequences' KV from the GPU pool to the host pool.

        Sequences that share blocks should go together: a block they share is moved
        once. A block also held by a sequence staying on the GPU is copied, not moved.
        Freed GPU blocks that hold cached prefix blocks stay evictable-cached (their bytes
        are still there); the computed state travels with the sequence. Raises
        `OutOfBlocksError` (changing nothing) when the host pool lacks room, and
        `NoHostPoolError` on a cache built without one.
        """
        self._apply(self._swap.swap_out, self._seqs.get_many(seq_ids, GPU), tables=True)

    def swap_in(self, seq_ids: int | Iterable[int]) -> None:
        """Move swapped-out sequences' KV back from the host pool into the GPU pool.

        Their computed full blocks are offered to the prefix cache again. Raises
        `OutOfBlocksError` (changing nothing) when the GPU pool lacks room.
        """
        self._apply(self._swap_in, self._seqs.get_many(seq_ids, HOST), tables=True)

    def _swap_in(self, records: list[SequenceRecord]) -> None:
        """`swap_in` of checked records: the move, then their computed blocks published."""
        self._swap.swap_in(records)
        for record in records:
            self._prefix.publish(record, 0)

    # -- prefix cache operations -----------------------------------------------------------
    def lookup_prefix(
        self,
        token_ids: Sequence[int] | None = None,
        *,
        block_keys: Sequence[Hashable] | None = None,
        num_tokens: int | None = None,
        salt: Hashable | None = None,
    ) -> int:
        """Tokens of this prompt the prefix cache would serve now, from any tier;
        allocates nothing.

        Applies the same last-token cap as `allocate`; counts nothing in the statistics.
        (A block on the disk tier counts: if its load fails, `allocate` serves less.)
        """
        plan = self._admission.plan(num_tokens, token_ids, block_keys, salt, False)
        return (len(plan.hits) + len(plan.more)) * self.block_size

    def evict_cached(self, n: int) -> list[int]:
        """Evict up to `n` evictable cached blocks in policy order; the evicted block ids."""
        return self._prefix.evict(n)

    def reset_prefix_cache(self) -> list[int]:
        """Drop every cached block, in every tier; the dropped GPU block ids, in former
        eviction order.

        Raises `PrefixCacheInUseError` (changing nothing) while live sequences hold
        cached blocks.
        """
        dropped = self._prefix.reset()
        if self._tiers is not None:
            self._tiers.clear()
        return dropped

    def reset_prefix_stats(self) -> None:
        """Zero the prefix-cache lookup, hit, stored and eviction counts."""
        self._prefix.reset_stats()

    # -- pressure ----------------------------------------------------------------------------
    @property
    def pressure(self) -> PressureLevel:
        """The GPU pool's pressure level now."""
        return self._pressure.level

    def on_pressure_change(self, callback: PressureCallback) -> PressureCallback:
        """Call ``callback(old, new, usage)`` whenever the pressure level changes.

        Callbacks run after the operation that moved the level has completed, and
        cannot undo or hide it: the operation returns its result (a new sequence's id)
        whatever they do. Every callback hears every change, in order; an exception a
        callback raises is logged (logger ``paged_kv.core.pressure``) and the other
        callbacks are still called. A callback may change the cache (free sequences):
        the level change that causes is heard after the current one.
        """
        return self._pressure.subscribe(callback)

    def remove_pressure_callback(self, callback: PressureCallback) -> None:
        """Stop calling `callback` (a `ValueError` if it was never registered)."""
        self._pressure.unsubscribe(callback)

    # -- statistics and checking -------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Free GPU blocks (uncached plus evictable)."""
        return self.gpu.num_free

    @property
    def num_used_blocks(self) -> int:
        """GPU blocks in use."""
        return self.gpu.num_used

    def gpu_block_tokens(self) -> dict[int, int]:
        """Tokens stored in each GPU block that a sequence holds (block id -> tokens)."""
        return invariants.tokens_per_block(self._seqs.records(), self.block_size)

    def gpu_tokens(self) -> int:
        """Tokens held in GPU blocks, each physical slot counted once (sharing aside)."""
        return sum(self.gpu_block_tokens().values())

    def stats(self) -> CacheStats:
        """The statistics at this moment: an immutable snapshot (fields in `CacheStats`)."""
        gpu, host, swap = self.gpu, self.host, self._swap
        bpb = self.model.bytes_per_block(self.block_size) if self.model else 0
        tokens = self.gpu_tokens()
        used_slots = gpu.num_used * self.block_size
        host_total, host_used = (host.num_blocks, host.num_used) if host else (0, 0)
        prefix = self._prefix.stats()
        return CacheStats(
            gpu_total_blocks=gpu.num_blocks,
            gpu_used_blocks=gpu.num_used,
            gpu_free_blocks=gpu.num_free,
            gpu_evictable_blocks=gpu.num_evictable,
            host_total_blocks=host_total,
            host_used_blocks=host_used,
            host_free_blocks=host_total - host_used,
            gpu_used_bytes=gpu.num_used * bpb,
            gpu_capacity_bytes=gpu.num_blocks * bpb,
            host_used_bytes=host_used * bpb,
            host_capacity_bytes=host_total * bpb,
            utilization=tokens / used_slots if used_slots else 1.0,
            gpu_tokens=tokens,
            num_sequences=len(self._seqs),
            allocation_failures=self._failures,
            cow_copies=self._cow.copies,
            swap_outs=swap.swap_outs,
            swap_ins=swap.swap_ins,
            blocks_swapped_out=swap.blocks_out,
            blocks_swapped_in=swap.blocks_in,
            prefix_query_tokens=prefix.query_tokens,
            prefix_hit_tokens=prefix.hit_tokens,
            prefix_requests=prefix.requests,
            prefix_hit_requests=prefix.hit_requests,
            prefix_stored_blocks=prefix.stored_blocks,
            prefix_evictions=prefix.evictions,
            prefix_cached_blocks=prefix.cached_blocks,
            prefix_host_hit_tokens=prefix.host_hit_tokens,
            prefix_disk_hit_tokens=prefix.disk_hit_tokens,
            **({} if self._tiers is None else self._tiers.stats()),
        )

    def check_invariants(self) -> None:
        """Verify the cache's invariants (listed in `paged_kv.cache.invariants.check`);
        raise `InvariantError` listing every violation."""
        invariants.check(list(self._seqs.records()), self.gpu, self.host, self.block_size,
                         self._tiers)

    def snapshot(self) -> dict:
        """A comparable picture of the whole state, bytes of both pools included.

        Two snapshots compare equal exactly when nothing observable changed, except the
        ``allocation_failures`` counter, which a refused operation is meant to raise.
        """
        swap = self._swap
        state = {
            "sequences": tuple(invariants.record_state(r) for r in self._seqs.records()),
            "gpu": self.gpu.state(),
            "host": None if self.host is None else self.host.state(),
            "prefix": self._prefix.state(),
            "counters": (self._cow.copies, swap.swap_outs, swap.swap_ins, swap.blocks_out,
                         swap.blocks_in),
            "tiers": None if self._tiers is None else self._tiers.state(),
        }
        state.update(self._kv.pool_bytes())
        return state

    def __repr__(self) -> str:
        return (
            f"PagedKVCache({self._kv.label}, block_size={self.block_size}, "
            f"gpu {self.gpu.num_used}/{self.gpu.num_blocks} used, {len(self._seqs)} sequences)"
        )
