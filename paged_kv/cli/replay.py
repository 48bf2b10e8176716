"""``paged-kv replay``: a trace's prefix-cache hit rate at one capacity and policy."""

from __future__ import annotations

import argparse

import pandas as pd

from paged_kv.cli import add_command
from paged_kv.cli._common import (
    MAX_INT,
    UsageError,
    add_output_options,
    emit,
    fraction,
    progress_enabled,
)

NAME = "replay"
HELP = "prefix-cache hit rate of a trace with block keys (shipped name or file)"
DESCRIPTION = """\
Replay a trace with precomputed block keys through the real cache manager
(metadata-only): each request looks up its longest cached prefix, publishes its full
blocks and is freed. Prints the token-weighted hit rate.

--trace takes a shipped trace name or the path of a Mooncake-format JSONL file (plain
or gzip) or a CSV file with the columns input_length,hash_ids[,timestamp,output_length,
block_size] (hash_ids separated by spaces). A prompt longer than the cache is replayed
as the part that fits."""


def trace_argument(text: str) -> str:
    """A replayable shipped trace name, or the path of an existing trace file."""
    from pathlib import Path  # noqa: PLC0415

    from paged_kv.sim.traces import replayable_traces  # noqa: PLC0415

    if text in replayable_traces() or Path(text).is_file():
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r} is neither a trace with block keys ({', '.join(replayable_traces())}) "
        f"nor an existing file"
    )


trace_argument.__name__ = "trace"
#: what the generic CLI test feeds it (see paged_kv.cli._types): an Azure trace has no keys
trace_argument.bad_values = ("", "banana", "azure-conv", "/missing/trace.jsonl")

#: the columns of a replay's table, shared with ``paged-kv sweep`` (name -> header)
HIT_RATE_COLUMNS = {
    "policy": "policy", "capacity": "capacity (blocks)",
    "hit_rate": "hit rate (tokens)|{:.4f}", "block_hit_rate": "hit rate (blocks)|{:.4f}",
    "evictions": "evictions", "requests": "requests",
}


def capacity_shown(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with a capacity of None (unbounded) shown as ``unbounded``."""
    return frame.assign(capacity=frame["capacity"].astype(object).where(
        frame["capacity"].notna(), "unbounded"))


def capacity(text: str) -> int | None:
    """``unbounded`` or a whole number of blocks in ``[1, MAX_INT]``."""
    if text == "unbounded":
        return None
    try:
        value = int(text, 10) if len(text) <= 40 else 0
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_INT:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of blocks in [1, {MAX_INT}] or 'unbounded', got "
            f"{text if len(text) <= 40 else text[:20] + '...'!r}"
        )
    return value


capacity.bad_values = ("", "banana", "0", "-1", "1e4", "1.5", str(MAX_INT + 1), str(2**70),
                       "99999999999999999999999")


def load_trace_option(args: argparse.Namespace) -> None:
    """Before any work, load ``--trace`` into ``args._workload``: a file that cannot be
    replayed is refused naming the flag, the file and the line."""
    from paged_kv.sim.traces import load_trace  # noqa: PLC0415

    try:
        args._workload = load_trace(args.trace)
    except ValueError as err:
        raise UsageError(f"argument --trace: {err}") from None

def add_trace_options(parser: argparse.ArgumentParser) -> None:
    """``--trace`` and ``--warmup``, shared with ``paged-kv sweep``."""
    parser.add_argument("--trace", type=trace_argument, default="mooncake-conversation",
                        metavar="NAME|PATH",
                        help="mooncake-conversation, mooncake-synthetic, or a trace file")
    parser.add_argument("--warmup", type=fraction, default=0.0,
                        help="fraction of leading requests left out of the hit rate")


def register(subparsers) -> None:
    """Add ``replay`` and its options."""
    from paged_kv.core.eviction import policy_names  # noqa: PLC0415

    parser = add_command(subparsers, __name__, NAME, HELP, DESCRIPTION)
    add_trace_options(parser)
    parser.add_argument("--capacity", type=capacity, default=10000,
                        help="cache capacity in blocks, or 'unbounded'")
    parser.add_argument("--policy", default="lru", choices=policy_names(),
                        help="eviction policy (belady: the offline optimum)")
    add_output_options(parser)


def check(args: argparse.Namespace) -> None:
    """Load the trace (`load_trace_option`)."""
    load_trace_option(args)


def run(args: argparse.Namespace) -> int:
    """Replay, print the hit rate."""
    from paged_kv.sim.replay import replay  # noqa: PLC0415
    from paged_kv.sim.replay_arrays import TraceArrays  # noqa: PLC0415

    workload = args._workload
    result = replay(workload, args.capacity, args.policy, warmup=args.warmup,
                    progress=progress_enabled(args))
    measured = int(result.requests["measured"].sum())
    shown = "unbounded" if args.capacity is None else f"{args.capacity:,} blocks"
    print(f"{result.trace}: {measured:,} requests measured, {result.block_size}-token blocks, "
          f"capacity {shown}, policy {result.policy}\n")
    emit(capacity_shown(pd.DataFrame([result.summary()])), args, columns=HIT_RATE_COLUMNS,
         trace_checksum=TraceArrays.from_workload(workload).checksum)
    return 0
