"""What a tiered prefix cache costs in time: loading a prefix against recomputing it.

A request of ``n`` prompt tokens whose lookup found ``g`` tokens on the GPU, ``h`` in the
host tier and ``d`` on disk (whole blocks of ``block_size`` tokens) loads ``h / bs`` blocks
from host memory and ``d / bs`` from disk into fresh GPU blocks, and computes the other
``n - c`` tokens (``c = g + h + d``) in one prefill step that attends over all ``n``::

    prefill(n, c) = step_seconds(tokens=n - c, kv_tokens=n,
                                 attention_pairs=(n (n + 1) - c (c + 1)) / 2)
    t_host        = block_bytes / (eta_link * host_bandwidth) + 2 * layers * copy_latency
    t_disk        = max(block_bytes / disk_bandwidth, t_host)
    load          = (h / bs) * t_host + (d / bs) * t_disk

with `paged_kv.sim.timing.RooflineStepTime` for the step (the calibrated roofline the
serving studies use) and for the host link (`RooflineStepTime.block_load_seconds`, the
cost a swap pays: the GPU preset's datasheet host bandwidth per direction, PCIe Gen4 x16
32 GB/s on the A100s and Gen5 x16 64 GB/s on H100/H200, times the link efficiency, plus
one copy per layer for K and one for V). A disk block is read at `disk_bandwidth`
(default `paged_kv.sim.hardware.NVME_READ_BANDWIDTH`) into host memory and copied up
from there, the two legs pipelined, so the slower one sets its pace; host and disk loads
run one after the other. The time to first token is that of a request served alone (no
queueing, no batching), in one of two `LOAD_MODES`:

* ``"serial"``: every block is loaded before the prefill starts (vLLM's offloading
  connector: ``TTFT = load + prefill``);
* ``"layerwise"``: layer ``l``'s KV is loaded while layer ``l - 1`` computes
  (CachedAttention's layer-wise pre-loading, SGLang HiCache's per-layer load events),
  the load and the compute each split evenly over the layers. A two-stage pipeline of
  ``L`` layers then takes ``max(load, prefill) + min(load, prefill) / L``.

Recomputing the whole prompt costs ``prefill(n, 0)``; serving it from the GPU alone
(a GPU hit costs nothing to load) ``prefill(n, g)``. `shortest_prefix_worth_loading`
finds the shortest cached prefix whose load beats its recomputation for a model and GPU.

Which numbers are whose: bandwidths are datasheet figures (`paged_kv.sim.hardware`);
the link efficiency (0.8, which gives 25.6 GB/s on Gen4, beside the ~25 GB/s pinned
host-to-device copies measured on A100s) and the copy latency are the modelling choices
of `paged_kv.sim.timing.CALIBRATION`; the pipelined disk path, the serial order of host
and disk loads and the even split over layers are modelling choices of this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from paged_kv.core.config import ModelSpec
from paged_kv.core.validate import require_int
from paged_kv.sim.hardware import NVME_READ_BANDWIDTH, GPUSpec
from paged_kv.sim.timing import RooflineStepTime, calibrated_step_time

#: how a load is scheduled against the prefill (see the module docstring)
LOAD_MODES = ("serial", "layerwise")
#: the tiers a prefix can be loaded from
LOAD_TIERS = ("host", "disk")


def check_mode(mode: object) -> str:
    """`mode` if it is one of `LOAD_MODES`, else ValueError listing them."""
    if mode not in LOAD_MODES:
        raise ValueError(f"unknown load mode {mode!r}; valid names: {', '.join(LOAD_MODES)}")
    return str(mode)


@dataclass(frozen=True)
class TierTime:
    """The time model of the module docstring for one model on one GPU."""

    #: the calibrated step time of the model on the GPU (its host link included)
    step_time: RooflineStepTime
    #: tokens per block moved between tiers
    block_size: int
    #: disk read bandwidth, bytes/s
    disk_bandwidth: float = NVME_READ_BANDWIDTH
    #: ``"serial"`` or ``"layerwise"`` (`LOAD_MODES`)
    mode: str = "serial"
    _per_block: tuple[float, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.step_time, RooflineStepTime):
            raise ValueError(f"step_time must be a RooflineStepTime, got {self.step_time!r}")
        require_int("TierTime.block_size", self.block_size, 1)
        bw = self.disk_bandwidth
        if isinstance(bw, bool) or not isinstance(bw, (int, float)) or not math.isfinite(bw) \
                or bw <= 0:
            raise ValueError(f"TierTime.disk_bandwidth must be a positive number of bytes/s, "
                             f"got {bw!r}")
        check_mode(self.mode)
        host = self.step_time.block_load_seconds(self.block_size)
        block_bytes = self.block_size * self.step_time.model.bytes_per_token
        object.__setattr__(self, "_per_block", (host, max(block_bytes / bw, host)))

    @classmethod
    def of(cls, model: str | ModelSpec, gpu: str | GPUSpec, block_size: int, *,
           disk_bandwidth: float = NVME_READ_BANDWIDTH, mode: str = "serial") -> TierTime:
        """The model for a model preset (or `ModelSpec`) on a GPU preset (or `GPUSpec`)."""
        return cls(calibrated_step_time(model, gpu), block_size, disk_bandwidth, mode)

    @property
    def host_block_seconds(self) -> float:
        """Seconds to load one block from the host tier."""
        return self._per_block[0]

    @property
    def disk_block_seconds(self) -> float:
        """Seconds to load one block from the disk tier."""
        return self._per_block[1]

    def prefill_seconds(self, prompt_len: np.ndarray, cached: np.ndarray) -> np.ndarray:
        """The prefill step of prompts of `prompt_len` tokens whose first `cached` are on
        the GPU (float64 array, elementwise)."""
        n = np.asarray(prompt_len, dtype=np.int64)
        c = np.asarray(cached, dtype=np.int64)
        pairs = (n * (n + 1) - c * (c + 1)) // 2
        return self.step_time.step_seconds_array(n - c, n, pairs, self.block_size)

    def load_seconds(self, host_blocks: np.ndarray, disk_blocks: np.ndarray) -> np.ndarray:
        """Seconds to load `host_blocks` from host memory and `disk_blocks` from disk."""
        host, disk = self._per_block
        return (np.asarray(host_blocks, dtype=np.float64) * host
                + np.asarray(disk_blocks, dtype=np.float64) * disk)

    def combine(self, load: np.ndarray, prefill: np.ndarray) -> np.ndarray:
        """Time to first token of a load and a prefill, scheduled by `mode`."""
        load = np.asarray(load, dtype=np.float64)
        prefill = np.asarray(prefill, dtype=np.float64)
        if self.mode == "serial":
            return load + prefill
        layers = self.step_time.model.num_layers
        return np.maximum(load, prefill) + np.minimum(load, prefill) / layers

    def ttft_seconds(self, prompt_len: np.ndarray, gpu_tokens: np.ndarray,
                     host_tokens: np.ndarray, disk_tokens: np.ndarray) -> np.ndarray:
        """Time to first token of each request, given its hit tokens per tier."""
        gpu, host, disk = (np.asarray(a, dtype=np.int64)
                           for a in (gpu_tokens, host_tokens, disk_tokens))
        if np.any(host % self.block_size) or np.any(disk % self.block_size):
            raise ValueError(f"host and disk hit tokens must be whole blocks of "
                             f"{self.block_size} tokens")
        load = self.load_seconds(host // self.block_size, disk // self.block_size)
        return self.combine(load, self.prefill_seconds(prompt_len, gpu + host + disk))

    def recompute_seconds(self, prompt_len: np.ndarray) -> np.ndarray:
        """Time to first token of each prompt computed whole (no cache)."""
        n = np.asarray(prompt_len, dtype=np.int64)
        return self.prefill_seconds(n, np.zeros_like(n))


def ttft_summary(ttft: np.ndarray, recompute: np.ndarray, prompt_len: np.ndarray,
                 hit_tokens: np.ndarray) -> dict[str, float]:
    """Mean, p50 and p99 TTFT (seconds) with and without the cache, the TTFT reduction
    (mean, percent), the prefill throughput gain (prompt tokens per second of prefill,
    cache over recomputation) and the prefill tokens saved (count and share)."""
    ttft = np.asarray(ttft, dtype=np.float64)
    recompute = np.asarray(recompute, dtype=np.float64)
    prompt_tokens = int(np.sum(prompt_len))
    saved = int(np.sum(hit_tokens))
    return {
        "ttft_mean_s": float(ttft.mean()),
        "ttft_p50_s": float(np.percentile(ttft, 50)),
        "ttft_p99_s": float(np.percentile(ttft, 99)),
        "recompute_mean_s": float(recompute.mean()),
        "recompute_p50_s": float(np.percentile(recompute, 50)),
        "recompute_p99_s": float(np.percentile(recompute, 99)),
        "ttft_reduction_pct": 100.0 * (1.0 - ttft.mean() / recompute.mean()),
        "prefill_throughput_x": float(recompute.sum() / ttft.sum()),
        "prefill_tokens_saved": saved,
        "prefill_saved_share": saved / prompt_tokens if prompt_tokens else 0.0,
    }


def load_versus_recompute(time: TierTime, tier: str, *, new_tokens: int = 1,
                          max_tokens: int = 131_072) -> dict[str, np.ndarray]:
    """For every cached prefix of ``p = bs, 2 bs, ...`` up to `max_tokens` tokens in
    `tier`, followed by `new_tokens` new ones: the time to first token loading the
    prefix (``"load_s"``) and recomputing it (``"recompute_s"``), by `time`'s mode."""
    if tier not in LOAD_TIERS:
        raise ValueError(f"unknown tier {tier!r}; valid names: {', '.join(LOAD_TIERS)}")
    new_tokens = require_int("new_tokens", new_tokens, 1)
    max_tokens = require_int("max_tokens", max_tokens, time.block_size)
    blocks = np.arange(1, max_tokens // time.block_size + 1, dtype=np.int64)
    prefix = blocks * time.block_size
    n = prefix + new_tokens
    zero = np.zeros_like(blocks)
    load = time.load_seconds(blocks, zero) if tier == "host" else time.load_seconds(zero, blocks)
    return {
        "prefix_tokens": prefix,
        "load_s": time.combine(load, time.prefill_seconds(n, prefix)),
        "recompute_s": time.prefill_seconds(n, zero),
    }


def shortest_prefix_worth_loading(time: TierTime, tier: str, *, new_tokens: int = 1,
                                  max_tokens: int = 131_072) -> int | None:
    """The shortest cached prefix (tokens, whole blocks) in `tier` whose load, followed by
    `new_tokens` new tokens, gives an earlier first token than recomputing it; None when
    no prefix up to `max_tokens` does."""
    curve = load_versus_recompute(time, tier, new_tokens=new_tokens, max_tokens=max_tokens)
    wins = np.flatnonzero(curve["load_s"] < curve["recompute_s"])
    return int(curve["prefix_tokens"][wins[0]]) if len(wins) else None


__all__ = ["LOAD_MODES", "LOAD_TIERS", "TierTime", "check_mode", "load_versus_recompute",
           "shortest_prefix_worth_loading", "ttft_summary"]
