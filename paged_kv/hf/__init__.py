"""Hugging Face transformers models generating through paged_kv's cache.

Three lines put a model on it::

    from paged_kv.hf import PagedHFCache
    cache = PagedHFCache.for_model(model, num_blocks=256)
    out = model.generate(**inputs, cache=cache, max_new_tokens=20)

`PagedHFCache` (`paged_kv.hf.cache`) is a transformers ``Cache`` whose K/V live in a
`paged_kv.PagedKVCache`: written by the slot-write kernel, read back by gather or by the
paged-attention kernels registered as ``attn_implementation="paged_kv"``
(`paged_kv.hf.attention`). Beam search forks and frees sequences (copy-on-write), and
prompts admitted before generate hit the prefix cache.

Around it: the model's KV shape (`paged_kv.hf.spec`), the path tensors take to the pool
(`paged_kv.hf.exchange`, `paged_kv.hf.pool_io`), the blocks beams share against what
DynamicCache holds (`paged_kv.hf.sharing`), how far int8 and FP8 KV move the next-token
distribution (`paged_kv.hf.kv_drift`), transformers' own paged cache on the same
requests (`paged_kv.hf.continuous`), checkpoints on disk (`paged_kv.hf.checkpoint`) and
tiny random models with an offline tokenizer for tests (`paged_kv.hf.tiny`).

This package is the only one that imports torch and transformers (the ``hf`` extra:
``pip install 'paged_kv[hf]'``); ``import paged_kv`` loads neither.
"""

from paged_kv.hf.attention import paged_attention, register_attention, use_paged_attention
from paged_kv.hf.cache import ATTENTION_NAME, PagedHFCache
from paged_kv.hf.spec import model_spec, pool_for

__all__ = [
    "ATTENTION_NAME",
    "PagedHFCache",
    "model_spec",
    "paged_attention",
    "pool_for",
    "register_attention",
    "use_paged_attention",
]
