"""Benchmark: Mooncake conversation replay, the manager against the compiled engine and more.

    python benchmarks/replay.py [--repeats 3] [--warmup 0.5] [--workers 2]

Two sections, each timed in one run (medians of `--repeats` interleaved runs):

1. **One point through the manager.** LRU at 10,000 blocks through
   `paged_kv.sim.replay.replay` (the real `PagedKVCache`, metadata-only) against a bare
   `OrderedDict` loop with the same rules (`benchmarks/_minimal_lru.py`); both must
   report the same hit rate.
2. **The 15-point sweep** (LRU, FIFO, Belady x 1k, 10k, 30k, 50k, 100k blocks) with
   warm-up `--warmup`: `sweep(engine="manager")` one point after another; the compiled
   engine (`sweep(engine="compiled")`) in one process and on `--workers` processes; and,
   when kvcache-simulator is installed (``pip install 'paged_kv[bench]'``; its C++
   backend needs a C++ compiler), its C++ batch backend on the same points with the same
   warm-up requests (its own rules: partial last blocks count, no last-token cap, leaf
   eviction in a prefix trie, so its hit rates differ a little). The manager and compiled
   frames must be identical; the script fails if not. Goals: compiled >= 30x faster than
   the manager, and no slower than kvcache-simulator's C++ backend.

Compile time is reported apart: the compiled engine is built in a fresh process with an
empty Numba cache (cold) and loaded again from that cache by a second process (warm).
Every time above is after compilation, from a trace already in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _minimal_lru import minimal_lru_replay  # noqa: E402

from paged_kv.sim.replay import replay  # noqa: E402
from paged_kv.sim.replay_arrays import TraceArrays  # noqa: E402
from paged_kv.sim.replay_sweep import sweep  # noqa: E402
from paged_kv.sim.traces import TRACES, _read_bytes, load_trace  # noqa: E402

POLICIES = ["lru", "fifo", "belady"]
CAPACITIES = [1_000, 10_000, 30_000, 50_000, 100_000]
MINIMAL_GOAL = 3.0
MANAGER_GOAL = 30.0
TRACE = "mooncake-conversation"


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def compile_times() -> tuple[float, float]:
    """(cold compile, warm load) of the compiled engine, each in a fresh process."""
    code = ("from paged_kv.sim.replay_compiled import compile_engine; "
            "print(compile_engine())")
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        times = [float(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                      capture_output=True, text=True).stdout.split()[-1])
                 for _ in range(2)]
    return times[0], times[1]


def kvcache_simulator(warmup_requests: int):
    """A function running kvcache-simulator's C++ batch sweep, or None (not installed)."""
    try:
        from kvcache_sim.cpp_backend import ensure_cpp_simulator, run_cpp_sweep
        from kvcache_sim.trace import parse_trace_lines
    except ImportError:
        return None, "kvcache-simulator is not installed (pip install 'paged_kv[bench]')"
    text = _read_bytes(TRACES[TRACE].filename).decode()
    data = parse_trace_lines(text.splitlines(), block_size=512)
    try:
        start = time.perf_counter()
        ensure_cpp_simulator()
        build = time.perf_counter() - start
    except (RuntimeError, OSError, subprocess.CalledProcessError) as err:
        return None, f"kvcache-simulator's C++ backend did not build: {err}"
    policies = ["lru", "fifo", "optimal"]

    def run():
        return run_cpp_sweep(data, capacities=CAPACITIES, policies=policies,
                             warmup_requests=warmup_requests)

    return run, f"C++ core built or found in {build:.1f} s"


def section_minimal(workload, repeats: int) -> tuple[list[str], bool]:
    requests = list(workload)
    total_tokens = sum(r.prompt_len for r in requests)
    manager_times, minimal_times = [], []
    for _ in range(repeats):
        t, result = timed(lambda: replay(workload, 10_000, "lru"))
        manager_times.append(t)
        t, hit_tokens = timed(lambda: minimal_lru_replay(requests, 10_000, 512))
        minimal_times.append(t)
    manager, minimal = statistics.median(manager_times), statistics.median(minimal_times)
    rate = hit_tokens / total_tokens
    ratio = manager / minimal
    lines = [
        "### One point: LRU at 10,000 blocks through the manager\n",
        "| replay | wall time (s) | hit rate |", "|---|---:|---:|",
        f"| paged_kv manager (`replay`) | {manager:.3f} | {result.hit_rate:.4f} |",
        f"| minimal OrderedDict loop | {minimal:.3f} | {rate:.4f} |",
        f"\nratio manager / minimal: {ratio:.2f}x "
        f"({'meets' if ratio <= MINIMAL_GOAL else 'misses'} the {MINIMAL_GOAL:.0f}x goal)",
    ]
    return lines, abs(result.hit_rate - rate) < 1e-12


def section_sweep(workload, repeats: int, warmup: float, workers: int):
    arrays = TraceArrays.from_workload(workload)
    warmup_requests = int(warmup * len(arrays))
    cpp, cpp_note = kvcache_simulator(warmup_requests)
    sweep(arrays, CAPACITIES, POLICIES, warmup=warmup, workers=1, progress=False)  # load
    times: dict[str, list[float]] = {"manager": [], "compiled": [], "parallel": [], "cpp": []}
    for _ in range(repeats):
        t, manager = timed(lambda: sweep(workload, CAPACITIES, POLICIES, warmup=warmup,
                                         engine="manager", workers=1, progress=False))
        times["manager"].append(t)
        t, compiled = timed(lambda: sweep(arrays, CAPACITIES, POLICIES, warmup=warmup,
                                          workers=1, progress=False))
        times["compiled"].append(t)
        t, parallel = timed(lambda: sweep(arrays, CAPACITIES, POLICIES, warmup=warmup,
                                          workers=workers, progress=False))
        times["parallel"].append(t)
        if cpp is not None:
            t, cpp_result = timed(cpp)
            times["cpp"].append(t)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    same = manager.equals(compiled) and compiled.equals(parallel)
    cold, warm = compile_times()
    lines = [
        f"### The 15-point sweep (LRU, FIFO, Belady x {', '.join(f'{c:,}' for c in CAPACITIES)}"
        f" blocks), warm-up {warmup:g} ({warmup_requests:,} requests)\n",
        "| engine | wall time (s) | vs the manager |", "|---|---:|---:|",
        f"| manager (`sweep(engine=\"manager\")`, one process) | {med['manager']:.3f} | 1.0x |",
        f"| compiled, one process | {med['compiled']:.3f} | "
        f"{med['manager'] / med['compiled']:.1f}x |",
        f"| compiled, {workers} worker processes | {med['parallel']:.3f} | "
        f"{med['manager'] / med['parallel']:.1f}x |",
    ]
    if "cpp" in med:
        lines.append(f"| kvcache-simulator C++ batch backend | {med['cpp']:.3f} | "
                     f"{med['manager'] / med['cpp']:.1f}x |")
    ratio = med["manager"] / med["compiled"]
    lines += [
        f"\nmanager / compiled (one process): {ratio:.1f}x "
        f"({'meets' if ratio >= MANAGER_GOAL else 'misses'} the {MANAGER_GOAL:.0f}x goal)",
    ]
    if "cpp" in med:
        versus = med["cpp"] / med["compiled"]
        lines.append(f"kvcache-simulator C++ / compiled (one process): {versus:.2f}x "
                     f"({'meets' if versus >= 1 else 'misses'} the goal: no slower)")
        modes = {r.measurementMode for r in cpp_result.results.values()}
        lines.append(f"kvcache-simulator: {cpp_note}; measurement modes {sorted(modes)}")
        rows = ["\n| policy | capacity | hit rate, paged_kv | hit rate, kvcache-simulator |",
                "|---|---:|---:|---:|"]
        for row in compiled.itertuples():
            theirs = cpp_result.results[("optimal" if row.policy == "belady" else row.policy,
                                         int(row.capacity))].hitRate
            rows.append(f"| {row.policy} | {int(row.capacity):,} | {row.hit_rate:.4f} | "
                        f"{theirs:.4f} |")
        lines += rows
    else:
        lines.append(f"kvcache-simulator: {cpp_note}")
    lines.append(f"\ncompile time of the compiled engine (all 7 policies): {cold:.1f} s cold "
                 f"(empty Numba cache), {warm:.2f} s for a second process loading it from "
                 f"the on-disk cache")
    return lines, same, json.loads(compiled.to_json(orient="records"))


def main(argv: list[str] | None = None) -> int:
    """Run both sections and print markdown; exit 1 if the engines disagree."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    workload = load_trace(TRACE)
    refs = sum(len(r.block_keys) for r in workload)
    print(f"Mooncake conversation: {len(workload):,} requests, {refs:,} block references, "
          f"median of {args.repeats}\n")
    lines, ok_minimal = section_minimal(workload, args.repeats)
    print("\n".join(lines) + "\n")
    lines, ok_sweep, _ = section_sweep(workload, args.repeats, args.warmup, args.workers)
    print("\n".join(lines))
    if not (ok_minimal and ok_sweep):
        print("ERROR: the replays disagree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
