"""Throughput and latency: the vLLM paper's Figs. 12, 13, 16, 18b and 19b on the simulator.

The metric is the paper's *normalised latency*: the mean over requests of end-to-end
latency divided by output length, in seconds per token (§6.1). A scheme *sustains* a
rate while its normalised latency stays at or below a threshold (`SUSTAIN_THRESHOLD_S`,
a modelling choice: the paper reads "similar latencies" off its curves, which stay near
the step time until the queue starts to grow and then explode, so any threshold well
above the unloaded value finds the same knee). `sustained_rate` finds that rate by
bisection.

What is the paper's setting and what is modelled here:

* OPT-13B on an A100-40GB with 12 GiB of KV, ShareGPT and Alpaca, 1-hour traces of
  Poisson arrivals, Orca baselines and vLLM (block 16): the paper's (§6.1);
* the step time: `paged_kv.sim.timing` (calibrated roofline; its constants say which are
  fitted, inferred or chosen); the length distributions: `paged_kv.sim.workloads`;
* the shared-prefix workload (Fig. 16): LLaMA-13B and prefixes of 80 and 341 tokens are
  the paper's; sentence lengths are a modelling choice;
* block size against latency (Fig. 18b) and recompute against swap (Fig. 19b): the
  attention kernel's cost per block size is *modelled* (`RooflineStepTime.kv_read_factor`,
  inferred from Fig. 18a), not measured on a GPU, as are the swap costs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from paged_kv.core.config import ModelSpec
from paged_kv.sim.hardware import GPUSpec
from paged_kv.sim.published import (
    VLLM_FIG13_BATCH_SIZE,
    VLLM_FIG13_RATE,
    VLLM_SHARED_PREFIX_SPEEDUP,
    VLLM_SUSTAINED_RATE_RATIO,
)
from paged_kv.sim.scheduler import SchedulerConfig, simulate
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

#: normalised latency (s/token) up to which a scheme sustains a rate (a modelling choice)
SUSTAIN_THRESHOLD_S = 0.25
#: trace length of the latency studies, seconds (the paper's 1-hour traces, §6.1)
DURATION_S = 3600.0
#: request rates (req/s) the latency curves sweep, by workload
RATES: Mapping[str, tuple[float, ...]] = {
    "sharegpt-like": tuple(np.round(np.arange(0.25, 3.01, 0.25), 2)),
    "alpaca-like": (1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 12.5, 15.0, 20.0, 25.0, 30.0, 35.0,
                    40.0, 45.0, 50.0, 55.0, 60.0, 70.0, 80.0),
    "shared-prefix-80": (2.5, 5.0, 7.5, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 50.0, 60.0,
                         70.0, 80.0, 100.0, 120.0),
    "shared-prefix-341": (2.5, 5.0, 7.5, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 50.0, 60.0,
                          70.0, 80.0, 100.0, 120.0),
}


@dataclass
class _Runner:
    """One study's fixed setting: model, pool, time model, trace length, seed."""

    model: str | ModelSpec = "opt-13b"
    gpu: str | GPUSpec = "A100-40GB"
    kv_bytes: int | None = None
    duration_s: float = DURATION_S
    seed: int = 0
    step_time: StepTime | None = None

    def __post_init__(self) -> None:
        self.spec, self.device, self.budget, self.timer = resolve(
            self.model, self.gpu, self.kv_bytes, self.step_time)
        self.slots = kv_slots(self.spec, self.budget)

    def run(self, workload: str, key: str, rate: float, *, block_size: int = 16,
            prefix_caching: bool = False, preemption: str = "recompute",
            num_host_blocks: int = 0) -> dict:
        work = make_workload(workload, requests_for(rate, self.duration_s), rate=rate,
                             seed=self.seed, max_len=self.spec.max_seq_len)
        scheme = make_scheme(key, self.slots, self.spec.max_seq_len, block_size=block_size,
                             prefix_caching=prefix_caching, num_host_blocks=num_host_blocks)
        config = SchedulerConfig(step_time=self.timer, preemption=preemption,
                                 max_num_batched_tokens=max(4096, self.spec.max_seq_len))
        s = simulate(work, scheme, config).summary()
        return {"workload": workload, "scheme": s["scheme"], "key": key, "rate": rate,
                "normalized_latency_s": s["normalized_latency_s"],
                "mean_latency_s": s["mean_latency_s"], "mean_requests": s["mean_requests"],
                "token_states_pct": s["token_states_pct"], "preemptions": s["preemptions"],
                "swaps": s["swaps"], "requests": len(work)}

    def settings(self, **extra: object) -> dict:
        return settings_of(self.spec, self.device, self.budget, duration_s=self.duration_s,
                           seed=self.seed, step_time=repr(self.timer), **extra)


def sustained_rate(latency_at, rates: Sequence[float], threshold_s: float,
                   *, iterations: int = 6, doublings: int = 4) -> float:
    """The highest rate whose normalised latency is at most `threshold_s`.

    `latency_at(rate)` runs one simulation. The grid `rates` brackets the knee (the
    first rate over the threshold and the last one under it), then bisection narrows it
    `iterations` times. Returns 0.0 if even the lowest rate is over. When every rate of
    the grid is sustained (a smaller model, a larger GPU), the search goes on past its
    top, doubling the rate up to `doublings` times, so that the grid's top is never
    reported as if it were the knee; beyond that it raises `ValueError`.
    """
    low, high = 0.0, None
    for rate in rates:
        if latency_at(rate) > threshold_s:
            high = rate
            break
        low = rate
    else:
        for _ in range(doublings):
            if latency_at(low * 2) > threshold_s:
                high = low * 2
                break
            low *= 2
        else:
            raise ValueError(
                f"the normalised latency stays within {threshold_s:g} s/token up to "
                f"{low:g} req/s ({2 ** doublings}x the rate grid's top, "
                f"{float(rates[-1]):g}): no sustained rate to report; lower the "
                f"threshold or pass a grid that reaches the knee")
    for _ in range(iterations if low > 0 else 0):
        mid = (low + high) / 2
        if latency_at(mid) > threshold_s:
            high = mid
        else:
            low = mid
    return float(low)


@dataclass
class ThroughputStudy:
    """Results of `throughput_study`."""

    #: one row per (workload, scheme, rate) of the latency curves
    curves: pd.DataFrame
    #: one row per (workload, scheme): the highest rate sustained
    sustained: pd.DataFrame
    #: one row per workload: paged / Oracle and paged / Max sustained rates, the paper's
    ratios: pd.DataFrame
    #: what was run
    settings: dict[str, object] = field(default_factory=dict)


def throughput_study(
    *,
    workloads: Sequence[str] = ("sharegpt-like", "alpaca-like"),
    schemes: Sequence[str] = SCHEMES,
    rates: Mapping[str, Sequence[float]] | None = None,
    threshold_s: float = SUSTAIN_THRESHOLD_S,
    model: str | ModelSpec = "opt-13b",
    gpu: str | GPUSpec = "A100-40GB",
    kv_bytes: int | None = None,
    duration_s: float = DURATION_S,
    seed: int = 0,
    step_time: StepTime | None = None,
    curves: bool = True,
    progress: bool = True,
) -> ThroughputStudy:
    """Normalised latency against rate for each scheme and workload (Fig. 12), the rate
    each sustains, and paged memory's sustained rate over Oracle's and Max's."""
    runner = _Runner(model, gpu, kv_bytes, duration_s, seed, step_time)
    grids = {**RATES, **(rates or {})}
    jobs = [(w, k) for w in workloads for k in schemes]
    curve_rows, sustained_rows = [], []
    bar = tqdm(jobs, desc="throughput", disable=not progress)
    for workload, key in bar:
        memo: dict[float, dict] = {}

        def latency_at(rate: float, workload=workload, key=key, memo=memo) -> float:
            if rate not in memo:
                memo[rate] = runner.run(workload, key, rate)
            return memo[rate]["normalized_latency_s"]

        grid = grids[workload]
        if curves:
            for rate in grid:
                latency_at(rate)
        rate = sustained_rate(latency_at, grid, threshold_s)
        some = next(iter(memo.values()))
        sustained_rows.append({"workload": workload, "scheme": some["scheme"], "key": key,
                               "sustained_rate": rate})
        curve_rows.extend(memo[r] for r in sorted(memo) if r in grid or not curves)
    sustained = pd.DataFrame(sustained_rows)
    return ThroughputStudy(
        curves=pd.DataFrame(curve_rows), sustained=sustained,
        ratios=rate_ratios(sustained),
        settings=runner.settings(workloads=list(workloads), threshold_s=threshold_s,
                                 rates={w: list(grids[w]) for w in workloads}))


def rate_ratios(sustained: pd.DataFrame,
                over: Sequence[str] = ("oracle", "pow2", "max")) -> pd.DataFrame:
    """Paged memory's sustained rate over each baseline's, per workload, beside the
    paper's ranges (ShareGPT over Oracle and Max only: the paper gives no other)."""
    rows = []
    for workload, frame in sustained.groupby("workload", sort=False):
        rate = dict(zip(frame["key"], frame["sustained_rate"]))
        if "paged" not in rate:
            continue
        row: dict[str, object] = {"workload": workload}
        for key in over:
            if key not in rate:
                continue
            row[f"paged_over_{key}"] = rate["paged"] / rate[key] if rate[key] else np.inf
            low, high = VLLM_SUSTAINED_RATE_RATIO.get(PAPER_ROW[key], (np.nan, np.nan)) \
                if workload.startswith("sharegpt") else (np.nan, np.nan)
            row[f"paper_{key}_low"], row[f"paper_{key}_high"] = low, high
        rows.append(row)
    return pd.DataFrame(rows)


def batch_size_study(
    *,
    workloads: Sequence[str] = ("sharegpt-like", "alpaca-like"),
    schemes: Sequence[str] = SCHEMES,
    progress: bool = True,
    **setting: object,
) -> pd.DataFrame:
    """Average batched requests at Fig. 13's rates (ShareGPT 2, Alpaca 30 req/s)."""
    runner = _Runner(**setting)  # type: ignore[arg-type]
    rows = []
    for workload, key in tqdm([(w, k) for w in workloads for k in schemes],
                              desc="batch sizes", disable=not progress):
        paper_key = workload.replace("-like", "")
        row = runner.run(workload, key, VLLM_FIG13_RATE[paper_key])
        row["paper_mean_requests"] = VLLM_FIG13_BATCH_SIZE.get((paper_key, PAPER_ROW[key]),
                                                               np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def shared_prefix_study(
    *,
    prefix_lens: Sequence[int] = (80, 341),
    threshold_s: float = SUSTAIN_THRESHOLD_S,
    rates: Mapping[str, Sequence[float]] | None = None,
    model: str | ModelSpec = "llama-13b",
    progress: bool = True,
    **setting: object,
) -> pd.DataFrame:
    """Fig. 16: sustained rate of Orca (Oracle) and of paged memory sharing the prefix
    through its prefix cache, and their ratio beside the paper's 1.67x and 3.58x."""
    runner = _Runner(model=model, **setting)  # type: ignore[arg-type]
    grids = {**RATES, **(rates or {})}
    rows = []
    for prefix in tqdm(prefix_lens, desc="shared prefix", disable=not progress):
        workload = f"shared-prefix-{prefix}"
        sustained = {}
        for key, caching in (("oracle", False), ("paged", True)):
            memo: dict[float, float] = {}

            def latency_at(rate, key=key, caching=caching, memo=memo, workload=workload):
                if rate not in memo:
                    memo[rate] = runner.run(workload, key, rate,
                                            prefix_caching=caching)["normalized_latency_s"]
                return memo[rate]

            sustained[key] = sustained_rate(latency_at, grids[workload], threshold_s)
        rows.append({"prefix_len": prefix, "oracle_rate": sustained["oracle"],
                     "paged_rate": sustained["paged"],
                     "speedup": sustained["paged"] / sustained["oracle"]
                     if sustained["oracle"] else np.inf,
                     "paper_speedup": VLLM_SHARED_PREFIX_SPEEDUP.get(prefix, np.nan)})
    return pd.DataFrame(rows)


def block_size_latency(
    *,
    block_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128, 256),
    rates: Mapping[str, float] | None = None,
    preemptions: Sequence[str] = ("recompute",),
    num_host_blocks: int | None = None,
    progress: bool = True,
    **setting: object,
) -> pd.DataFrame:
    """Normalised latency of paged memory against block size at fixed rates (Fig. 18b),
    optionally by preemption mode (Fig. 19b: ``preemptions=("recompute", "swap")``).

    The attention kernel's cost per block size is modelled (see the module docstring).
    `num_host_blocks` sizes the swap pool in blocks of 16 tokens (default: vLLM's 4 GiB
    of swap space per GPU); other block sizes get the same bytes.
    """
    runner = _Runner(**setting)  # type: ignore[arg-type]
    rates = dict(BLOCK_SIZE_RATES if rates is None else rates)
    host_slots = (4 * 2**30 // runner.spec.bytes_per_token if num_host_blocks is None
                  else num_host_blocks * 16)
    rows = []
    jobs = [(w, r, b, p) for w, r in rates.items() for p in preemptions for b in block_sizes]
    for workload, rate, bs, mode in tqdm(jobs, desc="block sizes", disable=not progress):
        row = runner.run(workload, "paged", rate, block_size=bs, preemption=mode,
                         num_host_blocks=host_slots // bs if mode == "swap" else 0)
        row.update(block_size=bs, preemption=mode)
        rows.append(row)
    return pd.DataFrame(rows)


#: fixed rates of the block-size study (Fig. 18b), req/s: near paged memory's knee at
#: block 16 (a modelling choice; the paper does not print its rates)
BLOCK_SIZE_RATES: Mapping[str, float] = {"sharegpt-like": 2.0, "alpaca-like": 45.0}
