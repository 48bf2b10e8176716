"""`PagedHFCache`: a transformers cache whose K/V live in a `PagedKVCache`::

    cache = PagedHFCache.for_model(model, num_blocks=256)
    out = model.generate(**inputs, cache=cache, max_new_tokens=20)   # or past_key_values=

transformers gives each layer's new K/V to ``cache.update(k, v, layer_idx)`` (shapes
``[batch, kv_heads, new_tokens, head_dim]``, RoPE already applied) and attends to what
it returns. Here every layer's new K/V are written into the pool by the slot-write
kernel (`paged_kv.hf.pool_io`), and the layer's K/V come back out of the pool: gathered
through the block tables into ``[batch, kv_heads, length, head_dim]`` for the model's
own attention, or, with ``attn_implementation="paged_kv"`` (`paged_kv.hf.attention`),
not gathered at all: the paged-attention kernels read the pool.

The sequence operations generate calls are done once for all layers, on the manager's
sequences (`paged_kv.hf.rows`): beam search's ``reorder_cache(beam_idx)`` forks each
chosen row and frees the old ones, so beams share blocks with copy-on-write;
``batch_repeat_interleave`` and ``batch_select_indices`` fork and free the same way.
``crop`` (assisted decoding's rollback) is refused: the manager has no operation that
shortens a sequence.

Prefix caching across calls: build the pool with ``prefix_caching=True`` and admit
each prompt before generating (`PagedHFCache.admit`): the cached prefix is served,
generate computes only the tokens after it (HF slices the prompt by
``get_seq_length()``), and the prompt's new full blocks are published once every
layer has written them. Generated tokens are not keyed (the cache never sees token
ids), so they are not published.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from paged_kv.cache import PagedKVCache
from paged_kv.hf import pool_io
from paged_kv.hf.exchange import Exchange, exchange_for
from paged_kv.hf.rows import IdenticalRows, Rows
from paged_kv.hf.spec import dtype_name, model_spec, pool_for, text_config

#: the attention implementation name under which `paged_kv.hf.attention` registers
ATTENTION_NAME = "paged_kv"
#: the key under which `update` hands the cache to that attention function
CACHE_KWARG = "paged_kv_cache"


class PagedLayer(CacheLayerMixin):
    """One decoder layer's view of a `PagedHFCache`: its length, and `update`.

    Sequence operations are the cache's (one fork per row, not per layer); the layer
    only moves its K/V.
    """

    is_sliding = False  # a full cache: the model's mask applies any sliding window
    is_compileable = False  # no static shapes: generate neither compiles nor pre-sizes
    is_croppable = False  # the manager cannot shorten a sequence

    def __init__(self, owner: PagedHFCache, layer_idx: int) -> None:
        super().__init__()
        self._owner = owner
        #: which decoder layer this is
        self.layer_idx = layer_idx
        #: positions of every row that this layer holds
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Note the model's device and dtype (no storage to create: the pool exists)."""
        self.device, self.dtype = key_states.device, key_states.dtype
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new K/V into the pool; return what the model attends to."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        return self._owner._update(self, key_states, value_states, kwargs.get("kwargs"))

    def get_seq_length(self) -> int:
        """Positions held (the same in every row)."""
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """``(kv_length, kv_offset)``: attention covers every held position and the new."""
        return self.length + query_length, 0

    def get_max_length(self) -> int:
        """-1: no fixed maximum (the pool's free blocks are the limit)."""
        return -1

    def reset(self) -> None:
        """Hold nothing (the cache frees the sequences)."""
        self.length = 0
        self.is_initialized = False

    def _cache_level(self, *args: Any) -> None:
        raise ValueError("sequence operations act on every layer at once: call them on "
                         "the PagedHFCache, not on one of its layers")

    reorder_cache = crop = batch_repeat_interleave = batch_select_indices = _cache_level


class PagedHFCache(Cache):
    """A transformers `Cache` over the sequences of a `PagedKVCache` (module docstring).

    `kv` must store K/V of the model `config` describes (layers, heads, head_dim).
    `share_identical_rows`: after a prefill, rows whose K/V are bit-for-bit equal in
    every layer become forks of one (parallel samples and beams of one prompt store it
    once; sharing never changes a value read back. On a CPU, BLAS threads may round
    equal rows of one batch differently: those are not shared). Counters:
    `tokens_computed` (new tokens the model gave, all rows), `tokens_cached` (prompt
    positions the prefix cache served instead); `trace` has one record per forward
    (`trace_frame`).
    """

    def __init__(self, kv: PagedKVCache, config: Any, *,
                 share_identical_rows: bool = True) -> None:
        if not isinstance(kv, PagedKVCache) or kv.storage is None:
            raise ValueError("kv must be a PagedKVCache with storage (built with a model)")
        wanted = model_spec(config, dtype=kv.model.dtype)
        have, need = _shape(kv.model), _shape(wanted)
        if have != need:
            raise ValueError(f"the pool stores K/V of (layers, kv heads, q heads, head_dim) "
                             f"= {have}; this model has {need}")
        #: the manager whose pool holds the K/V
        self.kv = kv
        #: the decoder's config (its ``_attn_implementation`` picks the read path)
        self.config = text_config(config)
        self._top_config = config
        self._rows = Rows(kv)
        self._share = share_identical_rows
        self._identical = IdenticalRows()
        self._prefill_length: int | None = 0  # where the current prefill starts (None: decoding)
        self._exchange: Exchange | None = None
        #: new tokens the model computed and wrote, summed over rows
        self.tokens_computed = 0
        #: prompt positions served by the prefix cache (not computed), summed over rows
        self.tokens_cached = 0
        #: one record per forward: rows, length, blocks held / without sharing
        self.trace: list[dict] = []
        super().__init__(layers=[PagedLayer(self, i) for i in range(kv.model.num_layers)])

    # -- construction -----------------------------------------------------------------
    @classmethod
    def for_model(cls, model: Any, *, num_blocks: int = 1024, block_size: int = 16,
                  kv_dtype: str = "auto", dtype: str | torch.dtype | None = None,
                  prefix_caching: bool = False,
                  share_identical_rows: bool = True) -> PagedHFCache:
        """A cache over a new pool for `model`: `num_blocks` blocks of `block_size`
        tokens, K/V in `dtype` (default: the model's; float16 or float32) or quantized
        (`kv_dtype` "int8", "fp8_e4m3"), with prefix caching if asked."""
        dtype = dtype_name(model.dtype) if dtype is None else dtype
        kv = pool_for(model.config, num_blocks=num_blocks, block_size=block_size,
                      dtype=dtype, kv_dtype=kv_dtype, prefix_caching=prefix_caching)
        return cls(kv, model.config, share_identical_rows=share_identical_rows)

    def new(self) -> PagedHFCache:
        """An empty cache over the same pool (what a later generate call uses: its
        prompts can hit the prefix cache this one filled)."""
        return type(self)(self.kv, self._top_config, share_identical_rows=self._share)

    def admit(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
              *, num_beams: int = 1) -> int:
        """Admit a batch of prompts before ``generate`` (needed for prefix caching):
        each prompt's cached prefix is served, and generate computes only the rest.
        `num_beams` admits each prompt that many times, as beam search (or
        ``num_return_sequences``) expands it. Left padding only (what generate wants for
        decoder-only models). Returns the positions served (the same for every row:
        the shortest hit; a row that holds more skips writing them).
        """
        ids = torch.as_tensor(input_ids)
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [batch, tokens], got shape {tuple(ids.shape)}")
        if not isinstance(num_beams, int) or num_beams < 1:
            raise ValueError(f"num_beams must be a whole number >= 1, got {num_beams!r}")
        pads = _left_pads(ids, attention_mask)
        served = self._rows.admit(ids.tolist(), pads, num_beams)
        for layer in self.layers:
            layer.length = served
        self._prefill_length = served
        self.tokens_cached += served * len(self._rows)
        return served

    # -- the model's calls -------------------------------------------------------------
    def _update(self, layer: PagedLayer, k: torch.Tensor, v: torch.Tensor,
                model_kwargs: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
        batch, _, tokens, _ = k.shape
        index, start = layer.layer_idx, layer.length
        rows, kv = self._rows, self.kv
        if self._exchange is None:
            self._exchange = exchange_for(k.device)
        if tokens:
            if not len(rows):
                if index != 0 or start != 0:
                    raise ValueError(f"layer {index} holds {start} positions but no rows")
                rows.start(batch, tokens)
            elif batch != len(rows):
                raise ValueError(
                    f"the model gives {batch} rows but this cache holds {len(rows)} "
                    f"sequences (a cache admitted or filled for a batch serves that batch; "
                    f"pass num_beams to admit, or call batch_repeat_interleave)")
            end = start + tokens
            if index == 0:
                rows.grow(end)
                self.tokens_computed += batch * tokens
            skip = [min(tokens, max(0, p - start)) for p in rows.present]
            pool_io.write(kv, self._exchange, index, rows.ids, k, v, [start] * batch, skip)
            layer.length = end
            self._note_identical(index, start, k, v)
            if index == len(self.layers) - 1:
                self._end_forward(end)
        elif not len(rows):
            return k, v  # nothing stored, nothing written: nothing to read
        if model_kwargs is not None:
            model_kwargs[CACHE_KWARG] = self
        if self.config._attn_implementation == ATTENTION_NAME:
            return k, v  # the paged-attention kernels read the pool
        return pool_io.gather(kv, self._exchange, index, rows.ids, layer.length, k)

    def _note_identical(self, index: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Track rows equal in every layer during a prefill (`IdenticalRows`)."""
        if not self._share or start != self._prefill_length or k.shape[0] < 2:
            return
        if index == 0:
            self._identical.first(k, v)
        else:
            self._identical.check(k, v)

    def _end_forward(self, length: int) -> None:
        """After the last layer: merge identical prefill rows, note the step."""
        if self._prefill_length is not None and self._share:
            leaders = self._identical.leaders
            if leaders:
                self._rows.share(leaders)
        self._prefill_length = None
        rows = self._rows
        self.trace.append({
            "step": len(self.trace), "rows": len(rows), "length": length,
            "blocks_held": rows.blocks_held(), "blocks_unshared": rows.blocks_unshared(),
            "pool_blocks_used": self.kv.num_used_blocks,
        })

    # -- sequence operations (generate's) ------------------------------------------------
    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row ``i`` continues row ``beam_idx[i]`` (forks; old rows freed)."""
        self._rows.reorder(torch.as_tensor(beam_idx).tolist())

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Each row becomes `repeats` rows sharing its blocks (before beam search on a
        cache that already holds a prompt)."""
        n = len(self._rows)
        self._rows.reorder([i for i in range(n) for _ in range(int(repeats))])

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep rows `indices` (row numbers, in that order, or a boolean mask over the
        rows, as DynamicCache indexes them); the others are freed."""
        indices = torch.as_tensor(indices).reshape(-1)
        if indices.dtype == torch.bool:
            if indices.numel() != len(self._rows):
                raise ValueError(f"a boolean mask of {indices.numel()} rows for a cache "
                                 f"holding {len(self._rows)}")
            indices = indices.nonzero().reshape(-1)
        self._rows.reorder(indices.tolist())

    def crop(self, tokens_to_remove: int) -> None:
        """Refused: the manager has no operation that shortens a sequence (so assisted
        and prompt-lookup decoding, which roll back with crop, cannot use this cache)."""
        raise ValueError("PagedHFCache cannot crop: paged_kv's manager has no operation that "
                         "shortens a sequence; use DynamicCache for assisted decoding")

    def reset(self) -> None:
        """Free every row and hold nothing (the pool keeps its cached prefix blocks)."""
        self.release()

    def release(self) -> None:
        """Free every row's sequence; the cache can be filled again."""
        self._rows.release()
        for layer in self.layers:
            layer.reset()
        self._prefill_length = 0

    def __enter__(self) -> PagedHFCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- what it holds -------------------------------------------------------------------
    @property
    def exchange(self) -> Exchange | None:
        """How tensors reach the pool (`paged_kv.hf.exchange`), chosen at the first write."""
        return self._exchange

    @property
    def seq_ids(self) -> tuple[int, ...]:
        """The manager's sequence id of each row."""
        return tuple(self._rows.ids)

    @property
    def forks(self) -> int:
        """Forks made for beam reorders, batch edits and identical rows."""
        return self._rows.forks

    def blocks_held(self) -> int:
        """Physical blocks the rows hold now (a shared block counted once)."""
        return self._rows.blocks_held()

    def blocks_unshared(self) -> int:
        """Blocks the rows would hold if nothing were shared."""
        return self._rows.blocks_unshared()

    def trace_frame(self) -> pd.DataFrame:
        """`trace` as a DataFrame: one row per forward."""
        return pd.DataFrame(self.trace, columns=["step", "rows", "length", "blocks_held",
                                                 "blocks_unshared", "pool_blocks_used"])

    def __repr__(self) -> str:
        return (f"PagedHFCache({len(self._rows)} rows, {self.layers[0].length} positions, "
                f"{self.blocks_held()} blocks held; {self.kv!r})")


def _shape(spec: Any) -> tuple[int, int, int, int]:
    return (spec.num_layers, spec.num_kv_heads, spec.q_heads, spec.head_dim)


def _left_pads(ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[int]:
    """Leading pads of each row; `ValueError` for a mask that is not left padding."""
    if attention_mask is None:
        return [0] * ids.shape[0]
    mask = torch.as_tensor(attention_mask).to(torch.bool)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}, input_ids "
                         f"{tuple(ids.shape)}")
    pads = (~mask).sum(dim=1)
    expected = torch.arange(ids.shape[1])[None, :] >= pads[:, None]
    if not torch.equal(mask, expected):
        raise ValueError("attention_mask must be left padding (zeros, then ones) for a "
                         "decoder-only model's prompts")
    return pads.tolist()
