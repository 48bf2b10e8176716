"""Benchmark: a sweep with a host tier below the GPU against the same sweep without one.

    python benchmarks/tiers.py [--repeats 5] [--host-factor 2]

On the Mooncake conversation trace, the benchmark's one-tier sweep of
`benchmarks/replay.py` (LRU, FIFO, Belady x 1,000, 10,000, 30,000, 50,000, 100,000
blocks, compiled engine, one process) is timed against the same 15 points with a host
tier of ``--host-factor`` times each GPU capacity below the GPU, for every placement
and for LRU and ARC tiers, and with a disk tier of 5x the host tier below that (three
tiers). The rows are interleaved, each the median of ``--repeats`` runs, after one run
that loads the compiled engine. Goal: a two-tier sweep (GPU and host) within 2x of the
one-tier sweep, measured as a ratio in this one run.

One tiered point is also replayed through the manager (`paged_kv.sim.replay.replay`),
which must give the same row; the script fails if not.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import pandas as pd

from paged_kv.sim.replay_arrays import TraceArrays
from paged_kv.sim.replay_sweep import sweep
from paged_kv.sim.traces import load_trace

POLICIES = ["lru", "fifo", "belady"]
CAPACITIES = [1_000, 10_000, 30_000, 50_000, 100_000]
PLACEMENTS = ["write_through", "write_back", "selective"]
GOAL = 2.0
TRACE = "mooncake-conversation"


def run_sweep(arrays: TraceArrays, host_factor: int, disk_factor: int, placement: str,
              tier_policy: str) -> tuple[float, pd.DataFrame]:
    """Seconds and frame of the 15-point sweep with the given tiers (factor 0: none);
    each GPU capacity gets its own host capacity, so the points run one sweep each."""
    frames = []
    start = time.perf_counter()
    for capacity in CAPACITIES:
        host = host_factor * capacity
        frames.append(sweep(arrays, [capacity], POLICIES, host_capacities=[host],
                            disk_capacities=[disk_factor * host], placements=[placement],
                            host_policy=tier_policy, disk_policy=tier_policy, workers=1,
                            progress=False))
    return time.perf_counter() - start, pd.concat(frames, ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    """Time the sweeps, print markdown; exit 1 if the engines disagree."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--host-factor", type=int, default=2)
    args = parser.parse_args(argv)

    workload = load_trace(TRACE)
    arrays = TraceArrays.from_workload(workload)
    cases = [("one tier (GPU only)", 0, 0, "write_through", "lru")]
    cases += [(f"GPU + host, {p}, {t} tiers", args.host_factor, 0, p, t)
              for t in ("lru", "arc") for p in PLACEMENTS]
    cases += [(f"GPU + host + disk, {p}, lru tiers", args.host_factor, 5, p, "lru")
              for p in PLACEMENTS]
    for _, host, disk, placement, policy in cases:  # loads the engine, warms the caches
        run_sweep(arrays, host, disk, placement, policy)
    times: dict[str, list[float]] = {name: [] for name, *_ in cases}
    frames: dict[str, pd.DataFrame] = {}
    for _ in range(args.repeats):
        for name, host, disk, placement, policy in cases:
            seconds, frames[name] = run_sweep(arrays, host, disk, placement, policy)
            times[name].append(seconds)
    med = {name: statistics.median(values) for name, values in times.items()}
    base = med[cases[0][0]]

    print(f"Mooncake conversation: {len(arrays):,} requests, {arrays.num_accesses:,} block "
          f"references; {len(POLICIES) * len(CAPACITIES)} points (LRU, FIFO, Belady x "
          f"{', '.join(f'{c:,}' for c in CAPACITIES)} GPU blocks), host tier "
          f"{args.host_factor}x the GPU, disk tier 5x the host; compiled engine, one "
          f"process; median of {args.repeats}\n")
    print("| sweep | wall time (s) | vs one tier | hit rate at 10,000 GPU blocks (LRU) |")
    print("|---|---:|---:|---:|")
    for name, *_ in cases:
        frame = frames[name]
        rate = frame[(frame["policy"] == "lru") & (frame["capacity"] == 10_000)]["hit_rate"]
        print(f"| {name} | {med[name]:.3f} | {med[name] / base:.2f}x | {rate.iloc[0]:.4f} |")
    two_tier = [name for name, host, disk, *_ in cases if host and not disk]
    lru_two = [name for name in two_tier if name.endswith("lru tiers")]
    worst = max(med[name] / base for name in lru_two)
    worst_all = max(med[name] / base for name in two_tier)
    print(f"\ntwo tiers (GPU + host) / one tier, worst placement: {worst:.2f}x with LRU tiers "
          f"({'meets' if worst <= GOAL else 'misses'} the {GOAL:.0f}x goal), "
          f"{worst_all:.2f}x over LRU and ARC tiers")

    # one tiered point through the manager: the same row
    point = dict(host_capacities=[20_000], disk_capacities=[100_000], placements=["write_back"],
                 host_policy="arc", progress=False, workers=1)
    compiled = sweep(arrays, [10_000], ["lru"], **point)
    manager = sweep(workload, [10_000], ["lru"], engine="manager", **point)
    same = compiled.equals(manager)
    print(f"manager and compiled engine on one tiered point (LRU GPU 10,000, ARC host 20,000, "
          f"disk 100,000, write-back): {'the same row' if same else 'DIFFERENT rows'}")
    if not same:
        print("ERROR: the engines disagree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
