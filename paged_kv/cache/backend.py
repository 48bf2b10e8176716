"""Storage backends: what the manager needs from KV storage, with storage and without.

`KVBackend` is the interface: write slots, gather, upload a step's indices once and write
through them, copy blocks, swap both ways, copy blocks to and from the prefix cache's
lower tiers, and the pool bytes for snapshots. `StorageBackend` wraps a real
`paged_kv.gpu.storage.KVStorage` and its tiers' `paged_kv.gpu.tier_pools.TierPools`
(device arrays, kernels; numba loads only when one is built); `NullBackend` is
metadata-only mode: copies and swaps are metadata changes with no bytes to move, and any
KV read or write raises `MetadataOnlyError`. The manager picks one at construction
(`make_backend`) and never asks which it has.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from paged_kv.core.config import CacheConfig, ModelSpec, get_model
from paged_kv.core.errors import MetadataOnlyError
from paged_kv.core.sequence import WrittenExtents
from paged_kv.core.validate import require_int


class KVBackend(Protocol):
    """What the manager needs from KV storage; `StorageBackend` or `NullBackend`."""

    #: the wrapped `KVStorage`, or None in metadata-only mode
    storage: Any
    #: what a cache's repr calls its mode ("metadata-only", or the model's name)
    label: str
    #: the tiers' bytes (`paged_kv.gpu.tier_pools.TierPools`), or None (no tiers or
    #: metadata-only)
    tier_pools: Any

    def new_extents(self, written: int) -> WrittenExtents | None:
        """Bookkeeping of written positions for a new sequence (None: not tracked)."""

    def check_layer(self, layer: object) -> int:
        """`layer` checked (`MetadataOnlyError` first when no KV is stored)."""

    def check_kv(self, k: object, v: object) -> tuple[Any, Any]:
        """K and V rows checked against the model's shape and dtype (NumPy, or device
        arrays left where they are)."""

    def write(self, layer: int, k: np.ndarray, v: np.ndarray, slots: np.ndarray) -> None:
        """Scatter rows of `k`, `v` of `layer` into the GPU pool at `slots`."""

    def gather(self, layer: int, tables: list, ends: list, starts: list) -> tuple:
        """Read positions ``starts[s] .. ends[s]-1`` of each table of `layer`."""

    def upload_step(self, slots: np.ndarray, tables: np.ndarray, lens: np.ndarray,
                    row_seq: np.ndarray, row_len: np.ndarray) -> Any:
        """A step's indices checked and on the device, for every layer (`write_step`,
        paged attention); see `paged_kv.gpu.storage.KVStorage.upload_step`."""

    def write_step(self, layer: int, k: np.ndarray, v: np.ndarray, step: Any) -> None:
        """Scatter rows of `k`, `v` of `layer` at the slots of an uploaded step."""

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy GPU blocks ``src -> dst`` (copy-on-write)."""

    def swap_out(self, pairs: list[tuple[int, int]]) -> None:
        """Copy GPU block ``src`` to host block ``dst`` for each pair."""

    def swap_in(self, pairs: list[tuple[int, int]]) -> None:
        """Copy host block ``src`` to GPU block ``dst`` for each pair."""

    def tier_store(self, tier: str, pairs: list[tuple[int, int]]) -> None:
        """Copy GPU block ``src`` into slot ``dst`` of `tier` ("host" or "disk") for each
        pair (`TierStoreError` when the disk fails)."""

    def tier_load(self, tier: str, pairs: list[tuple[int, int]]) -> None:
        """Copy slot ``src`` of `tier` into GPU block ``dst`` for each pair, fenced so
        nothing reads a block before its bytes land (`TierLoadError` when the disk
        fails)."""

    def tier_copy(self, src_tier: str, dst_tier: str, pairs: list[tuple[int, int]]) -> None:
        """Copy slot ``src`` of `src_tier` into slot ``dst`` of `dst_tier` (host -> disk)."""

    def tier_problems(self, tier: str, slots: list[int]) -> list[str]:
        """Of the held `slots` of `tier`, problems with their bytes (empty: all whole)."""

    def pool_bytes(self) -> dict[str, bytes]:
        """The pools' bytes by name, for snapshots (empty without storage)."""


class NullBackend:
    """Metadata-only mode: no arrays; block copies and swaps move no bytes."""

    storage = None
    label = "metadata-only"
    tier_pools = None

    def new_extents(self, written: int) -> None:
        """Nothing is written without storage: not tracked."""
        return None

    def _refuse(self, *args: object) -> Any:
        raise MetadataOnlyError(
            "this cache is metadata-only (no model or storage=False): it holds no KV"
        )

    check_layer = check_kv = write = gather = upload_step = write_step = _refuse

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """No bytes to copy."""

    def swap_out(self, pairs: list[tuple[int, int]]) -> None:
        """No bytes to move."""

    def swap_in(self, pairs: list[tuple[int, int]]) -> None:
        """No bytes to move."""

    def tier_store(self, tier: str, pairs: list[tuple[int, int]]) -> None:
        """No bytes to move."""

    def tier_load(self, tier: str, pairs: list[tuple[int, int]]) -> None:
        """No bytes to move."""

    def tier_copy(self, src_tier: str, dst_tier: str, pairs: list[tuple[int, int]]) -> None:
        """No bytes to move."""

    def tier_problems(self, tier: str, slots: list[int]) -> list[str]:
        """No bytes to check."""
        return []

    def pool_bytes(self) -> dict[str, bytes]:
        """No pools."""
        return {}


class StorageBackend:
    """A `KVStorage` and, with tiers, its `TierPools` (imported here only: numba loads
    when a cache stores KV)."""

    def __init__(self, model: ModelSpec, config: CacheConfig) -> None:
        from paged_kv.gpu.storage import KVStorage  # noqa: PLC0415 - numba only when storing
        from paged_kv.gpu.tier_pools import TierPools  # noqa: PLC0415

        #: the wrapped storage (pools and kernels)
        self.storage = KVStorage(model, config.block_size, config.num_gpu_blocks,
                                 config.num_host_blocks)
        #: the tiers' bytes (`paged_kv.gpu.tier_pools.TierPools`), or None without tiers
        self.tier_pools = (TierPools(self.storage, config.host_cache_blocks,
                                config.disk_cache_blocks, config.disk_cache_dir)
                      if config.has_tiers else None)
        #: the model's name
        self.label = model.name
        self._model = model

    def new_extents(self, written: int) -> WrittenExtents:
        """A sequence whose first `written` positions hold KV in every layer."""
        return WrittenExtents(self._model.num_layers, written)

    def check_layer(self, layer: object) -> int:
        """`layer` as an int in ``[0, num_layers)``."""
        layer = require_int("layer", layer)
        if layer >= self._model.num_layers:
            raise ValueError(f"layer {layer} out of range [0, {self._model.num_layers})")
        return layer

    def check_kv(self, k: object, v: object) -> tuple[Any, Any]:
        """`k`, `v` as arrays ``[num_tokens, num_kv_heads, head_dim]`` of the model's dtype.

        Host data becomes NumPy arrays; device arrays (numba's, including zero-copy views
        of another library's GPU tensors) are checked where they are, never copied: the
        slot-write kernel reads them in place.
        """
        model = self._model
        k = k if _on_device(k) else np.asarray(k)
        v = v if _on_device(v) else np.asarray(v)
        shape = (model.num_kv_heads, model.head_dim)
        for name, arr in (("k", k), ("v", v)):
            if arr.ndim != 3 or tuple(arr.shape[1:]) != shape:
                raise ValueError(
                    f"{name} must have shape [num_tokens, {shape[0]}, {shape[1]}], got "
                    f"{arr.shape}"
                )
            if arr.dtype != np.dtype(model.dtype):
                raise ValueError(f"{name} must be {model.dtype}, got {arr.dtype}")
        if tuple(k.shape) != tuple(v.shape):
            raise ValueError(f"k and v shapes differ: {k.shape} vs {v.shape}")
        return k, v

    def write(self, layer: int, k: np.ndarray, v: np.ndarray, slots: np.ndarray) -> None:
        """The slot-write kernel."""
        self.storage.write(layer, k, v, slots)

    def gather(self, layer: int, tables: list, ends: list, starts: list) -> tuple:
        """The gather kernel; NumPy ``k, v``."""
        return self.storage.gather(layer, tables, ends, starts)

    def upload_step(self, slots: np.ndarray, tables: np.ndarray, lens: np.ndarray,
                    row_seq: np.ndarray, row_len: np.ndarray) -> Any:
        """`KVStorage.upload_step`: one upload of the indices for every layer."""
        return self.storage.upload_step(slots, tables, lens, row_seq, row_len)

    def write_step(self, layer: int, k: np.ndarray, v: np.ndarray, step: Any) -> None:
        """The slot-write kernel at an uploaded step's slots."""
        self.storage.write_step(layer, k, v, step)

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """The block-copy kernel."""
        if pairs:
            self.storage.copy_blocks(pairs)

    def swap_out(self, pairs: list[tuple[int, int]]) -> None:
        """The swap kernel, GPU -> host."""
        self.storage.swap_out(pairs)

    def swap_in(self, pairs: list[tuple[int, int]]) -> None:
        """The swap kernel, host -> GPU."""
        self.storage.swap_in(pairs)

    def tier_store(self, tier: str, pairs: list[tuple[int, int]]) -> None:
        """`TierPools.store`."""
        self.tier_pools.store(tier, pairs)

    def tier_load(self, tier: str, pairs: list[tuple[int, int]]) -> None:
        """`TierPools.load`."""
        self.tier_pools.load(tier, pairs)

    def tier_copy(self, src_tier: str, dst_tier: str, pairs: list[tuple[int, int]]) -> None:
        """`TierPools.copy`."""
        self.tier_pools.copy(src_tier, dst_tier, pairs)

    def tier_problems(self, tier: str, slots: list[int]) -> list[str]:
        """`TierPools.problems`."""
        return self.tier_pools.problems(tier, slots)

    def pool_bytes(self) -> dict[str, bytes]:
        """Both pools' bytes, a quantized cache's scales (`KVStorage.gpu_scales`), and the
        tiers' bytes."""
        storage = self.storage
        pools = {"gpu_bytes": storage.gpu_snapshot().tobytes(),
                 "host_bytes": storage.host_snapshot().tobytes()}
        for name, scales in (("gpu_scale_bytes", storage.gpu_scales_snapshot()),
                             ("host_scale_bytes", storage.host_scales_snapshot())):
            if scales is not None:
                pools[name] = scales.tobytes()
        if self.tier_pools is not None:
            pools.update(self.tier_pools.pool_bytes())
        return pools


def _on_device(array: object) -> bool:
    """True for a numba device (or simulator) array, which kernels address in place."""
    return bool(getattr(array, "__cuda_ndarray__", False))


def make_backend(
    config: CacheConfig, model: ModelSpec | str | None, storage: bool | None
) -> tuple[ModelSpec | None, StorageBackend | NullBackend]:
    """The model (a preset name resolved) and the backend a cache with these arguments
    uses: storage whenever a model is given, unless ``storage=False``."""
    if isinstance(model, str):
        model = get_model(model)
    if model is not None and not isinstance(model, ModelSpec):
        raise ValueError(f"model must be a ModelSpec or preset name, got {model!r}")
    if storage is None:
        storage = model is not None
    if storage and model is None:
        raise ValueError("storage=True needs a model to size the pools")
    if not storage:
        return model, NullBackend()
    return model, StorageBackend(model, config)
