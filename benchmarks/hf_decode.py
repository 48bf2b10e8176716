"""A transformers model's decode step through PagedHFCache against DynamicCache, on a GPU.

One decode step of the whole model: ``--batch`` sequences that each hold ``--context``
tokens take one more token. Three caches, the same model and inputs:

* **DynamicCache**: transformers' default (``torch.cat`` per layer, sdpa attention);
* **paged, gather**: `PagedHFCache`: the new K/V written by the slot-write kernel, each
  layer's K/V gathered from the pool into a tensor, sdpa attention;
* **paged, kernels**: `PagedHFCache` with ``attn_implementation="paged_kv"``: the
  paged-attention kernels read the pool, nothing is gathered.

On a GPU the model's tensors and the pools exchange memory in place (zero copy,
`paged_kv.hf.exchange`). Each step is timed between CUDA events on PyTorch's current
stream, median of ``--repeats`` steps after ``--warmup`` (each step appends a token,
so the context grows by ``warmup + repeats`` over the run); **vs DynamicCache** is the
paged step's time over DynamicCache's, measured in the same run. The model is a
randomly initialised Llama of the given shape (default: 16 layers, hidden 2048, 16
query / 4 KV heads, head_dim 128, float16), or ``--checkpoint PATH``.

Output: a markdown table on stdout; with ``--out DIR`` (default: ``$OUT`` when set) also
``DIR/hf_decode.json``. Under the CUDA simulator nothing can be measured: the script
says so and exits 0; ``--tiny`` runs the same code at tiny sizes there (on the CPU,
timings meaningless), which is how the test suite keeps it working.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and its kernels.py would shadow
# the `kernels` package that transformers imports: leave the folder out.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import torch  # noqa: E402

from paged_kv import __version__, device  # noqa: E402
from paged_kv.hf import PagedHFCache, use_paged_attention  # noqa: E402
from paged_kv.hf.tiny import tiny_model  # noqa: E402

MODES = ("DynamicCache", "paged, gather", "paged, kernels")


def build_model(args: argparse.Namespace, where: torch.device) -> torch.nn.Module:
    """The checkpoint, a tiny model (--tiny), or a random Llama of the given shape."""
    dtype = torch.float16 if args.dtype == "float16" else torch.float32
    if args.checkpoint is not None:
        from paged_kv.hf.checkpoint import load_checkpoint  # noqa: PLC0415

        model, _ = load_checkpoint(args.checkpoint, dtype=args.dtype)
        return model.to(where)
    if args.tiny:
        return tiny_model("llama", seed=0, dtype=dtype).to(where)
    from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: PLC0415

    config = LlamaConfig(vocab_size=32000, hidden_size=args.hidden, intermediate_size=
                         args.hidden * 4, num_hidden_layers=args.layers,
                         num_attention_heads=args.hidden // 128,
                         num_key_value_heads=max(1, args.hidden // 512),
                         max_position_embeddings=8192)
    torch.manual_seed(0)
    with torch.device(where):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def step_times(model: torch.nn.Module, cache: object, prompt: torch.Tensor, warmup: int,
               repeats: int) -> list[float]:
    """Prefill `prompt` into `cache`, then time `repeats` decode steps (ms each)."""
    cuda = prompt.device.type == "cuda"
    times = []
    with torch.no_grad():
        out = model(input_ids=prompt, cache=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        for i in range(warmup + repeats):
            if cuda:
                start = torch.cuda.Event(enable_timing=True)
                stop = torch.cuda.Event(enable_timing=True)
                start.record()
            else:
                t0 = time.perf_counter()
            out = model(input_ids=token, cache=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            if cuda:
                stop.record()
                stop.synchronize()
                elapsed = start.elapsed_time(stop)
            else:
                elapsed = (time.perf_counter() - t0) * 1e3
            if i >= warmup:
                times.append(elapsed)
    return times


def measure(model: torch.nn.Module, args: argparse.Namespace, where: torch.device) -> list[dict]:
    """One row per mode: median step ms and the ratio to DynamicCache."""
    from transformers import DynamicCache  # noqa: PLC0415

    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, model.config.vocab_size, (args.batch, args.context),
                           generator=generator).to(where)
    length = args.context + args.warmup + args.repeats + 1
    num_blocks = args.batch * -(-length // args.block_size)
    rows = []
    for mode in MODES:
        if mode == "DynamicCache":
            model.set_attn_implementation("sdpa")
            cache = DynamicCache(config=model.config)
        else:
            if mode == "paged, kernels":
                use_paged_attention(model)
            else:
                model.set_attn_implementation("sdpa")
            cache = PagedHFCache.for_model(model, num_blocks=num_blocks,
                                           block_size=args.block_size)
        times = step_times(model, cache, prompt, args.warmup, args.repeats)
        rows.append({"mode": mode, "step_ms": statistics.median(times)})
    base = rows[0]["step_ms"]
    for row in rows:
        row["vs_dynamic"] = row["step_ms"] / base if base > 0 else None
    model.set_attn_implementation("sdpa")
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the table (and write the JSON); exit 0, also under the simulator."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a local transformers checkpoint instead of the random Llama")
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT") or None,
                        help="also write hf_decode.json here (default: $OUT when set)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes: a smoke run, also on the simulator (on the CPU)")
    args = parser.parse_args(argv)
    gpu = device.device_kind() == "gpu" and torch.cuda.is_available()
    if not gpu and not args.tiny:
        print("hf_decode: this benchmark needs an NVIDIA GPU (with PyTorch's CUDA build); "
              "here kernels run in the CUDA simulator, whose timings mean nothing. Nothing "
              "measured.")
        return 0
    if args.tiny:
        args.batch, args.context, args.warmup, args.repeats = 2, 4, 0, 1
        args.block_size, args.dtype = 4, "float32"
    where = torch.device("cuda" if gpu else "cpu")
    if not gpu:
        sys.setswitchinterval(2e-4)  # the simulator's barriers poll under the GIL
    model = build_model(args, where)
    rows = measure(model, args, where)
    name = device.device_name()
    print(f"Decode step, {args.batch} x {args.context} tokens, {args.dtype}, block size "
          f"{args.block_size}, {name} (torch {torch.__version__}):\n")
    print("| cache | step ms | vs DynamicCache |")
    print("|---|---|---|")
    for row in rows:
        ratio = "-" if row["vs_dynamic"] is None else f"{row['vs_dynamic']:.2f}x"
        print(f"| {row['mode']} | {row['step_ms']:.3f} | {ratio} |")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                    if k != "out"}
        record = {"paged_kv_version": __version__, "device": name, "measured": gpu,
                  "settings": settings, "rows": rows}
        (args.out / "hf_decode.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
