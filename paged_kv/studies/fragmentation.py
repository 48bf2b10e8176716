"""Fig. 2 of the vLLM paper (where the KV memory goes) and memory waste against block size.

`fragmentation_study` defaults to the paper's setting, each piece marked (see also
`paged_kv.sim.published.VLLM_FIG2_SETTING`):

* OPT-13B on one A100-40GB with 12 GiB of KV, 15,728 token slots (stated, Table 1);
* Orca baselines behind a buddy allocator, Pow2 rounding the output only (stated, §6.1);
* ShareGPT with the paper's mean lengths, 161.31 / 337.99 (stated, §6.1); the length
  *distribution* is the `sharegpt-like` lognormal model, whose spreads are fitted to
  the Orca bars of Fig. 2 and the batch sizes of Fig. 13a (inferred: see
  `paged_kv.sim.workloads.SHAREGPT_LIKE`);
* Poisson arrivals at 2 req/s for one hour (the rate is inferred: Fig. 2 reports "the
  experiment in §6.2", and §6.2's Fig. 13a, the same workload's batch sizes, is at
  2 req/s; the hour is stated, §6.1);
* shares of the whole pool, averaged over time while requests arrive (inferred from
  the bars: the Max bar's 8.9% is the 1,392 slots seven 2,048-slot chunks leave).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
from tqdm.auto import tqdm

from paged_kv.core.config import ModelSpec
from paged_kv.sim.hardware import GPUSpec
from paged_kv.sim.published import (
    VLLM_FIG2_KV_USAGE_PCT,
    VLLM_FIG2_SETTING,
    VLLM_FIG13_BATCH_SIZE,
)
from paged_kv.sim.scheduler import SchedulerConfig, SimResult, simulate
from paged_kv.sim.timing import StepTime
from paged_kv.studies._common import (
    PAPER_ROW,
    SCHEMES,
    kv_slots,
    make_scheme,
    make_workload,
    requests_for,
    resolve,
    settings_of,
)

#: Fig. 2's rate, requests/s (inferred from Fig. 13a, the same experiment's batch sizes)
FIG2_RATE = float(VLLM_FIG2_SETTING["rate"])
#: trace length, seconds (stated: "we evaluate the systems with 1-hour traces", §6.1)
FIG2_DURATION_S = float(VLLM_FIG2_SETTING["duration_s"])
#: Fig. 2's categories: our column -> the paper's key in `VLLM_FIG2_KV_USAGE_PCT`
FIG2_CATEGORIES = {
    "token_states": "token_states",
    "reservation": "reservation",
    "internal_frag": "internal_fragmentation",
    "external_and_others": "external_fragmentation",
}


@dataclass
class FragmentationStudy:
    """Results of `fragmentation_study`."""

    #: one row per scheme: Fig. 2's four shares of the pool (mean over seeds), their
    #: spread, the paper's numbers beside them, and the batch (Fig. 13a)
    table: pd.DataFrame
    #: scheme label -> its simulation with the first seed (per-step and per-request)
    results: dict[str, SimResult] = field(repr=False)
    #: one row per scheme and seed
    runs: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)
    #: what was run
    settings: dict[str, object] = field(default_factory=dict)


def _summary_row(result: SimResult, key: str, seed: int) -> dict:
    s = result.summary()
    row = {"scheme": s["scheme"], "key": key, "seed": seed}
    for c in (*FIG2_CATEGORIES, "external_frag", "free"):
        row[f"{c}_pct"] = s[f"{c}_pct"]
    for c in ("token_states_used_pct", "waste_pct", "mean_requests", "preemptions",
              "normalized_latency_s", "makespan_s", "decode_tokens"):
        row[c] = s[c]
    return row


def fragmentation_study(
    *,
    model: str | ModelSpec = "opt-13b",
    gpu: str | GPUSpec = "A100-40GB",
    kv_bytes: int | None = None,
    workload: str = "sharegpt-like",
    rate: float = FIG2_RATE,
    duration_s: float = FIG2_DURATION_S,
    num_requests: int | None = None,
    block_size: int = 16,
    allocator: str = "buddy",
    seeds: Sequence[int] = (0, 1, 2),
    step_time: StepTime | None = None,
    progress: bool = True,
) -> FragmentationStudy:
    """Serve one workload with Max, Pow2, Oracle and paged memory; Fig. 2's shares.

    `model` is a preset name or a `ModelSpec` (its KV dtype sets the bytes per token);
    `kv_bytes` defaults to the model's budget on `gpu`; `num_requests` defaults to
    ``rate * duration_s``. Each seed draws its own workload; the table averages the
    seeds (``*_sd`` columns: their standard deviation).
    """
    seeds = list(seeds)  # indexed below: an iterator would fail after the first run
    if not seeds:
        raise ValueError("fragmentation_study needs at least one seed")
    spec, device, budget, timer = resolve(model, gpu, kv_bytes, step_time)
    slots = kv_slots(spec, budget)
    count = requests_for(rate, duration_s) if num_requests is None else num_requests
    config = SchedulerConfig(step_time=timer)
    runs, results, works = [], {}, []
    jobs = [(seed, key) for seed in seeds for key in SCHEMES]
    for seed, key in tqdm(jobs, desc="fragmentation", disable=not progress):
        if key == SCHEMES[0]:
            work = make_workload(workload, count, rate=rate, seed=seed,
                                 max_len=spec.max_seq_len)
            works.append(work)
        scheme = make_scheme(key, slots, spec.max_seq_len, block_size=block_size,
                             allocator=allocator)
        result = simulate(work, scheme, config)
        if seed == seeds[0]:
            results[scheme.label] = result
        runs.append(_summary_row(result, key, seed))
    frame = pd.DataFrame(runs)
    table = frame.drop(columns="seed").groupby(["key", "scheme"], sort=False).mean()
    table["token_states_sd"] = frame.groupby(["key", "scheme"], sort=False)[
        "token_states_pct"].std(ddof=1) if len(seeds) > 1 else 0.0
    table = table.reset_index()
    for ours, theirs in FIG2_CATEGORIES.items():
        table[f"paper_{ours}_pct"] = [
            VLLM_FIG2_KV_USAGE_PCT[PAPER_ROW[k]].get(theirs, float("nan"))
            for k in table["key"]]
    table["paper_mean_requests"] = [VLLM_FIG13_BATCH_SIZE[("sharegpt", PAPER_ROW[k])]
                                    for k in table["key"]]
    lengths = pd.concat([w.to_dataframe() for w in works])
    settings = settings_of(
        spec, device, budget, workload=workload, requests=len(works[0]), rate=rate,
        duration_s=duration_s, block_size=block_size, allocator=allocator,
        seeds=list(seeds), mean_prompt=float(lengths["prompt_len"].mean()),
        mean_output=float(lengths["output_len"].mean()), step_time=repr(timer),
        averaged="time-weighted shares of the whole pool while requests arrive",
    )
    return FragmentationStudy(table=table, results=results, runs=frame, settings=settings)


def block_size_sweep(
    *,
    block_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256),
    workloads: tuple[str, ...] = ("sharegpt-like", "alpaca-like"),
    model: str | ModelSpec = "opt-13b",
    gpu: str | GPUSpec = "A100-40GB",
    kv_bytes: int | None = None,
    num_requests: int = 1000,
    rate: float = 20.0,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Paged memory's waste (all but token states, in memory in use) at each block size.

    Memory only: this sweep favours the smallest block. The latency that the paper's
    §7.2 weighs against it is `paged_kv.studies.throughput.block_size_latency`.
    """
    spec, device, budget, timer = resolve(model, gpu, kv_bytes, None)
    slots = kv_slots(spec, budget)
    runs = [(w, b) for w in workloads for b in block_sizes]
    rows = []
    cache: dict[str, object] = {}
    for name, bs in tqdm(runs, desc="block sizes", disable=not progress):
        if name not in cache:
            cache[name] = make_workload(name, num_requests, rate=rate, seed=seed,
                                        max_len=spec.max_seq_len)
        result = simulate(cache[name], make_scheme("paged", slots, spec.max_seq_len,
                                                   block_size=bs),
                          SchedulerConfig(step_time=timer))
        s = result.summary(over="loaded")
        rows.append({"workload": name, "block_size": bs, "scheme": s["scheme"],
                     "waste_pct": s["waste_pct"],
                     "token_states_used_pct": s["token_states_used_pct"],
                     "reservation_used_pct": s["reservation_used_pct"],
                     "internal_frag_used_pct": s["internal_frag_used_pct"],
                     "preemptions": s["preemptions"]})
    return pd.DataFrame(rows)
