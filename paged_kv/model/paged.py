"""The model running through a `PagedKVCache`: prefill, decode, fork, prefix reuse.

Each layer's attention goes through the cache, as in a serving engine: the new tokens'
K and V are written into the pool with the slot-write kernel (`write_kv_batch`), then
the queries attend to K/V read through the block tables by the paged-attention kernels
(`paged_kv.cache.attention`: ``prefill`` over a cached prefix, ``decode`` for a batch).
A step's slot mapping, block tables and query layout are planned and uploaded once
(`PagedKVCache.plan_step`) and every layer reuses the plan. What the prefix cache
serves is not computed at all::

    prompt   t0 t1 t2 t3 | t4 t5 t6 t7 | t8 t9          block_size 4
             cached (hit)  cached (hit)  computed: K/V written at positions 8, 9,
                                         queries 8, 9 attend to positions 0..8, 0..9

Forking shares every block; the first write into a shared partial block copies it
(copy-on-write, inside the cache). Swapping is the cache's own `swap_out`/`swap_in`.

With prompt logits kept (``keep_prompt_logits=True``), a block-aligned prompt's last-token
logits stay with its last full block (`PromptLogits`). A prompt whose every block is
cached then needs no prefill: read its logits with `cached_logits`, choose the first
token, and `prefill` the prompt *with that token*; the cache's cap (the last token of
what is admitted is computed) now falls on the new token, so the whole prompt is served
and only the new token is computed, which its first decode step would have done anyway.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from paged_kv.core.errors import OutOfBlocksError
from paged_kv.core.validate import is_int
from paged_kv.model.prompt_logits import PromptLogits
from paged_kv.model.transformer import Transformer
from paged_kv.model.weights import Weights

if TYPE_CHECKING:
    from paged_kv.cache import PagedKVCache

#: Where attention runs: "device" (the paged-attention kernels, on the GPU or in the
#: simulator) or "reference" (NumPy over K/V gathered by the gather kernel).
ATTENTION_BACKENDS = ("device", "reference")


def attention_functions(backend: str):
    """``(prefill, decode)`` attention over the cache for `backend` (see
    `ATTENTION_BACKENDS`); both take ``(cache, layer, seq or seq_ids, q, ...)``."""
    if backend == "device":
        from paged_kv.cache import attention as paged_attention  # noqa: PLC0415 - loads the kernels

        return paged_attention.prefill, paged_attention.decode
    if backend == "reference":
        from paged_kv.reference import attention  # noqa: PLC0415

        return attention.prefill, attention.decode
    raise ValueError(
        f"unknown attention backend {backend!r}; valid names: {', '.join(ATTENTION_BACKENDS)}"
    )


@dataclass(frozen=True)
class PrefillResult:
    """What one `PagedModelRunner.prefill` did."""

    #: the new sequence
    seq_id: int
    #: logits after the last admitted token, [vocab_size] float64
    logits: np.ndarray
    #: tokens whose K/V this prefill computed
    num_computed: int
    #: leading tokens the prefix cache served (not computed)
    num_cached: int


class PagedModelRunner:
    """`weights`' model decoding through `cache` (which must store this model's KV).

    `attention` picks the backend (`ATTENTION_BACKENDS`); `keep_prompt_logits` keeps
    the last-token logits of block-aligned prompts while their blocks are cached (needs
    prefix caching).
    """

    def __init__(
        self,
        weights: Weights,
        cache: PagedKVCache,
        *,
        attention: str = "device",
        keep_prompt_logits: bool = False,
    ) -> None:
        spec = weights.config.spec
        model = cache.model
        if cache.storage is None or model is None:
            raise ValueError("the runner needs a cache with storage (built with a model)")
        theirs = (model.num_layers, model.num_kv_heads, model.q_heads, model.head_dim,
                  model.dtype)
        ours = (spec.num_layers, spec.num_kv_heads, spec.q_heads, spec.head_dim, spec.dtype)
        if theirs != ours:
            raise ValueError(
                "the cache stores KV of another shape: (layers, kv heads, q heads, "
                f"head_dim, dtype) = {theirs}, the model has {ours}"
            )
        self.model = Transformer(weights)
        self.cache = cache
        self.attention = attention
        self._prefill_attention, self._decode_attention = attention_functions(attention)
        #: the kept prompt logits, or None
        self.prompt_logits = PromptLogits(cache) if keep_prompt_logits else None

    def _check_tokens(self, token_ids: Sequence[int], name: str) -> list[int]:
        """`token_ids` as ints, or `ValueError` if one is not a token of the vocabulary
        (checked before the cache is touched)."""
        vocab = self.model.config.vocab_size
        tokens = list(token_ids)
        bad = [t for t in tokens if not is_int(t) or not 0 <= t < vocab]
        if bad:
            raise ValueError(f"{name} holds {bad[0]!r}, not a token id in [0, {vocab})")
        return [int(t) for t in tokens]

    # -- prefill ---------------------------------------------------------------------------
    def prefill(self, prompt: Sequence[int], *, salt: Hashable | None = None) -> PrefillResult:
        """Admit `prompt` as a new sequence and compute every token the prefix cache
        does not serve; returns its id and the logits after its last token.

        Raises `OutOfBlocksError` (changing nothing) when the GPU pool lacks room.
        """
        prompt = self._check_tokens(prompt, "prompt")
        if not prompt:
            raise ValueError("prompt is empty: a sequence needs at least one token")
        cache = self.cache
        seq_id = cache.allocate(token_ids=prompt, salt=salt)
        start = cache.num_cached_tokens(seq_id)
        prefill = self._prefill_attention

        def attend(layer: int, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
            cache.write_kv_batch(layer, plan, k, v)
            # the kernels take float32 queries; the reference gets the same rounding
            return prefill(cache, layer, plan, q.astype(np.float32))

        try:
            plan = cache.plan_step([seq_id], num_tokens=len(prompt) - start)
            hidden = self.model.forward(prompt[start:], range(start, len(prompt)), attend)
        except BaseException:
            cache.free(seq_id)  # a prefill that failed leaves no half-written sequence
            raise
        logits = self.model.logits(hidden[-1:])[0]
        if self.prompt_logits is not None:
            self.prompt_logits.put(prompt, logits, salt)
        return PrefillResult(seq_id, logits, len(prompt) - start, start)

    def cached_logits(
        self, prompt: Sequence[int], *, salt: Hashable | None = None
    ) -> np.ndarray | None:
        """The kept logits after `prompt` if every block of it is cached now, else None
        (always None without ``keep_prompt_logits``)."""
        if self.prompt_logits is None:
            return None
        return self.prompt_logits.get(prompt, salt)

    # -- decode ----------------------------------------------------------------------------
    def decode(self, seq_ids: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        """Append ``token_ids[i]`` to sequence ``seq_ids[i]`` and compute them all in one
        batch; returns ``[len(seq_ids), vocab_size]`` logits after each new token.

        Raises `OutOfBlocksError`, changing nothing, when the new tokens (and the
        copies of shared partial blocks they write into) need more free GPU blocks
        than there are.
        """
        seq_ids = list(seq_ids)
        tokens = self._check_tokens(token_ids, "token_ids")
        if len(tokens) != len(seq_ids):
            raise ValueError(f"{len(tokens)} token_ids for {len(seq_ids)} sequences")
        if len(set(seq_ids)) != len(seq_ids):
            raise ValueError("a sequence appears twice in one decode batch")
        cache = self.cache
        if not seq_ids:
            return np.zeros((0, self.model.config.vocab_size))
        cost = cache.append_cost(seq_ids, 1)
        if cost > cache.num_free_blocks:
            raise OutOfBlocksError("gpu", cost, cache.num_free_blocks, "decode a batch")
        for seq_id, token in zip(seq_ids, tokens):
            cache.append(seq_id, token_ids=[token])
        positions = [cache.num_tokens(s) - 1 for s in seq_ids]
        plan = cache.plan_step(seq_ids)  # one upload of the step's indices, for every layer
        decode = self._decode_attention

        def attend(layer: int, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
            cache.write_kv_batch(layer, plan, k, v)
            return decode(cache, layer, plan, q.astype(np.float32))

        return self.model.logits(self.model.forward(tokens, positions, attend))

    # -- sharing ---------------------------------------------------------------------------
    def fork(self, seq_id: int) -> int:
        """A new sequence sharing all of `seq_id`'s blocks (parallel sampling); its id."""
        return self.cache.fork(seq_id)

    def free(self, seq_id: int) -> None:
        """Release a finished sequence; its cached blocks stay for later prompts."""
        self.cache.free(seq_id)
