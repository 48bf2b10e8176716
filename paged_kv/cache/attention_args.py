"""Arguments of attention over a cache's sequences, checked one way for both forms.

The NumPy reference (`paged_kv.reference.attention`) and the device kernels
(`paged_kv.cache.attention`) take the same queries of the same sequences; these checks
refuse the same misuse with the same words in both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from paged_kv.cache.step_plan import StepPlan
from paged_kv.core.errors import MetadataOnlyError
from paged_kv.core.validate import require_array

if TYPE_CHECKING:
    from paged_kv.cache.manager import PagedKVCache


def as_3d(name: str, arr: np.ndarray, dims: str) -> np.ndarray:
    """`arr` as a 3-D array of real numbers, or `ValueError` naming it and its `dims`."""
    arr = require_array(name, arr)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be 3-D [{dims}], got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr


def check_cache(cache: PagedKVCache) -> None:
    """Refuse a metadata-only cache (`MetadataOnlyError`): there is no KV to attend to."""
    if cache.storage is None or cache.model is None:
        raise MetadataOnlyError(
            "paged attention needs a cache with storage (a model and storage=True)"
        )


def check_query(cache: PagedKVCache, q: np.ndarray, what: str) -> np.ndarray:
    """`q` as a 3-D array ``[what, q_heads, head_dim]`` of the cache's model, or
    `ValueError`."""
    model = cache.model
    q = as_3d("q", q, f"{what}, q_heads, head_dim")
    if q.shape[1:] != (model.q_heads, model.head_dim):
        raise ValueError(
            f"q must have shape [{what}, {model.q_heads}, {model.head_dim}] for model "
            f"{model.name!r} (q_heads={model.q_heads}, head_dim={model.head_dim}), "
            f"got {q.shape}"
        )
    return q


def query_start(cache: PagedKVCache, seq_id: int, num_q: int, q_start: int | None) -> int:
    """The position of the first of `num_q` queries of `seq_id` (default: they are its
    last positions), or `ValueError` when they do not fit its stored tokens."""
    num_tokens = cache.num_tokens(seq_id)
    if q_start is None:
        q_start = num_tokens - num_q
    elif isinstance(q_start, bool) or not isinstance(q_start, (int, np.integer)):
        raise ValueError(f"q_start must be an integer, got {q_start!r}")
    q_start = int(q_start)
    if not 0 <= q_start <= num_tokens - num_q:
        raise ValueError(
            f"{num_q} queries from position {q_start} do not fit sequence {seq_id}'s "
            f"{num_tokens} stored tokens (write their KV first)"
        )
    return q_start


def decode_plan(cache: PagedKVCache, plan: StepPlan, num_q: int) -> StepPlan:
    """`plan` checked for a decode step of `num_q` query rows: current (else
    `ValueError`, `PagedKVCache.check_plan`), one row per sequence, and each sequence's
    one new token at its last position."""
    cache.check_plan(plan)
    if num_q != plan.batch_size:
        raise ValueError(f"q has {num_q} rows for {plan.batch_size} sequences")
    if not plan.is_decode:
        raise ValueError(
            "decode takes a plan of one new token per sequence at its last position "
            f"(plan_step(seq_ids) after appending); this one has num_tokens "
            f"{list(plan.num_tokens)} from positions {list(plan.starts)}"
        )
    return plan


def prefill_plan(cache: PagedKVCache, plan: StepPlan, num_q: int,
                 q_start: int | None) -> tuple[int, int]:
    """``(seq_id, q_start)`` of a prefill over a plan of one sequence whose new tokens
    are the `num_q` queries; `ValueError` for a stale plan, another shape, or a
    `q_start` (the plan fixes it)."""
    cache.check_plan(plan)
    if q_start is not None:
        raise ValueError("a plan fixes the query positions: pass no q_start")
    if plan.batch_size != 1:
        raise ValueError(f"prefill takes a plan of one sequence, got {plan.batch_size}")
    if num_q != plan.num_tokens[0]:
        raise ValueError(f"q has {num_q} rows for the plan's {plan.num_tokens[0]} new tokens")
    return plan.seq_ids[0], plan.starts[0]


def plan_rows(cache: PagedKVCache, plan: StepPlan, num_q: int) -> StepPlan:
    """`plan` checked for attention of each of its new tokens: current (else
    `ValueError`), and `num_q` equal to its token count."""
    cache.check_plan(plan)
    if num_q != plan.total_tokens:
        raise ValueError(f"q has {num_q} rows for the plan's {plan.total_tokens} new tokens")
    return plan
