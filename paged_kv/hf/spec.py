"""A transformers model's KV shape as a `ModelSpec`, and a `PagedKVCache` sized for it.

A decoder's config names its sizes in one of a few spellings; transformers maps GPT-2's
``n_layer`` / ``n_head`` / ``n_embd`` / ``n_positions`` onto the common names, so one
reading serves Llama, Qwen2, Mistral and GPT-2 alike::

    num_layers   = num_hidden_layers
    num_q_heads  = num_attention_heads
    num_kv_heads = num_key_value_heads      (absent: num_attention_heads, multi-head)
    head_dim     = head_dim                 (absent: hidden_size // num_attention_heads)

The pool stores K/V as float16 or float32 (the kernels' types; numpy has no bfloat16),
or quantized (``kv_dtype`` int8 / fp8_e4m3) with float16 or float32 as what it reads
back. A bfloat16 model is refused with the way out: ``model.to(torch.float16)``.
"""

from __future__ import annotations

from typing import Any

import torch

from paged_kv.cache import PagedKVCache
from paged_kv.core.config import SUPPORTED_DTYPES, CacheConfig, ModelSpec

#: torch dtypes the pools hold, by name
TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def text_config(config: Any) -> Any:
    """The decoder's config (a multimodal model's text part; the config itself else)."""
    getter = getattr(config, "get_text_config", None)
    return getter(decoder=True) if getter is not None else config


def dtype_name(dtype: torch.dtype) -> str:
    """``"float16"`` or ``"float32"`` for a torch dtype the pools hold; `ValueError` else."""
    for name, candidate in TORCH_DTYPES.items():
        if dtype == candidate:
            return name
    raise ValueError(
        f"dtype {dtype} is not one the KV pools hold ({', '.join(SUPPORTED_DTYPES)}); "
        f"cast the model first, e.g. model.to(torch.float16)"
    )


def model_spec(config: Any, *, dtype: str | torch.dtype = "float32",
               kv_dtype: str = "auto") -> ModelSpec:
    """The `ModelSpec` of a transformers config: layers, query and KV heads, head_dim.

    `dtype` is what the pool holds and reads back (float16 or float32, a name or a torch
    dtype); `kv_dtype` what it stores ("auto": `dtype`; "int8", "fp8_e4m3"). Raises
    `ValueError` for a config without attention sizes, or a dtype the pools do not hold.
    """
    cfg = text_config(config)
    name = dtype if isinstance(dtype, str) else dtype_name(dtype)
    try:
        layers = int(cfg.num_hidden_layers)
        q_heads = int(cfg.num_attention_heads)
        hidden = int(cfg.hidden_size)
    except (AttributeError, TypeError):
        raise ValueError(f"config {type(config).__name__} does not name num_hidden_layers, "
                         f"num_attention_heads and hidden_size: not a decoder this cache "
                         f"knows") from None
    kv_heads = getattr(cfg, "num_key_value_heads", None) or q_heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // q_heads
    return ModelSpec(
        name=getattr(cfg, "model_type", None) or type(cfg).__name__,
        num_layers=layers,
        num_kv_heads=int(kv_heads),
        head_dim=int(head_dim),
        dtype=name,
        max_seq_len=int(getattr(cfg, "max_position_embeddings", None) or 2048),
        num_q_heads=q_heads,
        kv_dtype=kv_dtype,
    )


def pool_for(config: Any, *, num_blocks: int = 1024, block_size: int = 16,
             dtype: str | torch.dtype = "float32", kv_dtype: str = "auto",
             prefix_caching: bool = False) -> PagedKVCache:
    """A `PagedKVCache` with storage for a model of `config`: `num_blocks` blocks of
    `block_size` tokens (every layer's K and V), KV as `model_spec` says."""
    spec = model_spec(config, dtype=dtype, kv_dtype=kv_dtype)
    cache_config = CacheConfig(block_size=block_size, num_gpu_blocks=num_blocks,
                               enable_prefix_caching=prefix_caching)
    return PagedKVCache(cache_config, spec)
