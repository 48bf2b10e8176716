"""``paged-kv kv-quant``: what an int8 or FP8 KV cache buys in capacity and costs in error."""

from __future__ import annotations

import argparse

from paged_kv.cli import add_command
from paged_kv.cli._common import (
    UsageError,
    add_output_options,
    check_simulator_time,
    emit,
    emit_table,
    int_at_least,
    number_in,
    positive_int,
    positive_number,
    progress_enabled,
    seed,
    write_figure,
)
from paged_kv.core.humanize import format_bytes
from paged_kv.studies.quant_accuracy import MAX_OUTLIER_SCALE

NAME = "kv-quant"
HELP = "capacity and attention error of int8 and FP8 KV caches"
DESCRIPTION = """\
Capacity: bytes per token (scales included) and the tokens a KV budget holds, per KV
dtype. Error: decode attention over K/V as an int8 or FP8 E4M3 cache stores and returns
them (bit for bit what the kernels keep), against the same attention over float16 K/V,
on random K/V and on K/V whose keys have outlier channels. The figure sweeps the
outlier magnitude."""


#: the capacity table's models and block size
CAPACITY_MODELS = ("opt-13b", "llama-3-8b")
CAPACITY_BLOCK = 16
#: the most K/V elements (tokens x KV heads x head_dim) and attention scores (queries x
#: query heads x tokens) the error study holds: about a minute and a GiB or two at the cap
MAX_KV_ELEMENTS = 2**24
MAX_SCORES = 2**26
#: seconds --model-logits takes in the CUDA simulator (measured: 10-13 s on two cores)
MODEL_LOGITS_SIM_S = 12.0


def register(subparsers) -> None:
    """Add ``kv-quant`` and its options."""
    parser = add_command(subparsers, __name__, NAME, HELP, DESCRIPTION)
    parser.add_argument("--tokens", type=positive_int, default=1024,
                        help="keys and values each query attends to")
    parser.add_argument("--kv-heads", type=int_at_least(1, 256), default=8, help="KV heads")
    parser.add_argument("--head-dim", type=int_at_least(1, 4096), default=128,
                        help="head dimension")
    parser.add_argument("--group", type=int_at_least(1, 64), default=4,
                        help="query heads per KV head (GQA)")
    parser.add_argument("--queries", type=int_at_least(1, 1024), default=16,
                        help="decode queries (one token each)")
    parser.add_argument("--outlier-channels", type=int_at_least(0), default=4,
                        help="outlier channels per KV head of the keys")
    parser.add_argument("--outlier-scale", type=number_in(0.0, MAX_OUTLIER_SCALE, low_open=True),
                        default=20.0,
                        help="how much larger the outlier channels are (float16, the "
                             "reference, holds the keys up to "
                             f"{MAX_OUTLIER_SCALE:g})")
    parser.add_argument("--kv-gib", type=positive_number, default=12.0,
                        help="KV memory budget of the capacity table, GiB (the vLLM "
                             "paper's OPT-13B setting: 12)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of K, V and queries")
    parser.add_argument("--model-logits", action="store_true",
                        help="also decode with the small model (paged-kv generate's 'tiny') "
                             "through int8 and FP8 caches and report how far its logits "
                             f"move (NumPy attention over the dequantized K/V; about "
                             f"{MODEL_LOGITS_SIM_S:.0f} s in the CUDA simulator)")
    add_output_options(parser, figure=True, tables=("capacity", "model_logits"))


def check(args: argparse.Namespace) -> None:
    """Refuse more outlier channels than the head has, a budget that holds no block, and
    an error study too large to hold in memory; announce the small model's run."""
    from paged_kv.core.config import get_model  # noqa: PLC0415

    if args.outlier_channels > args.head_dim:
        raise UsageError(f"argument --outlier-channels: {args.outlier_channels} exceeds "
                         f"--head-dim {args.head_dim}")
    block = max(get_model(m).bytes_per_block(CAPACITY_BLOCK) for m in CAPACITY_MODELS)
    if int(args.kv_gib * 2**30) < block:
        raise UsageError(f"argument --kv-gib: {args.kv_gib:g} GiB holds no {CAPACITY_BLOCK}-"
                         f"token block of {' or '.join(CAPACITY_MODELS)}: give at least "
                         f"{format_bytes(block)}")
    elements = args.tokens * args.kv_heads * args.head_dim
    if elements > MAX_KV_ELEMENTS:
        raise UsageError(f"argument --tokens: {args.tokens:,} tokens x {args.kv_heads} KV heads "
                         f"x {args.head_dim} = {elements:,} elements per K/V array, over the "
                         f"{MAX_KV_ELEMENTS:,} this command holds (quant_accuracy.error_table "
                         f"runs any size from Python)")
    scores = args.queries * args.group * args.kv_heads * args.tokens
    if scores > MAX_SCORES:
        raise UsageError(f"argument --queries: {args.queries} queries x "
                         f"{args.group * args.kv_heads} query heads x {args.tokens:,} tokens = "
                         f"{scores:,} attention scores, over the {MAX_SCORES:,} this command "
                         f"holds")
    if args.model_logits:
        check_simulator_time(args, MODEL_LOGITS_SIM_S, "--model-logits",
                             "the small model through int8 and FP8 caches")


def run(args: argparse.Namespace) -> int:
    """Print the capacity and error tables, write the outlier sweep figure."""
    from paged_kv.plots import plot_quantization_error  # noqa: PLC0415
    from paged_kv.studies.quant_accuracy import (  # noqa: PLC0415
        capacity_table,
        error_table,
        outlier_sweep,
    )

    capacity = capacity_table(CAPACITY_MODELS, kv_bytes=int(args.kv_gib * 2**30),
                              block_size=CAPACITY_BLOCK)
    print(f"Capacity of {args.kv_gib:g} GiB of KV memory (blocks of {CAPACITY_BLOCK} "
          f"tokens):\n")
    emit_table(capacity, args, "capacity", columns={
        "model": "model", "kv_dtype": "KV dtype", "bytes_per_token": "bytes/token",
        "tokens": "tokens", "capacity_ratio": "x float16"}, floatfmt="{:.2f}")
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
        from paged_kv.studies.quant_accuracy import model_logit_drift  # noqa: PLC0415

        prompt_len, new_tokens = 16, 8
        drift = model_logit_drift(prompt_len=prompt_len, new_tokens=new_tokens, seed=args.seed)
        print(f"\nThe small model's logits with quantized KV against its own KV dtype "
              f"({new_tokens + 1} rows of logits: a {prompt_len}-token prompt, then "
              f"{new_tokens} greedy tokens):\n")
        emit_table(drift, args, "model_logits", columns={
            "model": "model", "kv_dtype": "KV dtype", "max_abs_diff": "max abs diff|{:.4g}",
            "relative_diff": "relative diff|{:.4g}",
            "top_token_agreement": "same top token|{:.0%}",
            "max_abs_logit": "max abs logit|{:.3g}"})
    if args.figure is not None:
        from tqdm.auto import tqdm  # noqa: PLC0415

        scales = tqdm((1, 2, 5, 10, 20, 50, 100), desc="outlier sweep",
                      disable=not progress_enabled(args))
        sweep = outlier_sweep(scales, **shape)
        title = (f"Decode attention over {args.tokens} random K/V tokens, {args.kv_heads} KV "
                 f"heads x {args.head_dim},\n{args.group} query heads per KV head, "
                 f"{args.outlier_channels} outlier key channels per head; relative L2 error")
        write_figure(plot_quantization_error(sweep, title=title), args)
    return 0
