"""The studies the command line and the notebooks run, each returning DataFrames.

* `fragmentation`: the vLLM paper's Fig. 2 (where the KV memory goes) and memory waste
  against block size;
* `throughput`: normalised latency against request rate (Fig. 12), the rate each
  scheme sustains, batch sizes (Fig. 13), shared prefixes (Fig. 16), block size and
  preemption mode against latency (Figs. 18b, 19b);
* `sharing`: memory saved by parallel sampling and beam search (Fig. 15);
* `calibration`: the fits behind the step-time model and the workload's spread;
* `block_map`: who holds each physical block, snapshot after snapshot;
* `quant_accuracy`: what a quantized KV cache costs in accuracy and buys in capacity;
* `demo`: the data-plane round trip that checks every byte.

Every study takes `model` as a preset name or a `paged_kv.core.config.ModelSpec` (so another
KV dtype can be passed) and a `gpu` preset (`paged_kv.sim.hardware`).

This layer may import the simulator, the model, the references, the manager and the
layers below; only `paged_kv.plots`, the adapters and the command line import it.
"""

from paged_kv.studies._common import (
    DEFAULT_KV_BYTES,
    SCHEMES,
    WORKLOADS,
    kv_slots,
    make_scheme,
    make_workload,
)
from paged_kv.studies.fragmentation import (
    FragmentationStudy,
    block_size_sweep,
    fragmentation_study,
)
from paged_kv.studies.sharing import sharing_runs, sharing_study

__all__ = [
    "DEFAULT_KV_BYTES",
    "SCHEMES",
    "WORKLOADS",
    "FragmentationStudy",
    "block_size_sweep",
    "fragmentation_study",
    "kv_slots",
    "make_scheme",
    "make_workload",
    "sharing_runs",
    "sharing_study",
]
