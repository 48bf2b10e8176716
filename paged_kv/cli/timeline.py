"""``paged-kv timeline``: the memory categories over the time of one serving run."""

from __future__ import annotations

import argparse

from paged_kv.cli import add_command
from paged_kv.cli._common import (
    add_allow_large,
    add_output_options,
    add_serving_options,
    applies_rate,
    check_serving_memory,
    emit,
    kv_pool_slots,
    progress_enabled,
    refuse_if_given,
    write_figure,
)

NAME = "timeline"
HELP = "memory categories over the time of one serving run"
DESCRIPTION = """\
Serve one workload with continuous batching on one memory scheme and follow the KV
memory step by step: token states, reservations, internal and external fragmentation
and free slots (the vLLM paper's Fig. 2 categories), against simulated time. Prints the
categories at evenly spaced steps (--output writes every step) and draws them."""
SCHEMES = ("paged", "max", "pow2", "oracle")


def register(subparsers) -> None:
    """Add ``timeline`` and its options."""
    from paged_kv.studies import WORKLOADS  # noqa: PLC0415

    parser = add_command(subparsers, __name__, NAME, HELP, DESCRIPTION)
    parser.add_argument("--scheme", default="paged", choices=SCHEMES,
                        help="memory scheme: the paged cache or Orca's contiguous reservations")
    add_serving_options(parser, workloads=WORKLOADS,
                        block_size_help="tokens per block (paged scheme only)")
    add_allow_large(parser)
    add_output_options(parser, figure=True)


def check(args: argparse.Namespace) -> None:
    """Refuse --block-size for a contiguous scheme, and a run that would not fit in
    memory unless --allow-large."""
    if args.scheme != "paged":
        refuse_if_given(args, "--block-size", f"the {args.scheme} scheme has no blocks")
    slots = kv_pool_slots(args.model, kv_gib=args.kv_gib)
    check_serving_memory(args, requests=args.num_requests,
                         num_blocks=slots // args.block_size if args.scheme == "paged" else 0,
                         flag="--num-requests",
                         what=f"serving {args.num_requests:,} requests")


def run(args: argparse.Namespace) -> int:
    """Serve, print the categories at evenly spaced steps, draw the timeline."""
    from paged_kv.core.config import get_model  # noqa: PLC0415
    from paged_kv.plots import plot_timeline  # noqa: PLC0415
    from paged_kv.sim.scheduler import simulate  # noqa: PLC0415
    from paged_kv.sim.schemes import ContiguousScheme, PagedScheme  # noqa: PLC0415
    from paged_kv.studies import kv_slots, make_workload  # noqa: PLC0415

    spec = get_model(args.model)
    slots = kv_slots(spec, int(args.kv_gib * 2**30))
    rate = args.rate if applies_rate(args) else None
    work = make_workload(args.workload, args.num_requests, rate=rate, seed=args.seed,
                         max_len=spec.max_seq_len)
    if args.scheme == "paged":
        scheme = PagedScheme(slots // args.block_size, args.block_size)
    else:
        scheme = ContiguousScheme(slots, args.scheme, spec.max_seq_len)
    result = simulate(work, scheme, progress=progress_enabled(args))
    arrivals = f"{rate:g} req/s" if rate else "recorded arrivals"
    setup = (f"{result.scheme}, {spec.name}, {args.kv_gib:g} GiB of KV ({slots:,} slots), "
             f"{args.workload}: {len(work)} requests at {arrivals}, seed {args.seed}")
    print(f"timeline: {setup}; {len(result.steps):,} steps over "
          f"{result.steps['time_s'].iloc[-1]:.1f} simulated s (token slots per category)\n")
    emit(result.steps, args, max_rows=12, rate=rate, columns={
        "step": "step", "time_s": "time s|{:.2f}", "running": "running", "waiting": "waiting",
        "token_states": "token states", "reservation": "reservation",
        "internal_frag": "internal frag.", "external_frag": "external frag.", "free": "free"})
    if args.figure is not None:
        fig = plot_timeline(result.steps, title=f"Memory over one run: {setup}")
        write_figure(fig, args)
    return 0
