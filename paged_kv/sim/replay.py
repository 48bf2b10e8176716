"""Prefix-cache trace replay: how many prompt tokens a cache of a given size serves.

`replay` drives the real `PagedKVCache` in metadata-only mode with a trace whose
requests carry precomputed block keys (Mooncake ``hash_ids`` over 512-token blocks).
Requests are taken one at a time in file order: allocate the prompt (reusing its
longest cached prefix, capped so its last token is computed), commit it (the prompt is
computed, so its full blocks are published), free it. So the cache holds nothing but
evictable cached blocks between requests, and the capacity in blocks and the eviction
policy alone decide what is still cached: the setting of the Mooncake report's Table 1.

A request's hit is its longest cached prefix in tokens; the hit rate is token-weighted,
``sum(hit tokens) / sum(prompt tokens)``, where a partial last block weighs its real
token count (it is never cached, so it only ever adds to the denominator).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm import tqdm

from paged_kv.cache import PagedKVCache
from paged_kv.config import CacheConfig
from paged_kv.eviction import policy_names
from paged_kv.eviction.belady import BeladyPolicy
from paged_kv.sim.request import Workload
from paged_kv.sim.traces import load_trace


@dataclass
class ReplayResult:
    """What one replay measured."""

    #: trace name
    trace: str
    #: eviction policy name
    policy: str
    #: capacity in blocks (None: unbounded)
    capacity: int | None
    #: tokens per block
    block_size: int
    #: token-weighted hit rate over the measured requests
    hit_rate: float
    #: per-request rows: request_id, prompt_len, num_blocks, hit_blocks, hit_tokens, measured
    requests: pd.DataFrame = field(repr=False)
    #: cached blocks evicted during the whole replay
    evictions: int = 0
    #: leading requests left out of the measurement
    warmup_requests: int = 0

    @property
    def block_hit_rate(self) -> float:
        """Hit blocks over prompt blocks (partial ones included) of the measured requests."""
        measured = self.requests[self.requests["measured"]]
        total = measured["num_blocks"].sum()
        return float(measured["hit_blocks"].sum() / total) if total else 0.0

    def summary(self) -> dict[str, object]:
        """One row for a sweep table."""
        return {
            "trace": self.trace,
            "policy": self.policy,
            "capacity": self.capacity,
            "hit_rate": self.hit_rate,
            "block_hit_rate": self.block_hit_rate,
            "evictions": self.evictions,
            "requests": int(self.requests["measured"].sum()),
        }


def _workload(trace: str | Workload) -> Workload:
    workload = load_trace(trace) if isinstance(trace, str) else trace
    if not isinstance(workload, Workload):
        raise ValueError(f"trace must be a trace name or a Workload, got {trace!r}")
    return workload


def unbounded_capacity(workload: Workload) -> int:
    """A capacity at which nothing is ever evicted: every distinct key plus one request."""
    keys: set = set()
    longest = 0
    for request in workload:
        if request.block_keys is None:
            raise ValueError(f"request {request.request_id} has no block keys to replay")
        keys.update(request.block_keys)
        longest = max(longest, len(request.block_keys))
    return len(keys) + longest


def replay(
    trace: str | Workload,
    capacity: int | None,
    policy: str = "lru",
    *,
    warmup: float = 0.0,
    progress: bool = False,
) -> ReplayResult:
    """Replay `trace` through a metadata-only cache of `capacity` blocks.

    Parameters
    ----------
    trace:
        A shipped trace name (``"mooncake-conversation"``, ``"mooncake-synthetic"``) or a
        `Workload` whose requests carry `block_keys`.
    capacity:
        GPU blocks of the trace's key block size (512 tokens for Mooncake); None for
        unbounded (nothing is ever evicted).
    policy:
        An eviction policy name (see `paged_kv.eviction.policy_names`), including
        ``"belady"``, the offline optimum, which this function feeds the future.
    warmup:
        Fraction of leading requests replayed but left out of the hit rate.
    progress:
        Show a progress bar.
    """
    workload = _workload(trace)
    if not isinstance(warmup, (int, float)) or not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup must be a fraction in [0, 1), got {warmup!r}")
    if not isinstance(policy, str) or policy.lower() not in policy_names():
        raise ValueError(
            f"unknown eviction policy {policy!r}; valid names: {', '.join(policy_names())}"
        )
    policy = policy.lower()
    requests = list(workload)
    if not requests:
        raise ValueError("the trace has no requests")
    block_size = requests[0].key_block_size
    if block_size is None or any(r.key_block_size != block_size for r in requests):
        sizes = sorted({str(r.key_block_size) for r in requests})
        raise ValueError(
            f"every request needs block keys over one common key_block_size, got {sizes}"
        )
    if capacity is None:
        capacity = unbounded_capacity(workload)
        label = None
    else:
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)):
            raise ValueError(f"capacity must be a positive integer or None, got {capacity!r}")
        longest = max(len(r.block_keys) for r in requests)
        if capacity < longest:
            raise ValueError(
                f"capacity {capacity} is smaller than the longest request ({longest} blocks)"
            )
        label = capacity = int(capacity)

    belady = None
    if policy == "belady":
        belady = BeladyPolicy([k for r in requests for k in r.block_keys])
    config = CacheConfig(
        block_size=block_size,
        num_gpu_blocks=capacity,
        enable_prefix_caching=True,
        eviction_policy=policy,
    )
    cache = PagedKVCache(config, policy=belady)

    hit_tokens = []
    allocate, commit, free = cache.allocate, cache.commit, cache.free
    cached = cache.num_cached_tokens
    position = 0
    iterator = tqdm(requests, desc=f"{policy} @ {label or 'unbounded'}", disable=not progress,
                    leave=False)
    for request in iterator:
        keys = request.block_keys
        if belady is not None:
            belady.advance(position)
            position += len(keys)
        seq = allocate(request.prompt_len, block_keys=keys)
        commit(seq)
        hit_tokens.append(cached(seq))
        free(seq)

    first = int(warmup * len(requests))
    frame = pd.DataFrame(
        {
            "request_id": [r.request_id for r in requests],
            "prompt_len": [r.prompt_len for r in requests],
            "num_blocks": [len(r.block_keys) for r in requests],
            "hit_blocks": np.array(hit_tokens, dtype=np.int64) // block_size,
            "hit_tokens": np.array(hit_tokens, dtype=np.int64),
        }
    )
    frame["measured"] = np.arange(len(frame)) >= first
    measured = frame[frame["measured"]]
    return ReplayResult(
        trace=workload.name,
        policy=policy,
        capacity=label,
        block_size=block_size,
        hit_rate=float(measured["hit_tokens"].sum() / measured["prompt_len"].sum()),
        requests=frame,
        evictions=cache.stats().prefix_evictions,
        warmup_requests=first,
    )


def sweep(
    trace: str | Workload,
    capacities: Iterable[int | None],
    policies: Sequence[str] | None = None,
    *,
    warmup: float = 0.0,
    progress: bool = True,
) -> pd.DataFrame:
    """Replay `trace` at every capacity with every policy; one summary row per run.

    `policies` defaults to every registered policy, Belady included. A progress bar
    counts the runs.
    """
    workload = _workload(trace)
    policies = list(policy_names()) if policies is None else list(policies)
    capacities = list(capacities)  # iterated once per policy
    runs = [(p, c) for p in policies for c in capacities]
    rows = []
    for policy, capacity in tqdm(runs, desc=f"replay {workload.name}", disable=not progress):
        rows.append(replay(workload, capacity, policy, warmup=warmup).summary())
    return pd.DataFrame(rows)
