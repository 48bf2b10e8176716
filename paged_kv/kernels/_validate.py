"""Argument checks shared by the host wrappers.

Every check runs on the host, before any launch, and raises `ValueError` whose message
names the wrapper, the argument and the offending numbers. Index arrays given as device
arrays are copied to the host to be checked (one small copy; ids must be known to be
safe before a kernel writes through them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from paged_kv.config import SUPPORTED_DTYPES

#: Axis names of a pool, in order; see `paged_kv.storage` for the layout.
POOL_AXES = ("num_layers", "2 (K/V)", "num_blocks", "block_size", "num_kv_heads", "head_dim")


def is_cuda_array(obj: object) -> bool:
    """True for arrays a kernel addresses in place: device, mapped or simulator arrays."""
    return bool(getattr(obj, "__cuda_ndarray__", False))


def check_pool(pool: Any, what: str, name: str = "pool") -> tuple[int, ...]:
    """Check a pool's rank, K/V axis and dtype; return its shape."""
    shape = getattr(pool, "shape", None)
    dtype = getattr(pool, "dtype", None)
    if shape is None or dtype is None:
        raise ValueError(f"{what}: {name} must be an array, got {type(pool).__name__}")
    shape = tuple(int(n) for n in shape)
    if len(shape) != 6 or shape[1] != 2:
        raise ValueError(
            f"{what}: {name} must have shape [{', '.join(POOL_AXES)}], got {shape}"
        )
    if np.dtype(dtype).name not in SUPPORTED_DTYPES:
        raise ValueError(
            f"{what}: {name} dtype must be one of {SUPPORTED_DTYPES}, got {np.dtype(dtype).name}"
        )
    return shape


def require_cuda_array(obj: Any, what: str, name: str) -> None:
    """Reject a plain host array where a kernel needs device-addressable memory.

    A plain NumPy array passed to a kernel would be copied whole to the device and back
    at every launch; a host pool must be allocated with ``cuda.mapped_array`` instead.
    """
    if not is_cuda_array(obj):
        raise ValueError(
            f"{what}: {name} must be a device or mapped array (cuda.device_array / "
            f"cuda.mapped_array), got {type(obj).__name__}"
        )


def check_layer(layer: Any, num_layers: int, what: str) -> int:
    """Check a layer index against the pool's layer count; return it as a Python int."""
    if isinstance(layer, (bool, np.bool_)) or not isinstance(layer, (int, np.integer)):
        raise ValueError(f"{what}: layer must be an integer, got {layer!r}")
    if not 0 <= layer < num_layers:
        raise ValueError(f"{what}: layer {int(layer)} out of range [0, {num_layers})")
    return int(layer)


def host_int_array(obj: Any, what: str, name: str, ndim: int) -> np.ndarray:
    """Return an integer index argument as a host int64 array of rank `ndim`.

    Accepts lists, NumPy arrays and device arrays; rejects booleans, floats and any
    other rank. An empty sequence is an empty int64 array.
    """
    arr = obj.copy_to_host() if is_cuda_array(obj) else np.asarray(obj)
    if arr.size == 0 and arr.dtype.kind == "f" and not is_cuda_array(obj):
        # np.asarray([]) is float64: an empty list carries no dtype to reject.
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{what}: {name} must hold integers, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{what}: {name} must be {ndim}-D, got shape {arr.shape}")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{what}: {name} holds values beyond int64")
    return arr.astype(np.int64, copy=False)


def kv_argument(obj: Any) -> Any:
    """A k/v argument as something with shape and dtype: device arrays pass through."""
    return obj if is_cuda_array(obj) else np.asarray(obj)


def to_device(arr: Any, dtype: Any = None) -> Any:
    """A device copy of host array `arr` (C-contiguous, cast to `dtype` if given);
    device arrays of the right dtype pass through untouched."""
    from numba import cuda  # noqa: PLC0415 - numba loads after paged_kv.device chose

    if is_cuda_array(arr) and (dtype is None or np.dtype(arr.dtype) == np.dtype(dtype)):
        return arr
    if is_cuda_array(arr):
        arr = arr.copy_to_host()
    host = np.ascontiguousarray(arr if dtype is None else np.asarray(arr, dtype=dtype))
    return cuda.to_device(host)


def block_pairs(
    pairs: Any,
    num_src_blocks: int,
    num_dst_blocks: int,
    same_pool: bool,
    what: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Check ``(src, dst)`` block pairs; return the source and destination id columns.

    Rules: every src id in ``[0, num_src_blocks)``, every dst id in
    ``[0, num_dst_blocks)``; no dst twice (two writers, one block: the result would
    depend on thread order); and, when source and destination are the same pool, no
    dst that is also a src (a block read and overwritten in the same launch: the
    copy would see old or new bytes depending on thread order). A src may appear
    several times (one block copied to several destinations).
    """
    if not is_cuda_array(pairs) and np.asarray(pairs).size == 0:
        arr = np.zeros((0, 2), dtype=np.int64)  # [] or an empty array: nothing to move
    else:
        arr = host_int_array(pairs, what, "pairs", ndim=2)
    if arr.shape[1] != 2:
        raise ValueError(f"{what}: pairs must have shape [n, 2] (src, dst), got {arr.shape}")
    src, dst = arr[:, 0], arr[:, 1]
    _check_ids(src, num_src_blocks, what, "source")
    _check_ids(dst, num_dst_blocks, what, "destination")
    values, counts = np.unique(dst, return_counts=True)
    if np.any(counts > 1):
        dup = int(values[counts > 1][0])
        raise ValueError(
            f"{what}: destination block {dup} appears {int(counts[counts > 1][0])} times"
        )
    if same_pool:
        both = np.intersect1d(src, dst)
        if both.size:
            raise ValueError(
                f"{what}: block {int(both[0])} is both a source and a destination "
                f"(ordering hazard within one launch)"
            )
    return src.astype(np.int32), dst.astype(np.int32)


def _check_ids(ids: np.ndarray, num_blocks: int, what: str, role: str) -> None:
    bad = np.flatnonzero((ids < 0) | (ids >= num_blocks))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{what}: {role} block id {int(ids[i])} (pair {i}) out of range "
            f"[0, {num_blocks})"
        )
