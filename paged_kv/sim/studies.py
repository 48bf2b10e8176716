"""The studies the command line and the notebooks run: fragmentation, block size, sharing.

Each returns DataFrames; `paged_kv.plots` draws them. Defaults reproduce the setting of
the vLLM paper's Fig. 2: OPT-13B on one A100-40GB, 12 GiB of KV cache (15,728 token
slots of 819,200 bytes), maximum sequence length 2048, ShareGPT.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
from tqdm import tqdm

from paged_kv.config import ModelSpec, get_model
from paged_kv.sim.published import VLLM_FIG2_KV_USAGE_PCT
from paged_kv.sim.request import Workload
from paged_kv.sim.scheduler import SchedulerConfig, SimResult, simulate
from paged_kv.sim.schemes import ContiguousScheme, PagedScheme
from paged_kv.sim.traces import load_trace
from paged_kv.sim.workloads import SYNTHETIC_WORKLOADS, arrival_times, synthetic_workload

#: 12 GiB of KV: the vLLM paper's OPT-13B budget on an A100-40GB
DEFAULT_KV_BYTES = 12 * 2**30
#: workloads `make_workload` knows: synthetic generators and shipped traces without keys
WORKLOADS = ("sharegpt", *sorted(SYNTHETIC_WORKLOADS), "azure-conv", "azure-code")


def make_workload(
    name: str, num_requests: int, *, rate: float, seed: int, max_len: int
) -> Workload:
    """The first `num_requests` requests of `name` whose prompt + output fit `max_len`.

    ``sharegpt`` is the shipped ShareGPT lengths with seeded Poisson arrivals at `rate`;
    ``sharegpt-like`` / ``alpaca-like`` are synthetic (`paged_kv.sim.workloads`); the
    Azure traces keep their recorded arrival times (`rate` unused).
    """
    if name == "sharegpt":
        # arrivals are drawn for the requests kept, so they come at `rate` requests/s
        kept = load_trace("sharegpt", rate=rate, seed=seed).filter_max_len(max_len)
        kept = kept.head(num_requests)
        return kept.with_arrivals(arrival_times(len(kept), rate, seed=seed))
    elif name in SYNTHETIC_WORKLOADS:
        return synthetic_workload(name, num_requests, rate, seed=seed, max_len=max_len)
    elif name in ("azure-conv", "azure-code"):
        work = load_trace(name)
    else:
        raise ValueError(f"unknown workload {name!r}; valid names: {', '.join(WORKLOADS)}")
    return work.filter_max_len(max_len).head(num_requests)


def kv_slots(model: ModelSpec, kv_bytes: int) -> int:
    """Token slots of `model`'s KV that fit in `kv_bytes`."""
    return int(kv_bytes) // model.bytes_per_token


def _row(result: SimResult) -> dict:
    s = result.summary()
    return {
        "scheme": s["scheme"],
        "token_states_pct": s["token_states_pct"],
        "reservation_pct": s["reservation_pct"],
        "internal_frag_pct": s["internal_frag_pct"],
        "external_frag_pct": s["external_frag_pct"],
        "waste_pct": s["waste_pct"],
        "free_pool_pct": s["free_pool_pct"],
        "preemptions": s["preemptions"],
        "makespan_s": s["makespan_s"],
        "decode_tokens": s["decode_tokens"],
    }


@dataclass
class FragmentationStudy:
    """Results of `fragmentation_study`."""

    #: one row per scheme: category shares of non-free memory, the paper's share beside
    table: pd.DataFrame
    #: scheme label -> its full simulation (per-step and per-request frames)
    results: dict[str, SimResult] = field(repr=False)
    #: what was run
    settings: dict[str, object] = field(default_factory=dict)


def fragmentation_study(
    *,
    model: str | ModelSpec = "opt-13b",
    kv_bytes: int = DEFAULT_KV_BYTES,
    workload: str = "sharegpt",
    num_requests: int = 2000,
    rate: float = 10.0,
    block_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> FragmentationStudy:
    """Serve one workload with Max, Pow2, Oracle and paged memory; Fig. 2-style shares.

    Shares are of the memory that is not free, averaged over the steps during which a
    request waits (memory is the bottleneck then), as in `SimResult.summary`.
    """
    spec = get_model(model) if isinstance(model, str) else model
    slots = kv_slots(spec, kv_bytes)
    max_len = spec.max_seq_len
    work = make_workload(workload, num_requests, rate=rate, seed=seed, max_len=max_len)
    schemes = [ContiguousScheme(slots, p, max_len) for p in ("max", "pow2", "oracle")]
    schemes.append(PagedScheme(slots // block_size, block_size))
    results = {}
    for scheme in tqdm(schemes, desc="fragmentation", disable=not progress):
        results[scheme.label] = simulate(work, scheme)
    table = pd.DataFrame([_row(r) for r in results.values()])
    paper = {"Max": "orca-max", "Pow2": "orca-pow2", "Oracle": "orca-oracle"}
    table["paper_token_states_pct"] = [
        VLLM_FIG2_KV_USAGE_PCT[paper.get(label, "vllm")]["token_states"]
        for label in table["scheme"]
    ]
    settings = {
        "model": spec.name, "kv_slots": slots, "max_seq_len": max_len, "workload": workload,
        "requests": len(work), "rate": rate, "block_size": block_size, "seed": seed,
        "mean_prompt": work.to_dataframe()["prompt_len"].mean(),
        "mean_output": work.to_dataframe()["output_len"].mean(),
    }
    return FragmentationStudy(table=table, results=results, settings=settings)


def block_size_sweep(
    *,
    block_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256),
    workloads: tuple[str, ...] = ("sharegpt-like", "alpaca-like"),
    model: str | ModelSpec = "opt-13b",
    kv_bytes: int = DEFAULT_KV_BYTES,
    num_requests: int = 1000,
    rate: float = 20.0,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Paged memory's waste (all but token states) at each block size, per workload."""
    spec = get_model(model) if isinstance(model, str) else model
    slots = kv_slots(spec, kv_bytes)
    runs = [(w, b) for w in workloads for b in block_sizes]
    rows = []
    cache: dict[str, Workload] = {}
    for name, bs in tqdm(runs, desc="block sizes", disable=not progress):
        if name not in cache:
            cache[name] = make_workload(name, num_requests, rate=rate, seed=seed,
                                        max_len=spec.max_seq_len)
        result = simulate(cache[name], PagedScheme(slots // bs, bs))
        row = _row(result)
        row.update(workload=name, block_size=bs)
        rows.append(row)
    return pd.DataFrame(rows)


def sharing_study(
    *,
    widths: tuple[int, ...] = (2, 4, 6),
    workloads: tuple[str, ...] = ("alpaca-like", "sharegpt-like"),
    model: str | ModelSpec = "opt-13b",
    kv_bytes: int = DEFAULT_KV_BYTES,
    num_requests: int = 300,
    rate: float = 20.0,
    block_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Memory saved by block sharing for parallel sampling and beam search (Fig. 15).

    ``saved_pct = 100 * (1 - physical blocks / blocks the sequences would hold alone)``,
    averaged over every step; preemption by swap to a host pool as large as the GPU's.
    """
    spec = get_model(model) if isinstance(model, str) else model
    slots = kv_slots(spec, kv_bytes)
    runs = [(w, s, n) for w in workloads for s in ("parallel", "beam") for n in widths]
    rows = []
    for name, sampling, n in tqdm(runs, desc="sharing", disable=not progress):
        work = make_workload(name, num_requests, rate=rate, seed=seed,
                             max_len=spec.max_seq_len)
        blocks = slots // block_size
        scheme = PagedScheme(blocks, block_size, num_host_blocks=blocks)
        config = SchedulerConfig(sampling=sampling, n=n, preemption="swap", seed=seed)
        result = simulate(work, scheme, config)
        summary = result.summary(loaded_only=False)
        rows.append({
            "workload": name, "sampling": sampling, "n": n,
            "saved_pct": summary["sharing_saved_pct"],
            "cow_copies": result.cow_copies, "preemptions": summary["preemptions"],
        })
    return pd.DataFrame(rows)
