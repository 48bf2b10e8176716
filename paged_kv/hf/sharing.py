"""Blocks that beams and parallel samples share, on a real generation loop, against
what transformers' DynamicCache holds for the same run.

`sharing_run` generates twice with the same model, prompts and seed: once with a
`DynamicCache` (every row a contiguous ``[rows, kv_heads, length, head_dim]`` tensor
per layer, reordered by copying rows for beam search) and once with a `PagedHFCache`
(rows are sequences; beams fork and free, identical prompts are stored once). Per
forward it records what each holds:

* ``blocks_unshared``: the blocks the rows would take without sharing, one table per
  row (``rows * ceil(length / block_size)``), DynamicCache's tokens in blocks;
* ``blocks_held``: the physical blocks the paged rows hold, a shared block once;
* ``dynamic_bytes`` (measured on DynamicCache's tensors) and ``paged_bytes``
  (``blocks_held * bytes_per_block``).

The saving is the vLLM paper's (§6.3, Fig. 15): ``1 - blocks held / blocks without
sharing``, averaged over the run. The paper's figures (OPT-13B, ShareGPT and Alpaca,
beam width or n of 2, 4 and 6) are `paged_kv.sim.published.VLLM_FIG15_MEMORY_SAVED_PCT`;
a tiny random model with short outputs is not that setting, so `sharing_run` reports
them beside its own number, not as a target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from transformers import DynamicCache

from paged_kv.hf.cache import PagedHFCache
from paged_kv.sim.published import VLLM_FIG15_MEMORY_SAVED_PCT

#: decoding kinds: beam search (``num_beams``), parallel sampling (``num_return_sequences``)
DECODINGS = {"beam": "beam_search", "parallel": "parallel_sampling"}


class _MeasuredDynamicCache(DynamicCache):
    """DynamicCache noting the bytes of its tensors after each forward's last layer."""

    def __init__(self, config: Any) -> None:
        super().__init__(config=config)
        self.bytes_per_forward: list[int] = []

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        out = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if layer_idx == len(self.layers) - 1:
            self.bytes_per_forward.append(sum(layer.keys.nbytes + layer.values.nbytes
                                              for layer in self.layers))
        return out


@dataclass(frozen=True)
class SharingRun:
    """What `sharing_run` measured."""

    #: one row per forward: step, rows, length, blocks_unshared, blocks_held,
    #: dynamic_bytes, paged_bytes
    steps: pd.DataFrame
    #: ``1 - mean(blocks_held) / mean(blocks_unshared)`` (vLLM §6.3), a fraction
    saved: float
    #: the vLLM paper's (low, high) saving in percent, per workload, for this decoding
    paper_pct: dict[str, tuple[float, float]]
    #: whether both runs generated the same tokens
    same_tokens: bool
    #: copy-on-write copies the paged run made
    cow_copies: int


def sharing_run(model: Any, input_ids: torch.Tensor, *, decoding: str = "beam",
                width: int = 4, new_tokens: int = 16, block_size: int = 16,
                num_blocks: int | None = None, attention_mask: torch.Tensor | None = None,
                seed: int = 0) -> SharingRun:
    """Generate `new_tokens` with beam search of `width` beams (``decoding="beam"``) or
    `width` parallel samples (``"parallel"``, sampling seeded by `seed`) through both
    caches and compare what they hold (module docstring). `num_blocks` defaults to
    enough for every row to hold the whole sequence unshared."""
    if decoding not in DECODINGS:
        raise ValueError(f"unknown decoding {decoding!r}; valid names: {', '.join(DECODINGS)}")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a whole number >= 1, got {width!r}")
    ids = torch.as_tensor(input_ids)
    rows = ids.shape[0] * width
    length = ids.shape[1] + new_tokens
    if num_blocks is None:
        num_blocks = rows * (-(-length // block_size)) + rows
    settings = dict(input_ids=ids, attention_mask=attention_mask, max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens, pad_token_id=model.config.pad_token_id or 0)
    if decoding == "beam":
        settings.update(do_sample=False, num_beams=width, num_return_sequences=1)
    else:
        settings.update(do_sample=True, num_return_sequences=width)

    def generate(cache: Any) -> torch.Tensor:
        torch.manual_seed(seed)
        with torch.no_grad():
            return model.generate(**settings, cache=cache)

    dynamic = _MeasuredDynamicCache(model.config)
    reference = generate(dynamic)
    paged = PagedHFCache.for_model(model, num_blocks=num_blocks, block_size=block_size)
    out = generate(paged)
    steps = paged.trace_frame()
    steps["dynamic_bytes"] = dynamic.bytes_per_forward[: len(steps)]
    steps["paged_bytes"] = steps["blocks_held"] * paged.kv.model.bytes_per_block(block_size)
    steps = steps.drop(columns=["pool_blocks_used"])
    saved = 1.0 - steps["blocks_held"].mean() / steps["blocks_unshared"].mean()
    paper = {workload: pct for (workload, kind), pct in VLLM_FIG15_MEMORY_SAVED_PCT.items()
             if kind == DECODINGS[decoding]}
    cow = paged.kv.stats().cow_copies
    paged.release()
    return SharingRun(steps=steps, saved=float(saved), paper_pct=paper,
                      same_tokens=bool(torch.equal(out, reference)), cow_copies=cow)
