"""How long a simulated step takes: a fixed linear model, and a calibrated roofline.

A step runs the model once over every running sequence: the prompts admitted in it
(prefill) and one token for each decoding sequence. The scheduler describes a step to
a `StepTime` by

* ``tokens``: tokens computed (prefill tokens plus one per decoding sequence);
* ``kv_tokens``: tokens of KV the step's attention reads (the length of every running
  sequence, a shared block read once per sequence that reads it);
* ``attention_pairs``: query-key pairs its attention computes (a decoding sequence of
  length L: L; a prefill of P tokens after c cached ones: about (P^2 - c^2) / 2);
* ``kv_block_size``: the block size of a paged KV layout, None for contiguous KV;

and charges swaps separately (`swap_seconds`), on the step in which they happen.

`RooflineStepTime` is the model the studies use. A step costs the larger of the time to
read the weights and the KV through the memory system and the time to compute its
FLOPs, plus a fixed overhead (scheduling, kernel launches, sampling)::

    bytes = weights + kv_bytes_per_token * (kv_tokens * paged_factor + tokens)
    flops = 2 * params * tokens + 4 * layers * hidden * attention_pairs
    step  = max(bytes / (eta_mem * bandwidth), flops / (eta_flop * peak_flops)) + overhead
    paged_factor = 1 + paged_overhead_tokens / block_size   (1 for contiguous KV)

A swap of ``b`` blocks costs ``b * (block_bytes / (eta_link * host_bandwidth) +
copies_per_block * copy_latency)``: one copy per layer for K and one for V, per block,
as vLLM's ``swap_blocks`` issues them, so small blocks swap slowly (the paper's Fig.
19a). A recomputation costs its prefill's FLOPs through the same step formula.

Which constants are whose (see `CALIBRATION` for the numbers and their sources):
peak bandwidth, FLOP/s and link speed are datasheet figures (`paged_kv.sim.hardware`);
``eta_mem`` is fitted to the vLLM paper's Fig. 13a (average batch sizes at 2 req/s) by
`paged_kv.studies.calibration`; ``paged_overhead_tokens`` is inferred from its Fig.
18a (PagedAttention 20-26% slower than FasterTransformer's contiguous kernel, read as
measured at block size 16); ``eta_flop``, ``overhead_s``, ``eta_link`` and
``copy_latency_s`` are modelling choices.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from paged_kv.core.config import ModelSpec, get_model
from paged_kv.sim.hardware import GPUSpec, ModelCompute, get_gpu, model_compute


class StepTime(ABC):
    """Seconds a simulated step takes. See the module docstring for the arguments."""

    @abstractmethod
    def step_seconds(self, tokens: int, kv_tokens: int, attention_pairs: int,
                     kv_block_size: int | None) -> float:
        """Duration of one step."""

    def swap_seconds(self, blocks: int, block_size: int) -> float:
        """Duration of moving `blocks` blocks of `block_size` slots over the host link."""
        return 0.0


@dataclass(frozen=True)
class StepTimeModel(StepTime):
    """Seconds per step, linear in the tokens it computes: ``base_s + per_token_s * tokens``.

    A fixed model that ignores the KV read and swaps: handy in tests, where one step per
    second (``base_s=1, per_token_s=0``) makes steps and seconds the same.
    """

    base_s: float = 0.015
    per_token_s: float = 1.0e-4

    def __post_init__(self) -> None:
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool)
                      and math.isfinite(v) for v in (self.base_s, self.per_token_s))
        if not (numbers and self.base_s > 0 and self.per_token_s >= 0):
            raise ValueError(
                f"StepTimeModel needs finite base_s > 0 and per_token_s >= 0, got "
                f"{self.base_s!r}, {self.per_token_s!r}"
            )

    def seconds(self, batched_tokens: int) -> float:
        """Duration of a step that computes `batched_tokens` tokens."""
        return self.base_s + self.per_token_s * batched_tokens

    def step_seconds(self, tokens: int, kv_tokens: int, attention_pairs: int,
                     kv_block_size: int | None) -> float:
        """`seconds(tokens)`: the KV read is not modelled."""
        return self.seconds(tokens)


#: The constants of `RooflineStepTime` with their status. ``fitted``: fitted to the
#: vLLM paper's Fig. 13a (OPT-13B, A100-40GB, ShareGPT at 2 req/s) by
#: ``paged_kv.studies.calibration.fit_memory_efficiency``; ``inferred``: read from
#: the paper with an assumption stated; ``choice``: a modelling choice.
CALIBRATION: Mapping[str, Mapping[str, object]] = MappingProxyType({
    "memory_efficiency": MappingProxyType({
        "value": 0.64, "status": "fitted",
        "note": "share of peak memory bandwidth a step achieves; fitted to vLLM's numbers "
                "of the 2 req/s ShareGPT run (Fig. 13a: 30.42 batched requests; Fig. 2: "
                "96.3% of the pool holding tokens), the Orca batches (7.00 / 9.81 / "
                "13.62) being memory-bound at any plausible speed; a grid of 0.50-0.70 "
                "by 0.02, three seeds; the same value as Little's law gives (45 ms per "
                "step at 30.42 requests and 96.3% of 15,728 slots of KV)",
    }),
    "compute_efficiency": MappingProxyType({
        "value": 0.5, "status": "choice",
        "note": "share of peak FP16 FLOP/s a step achieves; prefill-heavy steps only",
    }),
    "overhead_s": MappingProxyType({
        "value": 0.004, "status": "choice",
        "note": "fixed seconds per step: scheduler, kernel launches, sampling",
    }),
    "paged_overhead_tokens": MappingProxyType({
        "value": 3.7, "status": "inferred",
        "note": "paged KV reads cost (1 + 3.7 / block_size) x contiguous ones: Fig. 18a's "
                "20-26% kernel overhead (23% at block 16, the default it was measured "
                "at, an assumption)",
    }),
    "link_efficiency": MappingProxyType({
        "value": 0.8, "status": "choice",
        "note": "share of the host link's bandwidth a large swap achieves",
    }),
    "copy_latency_s": MappingProxyType({
        "value": 5e-6, "status": "choice",
        "note": "fixed cost of one host-device copy (one per layer, K and V, per block)",
    }),
})


def _constant(name: str) -> float:
    return float(CALIBRATION[name]["value"])  # type: ignore[arg-type]


@dataclass(frozen=True)
class RooflineStepTime(StepTime):
    """Calibrated step time of `model` on `gpu`: see the module docstring."""

    gpu: GPUSpec
    model: ModelSpec
    compute: ModelCompute
    memory_efficiency: float = field(default_factory=lambda: _constant("memory_efficiency"))
    compute_efficiency: float = field(default_factory=lambda: _constant("compute_efficiency"))
    overhead_s: float = field(default_factory=lambda: _constant("overhead_s"))
    paged_overhead_tokens: float = field(
        default_factory=lambda: _constant("paged_overhead_tokens"))
    link_efficiency: float = field(default_factory=lambda: _constant("link_efficiency"))
    copy_latency_s: float = field(default_factory=lambda: _constant("copy_latency_s"))

    def __post_init__(self) -> None:
        for name in ("memory_efficiency", "compute_efficiency", "link_efficiency"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 < value <= 1.0):
                raise ValueError(f"RooflineStepTime.{name} must be in (0, 1], got {value!r}")
        for name in ("overhead_s", "paged_overhead_tokens", "copy_latency_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"RooflineStepTime.{name} must be >= 0, got {value!r}")
        # the per-step constants, once: step_seconds runs for every interval simulated
        kv = self.model.bytes_per_token
        bandwidth = self.memory_efficiency * self.gpu.memory_bandwidth
        flops = self.compute_efficiency * self.gpu.fp16_flops
        object.__setattr__(self, "_weight_s", self.compute.weight_bytes / bandwidth)
        object.__setattr__(self, "_kv_s", kv / bandwidth)
        object.__setattr__(self, "_token_s", 2.0 * self.compute.num_params / flops)
        object.__setattr__(self, "_pair_s", 4.0 * self.compute.num_layers
                           * self.compute.hidden_size / flops)

    def kv_read_factor(self, kv_block_size: int | None) -> float:
        """Cost of reading paged KV relative to contiguous KV (1 for contiguous)."""
        if kv_block_size is None:
            return 1.0
        return 1.0 + self.paged_overhead_tokens / kv_block_size

    def step_seconds(self, tokens: int, kv_tokens: int, attention_pairs: int,
                     kv_block_size: int | None) -> float:
        """The larger of the memory time and the compute time, plus the overhead."""
        memory = self._weight_s + self._kv_s * (kv_tokens * self.kv_read_factor(kv_block_size)
                                                + tokens)
        compute = self._token_s * tokens + self._pair_s * attention_pairs
        return (memory if memory > compute else compute) + self.overhead_s

    def step_seconds_array(self, tokens: np.ndarray, kv_tokens: np.ndarray,
                           attention_pairs: np.ndarray,
                           kv_block_size: int | None) -> np.ndarray:
        """`step_seconds` elementwise over arrays of steps (the same formula, in float64)."""
        tokens = np.asarray(tokens, dtype=np.float64)
        memory = self._weight_s + self._kv_s * (
            np.asarray(kv_tokens, dtype=np.float64) * self.kv_read_factor(kv_block_size)
            + tokens)
        compute = self._token_s * tokens + self._pair_s * np.asarray(attention_pairs,
                                                                     dtype=np.float64)
        return np.maximum(memory, compute) + self.overhead_s

    def block_load_seconds(self, block_size: int) -> float:
        """Host-link time of one block of `block_size` slots: `swap_seconds` per block."""
        block_bytes = block_size * self.model.bytes_per_token
        return (block_bytes / (self.link_efficiency * self.gpu.host_bandwidth)
                + 2 * self.model.num_layers * self.copy_latency_s)

    def swap_seconds(self, blocks: int, block_size: int) -> float:
        """Host-link time of `blocks` blocks, plus a fixed latency per copy."""
        if blocks <= 0:
            return 0.0
        return blocks * self.block_load_seconds(block_size)


def calibrated_step_time(model: str | ModelSpec = "opt-13b",
                         gpu: str | GPUSpec = "A100-40GB", **overrides: float) -> RooflineStepTime:
    """`RooflineStepTime` of `model` (a preset name or a `ModelSpec`, whose KV dtype sets
    the KV bytes) on `gpu` with the `CALIBRATION` constants; `overrides` replace any."""
    spec = get_model(model)
    return RooflineStepTime(get_gpu(gpu), spec, model_compute(spec), **overrides)


def later_seconds(k: int, later: float, slope: float) -> float:
    """Seconds that `k` steps take when the first takes `later` and each next one `slope`
    more (the decode steps of an interval, whose KV read grows step by step)."""
    return k * later + slope * k * (k - 1) / 2


def steps_until(wait: float, later: float, slope: float) -> int:
    """Fewest steps (as in `later_seconds`) after which `wait` seconds have passed."""
    if wait <= 0:
        return 0
    if slope <= 1e-12 * later:
        k = math.ceil(wait / later)
    else:
        a, b = slope / 2, later - slope / 2
        k = math.ceil((-b + math.sqrt(b * b + 4 * a * wait)) / (2 * a))
    while k > 0 and later_seconds(k - 1, later, slope) >= wait:
        k -= 1
    while later_seconds(k, later, slope) < wait:
        k += 1
    return k
