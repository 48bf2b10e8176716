"""``paged-kv fragmentation``: the vLLM paper's Fig. 2, where the KV memory goes."""

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
    given,
    kv_pool_slots,
    paper_note,
    positive_number,
    progress_enabled,
    unlike_paper,
    without_paper,
    write_figure,
)

NAME = "fragmentation"
HELP = "vLLM Fig. 2: where the KV memory goes (Max, Pow2, Oracle, paged)"
DESCRIPTION = """\
Serve one workload with continuous batching on four memory schemes (Orca's contiguous
Max, Pow2 and Oracle reservations behind a buddy allocator, and the paged cache) and
report the time-averaged shares of the whole KV pool holding token states,
reservations, internal fragmentation, and external fragmentation & others (free slots
included), beside the paper's Fig. 2. Defaults are the paper's setting: OPT-13B on an
A100-40GB with 12 GiB of KV, ShareGPT first-turn lengths (sharegpt-like, the paper's
means), Poisson arrivals at 2 req/s for an hour, three seeds. The shipped multi-turn
ShareGPT lengths are --workload sharegpt."""
WORKLOADS = ("sharegpt-like", "sharegpt", "alpaca-like", "azure-conv", "azure-code")
COLUMNS = {
    "scheme": "scheme",
    "token_states_pct": "token states %",
    "paper_token_states_pct": "paper %",
    "token_states_sd": "sd|{:.2f}",
    "reservation_pct": "reservation %",
    "paper_reservation_pct": "paper %",
    "internal_frag_pct": "internal frag. %",
    "paper_internal_frag_pct": "paper %",
    "external_and_others_pct": "ext. frag. & others %",
    "paper_external_and_others_pct": "paper %",
    "mean_requests": "batch|{:.2f}",
    "paper_mean_requests": "paper (Fig. 13a)|{:.2f}",
}


def register(subparsers) -> None:
    """Add ``fragmentation`` and its options."""
    parser = add_command(subparsers, __name__, NAME, HELP, DESCRIPTION)
    add_serving_options(parser, workloads=WORKLOADS, rate=2.0, num_requests=None,
                        seeds=(0, 1, 2), gpu=True, kv_dtype=True,
                        workload_help="request lengths: synthetic (paper's means), shipped "
                                      "ShareGPT conversations, or Azure traces (recorded "
                                      "arrivals)")
    parser.add_argument("--allocator", default="buddy", choices=("buddy", "first-fit"),
                        help="placement of the contiguous baselines")
    parser.add_argument("--duration", type=positive_number, default=3600.0,
                        help="seconds of arrivals (requests = rate x duration)")
    add_allow_large(parser)
    add_output_options(parser, figure=True)


def check(args: argparse.Namespace) -> None:
    """Refuse a study whose runs would not fit in memory, unless --allow-large: the
    first seed's four runs are kept (the figure's), and a fifth runs beside them."""
    from paged_kv.studies._common import requests_for  # noqa: PLC0415

    if args.num_requests is not None:
        requests, flag = args.num_requests, "--num-requests"
    else:
        requests = requests_for(args.rate, args.duration)
        flag = "--rate" if given(args, "--rate") and not given(args, "--duration") else \
            "--duration"
    slots = kv_pool_slots(args.model, kv_dtype=args.kv_dtype, kv_gib=args.kv_gib)
    check_serving_memory(args, requests=requests, num_blocks=slots // args.block_size,
                         runs=5, flag=flag,
                         what=f"serving {requests:,} requests on each of 4 schemes")


def run(args: argparse.Namespace) -> int:
    """Run the study, print the table beside the paper's, write the figure."""
    from paged_kv.core.config import get_model  # noqa: PLC0415
    from paged_kv.plots import plot_fragmentation  # noqa: PLC0415
    from paged_kv.studies import fragmentation_study  # noqa: PLC0415

    model = get_model(args.model).with_kv_dtype(args.kv_dtype)
    study = fragmentation_study(
        model=model, gpu=args.gpu, kv_bytes=int(args.kv_gib * 2**30),
        workload=args.workload, rate=args.rate, duration_s=args.duration,
        num_requests=args.num_requests, block_size=args.block_size,
        allocator=args.allocator, seeds=tuple(args.seeds),
        progress=progress_enabled(args),
    )
    s = study.settings
    arrivals = f"{s['rate']:g} req/s" if applies_rate(args) else "recorded arrivals"
    print(f"{s['model']} ({s['kv_dtype']} KV) on {s['gpu']}: {s['kv_slots']:,} KV token "
          f"slots, max length "
          f"{s['max_seq_len']}; {s['workload']}: {s['requests']} requests per seed (mean "
          f"prompt {s['mean_prompt']:.0f}, output {s['mean_output']:.0f} tokens) at "
          f"{arrivals}; seeds {', '.join(map(str, s['seeds']))}; contiguous "
          f"baselines placed by {s['allocator']}")
    differs = unlike_paper(args, model)  # the paper's numbers only beside its setting
    print("Shares of the whole KV pool, time-averaged while requests arrive (mean over "
          "seeds; sd of the token share)"
          + ("" if differs else ", beside the vLLM paper's Fig. 2 and Fig. 13a") + ":\n"
          + paper_note(differs))
    table, columns = without_paper(study.table, COLUMNS, differs)
    emit(table, args, columns=columns, rate=args.rate if applies_rate(args) else None,
         **{k: v for k, v in s.items() if k in ("kv_slots", "requests", "mean_prompt",
                                                 "mean_output", "step_time")})
    if args.figure is not None:
        fig = plot_fragmentation(table, title=(
            f"Where the KV memory goes: {s['model']}, {s['kv_slots']:,} slots, "
            f"{s['workload']} at {arrivals}"
            + (f", {s['kv_dtype']} KV" if model.kv.quantized else "")
            + ("" if differs else "\n(ours | vLLM paper Fig. 2, hatched)")))
        write_figure(fig, args)
    return 0
