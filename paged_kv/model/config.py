"""The shape of a small decoder-only transformer: its KV part and the rest.

The shape is a `paged_kv.core.config.ModelSpec` from the one model registry
(`paged_kv.core.config.MODEL_PRESETS`): layers, KV heads, query heads, head_dim and the KV
dtype the pools store, so a `PagedKVCache` built from ``config.spec`` holds exactly this
model's KV, and the vocabulary, hidden and MLP widths the weights take. What only the
NumPy model needs besides (RoPE base, norm epsilon) is here. Its presets are registry
models small enough that a whole generation runs through the CUDA simulator in seconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from paged_kv.core.config import SUPPORTED_DTYPES, ModelSpec, get_model


@dataclass(frozen=True)
class ModelConfig:
    """A Llama-style decoder: RMSNorm, grouped-query attention with RoPE, SwiGLU MLP.

    ::

        x = embed[token]                                         [hidden]
        per layer:  x += W_o  . attention(RoPE(W_q . norm(x)), RoPE(W_k . norm(x)), W_v . norm(x))
                    x += W_down . (silu(W_gate . norm(x)) * (W_up . norm(x)))
        logits = lm_head . norm(x)                               [vocab_size]
    """

    #: the shape: num_layers, num_kv_heads, num_q_heads, head_dim, KV dtype, and the
    #: widths ``vocab_size``, ``hidden_size``, ``intermediate_size`` (all required here)
    spec: ModelSpec
    #: RoPE base: pair i of a head rotates by position * rope_theta ** (-2i / head_dim)
    rope_theta: float = 10000.0
    #: RMSNorm's epsilon
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if not isinstance(self.spec, ModelSpec):
            raise ValueError(f"ModelConfig.spec must be a ModelSpec, got {self.spec!r}")
        for field in ("vocab_size", "hidden_size", "intermediate_size"):
            if getattr(self.spec, field) is None:
                raise ValueError(
                    f"ModelConfig.spec.{field} is unknown for model {self.spec.name!r}; the "
                    f"NumPy model needs the vocabulary, hidden and MLP widths"
                )
        if not self.spec.gated_mlp or self.spec.tied_embeddings:
            raise ValueError(
                f"model {self.spec.name!r} is not a Llama-style decoder (gated MLP, untied "
                f"output projection), which is the only one the NumPy model builds"
            )
        if self.spec.head_dim % 2:
            raise ValueError(
                f"ModelConfig.spec.head_dim must be even (RoPE rotates pairs), got "
                f"{self.spec.head_dim}"
            )
        for field in ("rope_theta", "norm_eps"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"ModelConfig.{field} must be a number > 0, got {value!r}")

    @property
    def vocab_size(self) -> int:
        """Token ids are ``0 .. vocab_size - 1``."""
        return self.spec.vocab_size

    @property
    def hidden_size(self) -> int:
        """Width of the residual stream."""
        return self.spec.hidden_size

    @property
    def intermediate_size(self) -> int:
        """Width of the SwiGLU MLP's inner layer."""
        return self.spec.intermediate_size

    @property
    def name(self) -> str:
        """The preset's name (the spec's)."""
        return self.spec.name

    @property
    def kv_dtype(self) -> str:
        """The float dtype the model rounds K and V to before the cache stores them
        (``spec.dtype``). It is the pools' dtype unless ``spec.kv_dtype`` names a
        quantized type (``spec.with_kv_dtype("int8")``), which the cache then stores
        instead (`paged_kv.core.kv_dtype`)."""
        return self.spec.dtype

    def with_kv_dtype(self, dtype: str) -> ModelConfig:
        """The same model rounding its K/V to `dtype` (``"float16"`` or ``"float32"``; the
        `kv_dtype` property). A quantized cache is the spec's choice, not this one:
        ``dataclasses.replace(config, spec=config.spec.with_kv_dtype("int8"))``."""
        if dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"kv dtype must be one of {SUPPORTED_DTYPES}, got {dtype!r}")
        return dataclasses.replace(self, spec=dataclasses.replace(self.spec, dtype=dtype))


#: The NumPy model's presets: registry models (`paged_kv.core.config.MODEL_PRESETS`) small
#: enough to run. "tiny" (2 layers, 2 KV heads, 4 query heads, head_dim 8, hidden 32,
#: MLP 64, vocabulary 64) computes and stores KV in float32 here, so paged and dense
#: logits agree to float32 rounding; `with_kv_dtype("float16")` gives the preset's dtype.
MODEL_CONFIGS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(spec=dataclasses.replace(get_model("tiny"), dtype="float32")),
}


def get_model_config(name: str, *, kv_dtype: str | None = None) -> ModelConfig:
    """The preset `ModelConfig` called `name`, storing KV in `kv_dtype` if given."""
    try:
        config = MODEL_CONFIGS[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; valid names: {', '.join(sorted(MODEL_CONFIGS))}"
        ) from None
    return config if kv_dtype is None else config.with_kv_dtype(kv_dtype)
