"""Paged attention on the device, for sequences of a `PagedKVCache`.

The same computations as the NumPy references in `paged_kv.reference.attention`, but K and V
never leave the pool: the kernels of `paged_kv.gpu.kernels.paged_attention` read them
through each sequence's block table, on the GPU (or in the CUDA simulator)::

    out = decode(cache, layer, seq_ids, q)            # one new token per sequence
    out = prefill(cache, layer, seq_id, q, q_start=p) # new tokens p.. over a cached prefix

    plan = cache.plan_step(seq_ids)                   # once per step, for every layer:
    out = decode(cache, layer, plan, q)               # no index upload per layer
    out = attend(cache, layer, plan, q)               # any plan: every new token, causal

Write the new tokens' K/V first (`PagedKVCache.write_kv`): a query attends to its own
position. With a step plan (`PagedKVCache.plan_step`, `paged_kv.cache.step_plan`) in
place of the sequence ids, the block tables and the kernel's query tiles were uploaded
when the plan was made, and each layer's launch reuses them; a stale plan is refused
with `ValueError`. Both return float32 NumPy arrays ``[num_queries, q_heads, head_dim]`` and
take ``stream=None`` (the default stream); the call waits for its result.

A cache whose model stores quantized KV (``ModelSpec.kv_dtype`` int8 or FP8) is read
in its codes, with ``cache.storage.gpu_scales``: the result is attention over the
dequantized K/V in float32 (`PagedKVCache.read_kv` returns them rounded to the model's
dtype).

The cache is used only through its public surface: ``cache.storage`` (``gpu_pool``,
``gpu_scales``, ``buffers`` and ``access``, which fences the launch against work on other
streams that writes the blocks it reads), ``cache.model`` (``q_heads``, ``head_dim``),
``cache.get(seq_id)`` (``block_table``, ``location``), ``cache.num_tokens(seq_id)`` and
``cache.check_plan``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from paged_kv.cache.attention_args import (
    check_cache,
    check_query,
    decode_plan,
    plan_rows,
    prefill_plan,
    query_start,
)
from paged_kv.cache.step_plan import StepPlan
from paged_kv.core.errors import SequenceStateError
from paged_kv.core.validate import require_seq_id, require_seq_ids
from paged_kv.gpu.fences import to_host
from paged_kv.gpu.kernels.paged_attention import (
    decode_attention,
    planned_attention,
    prefill_attention,
)

if TYPE_CHECKING:
    from paged_kv.cache.manager import PagedKVCache

__all__ = ["attend", "decode", "prefill"]

_ON_GPU = "gpu"  # SequenceInfo.location of a sequence whose blocks are in the GPU pool


def _block_table(cache: PagedKVCache, seq_id: int) -> tuple[int, ...]:
    """`seq_id`'s block table; refused unless its blocks are in the GPU pool."""
    info = cache.get(seq_id)
    if info.location != _ON_GPU:
        raise SequenceStateError(
            f"sequence {seq_id} is on the {info.location} pool; attention reads the GPU "
            f"pool (swap_in first)"
        )
    return info.block_table


def _planned(cache: PagedKVCache, layer: int, plan: StepPlan, q: np.ndarray,
             scale: float | None, stream: Any) -> np.ndarray:
    """Attention of a checked plan's query rows through its uploaded tables and tiles."""
    if plan.device is None:
        raise ValueError("this plan was not uploaded (PagedKVCache.plan_step uploads)")
    storage, step = cache.storage, plan.device
    storage.after_default_stream(stream)  # the plan's indices were uploaded there
    with storage.access(stream, gpu_reads=step.read_blocks):
        out = planned_attention(storage.gpu_pool, layer, q, step.block_tables, step.tiles,
                                scale=scale, kv_scales=storage.gpu_scales, stream=stream,
                                buffers=storage.buffers)
    return to_host(out, stream)


def decode(
    cache: PagedKVCache,
    layer: int,
    seq_ids: Sequence[int] | StepPlan,
    q: np.ndarray,
    *,
    scale: float | None = None,
    stream: Any = None,
) -> np.ndarray:
    """One decode step for a batch, on the device: query row ``i``, at sequence
    ``seq_ids[i]``'s last position, attends to all of that sequence's stored tokens.

    `q` is ``[len(seq_ids), q_heads, head_dim]`` (any float dtype); `scale` defaults to
    ``1 / sqrt(head_dim)``. Returns float32 ``[len(seq_ids), q_heads, head_dim]``, the
    result `paged_kv.reference.attention.decode` computes on the host.

    `seq_ids` may be a decode plan (`PagedKVCache.plan_step` with one new token per
    sequence): its sequences, with the tables and tiles it uploaded.

    Raises `MetadataOnlyError` without storage, `UnknownSequenceError` for a freed id,
    `SequenceStateError` for a swapped-out one, and `ValueError` for a q of another
    shape, a sequence named twice or one that stores no token yet, a bad layer or scale,
    and a plan that is stale or not a decode step's.
    """
    check_cache(cache)
    if isinstance(seq_ids, StepPlan):
        q = check_query(cache, q, "num_seqs")
        plan = decode_plan(cache, seq_ids, q.shape[0])
        return _planned(cache, layer, plan, q, scale, stream)
    seq_ids = require_seq_ids(seq_ids)
    q = check_query(cache, q, "num_seqs")
    if q.shape[0] != len(seq_ids):
        raise ValueError(f"q has {q.shape[0]} rows for {len(seq_ids)} sequences")
    if len(set(seq_ids)) != len(seq_ids):
        raise ValueError("a sequence appears twice in one decode batch")
    tables = [list(_block_table(cache, s)) for s in seq_ids]
    lens = np.array([cache.num_tokens(s) for s in seq_ids], dtype=np.int64)
    for seq_id, length in zip(seq_ids, lens):
        if length == 0:
            raise ValueError(f"sequence {seq_id} stores no tokens to attend to")
    storage = cache.storage
    with storage.access(stream, gpu_reads=[b for table in tables for b in table]):
        out = decode_attention(storage.gpu_pool, layer, q, tables, lens, scale=scale,
                               kv_scales=storage.gpu_scales, stream=stream,
                               buffers=storage.buffers)
    return to_host(out, stream)


def prefill(
    cache: PagedKVCache,
    layer: int,
    seq_id: int | StepPlan,
    q: np.ndarray,
    *,
    q_start: int | None = None,
    scale: float | None = None,
    stream: Any = None,
) -> np.ndarray:
    """Causal attention of one sequence's new tokens over its cached prefix and
    themselves, on the device.

    `q` is ``[n, q_heads, head_dim]`` for positions ``q_start .. q_start + n - 1``
    (default: the sequence's last ``n`` positions); row ``i`` attends to positions
    ``0 .. q_start + i``, all of which must be stored (the prefix served by the prefix
    cache or written earlier, the new tokens written with `PagedKVCache.write_kv`).
    Returns float32 ``[n, q_heads, head_dim]``, what
    `paged_kv.reference.attention.prefill` computes on the host.

    `seq_id` may be a plan of one sequence (`PagedKVCache.plan_step`): its new tokens
    are the queries (so `q_start` is not given), through the table and tiles it
    uploaded.

    Raises as `decode` does, and `ValueError` when the queries do not fit the
    sequence's stored tokens.
    """
    check_cache(cache)
    q = check_query(cache, q, "num_q_tokens")
    if isinstance(seq_id, StepPlan):
        prefill_plan(cache, seq_id, q.shape[0], q_start)
        return _planned(cache, layer, seq_id, q, scale, stream)
    seq_id = require_seq_id(seq_id)
    table = _block_table(cache, seq_id)
    q_start = query_start(cache, seq_id, q.shape[0], q_start)
    storage = cache.storage
    with storage.access(stream, gpu_reads=table):
        out = prefill_attention(storage.gpu_pool, layer, q, list(table), q_start,
                                scale=scale, kv_scales=storage.gpu_scales, stream=stream,
                                buffers=storage.buffers)
    return to_host(out, stream)


def attend(
    cache: PagedKVCache,
    layer: int,
    plan: StepPlan,
    q: np.ndarray,
    *,
    scale: float | None = None,
    stream: Any = None,
) -> np.ndarray:
    """Causal attention of every new token of a step plan, in one launch, on the device.

    Row ``r`` of `q` is the plan's token ``r`` (sequence after sequence, as the rows of
    the plan's ``k`` and ``v``): token ``j`` of sequence ``i``, at position ``starts[i]
    + j``, attends to that sequence's positions ``0 .. starts[i] + j``. A decode plan
    makes this `decode`, a plan of one sequence `prefill`; a plan of several sequences
    with several new tokens each (a batch of prompts, or prompts and decode tokens
    together) runs them all in one launch per layer. Returns float32 ``[total_tokens,
    q_heads, head_dim]``, what `paged_kv.reference.attention.attend` computes on the
    host.

    Raises `MetadataOnlyError` without storage, and `ValueError` for a stale plan or a
    q of another shape, a bad layer or scale.
    """
    check_cache(cache)
    q = check_query(cache, q, "num_tokens")
    return _planned(cache, layer, plan_rows(cache, plan, q.shape[0]), q, scale, stream)
