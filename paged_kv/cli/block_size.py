"""``paged-kv block-size``: paged waste against block size."""

from __future__ import annotations

import argparse

from paged_kv.cli import add_command
from paged_kv.cli._common import (
    add_allow_large,
    add_model_options,
    add_output_options,
    check_serving_memory,
    choice_list,
    emit,
    int_list,
    kv_pool_slots,
    positive_int,
    positive_number,
    progress_enabled,
    seed,
    write_figure,
)

NAME = "block-size"
HELP = "paged waste against block size"
DESCRIPTION = """\
Serve synthetic workloads on the paged cache at several block sizes and report the
share of KV memory in use that does not hold token states (reservation and internal
fragmentation of partly filled last blocks)."""
WORKLOADS = ("sharegpt-like", "alpaca-like")


def register(subparsers) -> None:
    """Add ``block-size`` and its options."""
    parser = add_command(subparsers, __name__, NAME, HELP, DESCRIPTION)
    parser.add_argument("--block-sizes", type=int_list(1, 4096),
                        default=[1, 2, 4, 8, 16, 32, 64, 128, 256],
                        help="comma-separated block sizes to run, in tokens")
    parser.add_argument("--workloads", type=choice_list(WORKLOADS), default=list(WORKLOADS),
                        help="comma-separated synthetic length models to serve")
    add_model_options(parser)
    parser.add_argument("--rate", type=positive_number, default=20.0,
                        help="arrivals per second")
    parser.add_argument("--num-requests", type=positive_int, default=1000,
                        help="requests per run")
    parser.add_argument("--seed", type=seed, default=0, help="seed of lengths and arrivals")
    add_allow_large(parser)
    add_output_options(parser, figure=True)


def check(args: argparse.Namespace) -> None:
    """Refuse a sweep whose runs would not fit in memory, unless --allow-large."""
    blocks = kv_pool_slots(args.model) // min(args.block_sizes)
    check_serving_memory(args, requests=args.num_requests, num_blocks=blocks,
                         flag="--num-requests",
                         what=f"serving {args.num_requests:,} requests per block size")


def run(args: argparse.Namespace) -> int:
    """Run the sweep, print the table, write the figure."""
    from paged_kv.core.config import get_model  # noqa: PLC0415
    from paged_kv.plots import plot_block_size  # noqa: PLC0415
    from paged_kv.sim.hardware import get_gpu  # noqa: PLC0415
    from paged_kv.studies import block_size_sweep  # noqa: PLC0415
    from paged_kv.studies._common import default_kv_bytes  # noqa: PLC0415

    frame = block_size_sweep(
        block_sizes=tuple(args.block_sizes), workloads=tuple(args.workloads),
        model=args.model, num_requests=args.num_requests, rate=args.rate, seed=args.seed,
        progress=progress_enabled(args),
    )
    kv_gib = default_kv_bytes(get_model(args.model), get_gpu("A100-40GB")) / 2**30
    setup = (f"{args.model}, {kv_gib:.1f} GiB of KV on one A100-40GB, {args.num_requests} "
             f"requests per run at {args.rate:g} req/s, seed {args.seed}")
    print(f"{setup}; paged waste (% of memory in use that is not token states):\n")
    emit(frame, args, columns={"workload": "workload", "block_size": "block size",
                               "waste_pct": "waste %|{:.2f}"})
    if args.figure is not None:
        title = f"Paged waste against block size: {setup}"
        write_figure(plot_block_size(frame, title=title), args)
    return 0
