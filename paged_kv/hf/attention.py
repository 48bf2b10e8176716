"""paged_kv's paged attention as a transformers attention implementation, ``"paged_kv"``::

    from paged_kv.hf import use_paged_attention
    use_paged_attention(model)            # registers "paged_kv", sets the model to it
    model.generate(**inputs, cache=PagedHFCache.for_model(model))

With it, a `PagedHFCache` writes each layer's new K/V into the pool and gathers
nothing: `paged_attention` reads K/V through the block tables with the paged-attention
kernels (`paged_kv.hf.pool_io.decode` for one new token per row, ``prefill`` for
several, over any cached prefix). The cache hands itself to the attention function
through the keyword arguments the model passes to both (``update(..., kwargs=...)`` and
then ``attention(..., **kwargs)``).

The kernels compute plain causal attention over every position a row holds. So the
mask transformers builds must be exactly that: a batch with left padding, or a sliding
window shorter than the sequence, is refused with a `ValueError` rather than computed
wrongly. The mask function registered under the same name (`paged_mask`: sdpa's
boolean mask, checked; without one every layer would get ``attention_mask=None``)
refuses it as transformers builds the mask, before any layer has written into the
cache, so a refused forward changes nothing. Use the default attention (the cache
gathers) for those.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import sdpa_mask

from paged_kv.hf import pool_io
from paged_kv.hf.cache import ATTENTION_NAME, CACHE_KWARG, PagedHFCache


def paged_attention(module: Any, query: torch.Tensor, key: torch.Tensor,
                    value: torch.Tensor, attention_mask: torch.Tensor | None,
                    scaling: float | None = None, dropout: float = 0.0,
                    **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: `query` ``[batch, q_heads, q_len, head_dim]``
    attends to what the row's sequence holds in the pool (`key`, `value` are the new
    tokens only, already written). Returns ``([batch, q_len, q_heads, head_dim], None)``
    (no attention weights)."""
    cache = kwargs.get(CACHE_KWARG)
    if not isinstance(cache, PagedHFCache):
        raise ValueError(f"the {ATTENTION_NAME!r} attention reads a PagedHFCache: pass one "
                         f"as generate(cache=...) or model(..., cache=...)")
    if dropout:
        raise ValueError(f"the {ATTENTION_NAME!r} attention has no dropout (eval only), "
                         f"got dropout={dropout}")
    layer = module.layer_idx
    rows = cache.seq_ids
    length = cache.layers[layer].length
    batch, _, q_len, head_dim = query.shape
    _require_plain_causal(attention_mask, batch, q_len, length)
    scale = float(scaling) if scaling is not None else head_dim ** -0.5
    q = query.transpose(1, 2)  # [batch, q_len, q_heads, head_dim]
    exchange = cache.exchange
    if q_len == 1:
        out = pool_io.decode(cache.kv, exchange, layer, rows, q[:, 0], scale)[:, None]
    else:
        out = torch.stack([pool_io.prefill(cache.kv, exchange, layer, row, q[i],
                                           length - q_len, scale)
                           for i, row in enumerate(rows)])
    return out, None


def _require_plain_causal(mask: torch.Tensor | None, batch: int, q_len: int,
                          length: int) -> None:
    """Refuse a mask that is not plain causal attention over ``0 .. length-1``."""
    if mask is None:
        return
    if mask.dtype != torch.bool:
        mask = mask == 0  # an additive mask: 0 where attention is allowed
    positions = torch.arange(length - q_len, length, device=mask.device)[:, None]
    causal = torch.arange(length, device=mask.device)[None, :] <= positions
    if tuple(mask.shape[-2:]) != (q_len, length) or not bool((mask == causal).all()):
        raise ValueError(
            f"the {ATTENTION_NAME!r} attention computes plain causal attention over every "
            f"position a row holds, and this mask is not that (left padding or a sliding "
            f"window shorter than the sequence): use the model's default attention, over "
            f"which the cache gathers")


def paged_mask(batch_size: int, q_length: int, kv_length: int, *args: Any,
               **kwargs: Any) -> torch.Tensor | None:
    """transformers' mask interface: sdpa's boolean mask (None where plain causal
    attention needs none), refused with a `ValueError` unless it is plain causal
    attention over all ``kv_length`` positions. transformers builds the mask before the
    first layer runs, so a refusal here leaves the cache untouched."""
    mask = sdpa_mask(batch_size, q_length, kv_length, *args, **kwargs)
    _require_plain_causal(mask, batch_size, q_length, kv_length)
    return mask


def register_attention() -> str:
    """Register `paged_attention` and its mask function `paged_mask` under
    ``"paged_kv"``; returns the name. Registering again changes nothing."""
    AttentionInterface.register(ATTENTION_NAME, paged_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, paged_mask)
    return ATTENTION_NAME


def use_paged_attention(model: Any) -> Any:
    """Register the ``"paged_kv"`` attention and switch `model` to it; returns `model`."""
    model.set_attn_implementation(register_attention())
    return model
