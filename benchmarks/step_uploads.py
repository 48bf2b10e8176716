"""Host-to-device index uploads per decode step, against the number of layers.

A decode step of an ``L``-layer model writes the new tokens' K/V and runs attention in
every layer. Two ways of driving the same step through a `PagedKVCache`, measured in
the same run on the same model:

* **per call**: each layer calls ``write_kv_batch(layer, seq_ids, k, v, num_tokens=...)``
  and ``attention.decode(cache, layer, seq_ids, q)``; each call builds, checks and
  uploads its own slot mapping, block tables and query tiles;
* **planned**: `PagedModelRunner.decode`, which calls ``plan_step(seq_ids)`` once and
  passes the plan to every layer: the slot mapping and query tiles travel in one
  upload, and the block tables stay on the device, only changed rows uploaded.

The model is a synthetic Llama-style one (`paged_kv.model.transformer`), as small as
the CUDA simulator needs: 1 KV head, 2 query heads, head_dim 8, float32 KV, hidden
width 16, MLP width 32, vocabulary 64, random weights (seed 0), with ``--layers``
layers; ``--batch`` prompts of 5, 9, 13, ... random tokens (block size 4: every sequence
crosses into a new block on the same step, one step in four) are prefilled, then
``--steps`` greedy decode steps are counted. Uploads are counted where every input copy happens,
`paged_kv.gpu.kernels._launch.DeviceBuffers.copy_in` (``KVStorage.upload_counts``), in
the CUDA simulator as on a GPU: index uploads (slot mappings, block-table rows, query
tiles) and data uploads (K, V and queries, one each per layer in both ways). Both ways
must produce the same logits, bit for bit; the script checks it.

Output: a markdown table on stdout (mean index uploads per step, and the most in one
step). Run: ``python benchmarks/step_uploads.py [--layers 2 8 40] [--steps 4]
[--batch 4]``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from tqdm.auto import tqdm

from paged_kv import CacheConfig, PagedKVCache
from paged_kv.cache import attention
from paged_kv.core.config import ModelSpec
from paged_kv.model.config import ModelConfig
from paged_kv.model.paged import PagedModelRunner
from paged_kv.model.weights import random_weights

BLOCK_SIZE = 4


def model_config(num_layers: int) -> ModelConfig:
    """The synthetic model (module doc) with `num_layers` layers."""
    spec = ModelSpec(f"synthetic-{num_layers}l", num_layers=num_layers, num_kv_heads=1,
                     head_dim=8, dtype="float32", num_q_heads=2, hidden_size=16,
                     intermediate_size=32, vocab_size=64)
    return ModelConfig(spec=spec)


def per_call_decode(runner: PagedModelRunner, seq_ids: list[int],
                    tokens: list[int]) -> np.ndarray:
    """`PagedModelRunner.decode` without a plan: each layer's write and attention build
    and upload their own indices."""
    cache = runner.cache
    for seq_id, token in zip(seq_ids, tokens):
        cache.append(seq_id, token_ids=[token])
    positions = [cache.num_tokens(s) - 1 for s in seq_ids]
    ones = [1] * len(seq_ids)

    def attend(layer: int, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        cache.write_kv_batch(layer, seq_ids, k, v, num_tokens=ones)
        return attention.decode(cache, layer, seq_ids, q.astype(np.float32))

    return runner.model.logits(runner.model.forward(tokens, positions, attend))


def measure(num_layers: int, steps: int, batch: int, planned: bool,
            seed: int = 0) -> tuple[list[int], list[int], list[np.ndarray]]:
    """Index and data uploads of each decode step, and each step's logits."""
    config = model_config(num_layers)
    blocks = batch * (-(-(5 + BLOCK_SIZE * batch + steps) // BLOCK_SIZE) + 1)
    cache = PagedKVCache(CacheConfig(block_size=BLOCK_SIZE, num_gpu_blocks=blocks),
                         config.spec)
    runner = PagedModelRunner(random_weights(config, seed), cache)
    rng = np.random.default_rng(seed)
    seq_ids, tokens = [], []
    for i in range(batch):
        result = runner.prefill(rng.integers(config.vocab_size, size=5 + BLOCK_SIZE * i).tolist())
        seq_ids.append(result.seq_id)
        tokens.append(int(np.argmax(result.logits)))
    index, data, logits = [], [], []
    for _ in range(steps):
        before = cache.storage.upload_counts()
        if planned:
            out = runner.decode(seq_ids, tokens)
        else:
            out = per_call_decode(runner, seq_ids, tokens)
        uploads = cache.storage.upload_counts() - before
        index.append(uploads.index)
        data.append(uploads.data)
        logits.append(out)
        tokens = [int(t) for t in np.argmax(out, axis=1)]
    return index, data, logits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 8, 40])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args(argv)
    for flag in ("steps", "batch"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if min(args.layers) < 1:
        parser.error(f"--layers must be >= 1, got {min(args.layers)}")
    rows = []
    for num_layers in tqdm(args.layers, desc="layers", file=sys.stderr):
        base_index, base_data, base_logits = measure(num_layers, args.steps, args.batch, False)
        plan_index, plan_data, plan_logits = measure(num_layers, args.steps, args.batch, True)
        same = all(np.array_equal(a, b) for a, b in zip(base_logits, plan_logits))
        if not same:
            print(f"{num_layers} layers: planned and per-call logits differ", file=sys.stderr)
            return 1
        rows.append((num_layers, np.mean(base_index), max(base_index), np.mean(plan_index),
                     max(plan_index), np.mean(base_data), np.mean(plan_data)))
    print(f"Decode steps of the synthetic model, batch {args.batch}, block size {BLOCK_SIZE}, "
          f"{args.steps} steps per row; index uploads per step (mean, max):\n")
    print("| layers | per call: index uploads | planned: index uploads | ratio | "
          "data uploads (both) |")
    print("|---:|---:|---:|---:|---:|")
    for layers, b_mean, b_max, p_mean, p_max, b_data, p_data in rows:
        assert b_data == p_data
        print(f"| {layers} | {b_mean:g} (max {b_max}) | {p_mean:g} (max {p_max}) | "
              f"{b_mean / p_mean:.1f}x | {b_data:g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
