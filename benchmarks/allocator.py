"""Benchmark: block allocator and fork/free throughput vs a bare `collections.deque` loop.

    python benchmarks/allocator.py [--sizes 1000 100000] [--cycles 100000] [--repeats 7]

Rows (each timed against a deque loop of the same number of operations, in the same run):

* ``allocate + free``: a fresh `BlockAllocator(n)`; `allocate` every block one at a time,
  then `free` them all (2n operations). Baseline: popleft n ids from a deque of n, then
  append them back.
* ``allocate_many + free_many``: the same 2n block operations through the batch calls,
  `--chunk` blocks per call (how the manager allocates a prompt and frees a sequence).
  Same baseline as above: it shows what batching buys against per-block deque calls.
* ``fork + free child``: a metadata-only `PagedKVCache` holding one sequence of
  `--tokens` tokens over `--block-size`-token blocks; fork it and free the child,
  `--cycles` times. Each fork and each free counts as one operation (2 per cycle).
  Baseline: ``append(popleft())`` per cycle, i.e. the same 2 deque operations.

The ratio is manager time / deque time: how many times slower than the cheapest
possible free list in Python the real bookkeeping is. Times are medians of `--repeats`
interleaved repeats (each repeat times every row and its baseline back to back);
construction is outside the timed region and the garbage collector is off inside it.
A row smaller than `--min-ops` operations is run back to back (every run leaves the
state as it found it) until a sample covers at least that many, and the sample is
divided by the number of runs, so small rows are not lost in timer noise.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from paged_kv.cache import PagedKVCache
from paged_kv.core.block_allocator import BlockAllocator
from paged_kv.core.config import CacheConfig

#: a timed loop, and the check run on its state afterwards (outside the timing)
Run = Callable[[], None]


@dataclass
class Case:
    """One row: a set-up that returns the timed function, its baseline, and a check."""

    name: str
    count: int  # operations per run
    setup: Callable[[], tuple[Run, Run]]  # fresh state -> (timed run, check after it)
    baseline: Callable[[], Run]  # fresh deque -> timed deque loop


def _timed(fn: Run, loops: int) -> float:
    """Seconds per call of `fn`, over `loops` back-to-back calls with the GC off."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        return (time.perf_counter() - start) / loops
    finally:
        if enabled:
            gc.enable()


# -- deque baselines ---------------------------------------------------------------------
def deque_drain_refill(n: int) -> Run:
    """Set up a deque of n ids; the returned loop pops all n, then appends them back."""
    free = deque(range(n))

    def run() -> None:
        popleft, append = free.popleft, free.append
        taken = [popleft() for _ in range(n)]
        for block in taken:
            append(block)

    return run


def deque_cycles(cycles: int) -> Run:
    """Set up a small deque; the returned loop does ``append(popleft())`` `cycles` times."""
    free = deque(range(64))

    def run() -> None:
        popleft, append = free.popleft, free.append
        for _ in range(cycles):
            append(popleft())

    return run


# -- manager workloads ---------------------------------------------------------------------
def allocate_free_one_by_one(n: int) -> tuple[Run, Run]:
    """A fresh allocator; the run allocates all n blocks singly, then frees them singly."""
    allocator = BlockAllocator(n)

    def run() -> None:
        allocate, free = allocator.allocate, allocator.free
        taken = [allocate() for _ in range(n)]
        for block in taken:
            free(block)

    def check() -> None:
        if allocator.num_free != n or allocator.check():
            raise RuntimeError(f"allocator of {n} blocks left inconsistent: {allocator.check()}")

    return run, check


def allocate_free_batched(n: int, chunk: int) -> tuple[Run, Run]:
    """A fresh allocator; the run takes all n blocks `chunk` at a time, then frees them."""
    allocator = BlockAllocator(n)
    sizes = [min(chunk, n - i) for i in range(0, n, chunk)]

    def run() -> None:
        allocate_many, free_many = allocator.allocate_many, allocator.free_many
        taken = [allocate_many(size) for size in sizes]
        for blocks in taken:
            free_many(blocks)

    def check() -> None:
        if allocator.num_free != n or allocator.check():
            raise RuntimeError(f"allocator of {n} blocks left inconsistent: {allocator.check()}")

    return run, check


def fork_free(cycles: int, tokens: int, block_size: int) -> tuple[Run, Run]:
    """A metadata-only cache with one sequence; the run forks it and frees the child."""
    num_blocks = -(-tokens // block_size)
    cache = PagedKVCache(CacheConfig(block_size=block_size, num_gpu_blocks=num_blocks + 1))
    parent = cache.allocate(tokens)

    def run() -> None:
        fork, free = cache.fork, cache.free
        for _ in range(cycles):
            free(fork(parent))

    def check() -> None:
        cache.check_invariants()
        if len(cache) != 1 or cache.gpu.ref_counts[: num_blocks] != [1] * num_blocks:
            raise RuntimeError("fork/free cycles left children or references behind")

    return run, check


def make_cases(args: argparse.Namespace) -> list[Case]:
    """The benchmark's rows, in table order."""
    cases = []
    for n in args.sizes:
        cases.append(Case(
            f"`allocate` + `free`, one block at a time, {n:,} blocks", 2 * n,
            lambda n=n: allocate_free_one_by_one(n), lambda n=n: deque_drain_refill(n),
        ))
        cases.append(Case(
            f"`allocate_many` + `free_many`, {args.chunk} per call, {n:,} blocks", 2 * n,
            lambda n=n: allocate_free_batched(n, args.chunk),
            lambda n=n: deque_drain_refill(n),
        ))
    blocks = -(-args.tokens // args.block_size)
    cases.append(Case(
        f"`fork` + `free` child ({args.tokens} tokens, {blocks} blocks of "
        f"{args.block_size}), {args.cycles:,} cycles", 2 * args.cycles,
        lambda: fork_free(args.cycles, args.tokens, args.block_size),
        lambda: deque_cycles(args.cycles),
    ))
    return cases


def machine() -> str:
    """A one-line description of this machine (CPU model, cores, Python)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{cpu}, {platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, {platform.system()}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000],
                        help="pool sizes in blocks for the allocate/free rows")
    parser.add_argument("--chunk", type=int, default=16,
                        help="blocks per allocate_many / free_many call")
    parser.add_argument("--cycles", type=int, default=100_000, help="fork + free cycles")
    parser.add_argument("--tokens", type=int, default=64, help="tokens of the forked sequence")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--min-ops", type=int, default=200_000,
                        help="run small rows back to back to cover this many ops per sample")
    args = parser.parse_args(argv)
    for name in ("sizes", "chunk", "cycles", "tokens", "block_size", "repeats", "min_ops"):
        values = getattr(args, name)
        if any(x <= 0 for x in (values if isinstance(values, list) else [values])):
            parser.error(f"--{name.replace('_', '-')} must be positive, got {values}")

    cases = make_cases(args)
    loops = [-(-args.min_ops // case.count) for case in cases]
    manager_times: list[list[float]] = [[] for _ in cases]
    deque_times: list[list[float]] = [[] for _ in cases]
    for _ in range(args.repeats):
        for i, case in enumerate(cases):
            run, check = case.setup()
            manager_times[i].append(_timed(run, loops[i]))
            check()
            deque_times[i].append(_timed(case.baseline(), loops[i]))

    print(f"Machine: {machine()}")
    print(f"Median of {args.repeats} interleaved repeats; times are per run of `count` "
          f"operations, each sample covering at least {args.min_ops:,} operations.\n")
    print("| operation | count (ops) | wall time (ms) | ops/s | deque-loop time (ms) | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for case, times, base_times in zip(cases, manager_times, deque_times):
        wall, base = statistics.median(times), statistics.median(base_times)
        print(f"| {case.name} | {case.count:,} | {wall * 1e3:.3f} | "
              f"{case.count / wall:,.0f} | {base * 1e3:.3f} | {wall / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
