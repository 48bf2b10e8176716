"""KV I/O: the manager's writes and reads of KV bytes, over a storage backend.

`KVIO` is the write and read path on top of a `paged_kv.cache.backend.KVBackend`.
Every write goes through a step plan (`paged_kv.cache.step_plan`), made for the one
write or once for a step of all layers: position checks, the immutability rule (a block
published to the prefix cache or a live duplicate of one, or a full block shared by
several sequences, is never written), copy-on-write of a shared partial block before it
is written, and, per layer, the bookkeeping of which positions hold written KV
(`paged_kv.core.sequence.WrittenExtents`): once every layer of a prefix has been written,
those tokens are computed and their full blocks are published (`PrefixCache.commit`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from paged_kv.cache.backend import KVBackend
from paged_kv.cache.step_plan import StepPlan, StepPlanner
from paged_kv.core.prefix_cache import PrefixCache
from paged_kv.core.sequence import SequenceRegistry
from paged_kv.core.validate import (
    cdiv,
    require_array,
    require_int,
    require_range,
    require_seq_ids,
)


class KVIO:
    """The write and read paths: checks, immutability, copy-on-write, auto-commit."""

    def __init__(
        self,
        backend: KVBackend,
        seqs: SequenceRegistry,
        plans: StepPlanner,
        prefix: PrefixCache,
    ) -> None:
        self._backend = backend
        self._seqs = seqs
        self._plans = plans
        self._prefix = prefix
        self._block_size = prefix.block_size

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
        `layer` at positions ``starts[i] ..`` (default: each one's last ``num_tokens[i]``),
        through a one-use plan (`paged_kv.cache.step_plan`) that is not uploaded: the
        slot mapping travels with this write.

        All or nothing: `MetadataOnlyError` without storage, `ValueError`
        (`ImmutableBlockError` for an immutable block) or `OutOfBlocksError` (no block to
        copy into) change nothing.
        """
        backend = self._backend
        layer = backend.check_layer(layer)  # metadata-only: MetadataOnlyError first
        k, v = backend.check_kv(require_array("k", k, device_ok=True),
                                require_array("v", v, device_ok=True))
        plan = self._plans.plan(seq_ids, num_tokens, starts, rows=len(k), upload=False)
        self._write(layer, plan, k, v)

    def write_planned(self, layer: object, plan: StepPlan, k: object, v: object) -> None:
        """Write rows of `k`, `v` of `layer` at the slots of `plan`, a current plan of
        this cache; the checks of `write` that depend on the layer run again."""
        plan = self._plans.check(plan)
        layer = self._backend.check_layer(layer)
        k, v = self._backend.check_kv(require_array("k", k, device_ok=True),
                                      require_array("v", v, device_ok=True))
        if len(k) != plan.total_tokens:
            raise ValueError(f"k has {len(k)} rows but the plan writes {plan.total_tokens} "
                             f"tokens")
        self._write(layer, plan, k, v)

    def _write(self, layer: int, plan: StepPlan, k: np.ndarray, v: np.ndarray) -> None:
        """The write of a checked plan, its immutability check, and the bookkeeping."""
        self._plans.check_writable(plan)
        if plan.device is None:
            self._backend.write(layer, k, v, plan.slot_mapping)
        else:
            self._backend.write_step(layer, k, v, plan.device)
        commit = self._prefix.commit
        get = self._seqs.get
        for seq_id, s, c in zip(plan.seq_ids, plan.starts, plan.num_tokens):
            r = get(seq_id)
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
        records = [self._seqs.get(s) for s in require_seq_ids(seq_ids)]
        n = len(records)
        for name, given in (("starts", starts), ("ends", ends)):
            if given is not None and not isinstance(given, (Sequence, np.ndarray)):
                raise ValueError(f"{name} must be a sequence of positions, got {given!r}")
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
