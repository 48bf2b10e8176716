"""How far int8 and FP8 KV move a real model's next-token distribution.

`kv_drift` runs a model through `PagedHFCache` pools that store K/V as float16 (the
reference) and as each quantized KV dtype, on the same tokens: the prompt, then the
tokens the float16 run generates greedily, fed one at a time to every run (teacher
forcing, so the runs never see different inputs). After the prompt and after each fed
token it compares the next-token distributions ``p`` (float16 KV) and ``q``:

* KL divergence ``KL(p || q) = sum p * (log p - log q)`` in nats (float64 softmax);
* top-1 agreement: the share of positions whose most likely token is the same.

It also generates greedily with each quantized cache, free-running, and reports how many
leading tokens match the float16 run's. The quantized pools are the kernels' own: int8
with a scale per token and head, FP8 E4M3 with vLLM's default static scale 1.0
(`paged_kv.core.kv_dtype`); both read back as float16.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from paged_kv.core.kv_dtype import canonical_kv_dtype
from paged_kv.hf.cache import PagedHFCache

#: the KV dtypes compared by default
QUANTIZED = ("int8", "fp8_e4m3")


def _positions(mask: torch.Tensor, count: int) -> torch.Tensor:
    """Position ids of the last `count` columns of a left-padded `mask`."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -count:]


def _forced_logits(model: Any, cache: PagedHFCache, ids: torch.Tensor, mask: torch.Tensor,
                   forced: torch.Tensor) -> torch.Tensor:
    """Next-token logits ``[batch, len(forced) + 1, vocab]`` (float64): after the prompt,
    then after each column of `forced` ``[batch, n]`` fed one at a time."""
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask, ids.shape[1]),
                    cache=cache, use_cache=True)
        rows = [out.logits[:, -1]]
        for column in forced.T:
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            out = model(input_ids=column[:, None], attention_mask=mask,
                        position_ids=_positions(mask, 1), cache=cache, use_cache=True)
            rows.append(out.logits[:, -1])
    return torch.stack(rows, dim=1).double()


def _greedy(model: Any, cache: PagedHFCache, ids: torch.Tensor, mask: torch.Tensor,
            new_tokens: int) -> torch.Tensor:
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, cache=cache, do_sample=False,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             pad_token_id=model.config.pad_token_id or 0)
    return out[:, ids.shape[1]:]


def kv_drift(model: Any, input_ids: torch.Tensor, *, new_tokens: int = 8,
             kv_dtypes: Sequence[str] = QUANTIZED, block_size: int = 16,
             attention_mask: torch.Tensor | None = None) -> pd.DataFrame:
    """One row per KV dtype of `kv_dtypes` against float16 KV (module docstring):
    ``kl_mean`` and ``kl_max`` (nats, over every row and position), ``top1_agreement``,
    ``positions`` compared, and ``greedy_prefix``: leading free-running greedy tokens
    equal to float16's, out of ``new_tokens`` (the shortest over the batch)."""
    if not isinstance(new_tokens, int) or new_tokens < 1:
        raise ValueError(f"new_tokens must be a whole number >= 1, got {new_tokens!r}")
    ids = torch.as_tensor(input_ids)
    mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask)
    num_blocks = ids.shape[0] * (-(-(ids.shape[1] + new_tokens) // block_size))

    def pool(kv_dtype: str) -> PagedHFCache:
        return PagedHFCache.for_model(model, num_blocks=num_blocks, block_size=block_size,
                                      dtype="float16", kv_dtype=kv_dtype)

    tokens = _greedy(model, pool("auto"), ids, mask, new_tokens)
    forced = tokens[:, :-1]  # the last token's successor is not compared
    log_p = torch.log_softmax(_forced_logits(model, pool("auto"), ids, mask, forced), -1)
    rows = []
    for kv_dtype in kv_dtypes:
        log_q = torch.log_softmax(_forced_logits(model, pool(kv_dtype), ids, mask, forced), -1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        same = (_greedy(model, pool(kv_dtype), ids, mask, new_tokens) == tokens).long()
        rows.append({
            "kv_dtype": canonical_kv_dtype(kv_dtype),
            "positions": int(kl.numel()),
            "kl_mean": float(kl.mean()),
            "kl_max": float(kl.max()),
            "top1_agreement": float((log_p.argmax(-1) == log_q.argmax(-1)).double().mean()),
            "greedy_prefix": int(same.cumprod(dim=1).sum(dim=1).min()),
            "new_tokens": new_tokens,
        })
    return pd.DataFrame(rows)
