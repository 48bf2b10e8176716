"""``paged-kv block-map``: the GPU block pool, block by block, over a short serving run."""

from __future__ import annotations

import argparse

import pandas as pd

from paged_kv.cli import add_command
from paged_kv.cli._common import (
    UsageError,
    add_output_options,
    emit,
    emit_table,
    int_at_least,
    int_list,
    nonnegative_int,
    progress_enabled,
    seed,
    write_figure,
)

NAME = "block-map"
HELP = "the GPU block pool over time: owners, sharing, cached and free blocks"
DESCRIPTION = """\
Serve a short seeded workload on a metadata-only paged cache with prefix caching on:
requests that open with one of a few shared system prompts, every few requests forking
a second sample (copy-on-write), FCFS admission with preemption. After every step the
pool is snapshotted from the manager's own state: which request holds each block, which
blocks several requests share, which free blocks still hold a cached prefix (evictable)
and which are free. Prints what happened and the blocks per state at evenly spaced
steps, and draws the map (one column per step, one row per token slot)."""


def _policies() -> list[str]:
    from paged_kv.core.eviction import make_policy, policy_names  # noqa: PLC0415

    usable = []
    for name in policy_names():
        try:
            make_policy(name)  # an offline policy (belady) needs the future: not here
        except ValueError:
            continue
        usable.append(name)
    return usable


def register(subparsers) -> None:
    """Add ``block-map`` and its options."""
    parser = add_command(subparsers, __name__, NAME, HELP, DESCRIPTION)
    parser.add_argument("--num-blocks", type=int_at_least(1, 4096), default=96,
                        help="blocks in the GPU pool")
    parser.add_argument("--block-size", type=int_at_least(1, 256), default=4,
                        help="tokens per block")
    parser.add_argument("--num-requests", type=int_at_least(1, 10_000), default=30,
                        help="requests to serve")
    parser.add_argument(
        "--prefix-lens", type=int_list(1, 1024, repeats=True), default=[16, 10, 6],
        help="comma-separated lengths of the shared system prompts (the first is the most "
             "common; equal lengths are different prompts)")
    parser.add_argument("--max-running", type=int_at_least(1, 256), default=6,
                        help="requests running at once")
    parser.add_argument("--parallel-every", type=nonnegative_int, default=4,
                        help="every N-th request forks a second sample (0: none)")
    parser.add_argument("--policy", default="lru", choices=_policies(),
                        help="eviction policy of the prefix cache")
    parser.add_argument("--seed", type=seed, default=0, help="seed of prompts and arrivals")
    add_output_options(parser, figure=True, tables=("summary",))


def check(args: argparse.Namespace) -> None:
    """Refuse a pool too small for the longest request before serving."""
    from paged_kv.studies.block_map import min_blocks  # noqa: PLC0415

    needed = min_blocks(args.block_size, tuple(args.prefix_lens), args.parallel_every)
    if args.num_blocks < needed:
        raise UsageError(
            f"argument --num-blocks: {args.num_blocks} blocks of {args.block_size} tokens "
            f"cannot hold the longest request (prefix up to {max(args.prefix_lens)} tokens, "
            f"with its second sample); give at least {needed}"
        )


def run(args: argparse.Namespace) -> int:
    """Serve, print what happened and the pool per state, draw the map."""
    from paged_kv.plots import plot_block_map  # noqa: PLC0415
    from paged_kv.studies.block_map import block_map_summary, scripted_serving  # noqa: PLC0415

    recorder, log = scripted_serving(
        num_blocks=args.num_blocks, block_size=args.block_size,
        num_requests=args.num_requests, prefix_lens=tuple(args.prefix_lens),
        max_running=args.max_running, parallel_every=args.parallel_every, seed=args.seed,
        policy=args.policy, progress=progress_enabled(args),
    )
    setup = (f"{args.num_blocks} blocks of {args.block_size} tokens, {args.num_requests} "
             f"requests, prefixes {'/'.join(map(str, args.prefix_lens))} tokens, "
             f"{args.policy.upper()} eviction, seed {args.seed}")
    print(f"block map: {setup}\n")
    facts = block_map_summary(recorder, log)
    emit_table(pd.DataFrame({"what happened": list(facts),
                             "value": ["-" if v is None else str(v) for v in facts.values()]}),
               args, "summary")
    print()
    steps = log.merge(recorder.counts().drop(columns="label"), left_index=True,
                      right_index=True)
    emit(steps, args, max_rows=12, columns={
        "step": "step", "running": "running", "waiting": "waiting", "owned": "owned",
        "shared": "shared", "evictable": "evictable", "free": "free",
        "unfilled_slots": "unfilled slots", "evictions": "evictions",
        "cow_copies": "COW copies"})
    if args.figure is not None:
        write_figure(plot_block_map(recorder, title=f"Block map: {setup}"), args)
    return 0
