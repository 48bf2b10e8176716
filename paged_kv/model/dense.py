"""The dense reference: the same model with no cache at all.

`DenseModel.logits` recomputes a whole sequence from its token ids in one causal pass,
attending in float64 (`paged_kv.reference.attention.dense_attention`) over K and V held in plain
arrays. Nothing in it touches a block table, a pool or a kernel, so the paged runner's
logits agreeing with it checks the whole paged path: slot writes, prefix hits, forks
and copy-on-write, swapping, and attention read through block tables on the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from paged_kv.model.transformer import Transformer
from paged_kv.model.weights import Weights
from paged_kv.reference.attention import dense_attention


class DenseModel:
    """Reference logits of `weights`' model, recomputed from scratch on every call."""

    def __init__(self, weights: Weights) -> None:
        self.model = Transformer(weights)

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """``[len(token_ids), vocab_size]`` float64: row i predicts token i + 1."""
        token_ids = list(token_ids)
        if not token_ids:
            raise ValueError("token_ids is empty: a sequence needs at least one token")

        def attend(layer: int, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
            return dense_attention(q, k, v, causal=True)

        hidden = self.model.forward(token_ids, np.arange(len(token_ids)), attend)
        return self.model.logits(hidden)

    def next_logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """``[vocab_size]``: the logits after the last token (what sampling reads)."""
        return self.logits(token_ids)[-1]


#: How far paged logits may stray from the dense model's, per KV dtype (max abs difference;
#: the logits are of order 1: normed hidden states times an N(0, 1/hidden) LM head).
#:
#: * float32 KV: both paths store the same float32 K/V; the only difference is attention
#:   arithmetic. The device kernels take float32 queries and keep scores, softmax sums and
#:   the weighted sum of V in float32 (unit roundoff 2^-24 = 6e-8) where the reference
#:   works in float64. Over contexts of tens of keys and head_dim 8 that is a few ulps of
#:   each attention output, carried through two layers and the LM head at gains of order
#:   one: measured 1e-7 to 4e-7 on the tiny model. 1e-5 leaves a margin of 25x or more
#:   and still fails on any real fault (a wrong block, position or token moves logits by
#:   0.1 or more).
#: * float16 KV: as above, and the two paths round K/V to float16 from values that differ
#:   by ~1e-7 already (layer 0's attention feeds layer 1's K/V), so now and then one
#:   element lands on the other side of a rounding boundary: one float16 ulp (2^-11
#:   relative). One such flip moved the tiny model's logits by up to 4e-4 in trials;
#:   2e-3 allows a handful.
LOGITS_TOLERANCE: dict[str, float] = {"float32": 1e-5, "float16": 2e-3}
