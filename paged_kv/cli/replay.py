"""``paged-kv replay``: a trace's prefix-cache hit rate at one capacity and policy."""

from __future__ import annotations

import argparse

import pandas as pd

from paged_kv.cli import add_command
from paged_kv.cli._common import add_output_options, emit, fraction, progress_enabled

NAME = "replay"
HELP = "prefix-cache hit rate of a Mooncake trace"
DESCRIPTION = """\
Replay a trace with precomputed block keys through the real cache manager
(metadata-only): each request looks up its longest cached prefix, publishes its full
blocks and is freed. Prints the token-weighted hit rate."""
TRACES = ("mooncake-conversation", "mooncake-synthetic")


def capacity(text: str) -> int | None:
    """``unbounded`` or a whole number of blocks >= 1."""
    if text == "unbounded":
        return None
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of blocks >= 1 or 'unbounded', got {text!r}"
        )
    return value


def register(subparsers) -> None:
    """Add ``replay`` and its options."""
    from paged_kv.eviction import policy_names  # noqa: PLC0415

    parser = add_command(subparsers, __name__, NAME, HELP, DESCRIPTION)
    parser.add_argument("--trace", default="mooncake-conversation", choices=TRACES,
                        help="shipped trace to replay")
    parser.add_argument("--capacity", type=capacity, default=10000,
                        help="cache capacity in blocks, or 'unbounded'")
    parser.add_argument("--policy", default="lru", choices=policy_names(),
                        help="eviction policy (belady: the offline optimum)")
    parser.add_argument("--warmup", type=fraction, default=0.0,
                        help="fraction of leading requests left out of the hit rate")
    add_output_options(parser)


def run(args: argparse.Namespace) -> int:
    """Replay, print the hit rate."""
    from paged_kv.sim.replay import replay  # noqa: PLC0415

    result = replay(args.trace, args.capacity, args.policy, warmup=args.warmup,
                    progress=progress_enabled(args))
    measured = int(result.requests["measured"].sum())
    shown = "unbounded" if args.capacity is None else f"{args.capacity}"
    print(f"{result.trace}: {measured} requests measured, capacity {shown} blocks of "
          f"{result.block_size} tokens, policy {result.policy}\n")
    emit(pd.DataFrame([result.summary()]), args, floatfmt="{:.4f}")
    return 0
