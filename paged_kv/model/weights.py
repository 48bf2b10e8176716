"""Random, seeded weights for a `ModelConfig` (nothing is downloaded).

Matrices are drawn from ``N(0, 1 / fan_in)`` so every layer keeps its activations near
unit scale, and norm gains from ``1 + N(0, 0.1)`` so the norms are not the identity.
Everything is float64: the model's own arithmetic adds no rounding worth speaking of,
and the only float32 arithmetic in a paged run is the attention kernel's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from paged_kv.model.config import ModelConfig


@dataclass(frozen=True)
class LayerWeights:
    """One decoder layer. Matrices act on row vectors: ``y = x @ W``."""

    #: RMSNorm gain before attention, [hidden]
    attn_norm: np.ndarray
    #: query projection, [hidden, q_heads * head_dim]
    wq: np.ndarray
    #: key projection, [hidden, num_kv_heads * head_dim]
    wk: np.ndarray
    #: value projection, [hidden, num_kv_heads * head_dim]
    wv: np.ndarray
    #: attention output projection, [q_heads * head_dim, hidden]
    wo: np.ndarray
    #: RMSNorm gain before the MLP, [hidden]
    mlp_norm: np.ndarray
    #: SwiGLU gate, [hidden, intermediate]
    w_gate: np.ndarray
    #: SwiGLU up projection, [hidden, intermediate]
    w_up: np.ndarray
    #: MLP down projection, [intermediate, hidden]
    w_down: np.ndarray


@dataclass(frozen=True)
class Weights:
    """All parameters of one model."""

    #: the shapes these weights have
    config: ModelConfig
    #: token embeddings, [vocab_size, hidden]
    embed: np.ndarray
    #: one entry per layer
    layers: tuple[LayerWeights, ...]
    #: RMSNorm gain before the LM head, [hidden]
    final_norm: np.ndarray
    #: output projection to the vocabulary, [hidden, vocab_size] (not tied to `embed`)
    lm_head: np.ndarray


def random_weights(config: ModelConfig, seed: int = 0) -> Weights:
    """Weights for `config` drawn from ``np.random.default_rng(seed)``: the same seed
    gives the same model, bit for bit."""
    rng = np.random.default_rng(seed)
    spec = config.spec
    hidden, inner = config.hidden_size, config.intermediate_size
    q_width = spec.q_heads * spec.head_dim
    kv_width = spec.num_kv_heads * spec.head_dim

    def matrix(rows: int, cols: int) -> np.ndarray:
        return rng.standard_normal((rows, cols)) / np.sqrt(rows)

    def gain() -> np.ndarray:
        return 1.0 + 0.1 * rng.standard_normal(hidden)

    embed = rng.standard_normal((config.vocab_size, hidden))
    layers = tuple(
        LayerWeights(
            attn_norm=gain(),
            wq=matrix(hidden, q_width),
            wk=matrix(hidden, kv_width),
            wv=matrix(hidden, kv_width),
            wo=matrix(q_width, hidden),
            mlp_norm=gain(),
            w_gate=matrix(hidden, inner),
            w_up=matrix(hidden, inner),
            w_down=matrix(inner, hidden),
        )
        for _ in range(spec.num_layers)
    )
    return Weights(config, embed, layers, gain(), matrix(hidden, config.vocab_size))
