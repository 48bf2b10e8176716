"""``paged-kv kv-quant``: what an int8 or FP8 KV cache buys in capacity and costs in error."""

from __future__ import annotations

import argparse

from paged_kv.cli import add_command
from paged_kv.cli._common import (
    UsageError,
    add_output_options,
    emit,
    format_table,
    int_at_least,
    positive_int,
    positive_number,
    seed,
)

NAME = "kv-quant"
HELP = "capacity and attention error of int8 and FP8 KV caches"
DESCRIPTION = """\
Capacity: bytes per token (scales included) and the tokens a KV budget holds, per KV
dtype. Error: decode attention over K/V as an int8 or FP8 E4M3 cache stores and returns
them (bit for bit what the kernels keep), against the same attention over float16 K/V,
on random K/V and on K/V whose keys have outlier channels. The figure sweeps the
outlier magnitude."""


def register(subparsers) -> None:
    """Add ``kv-quant`` and its options."""
    parser = add_command(subparsers, __name__, NAME, HELP, DESCRIPTION)
    parser.add_argument("--tokens", type=positive_int, default=1024,
                        help="keys and values each query attends to")
    parser.add_argument("--kv-heads", type=positive_int, default=8, help="KV heads")
    parser.add_argument("--head-dim", type=int_at_least(1, 4096), default=128,
                        help="head dimension")
    parser.add_argument("--group", type=positive_int, default=4,
                        help="query heads per KV head (GQA)")
    parser.add_argument("--queries", type=positive_int, default=16,
                        help="decode queries (one token each)")
    parser.add_argument("--outlier-channels", type=int_at_least(0), default=4,
                        help="outlier channels per KV head of the keys")
    parser.add_argument("--outlier-scale", type=positive_number, default=20.0,
                        help="how much larger the outlier channels are")
    parser.add_argument("--kv-gib", type=positive_number, default=12.0,
                        help="KV memory budget of the capacity table, GiB (the vLLM "
                             "paper's OPT-13B setting: 12)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of K, V and queries")
    parser.add_argument("--model-logits", action="store_true",
                        help="also decode with the small model (paged-kv generate's 'tiny') "
                             "through int8 and FP8 caches and report how far its logits "
                             "move (NumPy attention over the dequantized K/V; ~15 s in "
                             "the simulator)")
    add_output_options(parser, figure="")  # the sweep behind the figure takes a while


def check(args: argparse.Namespace) -> None:
    """Refuse more outlier channels than the head has."""
    if args.outlier_channels > args.head_dim:
        raise UsageError(f"--outlier-channels {args.outlier_channels} exceeds --head-dim "
                         f"{args.head_dim}")


def run(args: argparse.Namespace) -> int:
    """Print the capacity and error tables, write the outlier sweep figure."""
    from paged_kv.plots import plot_quantization_error, save  # noqa: PLC0415
    from paged_kv.quant_accuracy import (  # noqa: PLC0415
        capacity_table,
        error_table,
        outlier_sweep,
    )

    capacity = capacity_table(kv_bytes=int(args.kv_gib * 2**30))
    print(f"Capacity of {args.kv_gib:g} GiB of KV memory (blocks of 16 tokens):\n")
    print(format_table(capacity, {"model": "model", "kv_dtype": "KV dtype",
                                        "bytes_per_token": "bytes/token",
                                        "tokens": "tokens", "capacity_ratio": "x float16"},
                       "{:.2f}"))
    shape = dict(num_tokens=args.tokens, num_kv_heads=args.kv_heads, head_dim=args.head_dim,
                 group=args.group, num_queries=args.queries,
                 outlier_channels=args.outlier_channels, seed=args.seed)
    table = error_table(outlier_scale=args.outlier_scale, **shape)
    print(f"\nRelative error against float16 KV ({args.tokens} tokens, {args.kv_heads} KV "
          f"heads x {args.head_dim}, {args.group} query heads per KV head, "
          f"{args.queries} queries; outlier channels: {args.outlier_channels} per head, "
          f"x{args.outlier_scale:g}):\n")
    table = table[table["kv_dtype"] != "float16"]
    emit(table, args, columns={"kv": "K/V", "scheme": "scheme", "k_error": "K error|{:.4f}",
                               "v_error": "V error|{:.4f}",
                               "attention_error": "attention error|{:.4f}"})
    if args.model_logits:
        from paged_kv.quant_accuracy import model_logit_drift  # noqa: PLC0415

        prompt_len, new_tokens = 16, 8
        drift = model_logit_drift(prompt_len=prompt_len, new_tokens=new_tokens, seed=args.seed)
        print(f"\nThe small model's logits with quantized KV against its own KV dtype "
              f"({new_tokens + 1} rows of logits: a {prompt_len}-token prompt, then "
              f"{new_tokens} greedy tokens):\n")
        print(format_table(drift, {"model": "model", "kv_dtype": "KV dtype",
                                   "max_abs_diff": "max abs diff|{:.4g}",
                                   "relative_diff": "relative diff|{:.4g}",
                                   "top_token_agreement": "same top token|{:.0%}",
                                   "max_abs_logit": "max abs logit|{:.3g}"}))
    if args.figure is not None:
        sweep = outlier_sweep((1, 2, 5, 10, 20, 50, 100), **shape)
        title = (f"Decode attention over {args.tokens} random K/V tokens, {args.kv_heads} KV "
                 f"heads x {args.head_dim},\n{args.group} query heads per KV head, "
                 f"{args.outlier_channels} outlier key channels per head; relative L2 error")
        print(f"wrote {save(plot_quantization_error(sweep, title=title), args.figure)}")
    return 0
