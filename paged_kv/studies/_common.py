"""Pieces every study shares: workloads by name, pool sizes, schemes by name, settings."""

from __future__ import annotations

import math

from paged_kv.core.config import ModelSpec, get_model
from paged_kv.core.validate import require_int
from paged_kv.sim.hardware import GPUSpec, get_gpu, model_compute
from paged_kv.sim.request import Workload
from paged_kv.sim.schemes import ContiguousScheme, MemoryScheme, PagedScheme
from paged_kv.sim.timing import StepTime, calibrated_step_time
from paged_kv.sim.traces import load_trace
from paged_kv.sim.workloads import (
    SHARED_PREFIX_LENGTHS,
    SYNTHETIC_WORKLOADS,
    arrival_times,
    shared_prefix_workload,
    synthetic_workload,
)

#: 12 GiB of KV: the vLLM paper's OPT-13B budget on an A100-40GB (its Table 1)
DEFAULT_KV_BYTES = 12 * 2**30
#: share of GPU memory vLLM lets the weights and the KV cache take (its default
#: ``gpu_memory_utilization``): sizes the KV pool of GPUs other than the paper's
GPU_MEMORY_UTILIZATION = 0.9
_PREFIX_WORKLOADS = {f"shared-prefix-{n}": n for n in SHARED_PREFIX_LENGTHS}
#: workloads `make_workload` knows: synthetic generators and shipped traces without keys
WORKLOADS = ("sharegpt-like", "alpaca-like", "sharegpt", "azure-conv", "azure-code",
             *_PREFIX_WORKLOADS)
#: memory schemes `make_scheme` knows
SCHEMES = ("max", "pow2", "oracle", "paged")
#: the paper's row names in `paged_kv.sim.published` for each scheme
PAPER_ROW = {"max": "orca-max", "pow2": "orca-pow2", "oracle": "orca-oracle", "paged": "vllm"}


def make_workload(
    name: str, num_requests: int, *, rate: float, seed: int, max_len: int
) -> Workload:
    """The first `num_requests` requests of `name` whose prompt + output fit `max_len`.

    ``sharegpt-like`` (the ShareGPT first-turn length model the vLLM paper's numbers
    describe) and ``alpaca-like`` are synthetic (`paged_kv.sim.workloads`);
    ``shared-prefix-80`` / ``-341`` are the §6.4 translation workloads;
    ``sharegpt`` is the shipped ShareGPT lengths (whole multi-turn conversations);
    all of these arrive as a seeded Poisson process at `rate`. The Azure traces keep
    their recorded arrival times (`rate` unused).
    """
    if name == "sharegpt":
        # arrivals are drawn for the requests kept, so they come at `rate` requests/s
        kept = load_trace("sharegpt", rate=rate, seed=seed).filter_max_len(max_len)
        kept = kept.head(num_requests)
        return kept.with_arrivals(arrival_times(len(kept), rate, seed=seed))
    if name in SYNTHETIC_WORKLOADS:
        return synthetic_workload(name, num_requests, rate, seed=seed, max_len=max_len)
    if name in _PREFIX_WORKLOADS:
        return shared_prefix_workload(num_requests, rate, prefix_len=_PREFIX_WORKLOADS[name],
                                      seed=seed, max_len=max_len)
    if name in ("azure-conv", "azure-code"):
        return load_trace(name).filter_max_len(max_len).head(num_requests)
    raise ValueError(f"unknown workload {name!r}; valid names: {', '.join(WORKLOADS)}")


def requests_for(rate: float, duration_s: float) -> int:
    """Requests a Poisson trace of `duration_s` seconds at `rate` requests/s holds."""
    return max(1, math.ceil(rate * duration_s))


def kv_slots(model: ModelSpec, kv_bytes: int) -> int:
    """Token slots of `model`'s KV that fit in `kv_bytes`."""
    return int(kv_bytes) // model.bytes_per_token


def default_kv_bytes(model: ModelSpec, gpu: GPUSpec) -> int:
    """The KV budget of `model` on one `gpu`: the paper's 12 GiB for its 13B models on an
    A100-40GB (whatever the KV dtype), else ``0.9 * memory - weights`` (which gives
    12.1 GiB there too)."""
    if gpu.name == "A100-40GB" and model.name in ("opt-13b", "llama-13b"):
        return DEFAULT_KV_BYTES
    budget = GPU_MEMORY_UTILIZATION * gpu.memory_bytes - model_compute(model).weight_bytes
    if budget <= model.bytes_per_token * model.max_seq_len:
        raise ValueError(f"{model.name} leaves no room for a full sequence of KV on {gpu.name}")
    return int(budget)


def resolve(model: str | ModelSpec, gpu: str | GPUSpec, kv_bytes: int | None,
            step_time: StepTime | None) -> tuple[ModelSpec, GPUSpec, int, StepTime]:
    """The model, GPU, KV budget and step-time model a study runs with."""
    spec, device = get_model(model), get_gpu(gpu)
    budget = default_kv_bytes(spec, device) if kv_bytes is None else int(kv_bytes)
    timer = calibrated_step_time(spec, device) if step_time is None else step_time
    return spec, device, budget, timer


def make_scheme(name: str, slots: int, max_len: int, *, block_size: int = 16,
                allocator: str = "buddy", prefix_caching: bool = False,
                num_host_blocks: int = 0) -> MemoryScheme:
    """A fresh scheme called `name` (one of `SCHEMES`) over `slots` token slots."""
    if name == "paged":
        block_size = require_int("block_size", block_size, 1)
        return PagedScheme(slots // block_size, block_size, prefix_caching=prefix_caching,
                           num_host_blocks=num_host_blocks)
    if name in ("max", "pow2", "oracle"):
        return ContiguousScheme(slots, name, max_len, allocator=allocator)
    raise ValueError(f"unknown scheme {name!r}; valid names: {', '.join(SCHEMES)}")


def settings_of(spec: ModelSpec, gpu: GPUSpec, kv_bytes: int, **extra: object) -> dict:
    """The settings record of a study: model, GPU, pool, plus `extra`."""
    return {"model": spec.name, "kv_dtype": spec.kv.name, "gpu": gpu.name,
            "kv_bytes": kv_bytes, "kv_slots": kv_slots(spec, kv_bytes),
            "max_seq_len": spec.max_seq_len, **extra}
