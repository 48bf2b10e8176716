"""``paged-kv generate``: a tiny model decoding through the paged cache, its logits
checked step by step against a dense model of the same weights."""

from __future__ import annotations

import argparse

from paged_kv.cli import add_command
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
HELP = "a tiny model decoding through the paged cache, checked against a dense model"
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
tolerance."""
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
    parser.add_argument("--kv-dtype", default="float32", choices=("float32", "float16"),
                        help="dtype of the KV pools (and of the dense model's K/V)")
    parser.add_argument("--block-size", type=int_at_least(1, 256), default=4,
                        help="tokens per block")
    parser.add_argument("--prompt-blocks", type=positive_int, default=2,
                        help="full blocks in the shared prompt")
    parser.add_argument("--new-tokens", type=int_at_least(3), default=3,
                        help="tokens each sequence generates")
    parser.add_argument("--samples", type=positive_int, default=2,
                        help="parallel samples (forks) of the request with a prefix hit")
    parser.add_argument("--prompt-logits", default="both",
                        choices=(*PROMPT_LOGITS_MODES, "both"),
                        help="for a prompt whose every block is cached: recompute the last "
                        "block (vLLM's rule), keep its logits with the block, or run both")
    parser.add_argument("--attention", default="device", choices=ATTENTION_BACKENDS,
                        help="paged-attention kernels (device: GPU or CUDA simulator) or "
                        "the NumPy reference over gathered K/V")
    parser.add_argument("--seed", type=seed, default=0, help="seed of weights and prompts")
    add_output_options(parser, figure=True, tables=("prompt_logits",))


def check(args: argparse.Namespace) -> None:
    """Refuse a script whose longest sequence the model cannot hold (naming the flag that
    leaves no room: --block-size, --new-tokens, else --prompt-blocks), and more samples
    than the vocabulary has tokens (each starts with a different one)."""
    from paged_kv.model import get_model_config  # noqa: PLC0415
    from paged_kv.model.generation import longest_sequence  # noqa: PLC0415

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
    """Run the scripted generation, print both tables; status 1 if out of tolerance."""
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
