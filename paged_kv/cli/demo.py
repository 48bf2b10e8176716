"""``paged-kv demo``: KV written through the kernels, read back, every byte checked."""

from __future__ import annotations

import argparse

from paged_kv.cli import add_command
from paged_kv.cli._common import add_allow_slow, check_simulator_time, seed
from paged_kv.core.config import MODEL_PRESETS

NAME = "demo"
HELP = "data-plane round trip through the kernels, every byte checked"
DESCRIPTION = """\
Write the KV of a few sequences through the slot-write kernel, gather it back, copy a
block as copy-on-write does, swap blocks to the host pool and back, and compare every
byte with what was written. Prints the device that ran the kernels (a GPU's name, or
"CUDA simulator"). Without a GPU, models larger than 'tiny' take minutes in the
simulator: the estimate is checked first."""
RUNS_KERNELS = True


def register(subparsers) -> None:
    """Add ``demo`` and its options."""
    parser = add_command(subparsers, __name__, NAME, HELP, DESCRIPTION)
    parser.add_argument("--model", default="tiny", choices=sorted(MODEL_PRESETS),
                        help="model preset whose KV shape to use")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the random KV")
    add_allow_slow(parser)


def check(args: argparse.Namespace) -> None:
    """Refuse a model the CUDA simulator would take minutes on, unless --allow-slow."""
    from paged_kv.studies.demo import simulator_seconds  # noqa: PLC0415

    check_simulator_time(args, simulator_seconds(args.model), "--model",
                         f"the demo on {args.model}")


def run(args: argparse.Namespace) -> int:
    """Run the demo; status 0 when every byte matched."""
    from paged_kv.studies.demo import run_demo  # noqa: PLC0415 - loads numba

    return 0 if run_demo(args.model, seed=args.seed) else 1
