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

**Tiers below the GPU.** With ``host_capacity`` and/or ``disk_capacity`` blocks, the
cache gets a host and/or a disk tier (`paged_kv.cache.tiers`), each with its own eviction
policy, filled by the ``placement`` policy. A request's hit is then the longest prefix
across tiers, each block from the fastest tier holding it; the per-request frame
splits the hit tokens by tier and counts the blocks moved each way (``loaded_host``,
``loaded_disk``: loaded into the GPU; ``stored_gpu_host``, ``stored_gpu_disk``,
``stored_host_disk``: copied down). The GPU capacity and its rule for long prompts are
unchanged. Metadata-only, tier loads never fail. Without tiers the extra columns are
zero (``gpu_hit_tokens == hit_tokens``) and every number is what it was.

This manager replay is the reference path; `paged_kv.sim.replay_compiled` reproduces
its per-request hits exactly and is what `paged_kv.sim.replay_sweep.sweep` runs by
default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from paged_kv.cache import PagedKVCache
from paged_kv.core.config import CacheConfig
from paged_kv.core.eviction import EvictionPolicy, policy_names
from paged_kv.core.eviction.belady import BeladyPolicy
from paged_kv.core.eviction.length_aware import LengthAwarePolicy
from paged_kv.core.tier import WRITE_THROUGH, require_placement, require_tier_policy
from paged_kv.core.validate import cdiv, is_int
from paged_kv.sim.request import Request, Workload
from paged_kv.sim.traces import load_trace

#: per-request block counts of a replay with tiers, beside ``hit_blocks`` (the frame
#: column of the same name; zero without tiers): blocks served by the host and the disk
#: tier, blocks loaded host -> GPU and disk -> GPU, and blocks copied GPU -> host,
#: GPU -> disk and host -> disk
TIER_COLUMNS = ("host_hit_blocks", "disk_hit_blocks", "loaded_host", "loaded_disk",
                "stored_gpu_host", "stored_gpu_disk", "stored_host_disk")


@dataclass(frozen=True)
class TierSetting:
    """The tiers below the GPU of one replay: capacities in blocks (0: no such tier),
    eviction policies, and the placement policy."""

    host_capacity: int = 0
    host_policy: str = "lru"
    disk_capacity: int = 0
    disk_policy: str = "lru"
    placement: str = WRITE_THROUGH

    def __post_init__(self) -> None:
        for tier in ("host", "disk"):
            capacity = getattr(self, f"{tier}_capacity")
            if not is_int(capacity) or capacity < 0:
                raise ValueError(f"{tier}_capacity must be an integer >= 0 (0: no {tier} "
                                 f"tier), got {capacity!r}")
            object.__setattr__(self, f"{tier}_capacity", int(capacity))
            policy = require_tier_policy(f"{tier}_policy", getattr(self, f"{tier}_policy"))
            object.__setattr__(self, f"{tier}_policy", policy)
        require_placement("placement", self.placement)

    @property
    def enabled(self) -> bool:
        """Whether any tier is configured."""
        return bool(self.host_capacity or self.disk_capacity)

    def cache_fields(self) -> dict[str, object]:
        """The `CacheConfig` fields for these tiers."""
        return dict(host_cache_blocks=self.host_capacity, host_cache_policy=self.host_policy,
                    disk_cache_blocks=self.disk_capacity, disk_cache_policy=self.disk_policy,
                    tier_placement=self.placement)


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
    #: per-request rows: request_id, prompt_len, num_blocks, hit_blocks, hit_tokens,
    #: gpu_hit_tokens, host_hit_tokens, disk_hit_tokens, miss_tokens, loaded_host,
    #: loaded_disk, stored_gpu_host, stored_gpu_disk, stored_host_disk, measured
    requests: pd.DataFrame = field(repr=False)
    #: cached GPU blocks evicted during the whole replay
    evictions: int = 0
    #: leading requests left out of the measurement
    warmup_requests: int = 0
    #: the tiers below the GPU (all 0 capacities: none)
    tiers: TierSetting = field(default_factory=TierSetting)

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
        tiers: TierSetting | None = None,
        tier_blocks: Mapping[str, Sequence[int]] | None = None,
    ) -> ReplayResult:
        """The result of a replay that found `hit_blocks` per request (either engine).

        `hit_blocks` counts blocks served from any tier; `tier_blocks` gives the columns
        of `TIER_COLUMNS` per request (omitted: a replay without tiers, all zero).
        """
        hit_blocks = np.asarray(hit_blocks, dtype=np.int64)
        prompt_lens = np.asarray(prompt_lens, dtype=np.int64)
        counts = {name: np.zeros(len(hit_blocks), dtype=np.int64) for name in TIER_COLUMNS}
        for name, values in (tier_blocks or {}).items():
            if name not in counts:
                raise ValueError(f"tier_blocks: unknown column {name!r}; valid: {TIER_COLUMNS}")
            counts[name] = np.asarray(values, dtype=np.int64)
        host, disk = counts["host_hit_blocks"] * block_size, counts["disk_hit_blocks"] * block_size
        hit_tokens = hit_blocks * block_size
        frame = pd.DataFrame({
            "request_id": np.asarray(request_ids, dtype=np.int64),
            "prompt_len": prompt_lens,
            "num_blocks": np.asarray(num_blocks, dtype=np.int64),
            "hit_blocks": hit_blocks,
            "hit_tokens": hit_tokens,
            "gpu_hit_tokens": hit_tokens - host - disk,
            "host_hit_tokens": host,
            "disk_hit_tokens": disk,
            "miss_tokens": prompt_lens - hit_tokens,
            **{name: counts[name] for name in TIER_COLUMNS[2:]},
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
            tiers=tiers or TierSetting(),
        )

    def tier_hit_rates(self) -> dict[str, float]:
        """Token-weighted hit rate of each tier over the measured requests: ``{"gpu",
        "host", "disk"}`` (they add up to `hit_rate`)."""
        measured = self.requests[self.requests["measured"]]
        total = measured["prompt_len"].sum()
        return {tier: float(measured[f"{tier}_hit_tokens"].sum() / total)
                for tier in ("gpu", "host", "disk")}

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

    def tier_summary(self) -> dict[str, object]:
        """`summary` plus the tiers: their setting, hit rate per tier, and the blocks
        moved each way over the measured requests."""
        measured = self.requests[self.requests["measured"]]
        row = self.summary()
        row.update(vars(self.tiers))
        row.update({f"{tier}_hit_rate": rate for tier, rate in self.tier_hit_rates().items()})
        row.update({name: int(measured[name].sum()) for name in TIER_COLUMNS[2:]})
        return row


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
    host_capacity: int = 0,
    host_policy: str = "lru",
    disk_capacity: int = 0,
    disk_policy: str = "lru",
    placement: str = WRITE_THROUGH,
) -> ReplayResult:
    """Replay `trace` through a metadata-only cache of `capacity` GPU blocks (and the
    tiers below it, if any).

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
    host_capacity, disk_capacity:
        Blocks of the host and the disk tier of the prefix cache (0: no such tier).
    host_policy, disk_policy:
        Their eviction policies (`paged_kv.core.eviction.ONLINE_POLICIES`).
    placement:
        When blocks are copied down: ``"write_through"``, ``"write_back"`` or
        ``"selective"`` (`paged_kv.cache.tiers`).
    """
    workload = _workload(trace)
    check_warmup(warmup)
    policy = check_policy(policy)
    label = check_capacity(capacity)
    tiers = TierSetting(host_capacity, host_policy, disk_capacity, disk_policy, placement)
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
        **tiers.cache_fields(),
    )
    cache = PagedKVCache(config, policy=instance)
    iterator = tqdm(requests, desc=f"{policy} @ {label or 'unbounded'}", disable=not progress,
                    leave=False)
    common = dict(trace=workload.name, policy=policy, capacity=label, block_size=block_size,
                  request_ids=[r.request_id for r in requests],
                  prompt_lens=[r.prompt_len for r in requests],
                  num_blocks=[len(r.block_keys) for r in requests], warmup=warmup)
    if tiers.enabled:
        hit_blocks, tier_blocks = _replay_tiered(cache, iterator, capacity, belady)
        return ReplayResult.from_hits(hit_blocks=hit_blocks,
                                      evictions=cache.stats().prefix_evictions, tiers=tiers,
                                      tier_blocks=tier_blocks, **common)

    hit_blocks = []
    allocate, commit, free = cache.allocate, cache.commit, cache.free
    cached = cache.num_cached_tokens
    position = 0
    for request in iterator:
        if belady is not None:
            belady.advance(position)
            position += len(request.block_keys)
        n, keys = served_prompt(request, capacity)
        seq = allocate(n, block_keys=keys)
        commit(seq)
        hit_blocks.append(cached(seq) // block_size)
        free(seq)

    return ReplayResult.from_hits(hit_blocks=hit_blocks,
                                  evictions=cache.stats().prefix_evictions, **common)


def _replay_tiered(
    cache: PagedKVCache, requests, capacity: int, belady: BeladyPolicy | None
) -> tuple[list[int], dict[str, list[int]]]:
    """The replay loop with tiers: hit blocks per request, and the `TIER_COLUMNS`."""
    block_size = cache.block_size
    tiers = cache.tiers
    hit_blocks: list[int] = []
    columns: dict[str, list[int]] = {name: [] for name in TIER_COLUMNS}
    appends = [columns[name].append for name in TIER_COLUMNS[2:]]
    host_hits, disk_hits = columns["host_hit_blocks"].append, columns["disk_hit_blocks"].append
    position = 0
    for request in requests:
        if belady is not None:
            belady.advance(position)
            position += len(request.block_keys)
        n, keys = served_prompt(request, capacity)
        before = tiers.moves()
        seq = cache.allocate(n, block_keys=keys)
        cache.commit(seq)
        after = tiers.moves()
        hit_blocks.append(cache.num_cached_tokens(seq) // block_size)
        cache.free(seq)
        host_hits(after[0] - before[0])
        disk_hits(after[1] - before[1])
        for append, a, b in zip(appends, after, before):
            append(a - b)
    return hit_blocks, columns
