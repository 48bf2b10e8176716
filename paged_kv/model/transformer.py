"""The model's forward pass, with attention left to the caller.

`Transformer.forward` runs the layers over a batch of rows (tokens at given positions)
and hands each layer's attention to a callback, because *where the KV lives* is the one
thing the dense reference and the paged runner do differently::

    attention(layer, q, k, v) -> out
        q    [rows, q_heads, head_dim]       float64, RoPE applied
        k, v [rows, num_kv_heads, head_dim]  in the KV dtype, RoPE applied to k:
                                             exactly what the cache stores
        out  [rows, q_heads, head_dim]       the attention output of each row

The dense reference (`paged_kv.model.dense`) attends over every row's K/V it was given;
the paged runner (`paged_kv.model.paged`) writes k, v into the cache's pool and attends
through block tables. Rounding K and V to the KV dtype here, for both, makes the dtype
part of the model's definition: a float16 cache is a float16 model, in both.

Rows are independent except through attention, so one call can hold a prompt's new
tokens (prefill) or one token of each of several sequences (a decode step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from paged_kv.model.weights import Weights

#: attention(layer, q, k, v) -> out; see the module docstring
Attention = Callable[[int, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def rms_norm(x: np.ndarray, gain: np.ndarray, eps: float) -> np.ndarray:
    """``x / rms(x) * gain`` over the last axis."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * gain


def rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """Rotary position embedding (the "rotate half" form of GPT-NeoX and Llama).

    `x` is ``[rows, heads, head_dim]``; dims ``i`` and ``i + head_dim / 2`` form a pair
    rotated by the angle ``positions[row] * theta ** (-2i / head_dim)``, so a query and
    a key meet at an angle that depends only on their distance.
    """
    half = x.shape[-1] // 2
    inv_freq = theta ** (-np.arange(half) / half)
    angles = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq  # [rows, half]
    cos = np.cos(angles)[:, None, :]
    sin = np.sin(angles)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def silu(x: np.ndarray) -> np.ndarray:
    """``x * sigmoid(x)``."""
    return x / (1.0 + np.exp(-x))


class Transformer:
    """A decoder-only transformer over `weights`, attention supplied per call."""

    def __init__(self, weights: Weights) -> None:
        self.weights = weights
        self.config = weights.config

    def forward(
        self, token_ids: Sequence[int], positions: Sequence[int], attention: Attention
    ) -> np.ndarray:
        """Final hidden states (after the last norm) of rows `token_ids` at `positions`.

        Returns ``[rows, hidden_size]`` float64; `logits` turns them into logits.
        """
        config, spec, w = self.config, self.config.spec, self.weights
        tokens = np.asarray(token_ids, dtype=np.int64)
        positions = np.asarray(positions, dtype=np.int64)
        if tokens.ndim != 1 or positions.shape != tokens.shape:
            raise ValueError(
                f"token_ids and positions must be 1-D of one length, got {tokens.shape} "
                f"and {positions.shape}"
            )
        if tokens.size and not (0 <= tokens.min() and tokens.max() < config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {config.vocab_size}), got "
                             f"{tokens.min()}..{tokens.max()}")
        rows, hd, eps = len(tokens), spec.head_dim, config.norm_eps
        x = w.embed[tokens]
        for layer, lw in enumerate(w.layers):
            h = rms_norm(x, lw.attn_norm, eps)
            q = rope((h @ lw.wq).reshape(rows, spec.q_heads, hd), positions, config.rope_theta)
            k = rope((h @ lw.wk).reshape(rows, spec.num_kv_heads, hd), positions,
                     config.rope_theta)
            v = (h @ lw.wv).reshape(rows, spec.num_kv_heads, hd)
            out = attention(layer, q, k.astype(spec.dtype), v.astype(spec.dtype))
            x = x + np.asarray(out, dtype=np.float64).reshape(rows, -1) @ lw.wo
            h = rms_norm(x, lw.mlp_norm, eps)
            x = x + (silu(h @ lw.w_gate) * (h @ lw.w_up)) @ lw.w_down
        return rms_norm(x, w.final_norm, eps)

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        """``[rows, vocab_size]`` float64 logits of final hidden states."""
        return hidden @ self.weights.lm_head
