"""Benchmark: simulated decode tokens per second on a fragmentation study (shipped ShareGPT).

    python benchmarks/simulator.py [--repeats 3]

Runs `paged_kv.sim.scheduler.simulate` on the study of `paged-kv fragmentation --workload
sharegpt --rate 10 --num-requests 2000 --seeds 0` (OPT-13B, 12 GiB of KV = 15,728 slots,
2,000 shipped ShareGPT requests of at most 2,048 tokens at 10 req/s, the calibrated step
time) for each scheme, and reports decode tokens simulated per second of
wall time (median of `--repeats`). The goal is at least 1,000,000 on the paged scheme,
the only one that does allocator work while sequences grow.

Baseline, measured in the same run: a bare Python loop that touches every decode token
once (``for _ in range(tokens): n += 1``). The last column is the simulator's cost per
decode token in iterations of that empty loop: any simulator that stepped each token
in Python would cost several of them, so a figure near or below a few says the work is
done per event (block boundaries, admissions, finishes), not per token.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from paged_kv.core.config import get_model
from paged_kv.sim.scheduler import simulate
from paged_kv.sim.schemes import ContiguousScheme, PagedScheme
from paged_kv.studies import DEFAULT_KV_BYTES, kv_slots, make_workload

GOAL = 1_000_000


def _per_token_loop(tokens: int) -> float:
    start = time.perf_counter()
    n = 0
    for _ in range(tokens):
        n += 1
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-requests", type=int, default=2000)
    args = parser.parse_args(argv)

    model = get_model("opt-13b")
    slots = kv_slots(model, DEFAULT_KV_BYTES)
    work = make_workload("sharegpt", args.num_requests, rate=10.0, seed=0,
                         max_len=model.max_seq_len)
    makers = {
        "Max": lambda: ContiguousScheme(slots, "max", model.max_seq_len),
        "Pow2": lambda: ContiguousScheme(slots, "pow2", model.max_seq_len),
        "Oracle": lambda: ContiguousScheme(slots, "oracle", model.max_seq_len),
        "paged (block 16)": lambda: PagedScheme(slots // 16, 16),
    }
    print(f"fragmentation study (shipped ShareGPT, 10 req/s): {len(work)} requests, "
          f"{slots:,} slots, median of {args.repeats}\n")
    print("| scheme | decode tokens | wall time (s) | decode tokens/s "
          "| cost per token (empty-loop iterations) |")
    print("|---|---:|---:|---:|---:|")
    total_tokens = total_time = 0.0
    paged_rate = 0.0
    for label, make in makers.items():
        times, loops = [], []
        for _ in range(args.repeats):
            scheme = make()
            start = time.perf_counter()
            result = simulate(work, scheme)
            times.append(time.perf_counter() - start)
            loops.append(_per_token_loop(result.decode_tokens))
        wall, loop = statistics.median(times), statistics.median(loops)
        rate = result.decode_tokens / wall
        total_tokens += result.decode_tokens
        total_time += wall
        if label.startswith("paged"):
            paged_rate = rate
        print(f"| {label} | {result.decode_tokens:,} | {wall:.3f} | {rate:,.0f} | "
              f"{wall / loop:.1f} |")
    print(f"| whole study | {int(total_tokens):,} | {total_time:.3f} | "
          f"{total_tokens / total_time:,.0f} | |")
    verdict = "meets" if paged_rate >= GOAL else "misses"
    print(f"\npaged: {paged_rate:,.0f} decode tokens/s ({verdict} the {GOAL:,} goal)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
