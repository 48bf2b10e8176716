"""Prefix-cache trace replay: how many prompt tokens a cache of a given size serves.

`replay` drives the real `PagedKVCache` in metadata-only mode with a trace whose
requests carry precomputed block keys (Mooncake ``hash_ids`` over 512-token blocks).
Requests are taken one at a time in file order: allocate the prompt (reusing its
longest cached prefix, capped so its last token is computed), commit it (the prompt is
computed, so its full blocks are published), free it (tail first). So the cache holds
nothing but evictable cached blocks between requests, and the capacity in blocks and the
eviction policy alone decide what is still cached: the setting of the Mooncake report's
Table 1 and of the FAST'25 paper's Fig. 9 ("we consider only the sequence of requests").

A request's hit is its longest cached prefix in tokens; the hit rate is token-weighted,
``sum(hit tokens) / sum(prompt tokens)``, where a partial last block weighs its real
token count (it is never cached, so it only ever adds to the denominator).

**Any capacity.** A prompt of ``n`` tokens needs ``ceil(n / block_size)`` blocks while
it is computed. When that exceeds the capacity ``C``, the request is replayed as its
first ``C * block_size`` tokens (its first ``C`` block keys): the cache serves and then
keeps what fits, under the same rules as any prompt (so the last block that fits is
recomputed, and at most ``C - 1`` blocks hit); the rest of the prompt is computed
without being cached and counts as missed tokens. The compiled engine
(`paged_kv.sim.replay_compiled`) applies the same rule. This lets the FAST'25 paper's
small capacities (Fig. 9 starts at 10^4 tokens, about 20 blocks) be run.

This manager replay is the reference path; `paged_kv.sim.replay_compiled` reproduces
its per-request hits exactly and is what `paged_kv.sim.replay_sweep.sweep` runs by
default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from paged_kv.cache import PagedKVCache
from paged_kv.core.config import CacheConfig
from paged_kv.core.eviction import EvictionPolicy, policy_names
from paged_kv.core.eviction.belady import BeladyPolicy
from paged_kv.core.eviction.length_aware import LengthAwarePolicy
from paged_kv.core.validate import cdiv, is_int
from paged_kv.sim.request import Request, Workload
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

    @classmethod
    def from_hits(
        cls,
        *,
        trace: str,
        policy: str,
        capacity: int | None,
        block_size: int,
        request_ids: Sequence[int],
        prompt_lens: Sequence[int],
        num_blocks: Sequence[int],
        hit_blocks: Sequence[int],
        evictions: int,
        warmup: float,
    ) -> ReplayResult:
        """The result of a replay that found `hit_blocks` per request (either engine)."""
        hit_blocks = np.asarray(hit_blocks, dtype=np.int64)
        frame = pd.DataFrame({
            "request_id": np.asarray(request_ids, dtype=np.int64),
            "prompt_len": np.asarray(prompt_lens, dtype=np.int64),
            "num_blocks": np.asarray(num_blocks, dtype=np.int64),
            "hit_blocks": hit_blocks,
            "hit_tokens": hit_blocks * block_size,
        })
        first = int(warmup * len(frame))
        frame["measured"] = np.arange(len(frame)) >= first
        measured = frame[frame["measured"]]
        return cls(
            trace=trace,
            policy=policy,
            capacity=capacity,
            block_size=block_size,
            hit_rate=float(measured["hit_tokens"].sum() / measured["prompt_len"].sum()),
            requests=frame,
            evictions=int(evictions),
            warmup_requests=first,
        )

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


# --- argument checks shared with the compiled engine -------------------------------

def check_policy(policy: object) -> str:
    """The lower-cased policy name, or ValueError listing the valid ones."""
    if not isinstance(policy, str) or policy.lower() not in policy_names():
        raise ValueError(
            f"unknown eviction policy {policy!r}; valid names: {', '.join(policy_names())}"
        )
    return policy.lower()


def check_warmup(warmup: object) -> float:
    """`warmup` if it is a fraction in [0, 1), else ValueError."""
    if isinstance(warmup, bool) or not isinstance(warmup, (int, float)) \
            or not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup must be a fraction in [0, 1), got {warmup!r}")
    return float(warmup)


def check_capacity(capacity: object) -> int | None:
    """`capacity` as an int in ``[1, 2**63 - 1]`` (what the results' int64 column holds),
    or None (unbounded); ValueError otherwise."""
    if capacity is None:
        return None
    if not is_int(capacity) or not 1 <= capacity <= 2**63 - 1:
        raise ValueError(f"capacity must be an integer in [1, 2**63 - 1] or None, got "
                         f"{capacity!r}")
    return int(capacity)


def served_prompt(request: Request, capacity: int) -> tuple[int, tuple]:
    """The prompt length and block keys the cache sees at `capacity` blocks.

    The whole prompt when it fits; else its first ``capacity * block_size`` tokens and
    first ``capacity`` keys (see the module docstring).
    """
    n, keys, bs = request.prompt_len, request.block_keys, request.key_block_size
    if cdiv(n, bs) <= capacity:
        return n, keys
    return capacity * bs, keys[:capacity]


def _workload(trace: str | Workload) -> Workload:
    workload = load_trace(trace) if isinstance(trace, str) else trace
    if not isinstance(workload, Workload):
        raise ValueError(f"trace must be a trace name, a path or a Workload, got {trace!r}")
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


def key_depths(requests: Sequence[Request]) -> dict:
    """Each key's block index in the first request that holds it (LengthAware's depth)."""
    depths: dict = {}
    for request in requests:
        for index, key in enumerate(request.block_keys):
            depths.setdefault(key, index)
    return depths


def _policy_instance(policy: str, requests: Sequence[Request]) -> EvictionPolicy | None:
    """The instance for the policies that cannot be built from a name (else None)."""
    if policy == "belady":
        return BeladyPolicy([k for r in requests for k in r.block_keys])
    if policy == "length_aware":
        return LengthAwarePolicy(key_depths(requests))
    return None


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
        A shipped trace name (``"mooncake-conversation"``, ``"mooncake-synthetic"``), a
        trace file's path (see `paged_kv.sim.traces.load_trace`), or a `Workload` whose
        requests carry `block_keys`.
    capacity:
        GPU blocks of the trace's key block size (512 tokens for Mooncake), any positive
        number (a prompt longer than the cache caches what fits, see the module
        docstring); None for unbounded (nothing is ever evicted).
    policy:
        An eviction policy name (see `paged_kv.core.eviction.policy_names`), including
        ``"belady"``, the offline optimum, which this function feeds the future, and
        ``"length_aware"``, which it tells each key's depth.
    warmup:
        Fraction of leading requests replayed but left out of the hit rate.
    progress:
        Show a progress bar.
    """
    workload = _workload(trace)
    check_warmup(warmup)
    policy = check_policy(policy)
    label = check_capacity(capacity)
    requests = list(workload)
    if not requests:
        raise ValueError("the trace has no requests")
    block_size = requests[0].key_block_size
    if block_size is None or any(r.key_block_size != block_size for r in requests):
        sizes = sorted({str(r.key_block_size) for r in requests})
        raise ValueError(
            f"every request needs block keys over one common key_block_size, got {sizes}"
        )
    # past the unbounded capacity nothing is evicted: run there (a pool of 10**20 blocks
    # gives the same hits, and would not fit in memory)
    unbounded = unbounded_capacity(workload)
    capacity = unbounded if label is None else min(label, unbounded)

    instance = _policy_instance(policy, requests)
    belady = instance if isinstance(instance, BeladyPolicy) else None
    config = CacheConfig(
        block_size=block_size,
        num_gpu_blocks=capacity,
        enable_prefix_caching=True,
        eviction_policy=policy,
    )
    cache = PagedKVCache(config, policy=instance)

    hit_blocks = []
    allocate, commit, free = cache.allocate, cache.commit, cache.free
    cached = cache.num_cached_tokens
    position = 0
    iterator = tqdm(requests, desc=f"{policy} @ {label or 'unbounded'}", disable=not progress,
                    leave=False)
    for request in iterator:
        if belady is not None:
            belady.advance(position)
            position += len(request.block_keys)
        n, keys = served_prompt(request, capacity)
        seq = allocate(n, block_keys=keys)
        commit(seq)
        hit_blocks.append(cached(seq) // block_size)
        free(seq)

    return ReplayResult.from_hits(
        trace=workload.name,
        policy=policy,
        capacity=label,
        block_size=block_size,
        request_ids=[r.request_id for r in requests],
        prompt_lens=[r.prompt_len for r in requests],
        num_blocks=[len(r.block_keys) for r in requests],
        hit_blocks=hit_blocks,
        evictions=cache.stats().prefix_evictions,
        warmup=warmup,
    )
