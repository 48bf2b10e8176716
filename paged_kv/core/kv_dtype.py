"""KV-cache element types: what a pool stores per K/V element, and what scales go with it.

A model computes in ``ModelSpec.dtype`` (float16 or float32); its KV cache may store
another type, ``ModelSpec.kv_dtype`` (vLLM's ``kv_cache_dtype``; ``"auto"`` means the
compute dtype):

==========  ============  ==========================================  =====================
kv_dtype    pool element  scale (float32)                             bytes per token, head
==========  ============  ==========================================  =====================
float16     float16       none                                        ``2 * head_dim``
float32     float32       none                                        ``4 * head_dim``
int8        int8          per token and KV head, paged beside the     ``head_dim + 4``
                          pool: ``[L, 2, blocks, block_size,
                          kv_heads, 1]``
fp8_e4m3    uint8 (E4M3   per layer, K/V and KV head, static:         ``head_dim``
            bit pattern)  ``[L, 2, kv_heads]`` (one value for all
                          heads is vLLM's per-tensor scale)
==========  ============  ==========================================  =====================

int8 is symmetric: ``scale = amax / 127`` over the token's ``head_dim`` values of one
head, ``q = round_half_even(x / scale)`` in ``[-127, 127]``. Because its scales change
with every token, they live in paged arrays with the same block axis as the pool, so a
block copy, a swap and a prefix-cache hit carry them with the data. FP8 scales are
fixed when the storage is made (vLLM's ``k_scale`` / ``v_scale``, default 1.0, or
calibrated as ``amax / 448``); they belong to the layer, not to a block, so moving
blocks never needs them. The conversions, with their NaN and infinity rules, are in
`paged_kv.reference.quantization` (NumPy reference) and
`paged_kv.gpu.kernels._quant_math` (kernels).

This module imports no numba: `paged_kv.core.config` uses it for bytes per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: No scale / a scale per token and KV head (paged) / a static scale per layer, K/V, head.
SCALE_NONE = "none"
SCALE_PER_TOKEN_HEAD = "token_head"
SCALE_PER_HEAD = "head"

#: The dtype of every scale array.
SCALE_DTYPE = np.dtype(np.float32)


@dataclass(frozen=True)
class KVDtype:
    """One KV-cache element type (module table)."""

    #: the name ModelSpec.kv_dtype takes
    name: str
    #: NumPy dtype name of the pool's elements
    storage: str
    #: which scales go with the data: SCALE_NONE, SCALE_PER_TOKEN_HEAD or SCALE_PER_HEAD
    scale: str

    @property
    def quantized(self) -> bool:
        """True when the pool holds codes that need scales to read back."""
        return self.scale != SCALE_NONE

    @property
    def itemsize(self) -> int:
        """Bytes per stored K or V element."""
        return np.dtype(self.storage).itemsize

    @property
    def paged_scales(self) -> bool:
        """True when scales are per token, in arrays paged like the pool."""
        return self.scale == SCALE_PER_TOKEN_HEAD

    def bytes_per_token_head(self, head_dim: int) -> int:
        """Bytes one token's K (or V) of one KV head takes, scale included."""
        scale = SCALE_DTYPE.itemsize if self.paged_scales else 0
        return head_dim * self.itemsize + scale


#: Every KV dtype by name (module table).
KV_DTYPES: dict[str, KVDtype] = {
    kv.name: kv
    for kv in (
        KVDtype("float16", "float16", SCALE_NONE),
        KVDtype("float32", "float32", SCALE_NONE),
        KVDtype("int8", "int8", SCALE_PER_TOKEN_HEAD),
        KVDtype("fp8_e4m3", "uint8", SCALE_PER_HEAD),
    )
}

#: Other spellings: vLLM's "fp8" is E4M3.
KV_DTYPE_ALIASES = {"fp8": "fp8_e4m3", "fp8_e4m3fn": "fp8_e4m3"}

#: The value of ModelSpec.kv_dtype that means "the compute dtype".
AUTO = "auto"

#: What a command's ``--kv-dtype`` offers: the compute dtype or a quantized cache.
KV_DTYPE_CHOICES = (AUTO, "int8", "fp8_e4m3")

#: Quantized pool element dtype -> KV dtype (the kernels tell the format by the pool's
#: element type: int8 codes or E4M3 bit patterns in uint8).
QUANTIZED_BY_STORAGE: dict[str, KVDtype] = {
    kv.storage: kv for kv in KV_DTYPES.values() if kv.quantized
}


def canonical_kv_dtype(name: object) -> str:
    """`name` as a key of `KV_DTYPES` or `AUTO` (aliases resolved, any case), else
    `ValueError` listing the valid names."""
    if isinstance(name, str):
        key = KV_DTYPE_ALIASES.get(name.lower(), name.lower())
        if key in KV_DTYPES or key == AUTO:
            return key
    valid = ", ".join([AUTO, *KV_DTYPES, *KV_DTYPE_ALIASES])
    raise ValueError(f"unknown KV dtype {name!r}; valid names: {valid}")
