"""The studies the command line and the notebooks run, each returning DataFrames.

* `fragmentation`: the vLLM paper's Fig. 2 (where the KV memory goes) and memory waste
  against block size;
* `throughput`: normalised latency against request rate (Fig. 12), the rate each
  scheme sustains, batch sizes (Fig. 13), shared prefixes (Fig. 16), block size and
  preemption mode against latency (Figs. 18b, 19b);
* `sharing`: memory saved by parallel sampling and beam search (Fig. 15);
* `calibration`: the fits behind the step-time model and the workload's spread.

Every study takes `model` as a preset name or a `paged_kv.config.ModelSpec` (so another
KV dtype can be passed) and a `gpu` preset (`paged_kv.sim.hardware`).
"""

from paged_kv.sim.studies._common import (
    DEFAULT_KV_BYTES,
    SCHEMES,
    WORKLOADS,
    kv_slots,
    make_scheme,
    make_workload,
)
from paged_kv.sim.studies.fragmentation import (
    FragmentationStudy,
    block_size_sweep,
    fragmentation_study,
)
from paged_kv.sim.studies.sharing import sharing_runs, sharing_study

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
