"""Workload simulation: requests from synthetic generators."""

from paged_kv.sim.request import Request, Workload
from paged_kv.sim.workloads import alpaca_like, arrival_times, sharegpt_like, synthetic_workload

__all__ = [
    "Request",
    "Workload",
    "alpaca_like",
    "arrival_times",
    "sharegpt_like",
    "synthetic_workload",
]
