"""KV I/O: the manager's writes and reads of KV bytes, over a storage interface.

`KVBackend` is what the manager needs from storage: write slots, gather, copy blocks,
swap both ways, and the pool bytes for snapshots. `StorageBackend` wraps a real
`paged_kv.storage.KVStorage` (device arrays, kernels); `NullBackend` is metadata-only
mode: copies and swaps are metadata changes with no bytes to move, and any KV read or
write raises `MetadataOnlyError`. The manager picks one at construction and never asks
which it has.

`KVIO` is the write and read path on top: position checks, the immutability rule (a
block published to the prefix cache, or a full block shared by several sequences, is
never written), copy-on-write of a shared partial block before it is written, and the
bookkeeping of which positions hold written KV in each layer (`WrittenExtents`): once
every layer of a prefix has been written, those tokens are computed and their full
blocks are published (`PrefixCache.commit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from paged_kv.block_allocator import BlockAllocator
from paged_kv.checks import cdiv, require_int, require_range
from paged_kv.config import CacheConfig, ModelSpec, get_model
from paged_kv.cow import CopyOnWrite
from paged_kv.errors import ImmutableBlockError, MetadataOnlyError, OutOfBlocksError
from paged_kv.prefix_cache import PrefixCache
from paged_kv.sequence import GPU, SequenceRecord, SequenceRegistry


class WrittenExtents:
    """Which positions of one sequence hold written KV, per layer.

    Per layer, the *frontier*: positions ``0 .. frontier-1`` are all written. A write
    that starts past the frontier is kept aside until the gap is filled. The sequence's
    KV is complete up to the smallest frontier (`complete`).
    """

    __slots__ = ("frontier", "pending")

    def __init__(self, num_layers: int, written: int = 0) -> None:
        #: per layer: every position below it is written
        self.frontier = [written] * num_layers
        #: per layer: written ranges ``(start, end)`` past the frontier, or None
        self.pending: list[list[tuple[int, int]] | None] = [None] * num_layers

    def add(self, layer: int, start: int, end: int) -> None:
        """Positions ``start .. end-1`` of `layer` were written."""
        if end <= start:
            return
        frontier = self.frontier[layer]
        if start > frontier:
            pending = self.pending[layer]
            if pending is None:
                self.pending[layer] = [(start, end)]
            else:
                pending.append((start, end))
            return
        if end <= frontier:
            return
        pending = self.pending[layer]
        if pending:  # absorb the ranges the new frontier reaches, in order of start
            keep = []
            for s, e in sorted(pending):
                if s <= end:
                    end = max(end, e)
                else:
                    keep.append((s, e))
            pending = keep or None
        self.pending[layer] = pending
        self.frontier[layer] = end

    def complete(self) -> int:
        """Leading positions written in every layer."""
        return min(self.frontier)

    def copy(self) -> WrittenExtents:
        """An independent copy (fork)."""
        out = WrittenExtents(0)
        out.frontier = list(self.frontier)
        out.pending = [None if p is None else list(p) for p in self.pending]
        return out

    def state(self) -> tuple:
        """A comparable picture (snapshots)."""
        return (tuple(self.frontier), tuple(None if p is None else tuple(p) for p in self.pending))


class KVBackend(Protocol):
    """What the manager needs from KV storage; `StorageBackend` or `NullBackend`."""

    #: the wrapped `KVStorage`, or None in metadata-only mode
    storage: Any
    #: what a cache's repr calls its mode ("metadata-only", or the model's name)
    label: str

    def new_extents(self, written: int) -> WrittenExtents | None:
        """Bookkeeping of written positions for a new sequence (None: not tracked)."""

    def check_layer(self, layer: object) -> int:
        """`layer` checked (`MetadataOnlyError` first when no KV is stored)."""

    def check_kv(self, k: object, v: object) -> tuple[np.ndarray, np.ndarray]:
        """K and V rows checked against the model's shape and dtype."""

    def write(self, layer: int, k: np.ndarray, v: np.ndarray, slots: np.ndarray) -> None:
        """Scatter rows of `k`, `v` of `layer` into the GPU pool at `slots`."""

    def gather(self, layer: int, tables: list, ends: list, starts: list) -> tuple:
        """Read positions ``starts[s] .. ends[s]-1`` of each table of `layer`."""

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy GPU blocks ``src -> dst`` (copy-on-write)."""

    def swap_out(self, pairs: list[tuple[int, int]]) -> None:
        """Copy GPU block ``src`` to host block ``dst`` for each pair."""

    def swap_in(self, pairs: list[tuple[int, int]]) -> None:
        """Copy host block ``src`` to GPU block ``dst`` for each pair."""

    def pool_bytes(self) -> dict[str, bytes]:
        """The pools' bytes by name, for snapshots (empty without storage)."""


class NullBackend:
    """Metadata-only mode: no arrays; block copies and swaps move no bytes."""

    storage = None
    label = "metadata-only"

    def new_extents(self, written: int) -> None:
        """Nothing is written without storage: not tracked."""
        return None

    def _refuse(self, *args: object) -> Any:
        raise MetadataOnlyError(
            "this cache is metadata-only (no model or storage=False): it holds no KV"
        )

    check_layer = check_kv = write = gather = _refuse

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """No bytes to copy."""

    def swap_out(self, pairs: list[tuple[int, int]]) -> None:
        """No bytes to move."""

    def swap_in(self, pairs: list[tuple[int, int]]) -> None:
        """No bytes to move."""

    def pool_bytes(self) -> dict[str, bytes]:
        """No pools."""
        return {}


class StorageBackend:
    """A `KVStorage` (imported here only: numba loads when a cache stores KV)."""

    def __init__(
        self, model: ModelSpec, block_size: int, num_gpu_blocks: int, num_host_blocks: int
    ) -> None:
        from paged_kv.storage import KVStorage  # noqa: PLC0415 - numba only when storing

        #: the wrapped storage (pools and kernels)
        self.storage = KVStorage(model, block_size, num_gpu_blocks, num_host_blocks)
        #: the model's name
        self.label = model.name
        self._model = model

    def new_extents(self, written: int) -> WrittenExtents:
        """A sequence whose first `written` positions hold KV in every layer."""
        return WrittenExtents(self._model.num_layers, written)

    def check_layer(self, layer: object) -> int:
        """`layer` as an int in ``[0, num_layers)``."""
        layer = require_int("layer", layer)
        if layer >= self._model.num_layers:
            raise ValueError(f"layer {layer} out of range [0, {self._model.num_layers})")
        return layer

    def check_kv(self, k: object, v: object) -> tuple[np.ndarray, np.ndarray]:
        """`k`, `v` as arrays ``[num_tokens, num_kv_heads, head_dim]`` of the model's dtype."""
        model = self._model
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

    def write(self, layer: int, k: np.ndarray, v: np.ndarray, slots: np.ndarray) -> None:
        """The slot-write kernel."""
        self.storage.write(layer, k, v, slots)

    def gather(self, layer: int, tables: list, ends: list, starts: list) -> tuple:
        """The gather kernel; NumPy ``k, v``."""
        return self.storage.gather(layer, tables, ends, starts)

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """The block-copy kernel."""
        if pairs:
            self.storage.copy_blocks(pairs)

    def swap_out(self, pairs: list[tuple[int, int]]) -> None:
        """The swap kernel, GPU -> host."""
        self.storage.swap_out(pairs)

    def swap_in(self, pairs: list[tuple[int, int]]) -> None:
        """The swap kernel, host -> GPU."""
        self.storage.swap_in(pairs)

    def pool_bytes(self) -> dict[str, bytes]:
        """Both pools' bytes, and a quantized cache's scales (`KVStorage.gpu_scales`)."""
        storage = self.storage
        pools = {"gpu_bytes": storage.gpu_snapshot().tobytes(),
                 "host_bytes": storage.host_snapshot().tobytes()}
        for name, scales in (("gpu_scale_bytes", storage.gpu_scales_snapshot()),
                             ("host_scale_bytes", storage.host_scales_snapshot())):
            if scales is not None:
                pools[name] = scales.tobytes()
        return pools


def make_backend(
    config: CacheConfig, model: ModelSpec | str | None, storage: bool | None
) -> tuple[ModelSpec | None, StorageBackend | NullBackend]:
    """The model (a preset name resolved) and the backend a cache with these arguments
    uses: storage whenever a model is given, unless ``storage=False``."""
    if isinstance(model, str):
        model = get_model(model)
    if model is not None and not isinstance(model, ModelSpec):
        raise ValueError(f"model must be a ModelSpec or preset name, got {model!r}")
    if storage is None:
        storage = model is not None
    if storage and model is None:
        raise ValueError("storage=True needs a model to size the pools")
    if not storage:
        return model, NullBackend()
    return model, StorageBackend(
        model, config.block_size, config.num_gpu_blocks, config.num_host_blocks
    )


class KVIO:
    """The write and read paths: checks, immutability, copy-on-write, auto-commit."""

    def __init__(
        self,
        backend: KVBackend,
        seqs: SequenceRegistry,
        gpu: BlockAllocator,
        cow: CopyOnWrite,
        prefix: PrefixCache,
    ) -> None:
        self._backend = backend
        self._seqs = seqs
        self._gpu = gpu
        self._cow = cow
        self._prefix = prefix
        self._block_size = prefix.block_size

    def _needs_copy(self, record: SequenceRecord, start: int, count: int) -> bool:
        """Check that positions ``start ..`` may be written; True if the write goes into
        a shared partial block (which must be copied first)."""
        if count == 0:
            return False
        table = record.table
        bs = self._block_size
        refs = self._gpu.ref_counts
        keys = self._gpu.block_keys
        for i in range(start // bs, (start + count - 1) // bs + 1):
            block = table.blocks[i]
            if keys[block] is not None:
                raise ImmutableBlockError(
                    f"sequence {record.seq_id}: block {block} (logical {i}) is published in "
                    f"the prefix cache, so it is immutable; its KV was computed already"
                )
            if refs[block] > 1:
                if i < table.num_full_blocks:
                    raise ImmutableBlockError(
                        f"sequence {record.seq_id}: block {block} (logical {i}) is full and "
                        f"shared by {refs[block]} sequences; shared full blocks are immutable"
                    )
                return True
        return False

    def write(
        self,
        layer: object,
        seq_ids: Sequence[int],
        k: object,
        v: object,
        num_tokens: Sequence[int],
        starts: Sequence[int] | None,
    ) -> None:
        """Write rows of `k`, `v` (``num_tokens[i]`` for sequence i, concatenated) of
        `layer` at positions ``starts[i] ..`` (default: each one's last ``num_tokens[i]``).

        All or nothing: `MetadataOnlyError` without storage, `ValueError`
        (`ImmutableBlockError` for an immutable block) or `OutOfBlocksError` (no block to
        copy into) change nothing.
        """
        backend = self._backend
        layer = backend.check_layer(layer)  # metadata-only: MetadataOnlyError first
        k, v = backend.check_kv(k, v)
        seq_ids = list(seq_ids)
        counts = [require_int("num_tokens[i]", c) for c in num_tokens]
        if len(counts) != len(seq_ids) or (starts is not None and len(starts) != len(seq_ids)):
            raise ValueError("seq_ids, num_tokens and starts must have the same length")
        if len(set(seq_ids)) != len(seq_ids):
            raise ValueError("a sequence appears twice in one batch write")
        records = [self._seqs.get(s) for s in seq_ids]
        if sum(counts) != len(k):
            raise ValueError(f"k has {len(k)} rows but num_tokens sums to {sum(counts)}")
        if starts is None:
            starts = [r.table.num_tokens - c for r, c in zip(records, counts)]
        else:
            starts = [require_int("starts[i]", s) for s in starts]
        for r, s, c in zip(records, starts, counts):
            require_range(f"sequence {r.seq_id}", s, s + c, r.table.num_tokens, "append first")
        copies = self._cow.plan(
            [r.table for r, s, c in zip(records, starts, counts) if self._needs_copy(r, s, c)]
        )
        if len(copies) > self._gpu.num_free:
            raise OutOfBlocksError(GPU, len(copies), self._gpu.num_free, "copy shared blocks")
        if copies:
            self._cow.apply(copies)
        slots = np.concatenate(
            [r.table.slot_mapping(s, s + c) for r, s, c in zip(records, starts, counts)]
            or [np.empty(0, np.int64)]
        )
        backend.write(layer, k, v, slots)
        commit = self._prefix.commit
        for r, s, c in zip(records, starts, counts):
            written = r.written
            written.add(layer, s, s + c)
            complete = min(written.frontier)
            if complete > r.num_computed_tokens:
                commit(r, complete)

    def read(
        self,
        layer: object,
        seq_ids: Sequence[int],
        starts: Sequence[int] | None,
        ends: Sequence[int] | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """K and V of positions ``starts[i] .. ends[i]-1`` of each sequence (defaults: all
        tokens) in one gather launch, and the ``cu_seqlens`` row offsets."""
        layer = self._backend.check_layer(layer)
        records = [self._seqs.get(s) for s in seq_ids]
        n = len(records)
        starts = [0] * n if starts is None else [require_int("starts[i]", s) for s in starts]
        ends = ([r.table.num_tokens for r in records] if ends is None
                else [require_int("ends[i]", e) for e in ends])
        if len(starts) != n or len(ends) != n:
            raise ValueError("seq_ids, starts and ends must have the same length")
        for r, s, e in zip(records, starts, ends):
            require_range(f"sequence {r.seq_id}", s, e, r.table.num_tokens)
        bs = self._block_size
        tables = [r.table.blocks[: cdiv(e, bs)] for r, e in zip(records, ends)]
        k, v = self._backend.gather(layer, tables, ends, starts)
        cu = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([e - s for s, e in zip(starts, ends)], out=cu[1:])
        return k, v, cu
