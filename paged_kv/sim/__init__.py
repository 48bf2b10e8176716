"""Workloads, the serving simulator and prefix-cache trace replay, on the real manager.

Requests come from synthetic generators (`workloads`) or shipped real traces (`traces`);
the simulator (`scheduler`) serves them with continuous batching over a memory scheme
(`schemes`: the paged cache metadata-only, or the contiguous Orca baselines) and a
calibrated step time (`timing`); trace replay (`replay`, `replay_sweep`) measures the
prefix cache's hit rate under each eviction policy. This package exports the workloads
and traces; the simulator and replay are imported from their modules.
"""

from paged_kv.sim.request import Request, Workload
from paged_kv.sim.traces import list_traces, load_trace
from paged_kv.sim.workloads import alpaca_like, arrival_times, sharegpt_like, synthetic_workload

__all__ = [
    "Request",
    "Workload",
    "alpaca_like",
    "arrival_times",
    "list_traces",
    "load_trace",
    "sharegpt_like",
    "synthetic_workload",
]
