"""The command line: ``paged-kv <command>`` or ``python -m paged_kv <command>``.

Commands:

* ``demo``: write KV through the kernels, read it back, check every byte; says which
  device ran it (a GPU's name or "CUDA simulator").
* ``fragmentation``: the vLLM paper's Fig. 2 study (Max, Pow2, Oracle, paged) on real
  ShareGPT lengths; prints the table and writes ``figures/fragmentation.png``.
* ``block-size``: paged waste against block size; writes ``figures/block_size.png``.
* ``replay``: replay a Mooncake trace through the prefix cache; prints the hit rate.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import pandas as pd


def _table(frame: pd.DataFrame, columns: dict[str, str], fmt: str = "{:.1f}") -> str:
    """A markdown table of `frame`'s `columns` (name -> header)."""
    lines = ["| " + " | ".join(columns.values()) + " |",
             "|" + "---|" * len(columns)]
    for _, row in frame.iterrows():
        cells = [row[c] if isinstance(row[c], str) else fmt.format(row[c]) for c in columns]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _demo(args: argparse.Namespace) -> int:
    from paged_kv.demo import run_demo

    return 0 if run_demo(args.model, seed=args.seed) else 1


def _fragmentation(args: argparse.Namespace) -> int:
    from paged_kv.plots import plot_fragmentation, save
    from paged_kv.sim.studies import fragmentation_study

    study = fragmentation_study(
        model=args.model, kv_bytes=int(args.kv_gib * 2**30), workload=args.workload,
        num_requests=args.num_requests, rate=args.rate, block_size=args.block_size,
        seed=args.seed, progress=not args.no_progress,
    )
    s = study.settings
    print(f"{s['model']}: {s['kv_slots']:,} KV token slots, max length {s['max_seq_len']}; "
          f"{s['workload']}: {s['requests']} requests (mean prompt {s['mean_prompt']:.0f}, "
          f"output {s['mean_output']:.0f} tokens) at {s['rate']} req/s, seed {s['seed']}")
    print("Shares of the KV memory in use, averaged over steps while requests wait:\n")
    print(_table(study.table, {
        "scheme": "scheme", "token_states_pct": "token states %",
        "paper_token_states_pct": "paper (Fig. 2) %", "reservation_pct": "reservation %",
        "internal_frag_pct": "internal frag. %", "external_frag_pct": "external frag. %",
        "waste_pct": "waste %",
    }))
    path = save(plot_fragmentation(study.table), args.out)
    print(f"\nwrote {path}")
    return 0


def _block_size(args: argparse.Namespace) -> int:
    from paged_kv.plots import plot_block_size, save
    from paged_kv.sim.studies import block_size_sweep

    frame = block_size_sweep(
        block_sizes=tuple(args.block_sizes), workloads=tuple(args.workloads),
        model=args.model, num_requests=args.num_requests, rate=args.rate, seed=args.seed,
        progress=not args.no_progress,
    )
    wide = frame.pivot(index="block_size", columns="workload", values="waste_pct")
    print("Paged waste (% of memory in use that is not token states):\n")
    print(wide.round(2).to_string())
    path = save(plot_block_size(frame), args.out)
    print(f"\nwrote {path}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from paged_kv.sim.replay import replay

    capacity = None if args.capacity == "unbounded" else int(args.capacity)
    result = replay(args.trace, capacity, args.policy, warmup=args.warmup,
                    progress=not args.no_progress)
    measured = int(result.requests["measured"].sum())
    print(f"{result.trace}: {measured} requests measured, capacity "
          f"{capacity if capacity is not None else 'unbounded'} blocks of "
          f"{result.block_size} tokens, policy {result.policy}")
    print(f"hit rate {result.hit_rate:.4f} (tokens), {result.block_hit_rate:.4f} (blocks); "
          f"{result.evictions} evictions")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(prog="paged-kv", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="data-plane round trip through the kernels")
    demo.add_argument("--model", default="tiny")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)

    frag = sub.add_parser("fragmentation", help="vLLM Fig. 2: where the KV memory goes")
    frag.add_argument("--workload", default="sharegpt",
                      help="sharegpt (shipped lengths), sharegpt-like, alpaca-like, "
                           "azure-conv, azure-code")
    frag.add_argument("--model", default="opt-13b")
    frag.add_argument("--kv-gib", type=float, default=12.0, help="KV cache size in GiB")
    frag.add_argument("--block-size", type=int, default=16)
    frag.add_argument("--rate", type=float, default=10.0, help="arrivals per second")
    frag.add_argument("--num-requests", type=int, default=2000)
    frag.add_argument("--seed", type=int, default=0)
    frag.add_argument("--out", default="figures/fragmentation.png")
    frag.add_argument("--no-progress", action="store_true")
    frag.set_defaults(run=_fragmentation)

    bsz = sub.add_parser("block-size", help="paged waste against block size")
    bsz.add_argument("--block-sizes", type=int, nargs="+",
                     default=[1, 2, 4, 8, 16, 32, 64, 128, 256])
    bsz.add_argument("--workloads", nargs="+", default=["sharegpt-like", "alpaca-like"])
    bsz.add_argument("--model", default="opt-13b")
    bsz.add_argument("--rate", type=float, default=20.0)
    bsz.add_argument("--num-requests", type=int, default=1000)
    bsz.add_argument("--seed", type=int, default=0)
    bsz.add_argument("--out", default="figures/block_size.png")
    bsz.add_argument("--no-progress", action="store_true")
    bsz.set_defaults(run=_block_size)

    rep = sub.add_parser("replay", help="prefix-cache hit rate of a Mooncake trace")
    rep.add_argument("--trace", default="mooncake-conversation",
                     help="mooncake-conversation or mooncake-synthetic")
    rep.add_argument("--capacity", default="10000", help="blocks, or 'unbounded'")
    rep.add_argument("--policy", default="lru")
    rep.add_argument("--warmup", type=float, default=0.0,
                     help="fraction of leading requests left out of the hit rate")
    rep.add_argument("--no-progress", action="store_true")
    rep.set_defaults(run=_replay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; returns its exit status. Bad arguments exit with status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as err:
        parser.exit(2, f"paged-kv {args.command}: error: {err}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
