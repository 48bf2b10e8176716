"""Tiered prefix caching: how much memory, where, with what policy, and what it costs in time.

Two workloads, each replayed one request at a time through a GPU prefix cache with a host
tier (and a disk tier) below it (`paged_kv.sim.replay_compiled`, whose per-request numbers
equal the manager's), at every host capacity, placement policy and tier eviction policy:

* ``"sharegpt-sessions"``: ShareGPT-style multi-turn conversations returning after a
  think time (`paged_kv.sim.conversations`), the workload of CachedAttention (Gao et
  al., USENIX ATC '24). Its setting (`SESSIONS_SETTING`) is the paper's where the paper
  states it: LLaMA-13B on an A100-80GB over PCIe Gen4, 128 GB of DRAM and 10 TB of SSD,
  about 9K conversations of 5.75 turns arriving at 1 per second, the first 10K turns
  as warm-up, layer-wise loading. The think time, the per-turn lengths, the block size
  and the tier policies are chosen (`SETTING_STATUS` says which is which).
* ``"mooncake-conversation"``: the Mooncake (FAST'25) conversation trace shipped with the
  project, 512-token blocks. Its hit rate against the host tier's capacity in tokens is
  the setting of the FAST'25 paper's Fig. 9 ("we consider only the sequence of
  requests"); the model for the time to first token (LLaMA-3-8B on an H100) and the GPU
  capacity are chosen (Mooncake serves a LLaMA3-70B-like model that has no preset here).

Each point reports the token hit rate served by each tier (GPU, host, disk), the blocks
moved each way, and the time to first token of every measured request with the load
serial and layer by layer (`paged_kv.sim.tier_time`): mean, p50, p99, against
recomputing every prompt, with the prefill tokens saved and the prefill throughput gain
(CachedAttention's two headline metrics). `break_even_table` gives, for every model and
GPU preset, the shortest cached prefix worth loading rather than recomputing.
`cachedattention_comparison` and `mooncake_comparison` put the published numbers beside
ours (`paged_kv.sim.published`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import pandas as pd
from tqdm.auto import tqdm

from paged_kv.core.config import ModelSpec, get_model
from paged_kv.core.tier import PLACEMENTS
from paged_kv.core.validate import require_int
from paged_kv.sim import published
from paged_kv.sim.conversations import SessionModel, multi_turn_workload
from paged_kv.sim.hardware import (
    GPU_PRESETS,
    MODEL_COMPUTE,
    NVME_READ_BANDWIDTH,
    get_gpu,
)
from paged_kv.sim.replay_arrays import TraceArrays, as_trace_arrays
from paged_kv.sim.tier_time import (
    LOAD_MODES,
    LOAD_TIERS,
    TierTime,
    shortest_prefix_worth_loading,
    ttft_summary,
)
from paged_kv.sim.timing import calibrated_step_time
from paged_kv.studies._common import default_kv_bytes

#: the workloads `tier_workload` builds
WORKLOADS = ("sharegpt-sessions", "mooncake-conversation")
#: the tier eviction policies the study compares (the compiled engine runs these two)
TIER_POLICIES = ("lru", "arc")
_GB = 10**9


@dataclass(frozen=True)
class StudySetting:
    """One workload's study setting: model and GPU (for the GPU capacity and the time
    model), the tiers' sizes to sweep, the load and the replay."""

    #: the workload (`WORKLOADS`)
    workload: str
    #: model preset (KV bytes per token, step time)
    model: str
    #: GPU preset (KV budget, FLOP/s, host link)
    gpu: str
    #: host-tier capacities to sweep, bytes (0: no host tier)
    host_bytes: tuple[int, ...]
    #: disk-tier capacities to sweep, bytes (0: no disk tier)
    disk_bytes: tuple[int, ...]
    #: tokens per block (the trace's for Mooncake)
    block_size: int
    #: the GPU's KV budget in bytes (None: what the model leaves of 90% of the GPU)
    gpu_kv_bytes: int | None = None
    #: leading share of requests replayed but not measured
    warmup: float = 0.0
    #: the load mode the paper's comparison uses
    paper_mode: str = "layerwise"

    @property
    def spec(self) -> ModelSpec:
        """The model's KV shape."""
        return get_model(self.model)

    @property
    def block_bytes(self) -> int:
        """Bytes of one block of KV."""
        return self.spec.bytes_per_block(self.block_size)

    def gpu_blocks(self) -> int:
        """GPU blocks of the KV budget."""
        budget = self.gpu_kv_bytes
        if budget is None:
            budget = default_kv_bytes(self.spec, get_gpu(self.gpu))
        return max(1, budget // self.block_bytes)

    def blocks(self, num_bytes: int) -> int:
        """Blocks of KV in `num_bytes` (0 stays 0: no such tier)."""
        return int(num_bytes) // self.block_bytes


#: CachedAttention's setting (see the module docstring): 128 GB DRAM and 10 TB SSD are
#: the paper's; the other host sizes and the block size are the sweep's choice.
SESSIONS_SETTING = StudySetting(
    workload="sharegpt-sessions", model="llama-13b", gpu="A100-80GB",
    host_bytes=(0, 16 * _GB, 32 * _GB, 64 * _GB, 128 * _GB, 256 * _GB, 512 * _GB),
    disk_bytes=(0, 10_000 * _GB), block_size=64,
    warmup=published.CACHEDATTENTION_WORKLOAD["warmup_turns"]
    / published.CACHEDATTENTION_WORKLOAD["turns"],
)
#: Mooncake's conversation trace: host sizes of Fig. 9's capacities in tokens (LLaMA-3-8B
#: KV, 131,072 bytes per token), no disk; the GPU holds LLaMA-3-8B's budget on an H100.
MOONCAKE_SETTING = StudySetting(
    workload="mooncake-conversation", model="llama-3-8b", gpu="H100",
    host_bytes=tuple(t * 131_072 for t in (0, 1_000_000, 2_000_000, 4_000_000, 8_000_000,
                                           10_000_000, 50_000_000)),
    disk_bytes=(0,), block_size=512,
)
#: every study setting by workload
SETTINGS: Mapping[str, StudySetting] = MappingProxyType(
    {s.workload: s for s in (SESSIONS_SETTING, MOONCAKE_SETTING)})

#: which parts of the settings are a paper's, and which are chosen
SETTING_STATUS: Mapping[str, str] = MappingProxyType({
    "sessions: model, GPU, link": "CachedAttention §4.1 (first-hand): A100-80GB, PCIe Gen4; "
                                  "LLaMA-13B is one of its models",
    "sessions: 128 GB host, 10 TB disk": "CachedAttention §4.1 (first-hand)",
    "sessions: 9K conversations, 5.75 turns, 73% multi-turn, 1 session/s, 10K warm-up "
    "turns": "CachedAttention §2.3, §4.1-4.2 (second-hand)",
    "sessions: layer-wise loading": "CachedAttention §3.2.1 (second-hand)",
    "sessions: think time 60 s, per-turn lengths (vLLM's ShareGPT means), 64-token "
    "blocks, LRU/ARC tiers, no history truncation": "chosen (the paper states no think "
                                                     "time; its own policy is "
                                                     "scheduler-aware)",
    "sessions: other host sizes": "chosen (the sweep)",
    "mooncake: trace, 512-token blocks, capacities in tokens": "Mooncake FAST'25 Fig. 9 "
                                                                "(first-hand)",
    "mooncake: LLaMA-3-8B on an H100, its GPU budget, no disk": "chosen",
    "both: disk read 6.5 GB/s": "Samsung PM9A3 datasheet (Gen4 NVMe)",
})


def tier_workload(setting: StudySetting, *, sessions: int | None = None, seed: int = 0,
                  head: int | None = None) -> TraceArrays:
    """The trace of a setting: `sessions` conversations (default the paper's ~9K) drawn
    with `seed`, or the first `head` requests of the Mooncake trace (None: all)."""
    if setting.workload == "sharegpt-sessions":
        count = published.CACHEDATTENTION_WORKLOAD["conversations"] if sessions is None \
            else require_int("sessions", sessions, 1)
        model = SessionModel(max_context=None)
        workload = multi_turn_workload(int(count), model=model, block_size=setting.block_size,
                                       seed=seed)
        return TraceArrays.from_workload(workload)
    if setting.workload == "mooncake-conversation":
        trace = as_trace_arrays("mooncake-conversation")
        return trace if head is None else trace.head(require_int("head", head, 1))
    raise ValueError(f"unknown workload {setting.workload!r}; valid names: "
                     f"{', '.join(WORKLOADS)}")


def _point_row(result, setting: StudySetting, times: Mapping[str, TierTime]) -> dict:
    frame = result.requests[result.requests["measured"]]
    prompt = frame["prompt_len"].to_numpy()
    gpu, host, disk = (frame[f"{t}_hit_tokens"].to_numpy() for t in ("gpu", "host", "disk"))
    rates = result.tier_hit_rates()
    summary = result.tier_summary()
    row = {
        "workload": setting.workload, "placement": result.tiers.placement,
        "tier_policy": result.tiers.host_policy, "gpu_blocks": result.capacity,
        "host_blocks": result.tiers.host_capacity, "disk_blocks": result.tiers.disk_capacity,
        "hit_rate": result.hit_rate, "gpu_hit_rate": rates["gpu"],
        "host_hit_rate": rates["host"], "disk_hit_rate": rates["disk"],
        "loaded_host": summary["loaded_host"], "loaded_disk": summary["loaded_disk"],
        "stored_gpu_host": summary["stored_gpu_host"],
        "stored_gpu_disk": summary["stored_gpu_disk"],
        "stored_host_disk": summary["stored_host_disk"],
    }
    for mode, time in times.items():
        ttft = time.ttft_seconds(prompt, gpu, host, disk)
        stats = ttft_summary(ttft, time.recompute_seconds(prompt), prompt, gpu + host + disk)
        for key, value in stats.items():
            if key.startswith("recompute") or key.startswith("prefill_tokens") \
                    or key == "prefill_saved_share":
                row.setdefault(key, value)
            else:
                row[f"{key}_{mode}"] = value
    return row


def tier_sweep(
    setting: StudySetting,
    trace: TraceArrays,
    *,
    placements: Sequence[str] = PLACEMENTS,
    tier_policies: Sequence[str] = TIER_POLICIES,
    host_bytes: Sequence[int] | None = None,
    disk_bytes: Sequence[int] | None = None,
    disk_bandwidth: float = NVME_READ_BANDWIDTH,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per (placement, tier policy, host capacity, disk capacity) of `setting`.

    Columns: the point (capacities in blocks and in bytes; ``host_tokens``: the host
    tier's bytes in tokens of KV, before rounding to blocks), the hit rate and its part
    served by each tier, the blocks moved, and for each load mode ``m`` the TTFT
    ``ttft_mean_s_m``, ``ttft_p50_s_m``, ``ttft_p99_s_m``, the reduction against
    recomputing (``ttft_reduction_pct_m``) and the prefill throughput gain
    (``prefill_throughput_x_m``); the recomputation's own TTFT and the prefill tokens
    saved. Points without tiers are run once per placement (all equal).
    """
    from paged_kv.sim.replay_compiled import compiled_replay  # noqa: PLC0415 - numba

    hosts = setting.host_bytes if host_bytes is None else tuple(host_bytes)
    disks = setting.disk_bytes if disk_bytes is None else tuple(disk_bytes)
    gpu_blocks = setting.gpu_blocks()
    times = {mode: TierTime(calibrated_step_time(setting.model, setting.gpu),
                            setting.block_size, disk_bandwidth, mode) for mode in LOAD_MODES}
    points = [(p, t, h, d) for p in placements for t in tier_policies for h in hosts
              for d in disks]
    rows = []
    for placement, policy, host, disk in tqdm(points, desc=f"tiers {setting.workload}",
                                              disable=not progress):
        result = compiled_replay(
            trace, gpu_blocks, "lru", warmup=setting.warmup,
            host_capacity=setting.blocks(host), host_policy=policy,
            disk_capacity=setting.blocks(disk), disk_policy=policy, placement=placement)
        row = _point_row(result, setting, times)
        row.update(host_bytes=int(host), disk_bytes=int(disk),
                   host_tokens=int(host) // setting.spec.bytes_per_token)
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.attrs.update(workload=setting.workload, model=setting.model, gpu=setting.gpu,
                       block_size=setting.block_size, gpu_blocks=gpu_blocks,
                       warmup=setting.warmup, requests=len(trace),
                       trace_checksum=trace.checksum)
    return frame


def break_even_table(
    models: Sequence[str] | None = None,
    gpus: Sequence[str] | None = None,
    *,
    block_size: int = 64,
    new_tokens: Sequence[int] = (1, 512),
    disk_bandwidth: float = NVME_READ_BANDWIDTH,
    max_tokens: int = 131_072,
) -> pd.DataFrame:
    """For every model and GPU preset, tier and load mode: the shortest cached prefix
    (tokens, whole blocks of `block_size`) that is faster to load than to recompute,
    when `new_tokens` new tokens follow it; None (NA) when none up to `max_tokens` is.

    One row per (model, GPU, new tokens) with a column per (tier, mode), e.g.
    ``host_serial`` and ``disk_layerwise``."""
    models = list(MODEL_COMPUTE) if models is None else list(models)
    gpus = list(GPU_PRESETS) if gpus is None else list(gpus)
    rows = []
    for model in models:
        for gpu in gpus:
            timer = calibrated_step_time(model, gpu)
            for new in new_tokens:
                row: dict[str, object] = {"model": model, "gpu": gpu, "new_tokens": new}
                for mode in LOAD_MODES:
                    time = TierTime(timer, block_size, disk_bandwidth, mode)
                    for tier in LOAD_TIERS:
                        row[f"{tier}_{mode}"] = shortest_prefix_worth_loading(
                            time, tier, new_tokens=new, max_tokens=max_tokens)
                rows.append(row)
    frame = pd.DataFrame(rows)
    for column in frame.columns[3:]:
        frame[column] = frame[column].astype("Int64")
    frame.attrs.update(block_size=block_size, disk_bandwidth=disk_bandwidth,
                       max_tokens=max_tokens)
    return frame


def cachedattention_comparison(sessions: pd.DataFrame) -> pd.DataFrame:
    """CachedAttention's LLaMA-13B results beside ours at its setting (128 GB host, 10 TB
    disk, layer-wise loading), one row per placement and tier policy."""
    paper = published.CACHEDATTENTION_RESULTS["llama-13b"]
    mode = SESSIONS_SETTING.paper_mode
    at = sessions[(sessions["host_bytes"] == 128 * _GB)
                  & (sessions["disk_bytes"] == 10_000 * _GB)]
    rows = []
    for row in at.itertuples():
        rows.append({
            "placement": row.placement, "tier_policy": row.tier_policy,
            "hit_rate": row.hit_rate, "paper_hit_rate": paper["hit_rate"],
            "ttft_reduction_pct": getattr(row, f"ttft_reduction_pct_{mode}"),
            "paper_ttft_reduction_pct": paper["ttft_reduction_pct"],
            "prefill_throughput_x": getattr(row, f"prefill_throughput_x_{mode}"),
            "paper_prefill_throughput_x": paper["prefill_throughput_x"],
        })
    return pd.DataFrame(rows)


def mooncake_comparison(mooncake: pd.DataFrame) -> pd.DataFrame:
    """Our hit rate at each host capacity in tokens beside the FAST'25 Fig. 9
    conversation curve at that capacity, one row per (placement, tier policy, capacity)
    Fig. 9 has a vertex at."""
    curve = published.MOONCAKE_FIG9_CURVES["mooncake-conversation"]
    rows = []
    for row in mooncake[mooncake["host_tokens"].isin(list(curve))].itertuples():
        rows.append({"placement": row.placement, "tier_policy": row.tier_policy,
                     "host_tokens": row.host_tokens, "hit_rate": row.hit_rate,
                     "gpu_hit_rate": row.gpu_hit_rate, "host_hit_rate": row.host_hit_rate,
                     "paper_hit_rate": curve[row.host_tokens]})
    return pd.DataFrame(rows)


@dataclass
class TierStudy:
    """What `tier_study` measured."""

    #: `tier_sweep` of each workload, by name
    sweeps: dict[str, pd.DataFrame]
    #: `break_even_table`
    break_even: pd.DataFrame
    #: `cachedattention_comparison` (None without the sessions workload)
    cachedattention: pd.DataFrame | None
    #: `mooncake_comparison` (None without the Mooncake workload)
    mooncake: pd.DataFrame | None
    #: the settings, for the record
    settings: dict = field(default_factory=dict)


def tier_study(
    workloads: Sequence[str] = WORKLOADS,
    *,
    sessions: int | None = None,
    head: int | None = None,
    placements: Sequence[str] = PLACEMENTS,
    tier_policies: Sequence[str] = TIER_POLICIES,
    disk_bandwidth: float = NVME_READ_BANDWIDTH,
    seed: int = 0,
    progress: bool = True,
) -> TierStudy:
    """The whole study (see the module docstring); `sessions` and `head` shrink the two
    workloads (None: the full size: ~9K conversations, the whole Mooncake trace)."""
    for name in workloads:
        if name not in SETTINGS:
            raise ValueError(f"unknown workload {name!r}; valid names: {', '.join(WORKLOADS)}")
    sweeps = {}
    for name in workloads:
        setting = SETTINGS[name]
        trace = tier_workload(setting, sessions=sessions, seed=seed, head=head)
        sweeps[name] = tier_sweep(setting, trace, placements=placements,
                                  tier_policies=tier_policies, disk_bandwidth=disk_bandwidth,
                                  progress=progress)
    return TierStudy(
        sweeps=sweeps,
        break_even=break_even_table(disk_bandwidth=disk_bandwidth),
        cachedattention=cachedattention_comparison(sweeps["sharegpt-sessions"])
        if "sharegpt-sessions" in sweeps else None,
        mooncake=mooncake_comparison(sweeps["mooncake-conversation"])
        if "mooncake-conversation" in sweeps else None,
        settings={"workloads": list(workloads), "sessions": sessions, "head": head,
                  "seed": seed, "disk_bandwidth": disk_bandwidth,
                  "placements": list(placements), "tier_policies": list(tier_policies)},
    )


__all__ = ["MOONCAKE_SETTING", "SESSIONS_SETTING", "SETTINGS", "SETTING_STATUS",
           "TIER_POLICIES", "WORKLOADS", "StudySetting", "TierStudy", "break_even_table",
           "cachedattention_comparison", "mooncake_comparison", "tier_study", "tier_sweep",
           "tier_workload"]
