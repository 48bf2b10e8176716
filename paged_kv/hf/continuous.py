"""paged_kv's cache beside transformers' own paging, on the same requests.

transformers 5 has continuous batching (``model.init_continuous_batching``) over a
``PagedAttentionCache``: pages of ``page_size`` tokens, block tables per request, and
prefix sharing of whole pages keyed by a hash chain. `compare_with_continuous_batching`
runs the same prompts, one request after another (so a later prompt can find an
earlier one's pages: submitted together, what is cached would depend on scheduling),
greedy, through both:

* **paged_kv**: one `PagedHFCache` per request over one pool with prefix caching,
  the prompt admitted before ``generate``;
* **transformers CB**: one continuous-batching manager, ``page_size`` =
  ``block_size``, ``num_blocks`` and ``max_batch_tokens`` given explicitly (left to
  itself on a CPU, it sizes the cache from the machine's memory and allocates a mask
  of ``max_batch_tokens x cache tokens`` floats: gigabytes).

Per engine: prompt tokens, prefix-hit tokens (each engine's own answer: the
manager's prefix statistics, the CB cache's ``search_prefix_match``) and hit rate,
tokens the model computed (counted at the input embedding: every token either engine
feeds the model), the most blocks live requests held at once, and whether the tokens
equal plain ``generate``'s.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
import torch

from paged_kv.hf.cache import PagedHFCache

#: row labels
PAGED_KV = "paged_kv"
TRANSFORMERS_CB = "transformers CB"


@contextmanager
def _count_model_tokens(model: Any, on_forward: Any = None) -> Iterator[list[int]]:
    """Count the tokens each forward feeds `model` (a hook on its input embedding);
    call `on_forward()` there too. Yields the running count ``[n]``."""
    count = [0]

    def hook(module: Any, args: tuple, output: Any) -> None:
        count[0] += int(args[0].numel())
        if on_forward is not None:
            on_forward()

    handle = model.get_input_embeddings().register_forward_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


def _greedy(new_tokens: int, pad: int) -> dict:
    return dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                pad_token_id=pad)


def run_paged_kv(model: Any, prompts: Sequence[Sequence[int]], *, new_tokens: int,
                 block_size: int, num_blocks: int) -> tuple[dict, list[list[int]]]:
    """The prompts one after another, each through a new `PagedHFCache` over one
    prefix-caching pool; the summary row and each request's generated tokens."""
    root = PagedHFCache.for_model(model, num_blocks=num_blocks, block_size=block_size,
                                  prefix_caching=True)
    outputs, peak = [], 0
    pad = model.config.pad_token_id or 0
    with _count_model_tokens(model) as computed:
        for prompt in prompts:
            cache = root.new()
            ids = torch.tensor([list(prompt)])
            cache.admit(ids)
            with torch.no_grad():
                out = model.generate(input_ids=ids, cache=cache, **_greedy(new_tokens, pad))
            outputs.append(out[0, ids.shape[1]:].tolist())
            peak = max(peak, max(step["blocks_held"] for step in cache.trace))
            cache.release()
    stats = root.kv.stats()
    return {"engine": PAGED_KV, "block_size": block_size, "pool_blocks": num_blocks,
            "prompt_tokens": stats.prefix_query_tokens,
            "prefix_hit_tokens": stats.prefix_hit_tokens,
            "tokens_computed": computed[0], "peak_blocks": peak}, outputs


def run_continuous_batching(model: Any, prompts: Sequence[Sequence[int]], *, new_tokens: int,
                            block_size: int, num_blocks: int, max_batch_tokens: int,
                            timeout_s: float = 60.0) -> tuple[dict, list[list[int]]]:
    """The prompts one after another through transformers' continuous batching; the
    summary row and each request's generated tokens."""
    from transformers import ContinuousBatchingConfig, GenerationConfig  # noqa: PLC0415
    from transformers.generation.continuous_batching.cache import (  # noqa: PLC0415
        PagedAttentionCache,
    )

    generation = GenerationConfig(eos_token_id=-1, **_greedy(new_tokens,
                                                             model.config.pad_token_id or 0))
    config = ContinuousBatchingConfig(page_size=block_size, num_blocks=num_blocks,
                                      max_batch_tokens=max_batch_tokens)
    manager = model.init_continuous_batching(generation_config=generation,
                                             continuous_batching_config=config)
    matched: list[tuple[int, int]] = []
    peak = [0]

    def held() -> None:
        cache = getattr(manager.batch_processor, "cache", None)
        if cache is not None:
            tables = [a.block_table.values() for a in cache.cache_allocators.values()]
            peak[0] = max(peak[0], len(set(itertools.chain.from_iterable(
                itertools.chain.from_iterable(tables)))))

    search = PagedAttentionCache.search_prefix_match

    def spy(cache: Any, request_id: str, prompt_ids: list[int]) -> int:
        hit = search(cache, request_id, prompt_ids)
        matched.append((len(prompt_ids), hit))
        return hit

    outputs = []
    PagedAttentionCache.search_prefix_match = spy  # the cache's own answer, recorded
    try:
        with _count_model_tokens(model, held) as computed:
            manager.start()
            try:
                for i, prompt in enumerate(prompts):
                    request = manager.add_request(list(prompt), request_id=f"r{i}",
                                                  max_new_tokens=new_tokens)
                    result = manager.get_result(request_id=request, timeout=timeout_s)
                    while result is not None and not result.is_finished():
                        result = manager.get_result(request_id=request, timeout=timeout_s)
                    if result is None or result.error is not None:
                        why = "no result" if result is None else result.error
                        raise RuntimeError(f"transformers' continuous batching did not finish "
                                           f"request {i}: {why}")
                    outputs.append(list(result.generated_tokens))
            finally:
                manager.stop(block=True, timeout=timeout_s)
    finally:
        PagedAttentionCache.search_prefix_match = search
    return {"engine": TRANSFORMERS_CB, "block_size": block_size, "pool_blocks": num_blocks,
            "prompt_tokens": sum(len(p) for p in prompts),
            "prefix_hit_tokens": sum(hit for _, hit in matched),
            "tokens_computed": computed[0], "peak_blocks": peak[0]}, outputs


def compare_with_continuous_batching(model: Any, prompts: Sequence[Sequence[int]], *,
                                     new_tokens: int = 8, block_size: int = 16,
                                     num_blocks: int = 64,
                                     max_batch_tokens: int = 256) -> pd.DataFrame:
    """Both engines on `prompts` (module docstring): one row each, with ``hit_rate``
    (prefix-hit tokens / prompt tokens) and ``same_tokens`` (every request's output
    equals plain greedy ``generate``'s)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token id lists")
    pad = model.config.pad_token_id or 0
    expected = []
    for prompt in prompts:
        ids = torch.tensor([list(prompt)])
        with torch.no_grad():
            out = model.generate(input_ids=ids, **_greedy(new_tokens, pad))
        expected.append(out[0, ids.shape[1]:].tolist())
    rows = []
    for row, outputs in (
        run_paged_kv(model, prompts, new_tokens=new_tokens, block_size=block_size,
                     num_blocks=num_blocks),
        run_continuous_batching(model, prompts, new_tokens=new_tokens, block_size=block_size,
                                num_blocks=num_blocks, max_batch_tokens=max_batch_tokens),
    ):
        row["hit_rate"] = row["prefix_hit_tokens"] / row["prompt_tokens"]
        row["same_tokens"] = outputs == expected
        rows.append(row)
    return pd.DataFrame(rows)
