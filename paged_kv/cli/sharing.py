"""``paged-kv sharing``: the vLLM paper's Fig. 15, memory saved by sharing blocks."""

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
    paper_note,
    positive_int,
    progress_enabled,
    unlike_paper,
    without_paper,
    write_figure,
)

NAME = "sharing"
HELP = "vLLM Fig. 15: memory saved by block sharing (parallel sampling, beam search)"
DESCRIPTION = """\
Serve each workload with parallel sampling and beam search of several widths on the
paged cache (the model's KV budget on an A100-40GB, 12 GiB for the default OPT-13B,
block 16, swap to a host pool as large as the GPU pool) and report the memory saved by
sharing blocks, 1 - physical / unshared blocks, time-averaged, as a mean and spread over
seeds beside the paper's ranges (OPT-13B only: its setting). Beam search
uses the fitted lineage model (paged_kv.sim.scheduler): its numbers are a fit to the
paper's, parallel sampling's a prediction."""
WORKLOADS = ("alpaca-like", "sharegpt-like")


def register(subparsers) -> None:
    """Add ``sharing`` and its options."""
    parser = add_command(subparsers, __name__, NAME, HELP, DESCRIPTION)
    parser.add_argument("--workloads", type=choice_list(WORKLOADS), default=list(WORKLOADS),
                        help="comma-separated workloads")
    parser.add_argument("--samplings", type=choice_list(("parallel", "beam")),
                        default=["parallel", "beam"], help="comma-separated decodings")
    parser.add_argument("--widths", type=int_list(2, 64), default=[2, 4, 6],
                        help="comma-separated samples per request / beam widths")
    parser.add_argument("--seeds", type=int_list(0, 2**32 - 1), default=[0, 1, 2, 3, 4],
                        help="comma-separated seeds, one run each")
    parser.add_argument("--num-requests", type=positive_int, default=500,
                        help="requests per run")
    add_model_options(parser)
    add_allow_large(parser)
    add_output_options(parser, figure=True)


def check(args: argparse.Namespace) -> None:
    """Refuse runs that would not fit in memory, unless --allow-large: each request
    holds up to its width of sequences, in a GPU pool and a host pool as large."""
    width = max(args.widths)
    check_serving_memory(args, requests=args.num_requests * width,
                         num_blocks=2 * (kv_pool_slots(args.model) // 16),
                         flag="--num-requests",
                         what=f"serving {args.num_requests:,} requests of up to {width} "
                              f"sequences each")


def run(args: argparse.Namespace) -> int:
    """Run the study, print the table beside the paper's ranges, write the figure."""
    from paged_kv.core.config import get_model  # noqa: PLC0415
    from paged_kv.plots import plot_sharing  # noqa: PLC0415
    from paged_kv.sim.hardware import get_gpu  # noqa: PLC0415
    from paged_kv.studies import sharing_study  # noqa: PLC0415
    from paged_kv.studies._common import default_kv_bytes  # noqa: PLC0415

    table = sharing_study(widths=tuple(args.widths), workloads=tuple(args.workloads),
                          samplings=tuple(args.samplings), seeds=tuple(args.seeds),
                          num_requests=args.num_requests, model=args.model,
                          progress=progress_enabled(args))
    model = get_model(args.model)
    kv_gib = default_kv_bytes(model, get_gpu("A100-40GB")) / 2**30
    differs = unlike_paper(args, model)
    print(f"{args.model}, {kv_gib:.1f} GiB of KV, block 16: {args.num_requests} requests "
          f"per run, seeds {', '.join(map(str, args.seeds))}; memory saved by sharing (%), "
          f"mean and standard deviation over seeds"
          + ("" if differs else ", beside the vLLM paper's range over widths 2, 4, 6")
          + ":\n" + paper_note(differs))
    table, columns = without_paper(table, {
        "workload": "workload", "sampling": "sampling", "n": "n",
        "saved_pct": "saved %", "saved_sd": "sd|{:.2f}",
        "paper_low_pct": "paper low %", "paper_high_pct": "paper high %",
        "cow_copies_per_request": "COW copies / request",
    }, differs)
    emit(table, args, columns=columns)
    if args.figure is not None:
        fig = plot_sharing(table, title=(
            f"Memory saved by sharing, {args.model}, {kv_gib:.1f} GiB of KV, block 16\n(mean "
            f"and sd over {len(args.seeds)} seed{'s' * (len(args.seeds) > 1)}; beam search: "
            f"fitted lineage model)"))
        fig.axes[0].title.set_fontsize(10)
        write_figure(fig, args)
    return 0
