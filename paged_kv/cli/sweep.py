"""``paged-kv sweep``: hit rates of a trace at every policy x capacity point."""

from __future__ import annotations

import argparse
import os

from paged_kv.cli import add_command
from paged_kv.cli._common import (
    CONNECT_TIMEOUT_S,
    UsageError,
    add_output_options,
    address,
    check_reachable,
    choice_list,
    emit,
    int_list,
    positive_int,
    progress_enabled,
    refuse_if_given,
    write_figure,
)
from paged_kv.cli.replay import (
    HIT_RATE_COLUMNS,
    add_trace_options,
    capacity,
    capacity_shown,
    load_trace_option,
)

NAME = "sweep"
HELP = "hit rates at every eviction policy x cache capacity (compiled, parallel)"
DESCRIPTION = """\
Replay a trace at every (policy, capacity) point and print one row per point: the
token-weighted and block-weighted hit rates, the evictions and the requests measured.
The compiled engine (default) gives the same numbers as the manager replay, much
faster; points run on local worker processes (--workers) or on a Dask cluster
(--scheduler ADDRESS, needs pip install 'paged_kv[distributed]'). --output saves the
rows with the settings, the package version and the trace's checksum.

Tiers below the GPU: --host-capacities and --disk-capacities (blocks, 0 = no such
tier) are swept against every GPU capacity, with each --placements policy; each row
then splits the hit rate into the part the GPU, the host tier and the disk tier
served, and --output adds the blocks loaded and copied down each way."""


def capacity_list(text: str) -> list[int | None]:
    """Comma-separated capacities in blocks (or 'unbounded'), each listed once."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("expected at least one capacity")
    values = [capacity(part) for part in parts]
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"a capacity is listed twice in {text!r}")
    return values


#: the table of a sweep with tiers below the GPU (name -> header)
TIER_COLUMNS = {
    "policy": "policy", "placement": "placement", "capacity": "GPU (blocks)",
    "host_capacity": "host (blocks)", "disk_capacity": "disk (blocks)",
    "hit_rate": "hit rate|{:.4f}", "gpu_hit_rate": "GPU|{:.4f}",
    "host_hit_rate": "host|{:.4f}", "disk_hit_rate": "disk|{:.4f}",
    "evictions": "GPU evictions", "requests": "requests",
}

capacity_list.__name__ = "capacities"
capacity_list.bad_values = ("", ",", "banana", "0", "1e4", "10,10", "unbounded,unbounded",
                            f"10,{2**70}")


def register(subparsers) -> None:
    """Add ``sweep`` and its options."""
    from paged_kv.core.eviction import ONLINE_POLICIES, policy_names  # noqa: PLC0415
    from paged_kv.core.tier import PLACEMENTS  # noqa: PLC0415
    from paged_kv.sim.replay_sweep import ENGINES  # noqa: PLC0415

    parser = add_command(subparsers, __name__, NAME, HELP, DESCRIPTION)
    add_trace_options(parser)
    parser.add_argument("--policies", type=choice_list(policy_names()),
                        default=["lru", "fifo", "belady"],
                        help="comma-separated eviction policies")
    parser.add_argument("--capacities", type=capacity_list,
                        default=[1000, 10000, 30000, 50000, 100000], metavar="N,...",
                        help="comma-separated cache capacities in blocks ('unbounded' "
                             "allowed)")
    parser.add_argument("--host-capacities", type=int_list(0), default=[0], metavar="N,...",
                        help="comma-separated host-tier capacities in blocks (0: no host "
                             "tier), each swept against every GPU capacity")
    parser.add_argument("--disk-capacities", type=int_list(0), default=[0], metavar="N,...",
                        help="comma-separated disk-tier capacities in blocks (0: no disk "
                             "tier)")
    parser.add_argument("--placements", type=choice_list(PLACEMENTS), default=["write_through"],
                        help="comma-separated placement policies: when blocks are copied "
                             "to the tiers below the GPU")
    parser.add_argument("--host-policy", choices=ONLINE_POLICIES, default="lru",
                        help="the host tier's eviction policy (compiled engine: lru, arc)")
    parser.add_argument("--disk-policy", choices=ONLINE_POLICIES, default="lru",
                        help="the disk tier's eviction policy (compiled engine: lru, arc)")
    parser.add_argument("--engine", choices=ENGINES, default="compiled",
                        help="compiled (Numba) or manager (the reference path)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="local worker processes (default: one per CPU)")
    parser.add_argument("--scheduler", type=address, default=None, metavar="ADDRESS",
                        help="run the points on this Dask scheduler, e.g. tcp://host:8786 "
                             f"(refused if it does not answer within {CONNECT_TIMEOUT_S:g} s)")
    add_output_options(parser, figure=True)


#: the tier policies the compiled engine runs (`paged_kv.sim.replay_compiled_tiers`; kept
#: here so that checking the flags loads no numba)
COMPILED_TIER_POLICIES = ("lru", "arc")


def check(args: argparse.Namespace) -> None:
    """Refuse tier options without a tier, a tier policy the compiled engine does not run,
    --scheduler without the distributed extra, with --workers, or where no scheduler
    answers (within `CONNECT_TIMEOUT_S`); then load the trace."""
    host = any(args.host_capacities)
    disk = any(args.disk_capacities)
    if not (host or disk):
        for flag in ("--placements", "--host-policy", "--disk-policy"):
            refuse_if_given(args, flag, "applies to the tiers below the GPU: give "
                                        "--host-capacities or --disk-capacities above 0")
    for tier, present in (("host", host), ("disk", disk)):
        flag = f"--{tier}-policy"
        if not present:
            refuse_if_given(args, flag, f"there is no {tier} tier (--{tier}-capacities 0)")
        policy = getattr(args, f"{tier}_policy")
        if present and args.engine == "compiled" and policy not in COMPILED_TIER_POLICIES:
            raise UsageError(f"argument {flag}: the compiled engine runs lru or arc tiers; "
                             f"use --engine manager for {policy!r}")
    if args.scheduler is not None:
        if args.workers is not None:
            raise UsageError("argument --workers: not used with --scheduler (the cluster's "
                             "workers run the points)")
        try:
            import distributed  # noqa: F401, PLC0415
        except ImportError:
            raise UsageError("argument --scheduler: needs the optional extra: "
                             "pip install 'paged_kv[distributed]'") from None
        check_reachable("--scheduler", args.scheduler)
    load_trace_option(args)


def run(args: argparse.Namespace) -> int:
    """Sweep, print the table, write the figure."""
    from paged_kv.sim.replay_arrays import as_trace_arrays  # noqa: PLC0415
    from paged_kv.sim.replay_sweep import sweep  # noqa: PLC0415

    trace = as_trace_arrays(args._workload)
    workers = None if args.scheduler is not None else args.workers or os.cpu_count() or 1
    frame = sweep(trace, args.capacities, args.policies, host_capacities=args.host_capacities,
                  disk_capacities=args.disk_capacities, placements=args.placements,
                  host_policy=args.host_policy, disk_policy=args.disk_policy,
                  warmup=args.warmup, engine=args.engine, workers=workers,
                  scheduler=args.scheduler, progress=progress_enabled(args))
    tiered = any(args.host_capacities) or any(args.disk_capacities)
    print(f"{trace.name}: {len(trace):,} requests ({frame['requests'].iloc[0]:,} measured), "
          f"{trace.num_accesses:,} block keys of {trace.block_size} tokens, "
          f"checksum {trace.checksum}; engine {args.engine}, "
          + (f"Dask scheduler {args.scheduler}" if workers is None
             else f"{workers} worker" + "s" * (workers > 1)) + "\n")
    emit(capacity_shown(frame), args, columns=TIER_COLUMNS if tiered else HIT_RATE_COLUMNS,
         trace_checksum=trace.checksum, trace_requests=len(trace),
         block_size=trace.block_size, workers=workers)
    if args.figure is not None:
        from paged_kv.plots import plot_hit_rates, plot_tier_sweep  # noqa: PLC0415

        title = (f"{trace.name}: prefix-cache hit rate, {trace.block_size}-token blocks, "
                 f"requests replayed one at a time"
                 + (f", first {args.warmup:.0%} as warm-up" if args.warmup else ""))
        fig = plot_tier_sweep(frame, title=title) if tiered else plot_hit_rates(
            frame, title=title)
        write_figure(fig, args)
    return 0
