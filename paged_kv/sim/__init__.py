"""Workload simulation: requests from synthetic generators and shipped real traces."""

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
