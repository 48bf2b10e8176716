"""Model and cache configuration, and the one registry of model presets.

`ModelSpec` describes a transformer: its KV shape (how many bytes one token's keys and
values take: all the cache needs) and, where known, the rest of its architecture (what
the step-time model and the NumPy model need). `MODEL_PRESETS` is the one registry of
named models; every layer that needs a model's shape reads it there (`get_model`).
`CacheConfig` describes the paged cache (block size, pool sizes, watermarks, prefix
caching). Both are frozen dataclasses validated on construction: a bad value raises
`ValueError` naming the field and the value.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import numpy as np

from paged_kv.core.errors import ConfigurationError
from paged_kv.core.eviction import EvictionPolicy, policy_names
from paged_kv.core.kv_dtype import AUTO, KV_DTYPES, KVDtype, canonical_kv_dtype
from paged_kv.core.tier import WRITE_THROUGH, require_placement, require_tier_policy
from paged_kv.core.validate import require_int

#: KV element types the pools and kernels support. Numba has no bfloat16 arithmetic;
#: the kernels only load and store, but we keep to the two types tests cover.
SUPPORTED_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class ModelSpec:
    """The KV-cache shape of one model.

    One token stores, in every layer, a key and a value vector per KV head:
    ``bytes_per_token = 2 (K and V) * num_layers * num_kv_heads * head_dim * itemsize``
    (unquantized KV).
    For OPT-13B in float16 that is ``2 * 40 * 40 * 128 * 2 = 819,200`` bytes.

    ``kv_dtype`` is what the KV cache stores (`paged_kv.core.kv_dtype`: "auto" = ``dtype``,
    "float16", "float32", "int8", "fp8_e4m3" alias "fp8"); ``dtype`` stays what the
    model computes in and what K/V are written and read back as. A quantized cache
    counts its scales: OPT-13B with int8 KV takes ``2 * 40 * 40 * (128 + 4) = 422,400``
    bytes per token (a float32 scale per token and head), with FP8 ``409,600``.
    """

    name: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str = "float16"
    #: the longest sequence (prompt + output) the model serves; the contiguous
    #: "Max" baseline reserves this many slots per request.
    max_seq_len: int = 2048
    #: query heads (>= num_kv_heads, a multiple of it); only reference attention uses it.
    num_q_heads: int | None = None
    #: what the KV cache stores ("auto": the compute dtype); see `paged_kv.core.kv_dtype`
    kv_dtype: str = AUTO
    # The rest of the architecture, where known (None: unknown). The cache needs only the
    # KV shape above; the step-time model needs the parameter count (`num_params`), and
    # the NumPy model builds its weights from these widths.
    #: width of the residual stream
    hidden_size: int | None = None
    #: inner width of the MLP
    intermediate_size: int | None = None
    #: tokens in the vocabulary
    vocab_size: int | None = None
    #: a gated (SwiGLU) MLP of three matrices; False: a plain MLP of two
    gated_mlp: bool = True
    #: the output projection shares the token embedding's matrix
    tied_embeddings: bool = False
    #: where the architecture's figures come from (paper or model card); empty for a toy
    source: str = ""

    def __post_init__(self) -> None:
        for field in ("num_layers", "num_kv_heads", "head_dim", "max_seq_len"):
            require_int(f"ModelSpec.{field}", getattr(self, field), 1)
        for field in ("hidden_size", "intermediate_size", "vocab_size"):
            if getattr(self, field) is not None:
                require_int(f"ModelSpec.{field}", getattr(self, field), 1)
        for field in ("gated_mlp", "tied_embeddings"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"ModelSpec.{field} must be a bool, got {getattr(self, field)!r}")
        if not isinstance(self.source, str):
            raise ValueError(f"ModelSpec.source must be a string, got {self.source!r}")
        if self.dtype not in SUPPORTED_DTYPES:
            raise ValueError(
                f"ModelSpec.dtype must be one of {SUPPORTED_DTYPES}, got {self.dtype!r}"
            )
        if self.num_q_heads is not None:
            require_int("ModelSpec.num_q_heads", self.num_q_heads, 1)
            if self.num_q_heads % self.num_kv_heads:
                raise ValueError(
                    f"ModelSpec.num_q_heads must be a multiple of num_kv_heads="
                    f"{self.num_kv_heads}, got {self.num_q_heads!r}"
                )
        try:
            kv_dtype = canonical_kv_dtype(self.kv_dtype)
        except ValueError as exc:
            raise ValueError(f"ModelSpec.kv_dtype: {exc}") from None
        if kv_dtype in KV_DTYPES and not KV_DTYPES[kv_dtype].quantized and kv_dtype != self.dtype:
            raise ValueError(
                f"ModelSpec.kv_dtype must be 'auto', {self.dtype!r} (the compute dtype) or a "
                f"quantized type ('int8', 'fp8_e4m3'), got {self.kv_dtype!r}"
            )
        object.__setattr__(self, "kv_dtype", kv_dtype)

    @property
    def itemsize(self) -> int:
        """Bytes per element of the compute dtype (``dtype``)."""
        return np.dtype(self.dtype).itemsize

    @property
    def kv(self) -> KVDtype:
        """What the KV cache stores: ``kv_dtype`` resolved ("auto" is ``dtype``)."""
        return KV_DTYPES[self.dtype if self.kv_dtype == AUTO else self.kv_dtype]

    def with_kv_dtype(self, kv_dtype: str) -> ModelSpec:
        """This model with its KV cache stored as `kv_dtype`."""
        return replace(self, kv_dtype=kv_dtype)

    @property
    def q_heads(self) -> int:
        """Query heads (defaults to num_kv_heads: multi-head attention)."""
        return self.num_q_heads if self.num_q_heads is not None else self.num_kv_heads

    @property
    def num_params(self) -> int | None:
        """Parameters of the weight matrices (biases and norms, under 0.1%, left out), or
        None when the widths are unknown::

            per layer:  attention  hidden * q_width + q_width * hidden      (W_q, W_o)
                                   + 2 * hidden * kv_width                   (W_k, W_v)
                        MLP        (3 if gated_mlp else 2) * hidden * intermediate_size
            embeddings (1 if tied_embeddings else 2) * vocab_size * hidden

        with ``q_width = q_heads * head_dim`` and ``kv_width = num_kv_heads * head_dim``.
        """
        d, ffn, vocab = self.hidden_size, self.intermediate_size, self.vocab_size
        if d is None or ffn is None or vocab is None:
            return None
        q_width = self.q_heads * self.head_dim
        kv_width = self.num_kv_heads * self.head_dim
        attention = 2 * d * q_width + 2 * d * kv_width
        mlp = (3 if self.gated_mlp else 2) * d * ffn
        return self.num_layers * (attention + mlp) + (1 if self.tied_embeddings else 2) * vocab * d

    @property
    def bytes_per_token(self) -> int:
        """Bytes of K and V one token occupies across all layers, in the KV dtype and
        with its per-token scales."""
        return 2 * self.num_layers * self.num_kv_heads * self.kv.bytes_per_token_head(
            self.head_dim)

    def bytes_per_block(self, block_size: int) -> int:
        """Bytes one block of `block_size` token slots occupies across all layers."""
        require_int("block_size", block_size, 1)
        return self.bytes_per_token * block_size


#: The model registry. OPT-13B is the vLLM paper's study model, LLaMA-13B the model of its
#: shared-prefix study (Sec. 6.4); "tiny" is small enough that a whole pool fits in a few
#: simulator launches and is the NumPy model's preset (`paged_kv.model`).
MODEL_PRESETS: dict[str, ModelSpec] = {
    "opt-13b": ModelSpec(
        "opt-13b", num_layers=40, num_kv_heads=40, head_dim=128, max_seq_len=2048,
        hidden_size=5120, intermediate_size=20480, vocab_size=50272, gated_mlp=False,
        tied_embeddings=True,
        source="OPT paper (Zhang et al., 2022) Table 1: 40 layers, 40 heads, d_model "
               "5120, FFN 4 x 5120, vocabulary 50,272 (tied): 12.8B parameters"),
    "llama-13b": ModelSpec(
        "llama-13b", num_layers=40, num_kv_heads=40, head_dim=128, max_seq_len=2048,
        hidden_size=5120, intermediate_size=13824, vocab_size=32000,
        source="LLaMA paper (Touvron et al., 2023) Table 2: 40 layers, 40 heads, "
               "dimension 5120, SwiGLU FFN 13,824, vocabulary 32,000: 13.0B"),
    "llama-2-7b": ModelSpec(
        "llama-2-7b", num_layers=32, num_kv_heads=32, head_dim=128, max_seq_len=4096,
        hidden_size=4096, intermediate_size=11008, vocab_size=32000,
        source="Llama 2 paper (Touvron et al., 2023): 32 layers, 32 heads, 4096, "
               "SwiGLU FFN 11,008, vocabulary 32,000: 6.7B"),
    "llama-3-8b": ModelSpec(
        "llama-3-8b", num_layers=32, num_kv_heads=8, head_dim=128, max_seq_len=8192,
        num_q_heads=32, hidden_size=4096, intermediate_size=14336, vocab_size=128256,
        source="Llama 3 model card (Meta, 2024): 32 layers, 32 query / 8 KV heads, 4096, "
               "FFN 14,336, vocabulary 128,256: 8.0B"),
    "tiny": ModelSpec(
        "tiny", num_layers=2, num_kv_heads=2, head_dim=8, max_seq_len=256, num_q_heads=4,
        hidden_size=32, intermediate_size=64, vocab_size=64),
}


def get_model(name: str | ModelSpec) -> ModelSpec:
    """The preset `ModelSpec` called `name` (see `MODEL_PRESETS`; any case); a `ModelSpec`
    is returned as is, so callers can pass a changed one (another KV dtype, say)."""
    if isinstance(name, ModelSpec):
        return name
    try:
        return MODEL_PRESETS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"unknown model {name!r}; valid names: {', '.join(sorted(MODEL_PRESETS))}"
        ) from None


def blocks_for_bytes(num_bytes: int, model: ModelSpec, block_size: int) -> int:
    """How many whole blocks of `block_size` tokens of `model` fit in `num_bytes`.

    >>> blocks_for_bytes(12 * 2**30, get_model("opt-13b"), 16)  # vLLM paper: ~15.7k slots
    983
    """
    require_int("num_bytes", num_bytes)
    return int(num_bytes) // model.bytes_per_block(block_size)


@dataclass(frozen=True)
class CacheConfig:
    """Configuration of one paged KV cache.

    Watermarks are fractions of the GPU pool in use (evictable cached blocks count as
    free): below ``watermark_low`` the pressure level is NORMAL, from it up to
    ``watermark_high`` ELEVATED, at or above ``watermark_high`` CRITICAL. Admission
    that respects the watermark keeps ``1 - watermark_high`` of the pool free.
    ``eviction_policy`` is a name from `paged_kv.core.eviction.policy_names` (any case,
    stored lower-case); "belady" also needs the `BeladyPolicy` instance itself, passed
    to `PagedKVCache(config, policy=...)`.

    Tiers below the GPU (prefix caching only; see `paged_kv.cache.tiers`):
    ``host_cache_blocks`` blocks of host memory and ``disk_cache_blocks`` blocks of a
    file in ``disk_cache_dir`` hold copies of cached prefix blocks, each with its own
    eviction policy (a name from `paged_kv.core.eviction.ONLINE_POLICIES`), placed by
    ``tier_placement`` ("write_through", "write_back" or "selective"). 0 blocks means
    no such tier. The host tier is not the swap pool: ``num_host_blocks`` stays the
    room for preempted sequences, and the two never share a block.
    """

    block_size: int = 16
    num_gpu_blocks: int = 1024
    num_host_blocks: int = 0
    watermark_low: float = 0.90
    watermark_high: float = 0.99
    enable_prefix_caching: bool = False
    eviction_policy: str = "lru"
    #: blocks of the host tier of the prefix cache (0: none); not the swap pool
    host_cache_blocks: int = 0
    #: the host tier's eviction policy
    host_cache_policy: str = "lru"
    #: blocks of the disk tier of the prefix cache (0: none)
    disk_cache_blocks: int = 0
    #: the disk tier's eviction policy
    disk_cache_policy: str = "lru"
    #: the directory the disk tier's file goes in (needed when KV is stored)
    disk_cache_dir: str | os.PathLike | None = None
    #: when cached GPU blocks are copied to the tiers below
    tier_placement: str = WRITE_THROUGH

    def __post_init__(self) -> None:
        require_int("CacheConfig.block_size", self.block_size, 1)
        require_int("CacheConfig.num_gpu_blocks", self.num_gpu_blocks, 1)
        require_int("CacheConfig.num_host_blocks", self.num_host_blocks)
        for field in ("watermark_low", "watermark_high"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                0.0 <= value <= 1.0
            ):
                raise ValueError(f"CacheConfig.{field} must be in [0, 1], got {value!r}")
        if self.watermark_low > self.watermark_high:
            raise ValueError(
                f"CacheConfig.watermark_low must not exceed watermark_high="
                f"{self.watermark_high}, got {self.watermark_low!r}"
            )
        if not isinstance(self.enable_prefix_caching, bool):
            raise ValueError(
                f"CacheConfig.enable_prefix_caching must be a bool, got "
                f"{self.enable_prefix_caching!r}"
            )
        names = policy_names()
        if not isinstance(self.eviction_policy, str) or self.eviction_policy.lower() not in names:
            raise ValueError(
                f"CacheConfig.eviction_policy: unknown eviction policy "
                f"{self.eviction_policy!r}; valid names: {', '.join(names)}"
            )
        object.__setattr__(self, "eviction_policy", self.eviction_policy.lower())
        self._check_tiers()

    def _check_tiers(self) -> None:
        for tier in ("host", "disk"):
            require_int(f"CacheConfig.{tier}_cache_blocks", getattr(self, f"{tier}_cache_blocks"))
            field = f"{tier}_cache_policy"
            policy = require_tier_policy(f"CacheConfig.{field}", getattr(self, field))
            object.__setattr__(self, field, policy)
        require_placement("CacheConfig.tier_placement", self.tier_placement)
        if self.disk_cache_dir is not None and not isinstance(self.disk_cache_dir,
                                                              (str, os.PathLike)):
            raise ValueError(f"CacheConfig.disk_cache_dir must be a path or None, got "
                             f"{self.disk_cache_dir!r}")
        if self.has_tiers and not self.enable_prefix_caching:
            field = "host_cache_blocks" if self.host_cache_blocks else "disk_cache_blocks"
            raise ValueError(
                f"CacheConfig.{field}={getattr(self, field)} needs enable_prefix_caching=True: "
                f"the tiers hold cached prefix blocks"
            )

    @property
    def has_tiers(self) -> bool:
        """Whether a host or disk tier is configured."""
        return bool(self.host_cache_blocks or self.disk_cache_blocks)

    def eviction_policy_for(self, policy: EvictionPolicy | None) -> str | EvictionPolicy:
        """What builds the GPU allocator's policy: `policy` itself when given (it must be
        an `EvictionPolicy` named ``eviction_policy``, else `ConfigurationError`), or the
        configured name."""
        if policy is None:
            return self.eviction_policy
        if not isinstance(policy, EvictionPolicy):
            raise ValueError(f"policy must be an EvictionPolicy instance, got {policy!r}")
        if policy.name != self.eviction_policy:
            raise ConfigurationError(
                f"policy is a {policy.name!r} policy but CacheConfig.eviction_policy is "
                f"{self.eviction_policy!r}; set CacheConfig(eviction_policy={policy.name!r})"
            )
        return policy

    @property
    def watermark_reserve_blocks(self) -> int:
        """GPU blocks that admission under the watermark keeps free.

        ``num_gpu_blocks - floor(watermark_high * num_gpu_blocks)``, computed so that a
        product such as ``0.29 * 100`` is not rounded down by floating-point error.
        """
        usable = math.floor(self.watermark_high * self.num_gpu_blocks + 1e-9)
        return self.num_gpu_blocks - usable

    @property
    def num_gpu_slots(self) -> int:
        """Token slots in the GPU pool."""
        return self.num_gpu_blocks * self.block_size
