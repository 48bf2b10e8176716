"""Reference attention over the paged KV cache (NumPy, for checking, not for speed).

The paged functions read K and V *through the manager* (`PagedKVCache.read_kv` /
`read_kv_batch`, i.e. the gather kernel), so comparing their output with
`dense_attention` over KV the caller kept itself checks the whole path: slot writes,
block tables, fork, copy-on-write and gather.

Grouped-query attention: ``q_heads`` query heads share ``num_kv_heads`` KV heads, each
KV head serving ``group = q_heads // num_kv_heads`` consecutive query heads::

    query head h  ->  KV head h // group        (h = kv_head * group + g)

Causal masking works in absolute positions. Query row ``i`` stands at position
``q_offset + i`` and attends to key positions ``0 .. q_offset + i``::

    keys      0 1 2 3 4 5 6
    q_offset=4, 3 queries:
    query 0   x x x x x . .      (position 4)
    query 1   x x x x x x .      (position 5)
    query 2   x x x x x x x      (position 6)

Everything is computed in float64 whatever the pool dtype (float16 KV is widened, never
rounded further); results are float32. The softmax subtracts each row's maximum
before exponentiating, so large scores do not overflow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from paged_kv.cache.attention_args import (
    as_3d,
    check_cache,
    check_query,
    decode_plan,
    plan_rows,
    prefill_plan,
    query_start,
)
from paged_kv.cache.step_plan import StepPlan
from paged_kv.core.validate import require_seq_id, require_seq_ids

if TYPE_CHECKING:
    from paged_kv.cache.manager import PagedKVCache

__all__ = ["attend", "decode", "dense_attention", "prefill"]


def _default_scale(head_dim: int, scale: float | None) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating)):
        raise ValueError(f"scale must be a number, got {scale!r}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale!r}")
    return float(scale)


def dense_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    *,
    causal: bool = True,
    q_offset: int | None = None,
    scale: float | None = None,
) -> np.ndarray:
    """Softmax attention of `q` over contiguous `k`, `v`, with grouped-query heads.

    Parameters
    ----------
    q:
        ``[num_q_tokens, q_heads, head_dim]``.
    k, v:
        ``[num_kv_tokens, kv_heads, head_dim]``; ``q_heads`` must be a multiple of
        ``kv_heads``. Key row ``j`` is position ``j``.
    causal:
        Mask keys after each query's own position (see the module docstring).
    q_offset:
        Position of query row 0. The default, ``num_kv_tokens - num_q_tokens``, puts the
        queries on the last positions: a whole-sequence prefill (offset 0) and a decode
        step (one query at the last position) both need no argument. Only meaningful
        with ``causal=True``.
    scale:
        Multiplies ``q . k``; default ``1 / sqrt(head_dim)``.

    Returns
    -------
    ``[num_q_tokens, q_heads, head_dim]`` float32.
    """
    q = as_3d("q", q, "num_q_tokens, q_heads, head_dim")
    k = as_3d("k", k, "num_kv_tokens, kv_heads, head_dim")
    v = as_3d("v", v, "num_kv_tokens, kv_heads, head_dim")
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {k.shape} vs {v.shape}")
    num_q, q_heads, head_dim = q.shape
    num_kv, kv_heads, kv_dim = k.shape
    if kv_dim != head_dim:
        raise ValueError(f"q has head_dim {head_dim} but k and v have {kv_dim}")
    if kv_heads == 0 or q_heads == 0 or q_heads % kv_heads:
        raise ValueError(
            f"q_heads={q_heads} must be a positive multiple of kv_heads={kv_heads}"
        )
    if head_dim == 0:
        raise ValueError("head_dim must be positive, got 0")
    scale = _default_scale(head_dim, scale)
    if q_offset is None:
        q_offset = num_kv - num_q
    elif isinstance(q_offset, bool) or not isinstance(q_offset, (int, np.integer)):
        raise ValueError(f"q_offset must be an integer, got {q_offset!r}")
    q_offset = int(q_offset)
    if num_q == 0:
        return np.zeros((0, q_heads, head_dim), dtype=np.float32)
    if num_kv == 0:
        raise ValueError(f"{num_q} queries but no keys to attend to")
    if causal and not 0 <= q_offset <= num_kv - num_q:
        raise ValueError(
            f"causal queries at positions {q_offset}..{q_offset + num_q - 1} need keys "
            f"up to that position, but there are {num_kv} keys (positions 0..{num_kv - 1})"
        )

    group = q_heads // kv_heads
    qg = q.astype(np.float64).reshape(num_q, kv_heads, group, head_dim)
    k64 = k.astype(np.float64)
    v64 = v.astype(np.float64)
    # scores[kv_head, g, query, key]
    scores = np.einsum("tkgd,skd->kgts", qg, k64) * scale
    if causal:
        q_pos = q_offset + np.arange(num_q)
        masked = np.arange(num_kv)[None, :] > q_pos[:, None]  # [query, key]
        scores = np.where(masked, -np.inf, scores)
    # every row keeps key 0 unmasked, so the row maximum is finite
    scores -= scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    out = np.einsum("kgts,skd->tkgd", weights, v64)
    return out.reshape(num_q, q_heads, head_dim).astype(np.float32)


def prefill(
    cache: PagedKVCache,
    layer: int,
    seq_id: int | StepPlan,
    q: np.ndarray,
    *,
    q_start: int | None = None,
    causal: bool = True,
    scale: float | None = None,
) -> np.ndarray:
    """Attention of one sequence's queries over its KV in the paged cache.

    `q` is ``[num_q_tokens, q_heads, head_dim]`` for positions ``q_start ..
    q_start + num_q_tokens - 1`` (default: the sequence's last positions). With
    ``causal=True`` (prefill) only positions ``0 .. q_start + num_q_tokens - 1`` are
    read; with ``causal=False`` every query sees every stored token. The KV comes from
    ``cache.read_kv`` (the gather kernel). Returns float32 ``[num_q_tokens, q_heads,
    head_dim]``. `seq_id` may be a plan of one sequence (`PagedKVCache.plan_step`), whose
    new tokens are the queries, as in `paged_kv.cache.attention.prefill`.
    """
    check_cache(cache)
    q = check_query(cache, q, "num_q_tokens")
    if isinstance(seq_id, StepPlan):
        seq_id, q_start = prefill_plan(cache, seq_id, q.shape[0], q_start)
    seq_id = require_seq_id(seq_id)
    q_start = query_start(cache, seq_id, q.shape[0], q_start)
    end = q_start + q.shape[0] if causal else cache.num_tokens(seq_id)
    k, v = cache.read_kv(seq_id, layer, end=end)
    return dense_attention(q, k, v, causal=causal, q_offset=q_start, scale=scale)


def decode(
    cache: PagedKVCache,
    layer: int,
    seq_ids: Sequence[int] | StepPlan,
    q: np.ndarray,
    *,
    scale: float | None = None,
) -> np.ndarray:
    """One decode step for a batch: query row i, at sequence i's last position, attends to
    all of sequence i's tokens.

    `q` is ``[len(seq_ids), q_heads, head_dim]``. The KV of every sequence is read with
    one ``cache.read_kv_batch`` (one gather launch). Returns float32
    ``[len(seq_ids), q_heads, head_dim]``. `seq_ids` may be a decode plan
    (`PagedKVCache.plan_step`), as in `paged_kv.cache.attention.decode`: its sequences.
    """
    check_cache(cache)
    q = check_query(cache, q, "num_seqs")
    if isinstance(seq_ids, StepPlan):
        seq_ids = decode_plan(cache, seq_ids, q.shape[0]).seq_ids
    seq_ids = require_seq_ids(seq_ids)
    if q.shape[0] != len(seq_ids):
        raise ValueError(f"q has {q.shape[0]} rows for {len(seq_ids)} sequences")
    model = cache.model
    out = np.zeros((len(seq_ids), model.q_heads, model.head_dim), dtype=np.float32)
    if not seq_ids:
        return out
    for seq_id in seq_ids:
        if cache.num_tokens(seq_id) == 0:
            raise ValueError(f"sequence {seq_id} stores no tokens to attend to")
    k, v, cu = cache.read_kv_batch(layer, seq_ids)
    for i in range(len(seq_ids)):
        lo, hi = int(cu[i]), int(cu[i + 1])
        out[i] = dense_attention(q[i : i + 1], k[lo:hi], v[lo:hi], causal=False, scale=scale)[0]
    return out


def attend(
    cache: PagedKVCache,
    layer: int,
    plan: StepPlan,
    q: np.ndarray,
    *,
    scale: float | None = None,
) -> np.ndarray:
    """Causal attention of every new token of a step plan: row ``r`` of `q`, the plan's
    token ``j`` of sequence ``i`` at position ``starts[i] + j``, attends to that
    sequence's positions ``0 .. starts[i] + j`` (as `paged_kv.cache.attention.attend`).
    The KV of every sequence is read with one ``cache.read_kv_batch``. Returns float32
    ``[total_tokens, q_heads, head_dim]``.
    """
    check_cache(cache)
    q = check_query(cache, q, "num_tokens")
    plan = plan_rows(cache, plan, q.shape[0])
    model = cache.model
    out = np.zeros((q.shape[0], model.q_heads, model.head_dim), dtype=np.float32)
    ends = [s + c for s, c in zip(plan.starts, plan.num_tokens)]
    k, v, cu = cache.read_kv_batch(layer, plan.seq_ids, ends=ends)
    row = 0
    for i, (start, count) in enumerate(zip(plan.starts, plan.num_tokens)):
        if count:
            lo, hi = int(cu[i]), int(cu[i + 1])
            out[row:row + count] = dense_attention(q[row:row + count], k[lo:hi], v[lo:hi],
                                                   q_offset=start, scale=scale)
        row += count
    return out
