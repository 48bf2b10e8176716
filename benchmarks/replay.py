"""Benchmark: Mooncake conversation replay through the full manager vs a minimal LRU loop.

    python benchmarks/replay.py [--capacity 10000] [--repeats 5]

Replays the shipped Mooncake conversation trace (12,031 requests, 288,500 block
references over 512-token blocks) at `--capacity` blocks with LRU, once through
`paged_kv.sim.replay.replay` (the real `PagedKVCache` in metadata-only mode, per-request
DataFrame included) and once through `benchmarks/_minimal_lru.py` (a bare OrderedDict
loop with the same rules). Both must report the same hit rate; the script fails if not.
Times are medians of `--repeats` interleaved runs; the goal is the manager within 3x.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _minimal_lru import minimal_lru_replay  # noqa: E402

from paged_kv.sim.replay import replay  # noqa: E402
from paged_kv.sim.traces import load_trace  # noqa: E402

GOAL = 3.0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a markdown table; exit 1 if the hit rates differ."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    workload = load_trace("mooncake-conversation")
    requests = list(workload)
    total_tokens = sum(r.prompt_len for r in requests)
    refs = sum(len(r.block_keys) for r in requests)
    manager_times, minimal_times = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = replay(workload, args.capacity, "lru")
        manager_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        hit_tokens = minimal_lru_replay(requests, args.capacity, 512)
        minimal_times.append(time.perf_counter() - start)
    minimal_rate = hit_tokens / total_tokens
    manager, minimal = statistics.median(manager_times), statistics.median(minimal_times)
    ratio = manager / minimal
    print(f"Mooncake conversation: {len(requests):,} requests, {refs:,} block references, "
          f"capacity {args.capacity:,} blocks, LRU, median of {args.repeats}\n")
    print("| replay | wall time (s) | hit rate |")
    print("|---|---|---|")
    print(f"| paged_kv manager (`replay`) | {manager:.3f} | {result.hit_rate:.4f} |")
    print(f"| minimal OrderedDict loop | {minimal:.3f} | {minimal_rate:.4f} |")
    verdict = "meets" if ratio <= GOAL else "misses"
    print(f"\nratio manager / minimal: {ratio:.2f}x ({verdict} the {GOAL:.0f}x goal)")
    if abs(result.hit_rate - minimal_rate) > 1e-12:
        print("ERROR: the two replays disagree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
