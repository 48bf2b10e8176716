"""Benchmark: a sweep at scale on a million-request synthetic trace.

    python benchmarks/replay_scale.py [--requests 1000000] [--workers 2] [--seed 0]

Generates `paged_kv.sim.replay_synthetic.synthetic_prefix_trace` (Zipf-popular shared
prefixes, multi-turn sessions; seeded), then sweeps every policy at 1,000 / 10,000 /
100,000 / 1,000,000 blocks and unbounded with the compiled engine on `--workers`
local processes. Prints the trace's size, the wall time of each stage, the peak
resident memory of this process and of the largest worker (``getrusage``), and the
table of hit rates.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

from paged_kv.core.eviction import policy_names
from paged_kv.sim.replay_compiled import compile_engine
from paged_kv.sim.replay_sweep import sweep
from paged_kv.sim.replay_synthetic import synthetic_prefix_trace

CAPACITIES = [1_000, 10_000, 100_000, 1_000_000, None]


def peak_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    """Generate, sweep, print markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    compile_s = compile_engine()
    start = time.perf_counter()
    trace = synthetic_prefix_trace(args.requests, seed=args.seed)
    trace.next_access  # noqa: B018 - computed once here, sent to the workers
    generate_s = time.perf_counter() - start
    policies = policy_names()
    start = time.perf_counter()
    frame = sweep(trace, CAPACITIES, policies, workers=args.workers, progress=False)
    sweep_s = time.perf_counter() - start
    print(f"synthetic-zipf (seed {args.seed}): {len(trace):,} requests, "
          f"{trace.num_accesses:,} block keys ({trace.num_keys:,} distinct) of "
          f"{trace.block_size} tokens, mean prompt {trace.prompt_lens.mean():,.0f} tokens, "
          f"arrays {trace.nbytes() / 2**20:,.0f} MiB, checksum {trace.checksum}\n")
    print("| stage | wall time (s) |\n|---|---:|")
    print(f"| load the compiled engine (cached on disk) | {compile_s:.2f} |")
    print(f"| generate the trace (+ next-access array) | {generate_s:.1f} |")
    print(f"| sweep: {len(policies)} policies x {len(CAPACITIES)} capacities = "
          f"{len(frame)} points, {args.workers} workers | {sweep_s:.1f} |")
    print(f"\npeak resident memory: {peak_mib(resource.RUSAGE_SELF):,.0f} MiB (this "
          f"process), {peak_mib(resource.RUSAGE_CHILDREN):,.0f} MiB (largest worker)\n")
    wide = frame.assign(capacity=frame["capacity"].astype(object).where(
        frame["capacity"].notna(), "unbounded"))
    table = wide.pivot(index="policy", columns="capacity", values="hit_rate")
    table = table[[c if c is not None else "unbounded" for c in CAPACITIES]]
    print("token hit rate by policy (rows) and capacity in blocks (columns):\n")
    print("| policy | " + " | ".join(f"{c:,}" if isinstance(c, int) else c
                                      for c in table.columns) + " |")
    print("|---|" + "---:|" * len(table.columns))
    for policy, row in table.iterrows():
        print(f"| {policy} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
