"""``paged-kv fragmentation``: the vLLM paper's Fig. 2, where the KV memory goes."""

from __future__ import annotations

import argparse

from paged_kv.cli import add_command
from paged_kv.cli._common import (
    add_output_options,
    emit,
    positive_int,
    positive_number,
    progress_enabled,
    seed,
)

NAME = "fragmentation"
HELP = "vLLM Fig. 2: where the KV memory goes (Max, Pow2, Oracle, paged)"
DESCRIPTION = """\
Serve one workload with continuous batching on four memory schemes (Orca's contiguous
Max, Pow2 and Oracle reservations, and the paged cache) and report the shares of KV
memory holding token states, reservations, internal and external fragmentation."""
WORKLOADS = ("sharegpt", "sharegpt-like", "alpaca-like", "azure-conv", "azure-code")


def register(subparsers) -> None:
    """Add ``fragmentation`` and its options."""
    parser = add_command(subparsers, __name__, NAME, HELP, DESCRIPTION)
    parser.add_argument("--workload", default="sharegpt", choices=WORKLOADS,
                        help="request lengths: shipped ShareGPT, synthetic, or Azure traces")
    parser.add_argument("--model", default="opt-13b", help="model preset")
    parser.add_argument("--kv-gib", type=positive_number, default=12.0,
                        help="KV cache size in GiB")
    parser.add_argument("--block-size", type=positive_int, default=16,
                        help="tokens per block of the paged cache")
    parser.add_argument("--rate", type=positive_number, default=10.0,
                        help="arrivals per second")
    parser.add_argument("--num-requests", type=positive_int, default=2000,
                        help="requests to serve")
    parser.add_argument("--seed", type=seed, default=0, help="seed of lengths and arrivals")
    add_output_options(parser, figure="figures/fragmentation.png")


def run(args: argparse.Namespace) -> int:
    """Run the study, print the table, write the figure."""
    from paged_kv.plots import plot_fragmentation, save  # noqa: PLC0415
    from paged_kv.sim.studies import fragmentation_study  # noqa: PLC0415

    study = fragmentation_study(
        model=args.model, kv_bytes=int(args.kv_gib * 2**30), workload=args.workload,
        num_requests=args.num_requests, rate=args.rate, block_size=args.block_size,
        seed=args.seed, progress=progress_enabled(args),
    )
    s = study.settings
    print(f"{s['model']}: {s['kv_slots']:,} KV token slots, max length {s['max_seq_len']}; "
          f"{s['workload']}: {s['requests']} requests (mean prompt {s['mean_prompt']:.0f}, "
          f"output {s['mean_output']:.0f} tokens) at {s['rate']} req/s, seed {s['seed']}")
    print("Shares of the KV memory in use, averaged over steps while requests wait:\n")
    emit(study.table, args, columns={
        "scheme": "scheme", "token_states_pct": "token states %",
        "paper_token_states_pct": "paper (Fig. 2) %", "reservation_pct": "reservation %",
        "internal_frag_pct": "internal frag. %", "external_frag_pct": "external frag. %",
        "waste_pct": "waste %",
    })
    if args.figure is not None:
        print(f"wrote {save(plot_fragmentation(study.table), args.figure)}")
    return 0
