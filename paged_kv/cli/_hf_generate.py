"""``paged-kv generate --hf PATH``: a transformers checkpoint on disk generating through
the paged cache (`paged_kv.hf.checkpoint`). The options, their checks and the run;
`paged_kv.cli.generate` hands over here when ``--hf`` is given. torch and transformers
are imported only in `run`, so the command line starts without them."""

from __future__ import annotations

import argparse
import importlib.metadata
import re
from pathlib import Path

from paged_kv.cli._common import (
    UsageError,
    emit,
    emit_table,
    given,
    int_at_least,
    refuse_if_given,
    text,
)

#: the options that only the NumPy model takes, refused with --hf
NUMPY_ONLY = ("--model", "--prompt-blocks", "--samples", "--prompt-logits", "--figure")
#: the options that only a checkpoint takes, refused without --hf
HF_ONLY = ("--prompt", "--num-blocks", "--beams", "--sample", "--kv-drift")
#: defaults that differ from the NumPy model's
HF_BLOCK_SIZE = 16
HF_NUM_BLOCKS = 256
#: the oldest transformers paged_kv.hf runs on (pyproject.toml's hf extra): 5.24's
#: generate takes ``cache=`` and its layers hand their kwargs to ``Cache.update``
TRANSFORMERS_MIN = (5, 24)

RESULT_COLUMNS = {
    "prompt_tokens": "prompt tokens", "new_tokens": "new tokens",
    "tokens_computed": "tokens computed", "peak_blocks": "blocks used",
    "peak_blocks_unshared": "blocks without sharing", "cow_copies": "COW copies",
}
DRIFT_COLUMNS = {
    "kv_dtype": "KV dtype", "positions": "positions", "kl_mean": "KL mean (nats)|{:.2e}",
    "kl_max": "KL max (nats)|{:.2e}", "top1_agreement": "same top-1|{:.0%}",
    "greedy_prefix": "greedy tokens equal", "new_tokens": "of",
}


def checkpoint_folder(value: str) -> Path:
    """A type for ``--hf``: an existing folder with a ``config.json`` (what loading it
    finds wrong beyond that is one line and status 2 too, from `run`)."""
    path = Path(value)
    if not value.strip():
        problem = "got an empty path"
    elif not path.exists():
        problem = f"{value!r} does not exist"
    elif not path.is_dir():
        problem = f"{value!r} is not a folder"
    elif not (path / "config.json").is_file():
        problem = f"{value!r} has no config.json"
    else:
        return path
    raise argparse.ArgumentTypeError(f"expected a transformers checkpoint folder: {problem}")


checkpoint_folder.bad_values = ("", " ", "banana", "/missing-folder", "/etc/passwd", "/")


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add the checkpoint options of ``generate``."""
    group = parser.add_argument_group(
        "a checkpoint on disk (--hf)",
        "generate from a local transformers checkpoint and its tokenizer, greedy unless "
        "--beams or --sample; nothing is downloaded")
    group.add_argument("--hf", type=checkpoint_folder, default=None, metavar="PATH",
                       help="the checkpoint folder (from_pretrained(PATH): config.json, "
                            "weights, tokenizer)")
    group.add_argument("--prompt", type=text, default=None, metavar="TEXT",
                       help="the prompt (with --hf)")
    group.add_argument("--num-blocks", type=int_at_least(1, 2**22), default=HF_NUM_BLOCKS,
                       help="blocks in the pool (with --hf)")
    group.add_argument("--beams", type=int_at_least(1, 64), default=1,
                       help="beam search with this many beams (with --hf)")
    group.add_argument("--sample", action="store_true",
                       help="sample instead of greedy decoding, seeded by --seed (with --hf)")
    group.add_argument("--kv-drift", action="store_true",
                       help="also report how far int8 and FP8 KV move the next-token "
                            "distribution against float16 KV: KL divergence and top-1 "
                            "agreement (with --hf)")


def installed_version(distribution: str) -> str | None:
    """The installed version of `distribution` from its metadata (nothing imported), or
    None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def hf_extra_problem() -> str | None:
    """Why ``--hf`` cannot run here (torch or transformers missing, transformers older
    than `TRANSFORMERS_MIN`), or None."""
    need = ".".join(map(str, TRANSFORMERS_MIN))
    how = f"pip install 'paged_kv[hf]' (torch, transformers {need} or newer)"
    missing = [name for name in ("torch", "transformers") if installed_version(name) is None]
    if missing:
        return f"needs the hf extra, not installed here ({', '.join(missing)}): {how}"
    found = installed_version("transformers")
    if tuple(int(n) for n in re.findall(r"\d+", found)[:2]) < TRANSFORMERS_MIN:
        return f"needs transformers {need} or newer, found {found}: {how}"
    return None


def check(args: argparse.Namespace) -> None:
    """With --hf: the hf extra installed, a prompt, no NumPy-model option, a KV dtype a
    pool holds, and the sequence fitting the pool. Without: no checkpoint option."""
    if args.hf is None:
        for flag in HF_ONLY:
            refuse_if_given(args, flag, "applies with --hf PATH only")
        return
    problem = hf_extra_problem()
    if problem is not None:
        raise UsageError(f"argument --hf: {problem}")
    for flag in NUMPY_ONLY:
        refuse_if_given(args, flag, "applies to the NumPy model, not with --hf")
    if args.prompt is None or not args.prompt.strip():
        raise UsageError("argument --prompt: --hf needs a prompt (--prompt TEXT)")
    if args.sample and args.beams > 1:
        raise UsageError("argument --sample: not allowed with --beams (beam search is "
                         "deterministic)")
    if given(args, "--kv-drift") and args.kv_dtype in ("int8", "fp8_e4m3"):
        raise UsageError("argument --kv-drift: compares int8 and FP8 against float16 KV "
                         "itself; leave --kv-dtype out")


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint, generate, print the text and what the cache did."""
    import pandas as pd  # noqa: PLC0415

    from paged_kv.gpu.device import device_name  # noqa: PLC0415
    from paged_kv.hf import model_spec  # noqa: PLC0415 - imports torch and transformers
    from paged_kv.hf.checkpoint import generate_text, load_checkpoint  # noqa: PLC0415

    model, tokenizer = load_checkpoint(args.hf)
    floats = args.kv_dtype in ("float16", "float32")
    dtype = args.kv_dtype if floats else None  # None: the model's
    kv_dtype = "auto" if floats else args.kv_dtype
    spec = model_spec(model.config, dtype=dtype or model.dtype, kv_dtype=kv_dtype)
    block_size = args.block_size or HF_BLOCK_SIZE
    prompt_tokens = len(tokenizer(args.prompt)["input_ids"])
    need = args.beams * -(-(prompt_tokens + args.new_tokens) // block_size)
    if args.num_blocks < need:
        raise UsageError(f"argument --num-blocks: {args.num_blocks} blocks of {block_size} "
                         f"tokens cannot hold {args.beams} x {prompt_tokens + args.new_tokens} "
                         f"tokens; give at least {need}")
    paged = args.attention == "device"
    where = "paged-attention kernels" if paged else "the model's attention over gathered K/V"
    print(f"{args.hf}: {spec.name}, {spec.num_layers} layers, {spec.q_heads} query / "
          f"{spec.num_kv_heads} KV heads, head_dim {spec.head_dim}; KV {spec.kv.name} in "
          f"{args.num_blocks} blocks of {block_size} tokens; attention: {where} on "
          f"{device_name()}")
    decoding = ("sampling" if args.sample else
                f"beam search, {args.beams} beams" if args.beams > 1 else "greedy")
    result = generate_text(model, tokenizer, args.prompt, new_tokens=args.new_tokens,
                           num_blocks=args.num_blocks, block_size=block_size,
                           dtype=dtype, kv_dtype=kv_dtype, num_beams=args.beams, sample=args.sample,
                           seed=args.seed, paged_attention=paged)
    print(f"prompt ({result.prompt_tokens} tokens): {args.prompt}")
    print(f"generated ({decoding}, {result.new_tokens} tokens): {result.text}\n")
    row = {name: getattr(result, name) for name in RESULT_COLUMNS}
    emit(pd.DataFrame([row]), args, columns=RESULT_COLUMNS)
    if args.kv_drift:
        from paged_kv.hf.kv_drift import kv_drift  # noqa: PLC0415

        ids = tokenizer(args.prompt, return_tensors="pt")["input_ids"]
        drift = kv_drift(model, ids, new_tokens=args.new_tokens, block_size=block_size)
        print(f"\nint8 and FP8 KV against float16 KV ({args.new_tokens} greedy tokens, "
              f"teacher-forced):\n")
        emit_table(drift, args, "kv_drift", columns=DRIFT_COLUMNS)
    return 0
