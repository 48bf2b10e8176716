"""The paged KV cache manager: sequences, block tables, fork and copy-on-write, swap,
prefix caching, watermarks and statistics.

`PagedKVCache` is where metadata and data meet. Every operation first checks that it
can succeed (arguments, free blocks on the pool it needs), then updates the metadata
and issues the matching data operation through `KVStorage`'s kernels: copy-on-write
copies the block's bytes, swapping moves them, `read_kv` returns them. An operation that
raises has changed nothing.

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

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence

import numpy as np

from paged_kv.block_allocator import BlockAllocator
from paged_kv.block_table import BlockTable
from paged_kv.checks import require_int
from paged_kv.config import CacheConfig, ModelSpec, get_model
from paged_kv.errors import (
    InvariantError,
    MetadataOnlyError,
    OutOfBlocksError,
    SequenceStateError,
    UnknownSequenceError,
)
from paged_kv.eviction import EvictionPolicy
from paged_kv.prefix_cache import PrefixCache, PrefixCacheStats
from paged_kv.sequence import GPU, HOST, SequenceInfo, SequenceRecord
from paged_kv.stats import CacheStats
from paged_kv.watermark import PressureCallback, PressureLevel, pressure_level


class PagedKVCache:
    """A paged KV cache: a GPU block pool, an optional host pool, and the sequences in them.

    Parameters
    ----------
    config:
        Block size, pool sizes, watermarks, prefix caching and its eviction policy.
    model:
        The model whose KV is stored (a `ModelSpec` or a preset name). Without one the
        cache is metadata-only.
    storage:
        Attach device arrays (default: whenever a model is given). ``False`` gives a
        metadata-only cache that still knows the model's sizes for its statistics.
    hash_fn:
        The function that chains block keys (tests inject a colliding one).
    policy:
        An eviction-policy instance to use instead of ``config.eviction_policy`` (one
        that needs constructor arguments, such as `BeladyPolicy`).
    """

    def __init__(
        self,
        config: CacheConfig,
        model: ModelSpec | str | None = None,
        *,
        storage: bool | None = None,
        hash_fn=hash,
        policy: EvictionPolicy | None = None,
    ) -> None:
        if not isinstance(config, CacheConfig):
            raise ValueError(f"config must be a CacheConfig, got {type(config).__name__}")
        if isinstance(model, str):
            model = get_model(model)
        if model is not None and not isinstance(model, ModelSpec):
            raise ValueError(f"model must be a ModelSpec or preset name, got {model!r}")
        if storage is None:
            storage = model is not None
        if storage and model is None:
            raise ValueError("storage=True needs a model to size the pools")
        #: the configuration this cache was built with
        self.config = config
        #: the model whose KV is stored (None: sizes unknown)
        self.model = model
        #: token slots per block
        self.block_size = config.block_size
        #: the GPU pool's allocator (ref counts, free queue, eviction policy)
        self.gpu = BlockAllocator(
            config.num_gpu_blocks, config.eviction_policy if policy is None else policy, name=GPU
        )
        #: the host pool's allocator, or None without a host pool
        self.host = (
            BlockAllocator(config.num_host_blocks, "lru", name=HOST)
            if config.num_host_blocks
            else None
        )
        #: the prefix cache, or None when prefix caching is off
        self.prefix = (
            PrefixCache(self.gpu, config.block_size, hash_fn=hash_fn)
            if config.enable_prefix_caching
            else None
        )
        self.storage = None
        if storage:
            from paged_kv.storage import KVStorage  # noqa: PLC0415 - numba only when storing

            self.storage = KVStorage(
                model, config.block_size, config.num_gpu_blocks, config.num_host_blocks
            )
        self._seqs: dict[int, SequenceRecord] = {}
        self._next_id = 0
        self._counters = Counter()
        self._callbacks: list[PressureCallback] = []
        self._level = PressureLevel.NORMAL

    # ==================================================================================
    # sequences
    # ==================================================================================
    def _record(self, seq_id: int, location: str | None = GPU) -> SequenceRecord:
        record = self._seqs.get(seq_id)
        if record is None:
            raise UnknownSequenceError(seq_id)
        if location is not None and record.location != location:
            raise SequenceStateError(
                f"sequence {seq_id} is on the {record.location} pool; this needs it on the "
                f"{location} pool" + (" (swap_in first)" if location == GPU else "")
            )
        return record

    def _new_id(self, seq_id: int | None) -> int:
        if seq_id is None:
            while self._next_id in self._seqs:
                self._next_id += 1
            return self._next_id
        seq_id = require_int("seq_id", seq_id)
        if seq_id in self._seqs:
            raise ValueError(f"seq_id {seq_id} is already a live sequence")
        return seq_id

    def _take_id(self, seq_id: int) -> None:
        if seq_id >= self._next_id:
            self._next_id = seq_id + 1

    def get(self, seq_id: int) -> SequenceInfo:
        """A read-only picture of sequence `seq_id`."""
        return SequenceInfo.of(self._record(seq_id, None))

    def handles(self) -> list[int]:
        """Ids of the live sequences, in the order they were created."""
        return list(self._seqs)

    def __contains__(self, seq_id: object) -> bool:
        return seq_id in self._seqs

    def __len__(self) -> int:
        return len(self._seqs)

    def num_tokens(self, seq_id: int) -> int:
        """Tokens stored for `seq_id`."""
        return self._record(seq_id, None).table.num_tokens

    def num_cached_tokens(self, seq_id: int) -> int:
        """Prompt tokens of `seq_id` that the prefix cache served when it was allocated."""
        return self._record(seq_id, None).num_cached_tokens

    # ==================================================================================
    # allocate / append / free / fork
    # ==================================================================================
    def _prompt_keys(
        self,
        n: int,
        token_ids: Sequence[int] | None,
        block_keys: Sequence[Hashable] | None,
        salt: Hashable | None,
    ) -> list[Hashable]:
        """Prefix-cache keys of the prompt's full blocks (empty without caching)."""
        if self.prefix is None:
            return []
        if token_ids is not None:
            return self.prefix.token_keys(token_ids, salt=salt)
        if block_keys is not None:
            return self.prefix.external_keys(block_keys[: n // self.block_size], salt)
        return []

    def _match(
        self, n: int, keys: list[Hashable], token_ids: Sequence[int] | None, salt
    ) -> list[int]:
        """Cached blocks serving the prompt, capped so its last token is computed."""
        if self.prefix is None or not keys or n == 0:
            return []
        return self.prefix.match(
            keys, token_ids=token_ids, salt=salt, max_blocks=(n - 1) // self.block_size
        )

    def _validate_prompt(
        self,
        num_tokens: int | None,
        token_ids: Sequence[int] | None,
        block_keys: Sequence[Hashable] | None,
    ) -> tuple[int, list[int] | None]:
        if token_ids is not None:
            token_ids = [int(t) for t in token_ids]
            if num_tokens is not None and num_tokens != len(token_ids):
                raise ValueError(
                    f"num_tokens={num_tokens} disagrees with {len(token_ids)} token_ids"
                )
            num_tokens = len(token_ids)
        if num_tokens is None:
            raise ValueError("give num_tokens or token_ids")
        n = require_int("num_tokens", num_tokens)
        if block_keys is not None:
            if token_ids is not None:
                raise ValueError("give token_ids or block_keys, not both")
            if len(set(block_keys)) != len(block_keys):
                raise ValueError(
                    "block_keys repeat a key: prefix-chained keys name distinct blocks"
                )
            if len(block_keys) > -(-n // self.block_size):
                raise ValueError(
                    f"{len(block_keys)} block_keys for {n} tokens, which fill only "
                    f"{-(-n // self.block_size)} blocks of {self.block_size}"
                )
        return n, token_ids

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
        n, token_ids = self._validate_prompt(num_tokens, token_ids, block_keys)
        keys = self._prompt_keys(n, token_ids, block_keys, salt)
        return self._blocks_short(n, self._match(n, keys, token_ids, salt), watermark) <= 0

    def _blocks_short(self, n: int, hits: list[int], watermark: bool) -> int:
        """How many blocks an allocation of `n` tokens with `hits` lacks (<= 0: none)."""
        available = self.gpu.num_free
        if hits:
            refs = self.gpu.ref_counts
            available -= [refs[b] for b in hits].count(0)  # revived: no longer free
        needed = -(-n // self.block_size) - len(hits)
        if watermark:
            available -= self.config.watermark_reserve_blocks
        return needed - available

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

        Give the prompt's length (`num_tokens`), its `token_ids` (which lets its full
        blocks be cached and confirmed), or precomputed `block_keys` of its blocks (trace
        replay). With prefix caching on, the longest cached prefix is reused, capped so
        that at least the last prompt token is computed: see `SequenceInfo.num_cached_tokens`.

        Raises `OutOfBlocksError` (changing nothing) when the GPU pool lacks room.
        """
        n, token_ids = self._validate_prompt(num_tokens, token_ids, block_keys)
        seq_id = self._new_id(seq_id)
        keys = self._prompt_keys(n, token_ids, block_keys, salt)
        hits = self._match(n, keys, token_ids, salt)
        short = self._blocks_short(n, hits, watermark=False)
        if short > 0:
            self._counters["allocation_failures"] += 1
            needed = -(-n // self.block_size) - len(hits)
            raise OutOfBlocksError(GPU, needed, needed - short, f"allocate {n} tokens")
        caching = self.prefix is not None and (token_ids is not None or block_keys is not None)
        if caching:
            self.prefix.record_lookup(n, hits)  # before revival: policies see the hit first
        gpu = self.gpu
        gpu.incref_many(hits)
        blocks = hits + gpu.allocate_many(-(-n // self.block_size) - len(hits))
        record = SequenceRecord(
            seq_id=seq_id,
            table=BlockTable(self.block_size, blocks, n),
            location=GPU,
            token_ids=token_ids,
            keys=keys,
            salt=salt,
            num_cached_tokens=len(hits) * self.block_size,
        )
        if caching:
            self._publish(record, len(hits))
        self._seqs[seq_id] = record
        self._take_id(seq_id)
        self._update_pressure()
        return seq_id

    def _publish(self, record: SequenceRecord, first: int) -> None:
        """Offer the sequence's full blocks from logical block `first` on to the cache."""
        prefix = self.prefix
        blocks = record.table.blocks
        keys = record.keys
        last = min(record.table.num_full_blocks, len(keys))
        if first >= last:
            return
        tokens = record.token_ids
        if tokens is None:
            prefix.store_many(blocks[first:last], keys[first:last])
            return
        bs = self.block_size
        root = prefix.root_key(record.salt)
        for i in range(first, last):
            prefix.store(
                blocks[i],
                keys[i],
                parent=keys[i - 1] if i else root,
                tokens=tokens[i * bs : (i + 1) * bs],
            )

    def _needs_cow(self, table: BlockTable) -> bool:
        """True when the last block is partial and shared: writing into it must copy."""
        return table.last_block_partial and self.gpu.ref_counts[table.blocks[-1]] > 1

    def can_append(self, seq_id: int, num_tokens: int = 1) -> bool:
        """Whether `append(seq_id, num_tokens)` would find enough free GPU blocks."""
        table = self._record(seq_id).table
        num_tokens = require_int("num_tokens", num_tokens)
        needed = table.blocks_needed(num_tokens) + (num_tokens > 0 and self._needs_cow(table))
        return needed <= self.gpu.num_free

    def append(
        self,
        seq_id: int,
        num_tokens: int | None = None,
        *,
        token_ids: Sequence[int] | None = None,
    ) -> None:
        """Extend a sequence by `num_tokens` (default 1) or by `token_ids`.

        A new block is taken only when a block boundary is crossed. If the last block
        is partial and shared (after a fork), it is first copied (copy-on-write): the
        bytes move through the block-copy kernel, once per shared block and writer.
        A sequence allocated with token ids must be given token ids.
        """
        record = self._record(seq_id)
        if token_ids is not None:
            token_ids = [int(t) for t in token_ids]
            if num_tokens is not None and num_tokens != len(token_ids):
                raise ValueError(
                    f"num_tokens={num_tokens} disagrees with {len(token_ids)} token_ids"
                )
            if record.token_ids is None:
                raise ValueError(
                    f"sequence {seq_id} was allocated without token ids; append counts only"
                )
            num_tokens = len(token_ids)
        elif record.token_ids is not None:
            raise ValueError(f"sequence {seq_id} tracks token ids; pass token_ids")
        k = 1 if num_tokens is None else num_tokens
        if type(k) is not int or k < 0:
            k = require_int("num_tokens", k)
        table = record.table
        cow = k > 0 and self._needs_cow(table)
        new = table.blocks_needed(k)
        if new + cow > self.gpu.num_free:
            self._counters["allocation_failures"] += 1
            raise OutOfBlocksError(GPU, new + cow, self.gpu.num_free, f"append {k} tokens")
        if cow:
            self._copy_on_write([record])
        old_full = table.num_full_blocks
        if new == 1:
            table.blocks.append(self.gpu.allocate())
        elif new:
            table.blocks.extend(self.gpu.allocate_many(new))
        table.num_tokens += k
        if token_ids is not None:
            record.token_ids.extend(token_ids)
        if self.prefix is not None and table.num_full_blocks > old_full:
            self._extend_keys(record, old_full)
        self._update_pressure()

    def append_cost(self, seq_ids: Sequence[int], num_tokens: int = 1) -> int:
        """Free GPU blocks that `append_many(seq_ids, num_tokens)` would take.

        Exact, copy-on-write included: of the sequences sharing a partial last block,
        each one appended copies it except the last holder.
        """
        if type(num_tokens) is not int:
            num_tokens = require_int("num_tokens", num_tokens)
        if num_tokens <= 0:
            if num_tokens < 0:
                raise ValueError(f"num_tokens must be an integer >= 0, got {num_tokens}")
            return 0
        refs = self.gpu.ref_counts
        remaining: dict[int, int] = {}
        cost = 0
        for seq_id in seq_ids:
            table = self._record(seq_id).table
            cost += table.blocks_needed(num_tokens)
            if table.last_block_partial:
                last = table.blocks[-1]
                holders = remaining.get(last, refs[last])
                if holders > 1:
                    cost += 1
                    remaining[last] = holders - 1
        return cost

    def append_many(self, seq_ids: Sequence[int], num_tokens: int = 1) -> None:
        """Append `num_tokens` to each sequence (a decode step), all or none.

        Raises `OutOfBlocksError`, changing nothing, when `append_cost` exceeds the
        free blocks. Sequences that track token ids must use `append`.
        """
        seq_ids = list(seq_ids)
        if len(set(seq_ids)) != len(seq_ids):
            raise ValueError("a sequence is named twice")
        for seq_id in seq_ids:
            if self._record(seq_id).token_ids is not None:
                raise ValueError(f"sequence {seq_id} tracks token ids; use append")
        cost = self.append_cost(seq_ids, num_tokens)
        if cost > self.gpu.num_free:
            self._counters["allocation_failures"] += 1
            raise OutOfBlocksError(GPU, cost, self.gpu.num_free, "append to a batch")
        for seq_id in seq_ids:
            self.append(seq_id, num_tokens)

    def _extend_keys(self, record: SequenceRecord, old_full: int) -> None:
        """Key and publish blocks that became full, if the chain of keys is known."""
        if record.token_ids is None or len(record.keys) != old_full:
            return  # counts only, or a chain broken by a trace's own keys: no caching
        prefix = self.prefix
        parent = record.keys[-1] if record.keys else None
        record.keys.extend(
            prefix.token_keys(
                record.token_ids, salt=record.salt, parent=parent, first_block=old_full
            )
        )
        self._publish(record, old_full)

    def _cow_plan(self, records: list[SequenceRecord]) -> list[SequenceRecord]:
        """Of `records` writing into their shared partial last blocks, those that must copy.

        Each holder copies except the last one left, as appending one by one would.
        """
        refs = self.gpu.ref_counts
        remaining: dict[int, int] = {}
        plan = []
        for record in records:
            last = record.table.blocks[-1]
            holders = remaining.get(last, refs[last])
            if holders > 1:
                plan.append(record)
                remaining[last] = holders - 1
        return plan

    def _copy_on_write(self, records: list[SequenceRecord]) -> None:
        """Give each record a private copy of its shared partial last block.

        New blocks are all taken before any old one is released, so a source can never
        be handed out as a destination within one copy launch.
        """
        gpu = self.gpu
        pairs = []
        for record, new in zip(records, gpu.allocate_many(len(records))):
            pairs.append((record.table.blocks[-1], new))
            record.table.blocks[-1] = new
        if self.storage is not None:
            self.storage.copy_blocks(pairs)
        for old, _ in pairs:
            gpu.free(old)
        self._counters["cow_copies"] += len(pairs)

    def free(self, seq_id: int) -> None:
        """Release a sequence; each block whose last holder it was joins the free queue.

        Blocks go back tail first, so that among them the end of the chain is evicted
        before its beginning.
        """
        record = self._record(seq_id, None)
        pool = self.gpu if record.location == GPU else self.host
        pool.free_many(reversed(record.table.blocks))
        del self._seqs[seq_id]
        self._update_pressure()

    def fork(self, seq_id: int, *, child_id: int | None = None) -> int:
        """A new sequence sharing every block of `seq_id` (ref counts rise); its id.

        Nothing is copied now: a later write into the shared partial last block copies it.
        """
        record = self._record(seq_id)
        child_id = self._new_id(child_id)
        self.gpu.incref_many(record.table.blocks)
        self._seqs[child_id] = SequenceRecord(
            seq_id=child_id,
            table=record.table.copy(),
            location=GPU,
            token_ids=None if record.token_ids is None else list(record.token_ids),
            keys=list(record.keys),
            salt=record.salt,
            num_cached_tokens=record.num_cached_tokens,
        )
        self._take_id(child_id)
        return child_id

    # ==================================================================================
    # KV data
    # ==================================================================================
    def _need_storage(self):
        if self.storage is None:
            raise MetadataOnlyError(
                "this cache is metadata-only (no model or storage=False): it holds no KV"
            )
        return self.storage

    def _check_kv(self, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        model = self.model
        k = np.asarray(k)
        v = np.asarray(v)
        shape = (model.num_kv_heads, model.head_dim)
        for name, arr in (("k", k), ("v", v)):
            if arr.ndim != 3 or arr.shape[1:] != shape:
                raise ValueError(
                    f"{name} must have shape [num_tokens, {shape[0]}, {shape[1]}], got "
                    f"{arr.shape}"
                )
            if arr.dtype != np.dtype(model.dtype):
                raise ValueError(f"{name} must be {model.dtype}, got {arr.dtype}")
        if k.shape != v.shape:
            raise ValueError(f"k and v shapes differ: {k.shape} vs {v.shape}")
        return k, v

    def _check_layer(self, layer: int) -> int:
        layer = require_int("layer", layer)
        if layer >= self.model.num_layers:
            raise ValueError(f"layer {layer} out of range [0, {self.model.num_layers})")
        return layer

    def _write_plan(self, record: SequenceRecord, start: int, count: int) -> bool:
        """Validate a write of positions start..start+count-1; True if it needs a COW."""
        table = record.table
        if start < 0 or start + count > table.num_tokens:
            raise ValueError(
                f"positions {start}..{start + count - 1} outside sequence {record.seq_id}'s "
                f"{table.num_tokens} tokens (append first)"
            )
        if count == 0:
            return False
        bs = self.block_size
        refs = self.gpu.ref_counts
        for i in range(start // bs, (start + count - 1) // bs + 1):
            block = table.blocks[i]
            if refs[block] > 1:
                if i < table.num_full_blocks:
                    raise ValueError(
                        f"sequence {record.seq_id}: block {block} (logical {i}) is full and "
                        f"shared by {refs[block]} sequences; shared full blocks are immutable"
                    )
                return True
        return False

    def write_kv(
        self, seq_id: int, layer: int, k: np.ndarray, v: np.ndarray, *, start: int | None = None
    ) -> None:
        """Write one layer's K and V for positions ``start .. start+len(k)-1``.

        `k`, `v` are ``[num_tokens, num_kv_heads, head_dim]`` in the model's dtype;
        `start` defaults to the last ``len(k)`` positions (the tokens just appended).
        A shared partial block is copied first; a shared full block is refused.
        """
        self.write_kv_batch(
            layer, [seq_id], k, v, num_tokens=[len(k)], starts=None if start is None else [start]
        )

    def write_kv_batch(
        self,
        layer: int,
        seq_ids: Sequence[int],
        k: np.ndarray,
        v: np.ndarray,
        *,
        num_tokens: Sequence[int],
        starts: Sequence[int] | None = None,
    ) -> None:
        """Write one layer's K and V for many sequences in one slot-write launch.

        Rows of `k`, `v` are the sequences' tokens concatenated in `seq_ids` order,
        ``num_tokens[i]`` rows for sequence i, written at positions ``starts[i] ..``
        (default: its last ``num_tokens[i]`` positions). A decode step is
        ``num_tokens=[1] * len(seq_ids)``.
        """
        storage = self._need_storage()
        layer = self._check_layer(layer)
        k, v = self._check_kv(k, v)
        seq_ids = list(seq_ids)
        counts = [require_int("num_tokens[i]", c) for c in num_tokens]
        if len(counts) != len(seq_ids) or (starts is not None and len(starts) != len(seq_ids)):
            raise ValueError("seq_ids, num_tokens and starts must have the same length")
        if len(set(seq_ids)) != len(seq_ids):
            raise ValueError("a sequence appears twice in one batch write")
        if sum(counts) != len(k):
            raise ValueError(f"k has {len(k)} rows but num_tokens sums to {sum(counts)}")
        records = [self._record(s) for s in seq_ids]
        if starts is None:
            starts = [r.table.num_tokens - c for r, c in zip(records, counts)]
        starts = [require_int("starts[i]", s) for s in starts]
        cow = self._cow_plan(
            [r for r, s, c in zip(records, starts, counts) if self._write_plan(r, s, c)]
        )
        if len(cow) > self.gpu.num_free:
            self._counters["allocation_failures"] += 1
            raise OutOfBlocksError(GPU, len(cow), self.gpu.num_free, "copy shared blocks")
        if cow:
            self._copy_on_write(cow)
        slots = np.concatenate(
            [r.table.slot_mapping(s, s + c) for r, s, c in zip(records, starts, counts)]
            or [np.empty(0, np.int64)]
        )
        storage.write(layer, k, v, slots)
        self._update_pressure()

    def slot_mapping(self, seq_id: int, start: int, end: int) -> np.ndarray:
        """Slots ``block_id * block_size + offset`` of positions ``start .. end-1``."""
        table = self._record(seq_id).table
        if not 0 <= start <= end <= table.num_tokens:
            raise ValueError(
                f"positions {start}..{end} outside sequence {seq_id}'s {table.num_tokens} tokens"
            )
        return table.slot_mapping(start, end)

    def read_kv(
        self, seq_id: int, layer: int, *, start: int = 0, end: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One layer's K and V of positions ``start .. end-1`` (default: all tokens)."""
        k, v, _ = self.read_kv_batch(
            layer, [seq_id], starts=[start], ends=None if end is None else [end]
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
        storage = self._need_storage()
        layer = self._check_layer(layer)
        records = [self._record(s) for s in seq_ids]
        n = len(records)
        starts = [0] * n if starts is None else [require_int("starts[i]", s) for s in starts]
        ends = ([r.table.num_tokens for r in records] if ends is None
                else [require_int("ends[i]", e) for e in ends])
        if len(starts) != n or len(ends) != n:
            raise ValueError("seq_ids, starts and ends must have the same length")
        for r, s, e in zip(records, starts, ends):
            if not 0 <= s <= e <= r.table.num_tokens:
                raise ValueError(
                    f"positions {s}..{e} outside sequence {r.seq_id}'s {r.table.num_tokens} tokens"
                )
        tables = [r.table.blocks[: -(-e // self.block_size)] for r, e in zip(records, ends)]
        k, v = storage.gather(layer, tables, ends, starts)
        cu = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([e - s for s, e in zip(starts, ends)], out=cu[1:])
        return k, v, cu

    # ==================================================================================
    # swap
    # ==================================================================================
    def _swap_records(self, seq_ids: int | Iterable[int], location: str) -> list[SequenceRecord]:
        ids = [seq_ids] if isinstance(seq_ids, (int, np.integer)) else list(seq_ids)
        if len(set(ids)) != len(ids):
            raise ValueError("a sequence is named twice")
        return [self._record(s, location) for s in ids]

    def can_swap_out(self, seq_ids: int | Iterable[int]) -> bool:
        """Whether the host pool has room for these sequences' blocks."""
        records = self._swap_records(seq_ids, GPU)
        needed = len({b for r in records for b in r.table.blocks})
        return self.host is not None and needed <= self.host.num_free

    def can_swap_in(self, seq_ids: int | Iterable[int]) -> bool:
        """Whether the GPU pool has room for these swapped-out sequences' blocks."""
        records = self._swap_records(seq_ids, HOST)
        return len({b for r in records for b in r.table.blocks}) <= self.gpu.num_free

    def swap_out(self, seq_ids: int | Iterable[int]) -> None:
        """Move whole sequences' KV from the GPU pool to the host pool.

        Sequences that share blocks should go together: a block they share is moved
        once. A block also held by a sequence staying on the GPU is copied, not moved.
        Freed GPU blocks that hold cached prefix blocks stay evictable-cached (their bytes
        are still there). Raises `OutOfBlocksError` (changing nothing) when the host pool
        lacks room.
        """
        records = self._swap_records(seq_ids, GPU)
        self._move(records, src=self.gpu, dst=self.host, dst_name=HOST)
        self._counters["swap_outs"] += len(records)

    def swap_in(self, seq_ids: int | Iterable[int]) -> None:
        """Move swapped-out sequences' KV back from the host pool into the GPU pool.

        Their full blocks are offered to the prefix cache again. Raises
        `OutOfBlocksError` (changing nothing) when the GPU pool lacks room.
        """
        records = self._swap_records(seq_ids, HOST)
        self._move(records, src=self.host, dst=self.gpu, dst_name=GPU)
        self._counters["swap_ins"] += len(records)
        if self.prefix is not None:
            for record in records:
                self._publish(record, 0)

    def _move(
        self,
        records: list[SequenceRecord],
        *,
        src: BlockAllocator,
        dst: BlockAllocator | None,
        dst_name: str,
    ) -> None:
        holders = Counter(b for r in records for b in r.table.blocks)
        available = 0 if dst is None else dst.num_free
        if len(holders) > available:
            self._counters["allocation_failures"] += 1
            raise OutOfBlocksError(
                dst_name, len(holders), available, f"swap {len(records)} sequences"
            )
        if not records:
            return
        mapping = dict(zip(holders, dst.allocate_many(len(holders))))
        for block, count in holders.items():
            for _ in range(count - 1):
                dst.incref(mapping[block])
        pairs = list(mapping.items())
        if self.storage is not None:
            if dst_name == HOST:
                self.storage.swap_out(pairs)
            else:
                self.storage.swap_in(pairs)
        for record in records:
            old = record.table.blocks
            record.table.blocks = [mapping[b] for b in old]
            record.location = dst_name
            for block in reversed(old):
                src.free(block)
        direction = "out" if dst_name == HOST else "in"
        self._counters[f"blocks_swapped_{direction}"] += len(pairs)
        self._update_pressure()

    # ==================================================================================
    # prefix cache operations
    # ==================================================================================
    def lookup_prefix(
        self,
        token_ids: Sequence[int] | None = None,
        *,
        block_keys: Sequence[Hashable] | None = None,
        num_tokens: int | None = None,
        salt: Hashable | None = None,
    ) -> int:
        """Tokens of this prompt the prefix cache would serve now; allocates nothing.

        Applies the same last-token cap as `allocate`; counts nothing in the statistics.
        """
        n, token_ids = self._validate_prompt(num_tokens, token_ids, block_keys)
        keys = self._prompt_keys(n, token_ids, block_keys, salt)
        return len(self._match(n, keys, token_ids, salt)) * self.block_size

    def evict_cached(self, n: int) -> int:
        """Evict up to `n` evictable cached blocks in policy order; how many were evicted."""
        if self.prefix is None:
            return 0
        return len(self.prefix.evict(n))

    def reset_prefix_cache(self) -> tuple[bool, str]:
        """Drop every cached block; refused (False, reason) while cached blocks are in use."""
        if self.prefix is None:
            return True, ""
        return self.prefix.reset()

    @property
    def prefix_stats(self) -> PrefixCacheStats:
        """Prefix-cache hit statistics (all zero when prefix caching is off)."""
        return self.prefix.stats if self.prefix is not None else PrefixCacheStats()

    def reset_prefix_stats(self) -> None:
        """Zero the prefix-cache hit statistics."""
        if self.prefix is not None:
            self.prefix.reset_stats()

    # ==================================================================================
    # pressure
    # ==================================================================================
    @property
    def pressure(self) -> PressureLevel:
        """The GPU pool's pressure level now."""
        return pressure_level(self.gpu.usage, self.config.watermark_low,
                              self.config.watermark_high)

    def on_pressure_change(self, callback: PressureCallback) -> PressureCallback:
        """Call ``callback(old, new, usage)`` whenever the pressure level changes.

        Callbacks run after the operation that moved the level has completed; an
        exception a callback raises propagates to that operation's caller, with the
        operation's effects kept.
        """
        if not callable(callback):
            raise ValueError(f"callback must be callable, got {callback!r}")
        if not self._callbacks:
            self._level = self.pressure
        self._callbacks.append(callback)
        return callback

    def remove_pressure_callback(self, callback: PressureCallback) -> None:
        """Stop calling `callback` (a `ValueError` if it was never registered)."""
        if callback not in self._callbacks:
            raise ValueError(f"{callback!r} is not a registered pressure callback")
        self._callbacks.remove(callback)

    def _update_pressure(self) -> None:
        if not self._callbacks:
            return  # nobody listens; the level is recomputed when someone registers
        usage = self.gpu.usage
        level = pressure_level(usage, self.config.watermark_low, self.config.watermark_high)
        if level != self._level:
            old, self._level = self._level, level
            for callback in list(self._callbacks):
                callback(old, level, usage)

    # ==================================================================================
    # statistics and checking
    # ==================================================================================
    @property
    def num_free_blocks(self) -> int:
        """Free GPU blocks (uncached plus evictable)."""
        return self.gpu.num_free

    @property
    def num_used_blocks(self) -> int:
        """GPU blocks in use."""
        return self.gpu.num_used

    def gpu_tokens(self) -> int:
        """Tokens held in GPU blocks, each physical slot counted once (sharing aside)."""
        fill: dict[int, int] = {}
        bs = self.block_size
        for record in self._seqs.values():
            if record.location != GPU:
                continue
            table = record.table
            full = table.num_full_blocks
            for block in table.blocks[:full]:
                fill[block] = bs
            if full < len(table.blocks):
                block = table.blocks[full]
                fill[block] = max(fill.get(block, 0), table.num_tokens - full * bs)
        return sum(fill.values())

    def stats(self) -> CacheStats:
        """The statistics at this moment."""
        gpu, host = self.gpu, self.host
        bpb = self.model.bytes_per_block(self.block_size) if self.model else 0
        tokens = self.gpu_tokens()
        used_slots = gpu.num_used * self.block_size
        prefix = self.prefix_stats
        c = self._counters
        return CacheStats(
            gpu_total_blocks=gpu.num_blocks,
            gpu_used_blocks=gpu.num_used,
            gpu_free_blocks=gpu.num_free,
            gpu_evictable_blocks=gpu.num_evictable,
            host_total_blocks=host.num_blocks if host else 0,
            host_used_blocks=host.num_used if host else 0,
            host_free_blocks=host.num_free if host else 0,
            gpu_used_bytes=gpu.num_used * bpb,
            gpu_capacity_bytes=gpu.num_blocks * bpb,
            host_used_bytes=(host.num_used if host else 0) * bpb,
            host_capacity_bytes=(host.num_blocks if host else 0) * bpb,
            utilization=tokens / used_slots if used_slots else 1.0,
            gpu_tokens=tokens,
            num_sequences=len(self._seqs),
            allocation_failures=c["allocation_failures"],
            cow_copies=c["cow_copies"],
            swap_outs=c["swap_outs"],
            swap_ins=c["swap_ins"],
            blocks_swapped_out=c["blocks_swapped_out"],
            blocks_swapped_in=c["blocks_swapped_in"],
            prefix_query_tokens=prefix.query_tokens,
            prefix_hit_tokens=prefix.hit_tokens,
            prefix_requests=prefix.requests,
            prefix_hit_requests=prefix.hit_requests,
            prefix_evictions=prefix.evictions,
        )

    def check_invariants(self) -> None:
        """Verify DESIGN.md's invariants; raise `InvariantError` listing every violation.

        * every block is free or referenced; ``ref_count`` == number of block tables
          holding it, on each pool;
        * free + used == total, no block twice in the free structures, evictable blocks
          (and only they among free blocks) carry a cache key;
        * the prefix cache's key map agrees with the blocks' keys; cached blocks are full
          in every table holding them;
        * each table has exactly ``ceil(num_tokens / block_size)`` blocks.
        """
        problems = self.gpu.check()
        pools = {GPU: self.gpu}
        if self.host is not None:
            problems += self.host.check()
            pools[HOST] = self.host
        held = {name: Counter() for name in pools}
        bs = self.block_size
        for record in self._seqs.values():
            table = record.table
            if record.location not in pools:
                problems.append(f"sequence {record.seq_id} on unknown pool {record.location}")
                continue
            held[record.location].update(table.blocks)
            if len(table.blocks) != -(-table.num_tokens // bs):
                problems.append(
                    f"sequence {record.seq_id}: {len(table.blocks)} blocks for "
                    f"{table.num_tokens} tokens"
                )
            if len(set(table.blocks)) != len(table.blocks):
                problems.append(f"sequence {record.seq_id} holds a block twice")
            if record.location == GPU:
                keys = self.gpu.block_keys
                for i, block in enumerate(table.blocks):
                    if keys[block] is not None and i >= table.num_full_blocks:
                        problems.append(
                            f"sequence {record.seq_id}: cached block {block} is not full"
                        )
        for name, pool in pools.items():
            for block, count in enumerate(pool.ref_counts):
                if count != held[name][block]:
                    problems.append(
                        f"{name} block {block}: ref_count {count} but held by "
                        f"{held[name][block]} tables"
                    )
        if self.prefix is not None:
            problems += self.prefix.check()
        if problems:
            raise InvariantError("; ".join(problems))

    def snapshot(self) -> dict:
        """A comparable picture of the whole state, bytes of both pools included.

        Two snapshots compare equal exactly when nothing observable changed, except the
        ``allocation_failures`` counter, which a refused operation is meant to raise.
        """
        seqs = tuple(
            (
                r.seq_id,
                r.location,
                r.table.num_tokens,
                tuple(r.table.blocks),
                None if r.token_ids is None else tuple(r.token_ids),
                tuple(r.keys),
                r.salt,
                r.num_cached_tokens,
            )
            for r in self._seqs.values()
        )
        counters = {k: v for k, v in self._counters.items() if k != "allocation_failures"}
        state = {
            "sequences": seqs,
            "gpu": self.gpu.state(),
            "host": None if self.host is None else self.host.state(),
            "prefix": None if self.prefix is None else self.prefix.state(),
            "prefix_stats": None if self.prefix is None else repr(self.prefix.stats),
            "counters": tuple(sorted(counters.items())),
        }
        if self.storage is not None:
            state["gpu_bytes"] = self.storage.gpu_snapshot().tobytes()
            state["host_bytes"] = self.storage.host_snapshot().tobytes()
        return state

    def __repr__(self) -> str:
        mode = "metadata-only" if self.storage is None else self.model.name
        return (
            f"PagedKVCache({mode}, block_size={self.block_size}, "
            f"gpu {self.gpu.num_used}/{self.gpu.num_blocks} used, {len(self._seqs)} sequences)"
        )
