"""``paged-kv generate``: a tiny model decoding through the paged cache, its logits
checked step by step against a dense model of the same weights."""

from __future__ import annotations

import argparse

from paged_kv.cli import _hf_generate, add_command
from paged_kv.cli._common import (
    UsageError,
    add_output_options,
    emit,
    emit_table,
    int_at_least,
    positive_int,
    progress_enabled,
    seed,
    write_figure,
)

NAME = "generate"
HELP = ("a tiny model decoding through the paged cache, checked against a dense model; or a "
        "transformers checkpoint (--hf PATH)")
DESCRIPTION = """\
Run a decoder-only transformer with random (seeded) weights through PagedKVCache:
prefill and batched decode with K/V written by the slot-write kernel and attention read
through block tables (the paged-attention kernels), a prefix-cache hit, a fork for
parallel sampling (copy-on-write), a swap out and back in, and a repeated prompt whose
every block is cached. Prints, per step, how the paged logits compare with a dense NumPy
model that recomputes each sequence with no cache (max abs difference, argmax
agreement) and the greedy token; then the tokens each prompt-logits mode computed:
vLLM's rule (recompute the cached prompt's last block) or logits kept with the last
block (the prefill is skipped). Exits with status 1 if a difference exceeds the
tolerance.

With --hf PATH: a Hugging Face transformers checkpoint and its tokenizer on disk
generate from --prompt through the paged cache (paged_kv.hf): every layer's K/V written
by the slot-write kernel and read back from the pool, by gather (--attention
reference, the default here) or by the paged-attention kernels (--attention device).
Prints the generated text, the tokens computed and the blocks used; --kv-drift adds
how far int8 and FP8 KV move the next-token distribution against float16 KV."""
RUNS_KERNELS = True  # slot writes always; attention too with --attention device

STEP_COLUMNS = {
    "prompt_logits": "prompt logits", "step": "step", "request": "request", "seq_id": "seq",
    "phase": "phase", "position": "position", "computed": "computed", "cached": "cached",
    "max_abs_diff": "max abs diff|{:.1e}", "argmax_agrees": "argmax agrees",
    "token": "greedy token", "note": "note",
}
SUMMARY_COLUMNS = {
    "prompt_logits": "prompt logits", "prompt_tokens": "prompt tokens",
    "prompt_tokens_cached": "served by prefix cache",
    "prompt_tokens_computed": "prompt tokens computed", "prefills_skipped": "prefills skipped",
    "generated_tokens_computed": "generated tokens computed",
    "tokens_computed": "tokens computed", "max_abs_diff": "max abs diff|{:.1e}",
    "tolerance": "tolerance|{:.0e}", "argmax_agreement": "argmax agreement|{:.0%}",
    "cow_copies": "COW copies", "blocks_swapped_out": "blocks swapped out",
}


def register(subparsers) -> None:
    """Add ``generate`` and its options."""
    from paged_kv.model import ATTENTION_BACKENDS, MODEL_CONFIGS  # noqa: PLC0415
    from paged_kv.model.generation import PROMPT_LOGITS_MODES  # noqa: PLC0415

    parser = add_command(subparsers, __name__, NAME, HELP, DESCRIPTION)
    parser.add_argument("--model", default="tiny", choices=sorted(MODEL_CONFIGS),
                        help="model preset (random weights)")
    parser.add_argument("--kv-dtype", default=None,
                        choices=("auto", "float32", "float16", "int8", "fp8_e4m3"),
                        help="dtype of the KV pools (and of the dense model's K/V): float32 "
                             "(default) or float16; with --hf also auto (the model's, the "
                             "default there), int8 or fp8_e4m3")
    parser.add_argument("--block-size", type=int_at_least(1, 256), default=None,
                        help="tokens per block (default 4; with --hf 16)")
    parser.add_argument("--prompt-blocks", type=positive_int, default=2,
                        help="full blocks in the shared prompt")
    parser.add_argument("--new-tokens", type=int_at_least(1, 4096), default=None,
                        help="tokens each sequence generates (default and least 3; with --hf "
                             "default 16)")
    parser.add_argument("--samples", type=positive_int, default=2,
                        help="parallel samples (forks) of the request with a prefix hit")
    parser.add_argument("--prompt-logits", default="both",
                        choices=(*PROMPT_LOGITS_MODES, "both"),
                        help="for a prompt whose every block is cached: recompute the last "
                        "block (vLLM's rule), keep its logits with the block, or run both")
    parser.add_argument("--attention", default=None, choices=ATTENTION_BACKENDS,
                        help="paged-attention kernels (device: GPU or CUDA simulator; the "
                        "default) or the NumPy reference over gathered K/V; with --hf: the "
                        "kernels as the model's attention, or the model's own attention "
                        "over gathered K/V (reference, the default there)")
    parser.add_argument("--seed", type=seed, default=0,
                        help="seed of weights and prompts (with --hf: of sampling)")
    add_output_options(parser, figure=True, tables=("prompt_logits", "kv_drift"))
    _hf_generate.add_options(parser)


def check(args: argparse.Namespace) -> None:
    """Settle the defaults of the mode (the NumPy model, or --hf: `_hf_generate.check`).
    For the NumPy model: refuse a script whose longest sequence the model cannot hold
    (naming the flag that leaves no room: --block-size, --new-tokens, else
    --prompt-blocks), and more samples than the vocabulary has tokens (each starts with
    a different one)."""
    from paged_kv.model import get_model_config  # noqa: PLC0415
    from paged_kv.model.generation import longest_sequence  # noqa: PLC0415

    _hf_generate.check(args)
    if args.hf is not None:
        args.kv_dtype = args.kv_dtype or "auto"
        args.new_tokens = args.new_tokens or 16
        args.attention = args.attention or "reference"
        return
    if args.kv_dtype not in (None, "float32", "float16"):
        raise UsageError(f"argument --kv-dtype: the NumPy model's pools are float32 or "
                         f"float16 ({args.kv_dtype} applies with --hf)")
    args.kv_dtype = args.kv_dtype or "float32"
    args.block_size = args.block_size or 4
    args.attention = args.attention or "device"
    if args.new_tokens is None:
        args.new_tokens = 3
    elif args.new_tokens < 3:
        raise UsageError(f"argument --new-tokens: the scripted run needs at least 3, got "
                         f"{args.new_tokens}")

    config = get_model_config(args.model, kv_dtype=args.kv_dtype)
    longest = longest_sequence(args.block_size, args.prompt_blocks, args.new_tokens)
    limit = config.spec.max_seq_len
    if longest > limit:
        # the flag whose value leaves no room: the shortest script (one prompt block, three
        # new tokens) is too long for this block size; or the new tokens alone are
        if longest_sequence(args.block_size, 1, 3) > limit:
            flag = "--block-size"
        elif longest_sequence(args.block_size, 1, args.new_tokens) > limit:
            flag = "--new-tokens"
        else:
            flag = "--prompt-blocks"
        raise UsageError(
            f"argument {flag}: {args.prompt_blocks} prompt blocks of {args.block_size} "
            f"tokens, a tail of {max(1, args.block_size // 2)} and {args.new_tokens} new "
            f"tokens make a {longest}-token sequence, longer than {args.model}'s "
            f"max_seq_len of {limit}")
    if args.samples > config.vocab_size:
        raise UsageError(f"argument --samples: at most {config.vocab_size}, the tokens of "
                         f"{args.model}'s vocabulary (each sample starts with a different "
                         f"one), got {args.samples}")


def run(args: argparse.Namespace) -> int:
    """Run the scripted generation, print both tables; status 1 if out of tolerance
    (with --hf: generate from the checkpoint, `paged_kv.cli._hf_generate`)."""
    if args.hf is not None:
        return _hf_generate.run(args)
    from paged_kv.gpu.device import device_name  # noqa: PLC0415
    from paged_kv.model import get_model_config  # noqa: PLC0415
    from paged_kv.model.generation import (  # noqa: PLC0415
        PROMPT_LOGITS_MODES,
        compare_prompt_logits,
    )

    modes = PROMPT_LOGITS_MODES if args.prompt_logits == "both" else (args.prompt_logits,)
    config = get_model_config(args.model, kv_dtype=args.kv_dtype)
    steps, summary = compare_prompt_logits(
        modes, model=args.model, kv_dtype=args.kv_dtype, block_size=args.block_size,
        prompt_blocks=args.prompt_blocks, new_tokens=args.new_tokens, samples=args.samples,
        attention=args.attention, seed=args.seed, progress=progress_enabled(args),
    )
    spec = config.spec
    where = "paged-attention kernels" if args.attention == "device" else "NumPy reference"
    print(f"{config.name}: {spec.num_layers} layers, {spec.q_heads} query / "
          f"{spec.num_kv_heads} KV heads, head_dim {spec.head_dim}, hidden "
          f"{config.hidden_size}, vocab {config.vocab_size}, {spec.dtype} KV, random weights "
          f"(seed {args.seed}); block size {args.block_size}; attention: {where} on "
          f"{device_name()}")
    print("Each row of paged logits against the dense model (recomputed with no cache):\n")
    emit(steps, args, columns=STEP_COLUMNS)
    print("\nTokens computed per prompt-logits mode:\n")
    emit_table(summary, args, "prompt_logits", columns=SUMMARY_COLUMNS)
    if len(summary) == 2:
        recompute, keep = (summary.set_index("prompt_logits").loc[m, "tokens_computed"]
                           for m in PROMPT_LOGITS_MODES)
        print(f"\nKept logits skipped {int(summary['prefills_skipped'].sum())} prefill(s): "
              f"{recompute - keep} fewer tokens computed than vLLM's rule "
              f"({keep} vs {recompute}).")
    if args.figure is not None:
        from paged_kv.plots import plot_generation  # noqa: PLC0415

        write_figure(plot_generation(steps, summary), args)
    within = bool((summary["max_abs_diff"] <= summary["tolerance"]).all())
    if not within:
        print("paged logits differ from the dense model's by more than the tolerance")
    return 0 if within else 1
