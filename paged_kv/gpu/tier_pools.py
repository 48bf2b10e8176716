"""The bytes of the prefix cache's lower tiers: a host pool and a disk file (data layer).

`KVStorage` owns the GPU pool and the swap pool; `TierPools` owns the tiers' bytes:

* **host tier** (`HostTierPool`): page-locked host memory mapped into the device's
  address space (``cuda.mapped_array``), in the GPU pool's layout ``[num_layers, 2,
  num_blocks, block_size, num_kv_heads, head_dim]`` (and, for int8, the paged scales
  ``[..., num_kv_heads, 1]``). It is its own array: the swap pool's blocks are never
  tier slots, and the other way round.
* **disk tier** (`DiskTierPool`): one file in a directory the user names, holding the
  same layout (codes, then int8's scales) through `numpy.memmap`. The file is opened
  for each read or write, so a file deleted, truncated or made unreadable under a
  running cache is seen at the next access; a CRC-32 of every block, taken when it is
  written, is checked when it is read, so bytes changed on disk are refused too. Any of
  these raises `TierLoadError` (or `TierStoreError`) naming how many leading pairs of
  the call were copied.

Every copy between the GPU pool and a tier goes through the copy engines (the swap
path of `paged_kv.gpu.kernels.swap`, ``storage.swap_method``) on the tier stream
(`TierPools.stream`), inside `KVStorage.access` for the GPU blocks it reads or writes:
so a load is fenced like a swap in, and nothing on another stream (the prefill's slot
writes, a gather, attention) reads a loaded block before its bytes landed, nor
overwrites a block a store still reads. Only the tier stream ever touches a tier's
bytes on the device, so it orders them among themselves; the host touches them (the
disk file's I/O goes through a pinned staging pool) only after synchronizing that
stream. FP8 blocks carry static scales shared by every pool: their bytes mean the same
in any tier. A host-tier <-> disk copy is a host copy between the staging-free host
pool and the file, after the same synchronization.
"""

from __future__ import annotations

import os
import tempfile
import weakref
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from paged_kv.core.config import ModelSpec
from paged_kv.core.errors import TierLoadError, TierStoreError
from paged_kv.core.kv_dtype import SCALE_DTYPE
from paged_kv.core.tier import DISK_TIER, HOST_TIER
from paged_kv.core.validate import require_int
from paged_kv.gpu import device
from paged_kv.gpu.device import host_copy
from paged_kv.gpu.kernels import swap_blocks
from paged_kv.gpu.kernels.quantized import scales_shape
from paged_kv.gpu.storage import KVStorage, _zeroed

#: blocks the disk tier moves per staging round (its pinned staging pool's size)
STAGING_BLOCKS = 16


def _pool_shape(model: ModelSpec, block_size: int, num_blocks: int) -> tuple[int, ...]:
    return (model.num_layers, 2, num_blocks, block_size, model.num_kv_heads, model.head_dim)


def _mapped(shape: tuple[int, ...], dtype: Any) -> Any:
    """A zeroed page-locked host array mapped into the device's address space."""
    return _zeroed(device.cuda_api().mapped_array(shape, dtype))


class HostTierPool:
    """The host tier's bytes: mapped pinned arrays of `num_blocks` blocks (module doc)."""

    def __init__(self, model: ModelSpec, block_size: int, num_blocks: int) -> None:
        shape = _pool_shape(model, block_size, require_int("num_blocks", num_blocks, 1))
        #: the codes (or values), in the GPU pool's layout
        self.pool = _mapped(shape, model.kv.storage)
        #: int8's paged scales, else None
        self.scales = (_mapped(scales_shape(model.kv, shape), SCALE_DTYPE)
                       if model.kv.paged_scales else None)
        #: slots in the pool
        self.num_blocks = num_blocks

    def host_view(self) -> tuple[np.ndarray, np.ndarray | None]:
        """NumPy views of the pool and its scales (valid once the tier stream is idle)."""
        return np.asarray(self.pool), None if self.scales is None else np.asarray(self.scales)


class DiskTierPool:
    """The disk tier's bytes: one file in `directory`, in the pools' layout (module doc).

    The file is created (sparse, zero-filled) with a unique name and removed by `close`
    or when the pool is garbage-collected. `read` and `write` move whole blocks between
    the file and NumPy arrays ``[num_layers, 2, n, block_size, num_kv_heads, head_dim]``.
    """

    def __init__(self, model: ModelSpec, block_size: int, num_blocks: int,
                 directory: str | os.PathLike) -> None:
        self.num_blocks = require_int("num_blocks", num_blocks, 1)
        self._shape = _pool_shape(model, block_size, num_blocks)
        self._dtype = np.dtype(model.kv.storage)
        self._scales_shape = (scales_shape(model.kv, self._shape)
                              if model.kv.paged_scales else None)
        self._codes_bytes = int(np.prod(self._shape)) * self._dtype.itemsize
        scale_bytes = (int(np.prod(self._scales_shape)) * np.dtype(SCALE_DTYPE).itemsize
                       if self._scales_shape else 0)
        #: the file's size in bytes
        self.nbytes = self._codes_bytes + scale_bytes
        try:
            os.makedirs(directory, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="paged_kv-disk-tier-", suffix=".kv",
                                        dir=directory)
            os.ftruncate(fd, self.nbytes)
            os.close(fd)
        except OSError as exc:
            raise ValueError(f"disk_cache_dir {str(directory)!r}: cannot create the disk "
                             f"tier's file there ({exc})") from None
        #: the file
        self.path = Path(name)
        self._crc = np.zeros(num_blocks, dtype=np.uint32)
        self._valid = np.zeros(num_blocks, dtype=bool)
        self._finalizer = weakref.finalize(self, _remove, self.path)

    def close(self) -> None:
        """Remove the file (the pool holds nothing afterwards)."""
        self._finalizer()
        self._valid[:] = False

    def _open(self, mode: str, error: type, done: int, slot: int) -> tuple[Any, Any]:
        """The file as (codes, scales) memmaps, or `error` saying why it cannot be."""
        try:
            size = os.path.getsize(self.path)
            if size < self.nbytes:
                raise error(DISK_TIER, slot, done,
                            f"{self.path} is truncated ({size} of {self.nbytes} bytes)")
            codes = np.memmap(self.path, self._dtype, mode, shape=self._shape)
            scales = (None if self._scales_shape is None else
                      np.memmap(self.path, SCALE_DTYPE, mode, offset=self._codes_bytes,
                                shape=self._scales_shape))
        except FileNotFoundError:
            raise error(DISK_TIER, slot, done, f"{self.path} is missing") from None
        except (OSError, ValueError) as exc:
            raise error(DISK_TIER, slot, done, f"{self.path} is unreadable ({exc})") from None
        return codes, scales

    @staticmethod
    def _checksum(codes: np.ndarray, scales: np.ndarray | None) -> int:
        crc = zlib.crc32(np.ascontiguousarray(codes).data)
        return crc if scales is None else zlib.crc32(np.ascontiguousarray(scales).data, crc)

    def read(self, slots: list[int]) -> tuple[np.ndarray, np.ndarray | None,
                                             TierLoadError | None]:
        """The blocks of `slots`, in order: ``(codes, scales, error)``.

        Raises `TierLoadError` when the file cannot be opened. A block that cannot be
        read, was never written, or whose checksum changed stops the read: `error` says
        why, and its ``done`` is how many leading blocks are whole and verified (None:
        all of them).
        """
        codes, scales = self._open("r", TierLoadError, 0, slots[0] if slots else None)
        out = np.empty((*self._shape[:2], len(slots), *self._shape[3:]), self._dtype)
        out_scales = (None if scales is None else
                      np.empty((*self._scales_shape[:2], len(slots), *self._scales_shape[3:]),
                               SCALE_DTYPE))
        for i, slot in enumerate(slots):
            try:
                out[:, :, i] = codes[:, :, slot]
                if scales is not None:
                    out_scales[:, :, i] = scales[:, :, slot]
            except OSError as exc:
                return out, out_scales, TierLoadError(DISK_TIER, slot, i, f"read failed ({exc})")
            if not self._valid[slot]:
                return out, out_scales, TierLoadError(DISK_TIER, slot, i,
                                                      "the slot was never written")
            block_scales = None if scales is None else out_scales[:, :, i]
            if self._checksum(out[:, :, i], block_scales) != self._crc[slot]:
                return out, out_scales, TierLoadError(
                    DISK_TIER, slot, i,
                    "its bytes changed since they were written (CRC-32 mismatch)")
        return out, out_scales, None

    def write(self, slots: list[int], codes: np.ndarray, scales: np.ndarray | None) -> None:
        """Write blocks ``codes[:, :, i]`` (and scales) to ``slots[i]``, in order.

        Raises `TierStoreError` (its ``done``: blocks written whole) when the file cannot
        be opened or written; a slot being written is invalid until it is whole.
        """
        mem, mem_scales = self._open("r+", TierStoreError, 0, slots[0] if slots else None)
        for i, slot in enumerate(slots):
            self._valid[slot] = False
            try:
                mem[:, :, slot] = codes[:, :, i]
                if mem_scales is not None:
                    mem_scales[:, :, slot] = scales[:, :, i]
            except OSError as exc:
                raise TierStoreError(DISK_TIER, slot, i, f"write failed ({exc})") from None
            self._crc[slot] = self._checksum(codes[:, :, i],
                                             None if scales is None else scales[:, :, i])
            self._valid[slot] = True
        try:
            mem.flush()
            if mem_scales is not None:
                mem_scales.flush()
        except OSError as exc:
            self._valid[slots] = False
            raise TierStoreError(DISK_TIER, slots[0], 0, f"flush failed ({exc})") from None

    def unwritten(self, slots: list[int]) -> list[int]:
        """Of `slots`, those not holding a block written whole."""
        return [s for s in slots if not self._valid[s]]

    def file_bytes(self) -> bytes:
        """The file's bytes (empty when it is missing): snapshots compare them."""
        try:
            return self.path.read_bytes()
        except OSError:
            return b""


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


class TierPools:
    """The tiers' bytes of one `KVStorage`, and the copies between them and its GPU pool.

    Pairs are ``(src, dst)`` ids: a GPU block and a tier slot. Every method validates
    ids before it moves anything (`ValueError`); a disk failure raises `TierLoadError` or
    `TierStoreError` after copying the leading pairs it could.
    """

    def __init__(self, storage: KVStorage, host_blocks: int, disk_blocks: int,
                 disk_dir: str | os.PathLike | None, *,
                 staging_blocks: int = STAGING_BLOCKS) -> None:
        model, bs = storage.model, storage.block_size
        self._storage = storage
        #: the stream every tier copy is enqueued on
        self.stream = device.cuda_api().stream()
        #: the host tier's pool, or None
        self.host = HostTierPool(model, bs, host_blocks) if host_blocks else None
        #: the disk tier's file, or None
        self.disk = None
        self._staging = None
        if disk_blocks:
            if disk_dir is None:
                raise ValueError("CacheConfig.disk_cache_dir must name a directory for a disk "
                                 "tier that stores KV")
            self.disk = DiskTierPool(model, bs, disk_blocks, disk_dir)
            self._staging = HostTierPool(model, bs, min(require_int(
                "staging_blocks", staging_blocks, 1), disk_blocks))

    # -- checks ------------------------------------------------------------------------
    def _tier_size(self, tier: str) -> int:
        pool = {HOST_TIER: self.host, DISK_TIER: self.disk}.get(tier)
        if pool is None:
            raise ValueError(f"tier must be a configured tier ('host' or 'disk'), got {tier!r}")
        return pool.num_blocks

    @staticmethod
    def _pairs(pairs: Any, src_size: int, dst_size: int, what: str) -> list[tuple[int, int]]:
        out = []
        for pair in pairs:
            src, dst = (int(x) for x in pair)
            if not (0 <= src < src_size and 0 <= dst < dst_size):
                raise ValueError(f"{what}: pair ({src}, {dst}) outside [0, {src_size}) x "
                                 f"[0, {dst_size})")
            out.append((src, dst))
        if len({d for _, d in out}) != len(out):
            raise ValueError(f"{what}: a destination appears twice")
        return out

    # -- GPU <-> tier ------------------------------------------------------------------
    def store(self, tier: str, pairs: Any) -> None:
        """Copy GPU block ``src`` into `tier` slot ``dst`` for each pair."""
        storage = self._storage
        pairs = self._pairs(pairs, storage.num_gpu_blocks, self._tier_size(tier),
                            f"store to the {tier} tier")
        if not pairs:
            return
        if tier == HOST_TIER:
            self._from_gpu(self.host, pairs)
            return
        for start in range(0, len(pairs), self._staging.num_blocks):
            chunk = pairs[start:start + self._staging.num_blocks]
            self._from_gpu(self._staging, [(src, i) for i, (src, _) in enumerate(chunk)])
            self.stream.synchronize()  # the staging pool holds the blocks now
            codes, scales = self._staged(len(chunk))
            try:
                self.disk.write([dst for _, dst in chunk], codes, scales)
            except TierStoreError as err:
                err.done += start
                raise

    def load(self, tier: str, pairs: Any) -> None:
        """Copy `tier` slot ``src`` into GPU block ``dst`` for each pair."""
        storage = self._storage
        pairs = self._pairs(pairs, self._tier_size(tier), storage.num_gpu_blocks,
                            f"load from the {tier} tier")
        if not pairs:
            return
        if tier == HOST_TIER:
            self._to_gpu(self.host, pairs)
            return
        staging = self._staging
        for start in range(0, len(pairs), staging.num_blocks):
            chunk = pairs[start:start + staging.num_blocks]
            self.stream.synchronize()  # the last copy out of the staging pool is done
            try:
                codes, scales, error = self.disk.read([src for src, _ in chunk])
            except TierLoadError as err:
                err.done += start
                raise
            n = len(chunk) if error is None else error.done
            view, view_scales = staging.host_view()
            view[:, :, :n] = codes[:, :, :n]
            if view_scales is not None:
                view_scales[:, :, :n] = scales[:, :, :n]
            self._to_gpu(staging, [(i, dst) for i, (_, dst) in enumerate(chunk[:n])])
            if error is not None:
                error.done += start
                raise error

    def copy(self, src_tier: str, dst_tier: str, pairs: Any) -> None:
        """Copy host-tier slot ``src`` into disk-tier slot ``dst`` for each pair."""
        if (src_tier, dst_tier) != (HOST_TIER, DISK_TIER):
            raise ValueError(f"tier copies go host -> disk, got {src_tier!r} -> {dst_tier!r}")
        pairs = self._pairs(pairs, self._tier_size(HOST_TIER), self._tier_size(DISK_TIER),
                            "copy host -> disk tier")
        if not pairs:
            return
        self.stream.synchronize()  # every store into the host tier has landed
        view, view_scales = self.host.host_view()
        src = [s for s, _ in pairs]
        self.disk.write([d for _, d in pairs], view[:, :, src],
                        None if view_scales is None else view_scales[:, :, src])

    def _from_gpu(self, pool: HostTierPool, pairs: list[tuple[int, int]]) -> None:
        storage, stream = self._storage, self.stream
        with storage.access(stream, gpu_reads=[s for s, _ in pairs]):
            swap_blocks(storage.gpu_pool, pool.pool, pairs, stream=stream,
                        method=storage.swap_method)
            if pool.scales is not None:
                swap_blocks(storage.gpu_scales, pool.scales, pairs, stream=stream,
                            method=storage.swap_method)

    def _to_gpu(self, pool: HostTierPool, pairs: list[tuple[int, int]]) -> None:
        if not pairs:
            return
        storage, stream = self._storage, self.stream
        with storage.access(stream, gpu_writes=[d for _, d in pairs]):
            swap_blocks(pool.pool, storage.gpu_pool, pairs, stream=stream,
                        method=storage.swap_method)
            if pool.scales is not None:
                swap_blocks(pool.scales, storage.gpu_scales, pairs, stream=stream,
                            method=storage.swap_method)

    def _staged(self, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        view, view_scales = self._staging.host_view()
        return view[:, :, :n], None if view_scales is None else view_scales[:, :, :n]

    # -- inspection --------------------------------------------------------------------
    def problems(self, tier: str, slots: list[int]) -> list[str]:
        """Of the held `slots`, those the data layer does not hold whole (disk only)."""
        if tier != DISK_TIER or self.disk is None:
            return []
        bad = self.disk.unwritten(slots)
        return [f"disk tier: held slots {bad[:8]} were never written whole"] if bad else []

    def pool_bytes(self) -> dict[str, bytes]:
        """The tiers' bytes by name, after the tier stream is idle (snapshots)."""
        self.stream.synchronize()
        out = {}
        if self.host is not None:
            out["host_tier_bytes"] = host_copy(self.host.pool).tobytes()
            if self.host.scales is not None:
                out["host_tier_scale_bytes"] = host_copy(self.host.scales).tobytes()
        if self.disk is not None:
            out["disk_tier_bytes"] = self.disk.file_bytes()
        return out

    def host_snapshot(self) -> tuple[np.ndarray, np.ndarray | None]:
        """NumPy copies of the host tier's pool and scales (None without scales)."""
        self.stream.synchronize()
        return (host_copy(self.host.pool),
                None if self.host.scales is None else host_copy(self.host.scales))

    def disk_snapshot(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The disk tier's codes and scales as NumPy copies (reads the file)."""
        codes, scales = self.disk._open("r", TierLoadError, 0, None)
        return np.array(codes), None if scales is None else np.array(scales)

    def close(self) -> None:
        """Remove the disk tier's file."""
        if self.disk is not None:
            self.disk.close()
