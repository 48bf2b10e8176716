"""Argument checks shared by the host wrappers.

Every check runs on the host, before any launch, and raises `ValueError` whose message
names the wrapper, the argument and the offending numbers.

What is checked depends on where an index argument lives:

* **host** (list, tuple, NumPy): everything, values included: ids in range, no
  duplicate destination, no block both source and destination of one launch. A bad
  argument raises before any launch and changes no byte.
* **device** (a numba device array): rank, shape and dtype only; its values are *not*
  copied back. The kernels check every id they use against the pool and skip an
  out-of-range one (gather writes zeros in its place), counting it in the error count
  of `paged_kv.gpu.kernels._launch.DeviceBuffers`, so a bad id never reads or writes
  outside a pool. Duplicate destinations and source/destination overlap within one
  launch are not detected on this path: the caller who builds ids on the device
  vouches for them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from paged_kv.core.config import SUPPORTED_DTYPES
from paged_kv.gpu.fences import to_host

#: Axis names of a pool, in order; see `paged_kv.gpu.storage` for the layout.
POOL_AXES = ("num_layers", "2 (K/V)", "num_blocks", "block_size", "num_kv_heads", "head_dim")

#: Block ids travel to the kernels as int32 (pairs, block tables).
MAX_BLOCK_ID = np.iinfo(np.int32).max

#: Element types of any pool: the float KV dtypes, and the quantized codes (int8, FP8
#: E4M3 patterns in uint8; `paged_kv.core.kv_dtype`), which only the byte-moving kernels
#: (block copy, swap) and the quantizing ones take.
STORED_DTYPES = SUPPORTED_DTYPES + ("int8", "uint8")


def is_cuda_array(obj: object) -> bool:
    """True for arrays a kernel addresses in place: device, mapped or simulator arrays."""
    return bool(getattr(obj, "__cuda_ndarray__", False))


def check_pool(pool: Any, what: str, name: str = "pool",
               dtypes: tuple[str, ...] = SUPPORTED_DTYPES) -> tuple[int, ...]:
    """Check a pool's rank, K/V axis, dtype (one of `dtypes`) and contiguity; return its
    shape."""
    shape = getattr(pool, "shape", None)
    dtype = getattr(pool, "dtype", None)
    if shape is None or dtype is None:
        raise ValueError(f"{what}: {name} must be an array, got {type(pool).__name__}")
    shape = tuple(int(n) for n in shape)
    if len(shape) != 6 or shape[1] != 2:
        raise ValueError(
            f"{what}: {name} must have shape [{', '.join(POOL_AXES)}], got {shape}"
        )
    if np.dtype(dtype).name not in dtypes:
        raise ValueError(
            f"{what}: {name} dtype must be one of {dtypes}, got {np.dtype(dtype).name}"
        )
    if shape[2] > MAX_BLOCK_ID:
        raise ValueError(f"{what}: {name} has {shape[2]} blocks; block ids are int32, so at "
                         f"most {MAX_BLOCK_ID}")
    require_cuda_array(pool, what, name)
    require_c_contiguous(pool, what, name)
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


def require_c_contiguous(obj: Any, what: str, name: str) -> None:
    """Kernels address arrays as flat runs: a strided view is refused."""
    contiguous = getattr(obj, "is_c_contiguous", None)
    flags = getattr(obj, "flags", None)
    ok = contiguous() if callable(contiguous) else bool(flags and flags["C_CONTIGUOUS"])
    if not ok:
        raise ValueError(f"{what}: {name} must be C-contiguous, got a strided view")


def memory_extent(arr: Any) -> tuple[int, int]:
    """``(first byte, one past the last byte)`` of a contiguous array's memory."""
    from paged_kv.gpu.kernels._units import base_address  # noqa: PLC0415 - loads numba

    start = base_address(arr)
    return start, start + int(arr.size) * np.dtype(arr.dtype).itemsize


def same_or_disjoint(a: Any, b: Any, what: str, names: tuple[str, str]) -> bool:
    """True when `a` and `b` are the same memory (same extent and shape), False when
    they are disjoint; `ValueError` when they overlap otherwise (a view of one pool
    passed as the other: the copy would read bytes it is overwriting)."""
    a_start, a_end = memory_extent(a)
    b_start, b_end = memory_extent(b)
    if (a_start, a_end) == (b_start, b_end) and tuple(a.shape) == tuple(b.shape):
        return True
    if a_start < b_end and b_start < a_end and a_end > a_start and b_end > b_start:
        raise ValueError(
            f"{what}: {names[0]} (bytes {a_start:#x}..{a_end:#x}) and {names[1]} "
            f"(bytes {b_start:#x}..{b_end:#x}) overlap in memory; pass two distinct "
            f"pools, or the same pool object for a copy within one pool"
        )
    return False


def check_layer(layer: Any, num_layers: int, what: str) -> int:
    """Check a layer index against the pool's layer count; return it as a Python int."""
    if isinstance(layer, (bool, np.bool_)) or not isinstance(layer, (int, np.integer)):
        raise ValueError(f"{what}: layer must be an integer, got {layer!r}")
    if not 0 <= layer < num_layers:
        raise ValueError(f"{what}: layer {int(layer)} out of range [0, {num_layers})")
    return int(layer)


def host_int_array(obj: Any, what: str, name: str, ndim: int,
                   stream: Any = None) -> np.ndarray:
    """Return a host integer index argument as an int64 array of rank `ndim`.

    Accepts lists and NumPy arrays (a device array is copied back on `stream`, the
    stream whose work may have written it, and waited for: only for inputs a wrapper
    needs on the host, such as gather's lengths, which size its output); rejects
    booleans, floats and any other rank. An empty sequence is an empty int64 array.
    """
    arr = to_host(obj, stream) if is_cuda_array(obj) else np.asarray(obj)
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


def device_index_array(obj: Any, what: str, name: str, dtype: Any, ndim: int) -> Any:
    """Check a device-resident index argument's dtype, rank and layout (not its values)."""
    if np.dtype(obj.dtype) != np.dtype(dtype) or len(obj.shape) != ndim:
        raise ValueError(
            f"{what}: a device {name} must be a {ndim}-D {np.dtype(dtype).name} array "
            f"(the dtype the kernel reads), got {len(obj.shape)}-D "
            f"{np.dtype(obj.dtype).name}; pass a NumPy array to have it converted"
        )
    require_c_contiguous(obj, what, name)
    return obj


def kv_argument(obj: Any) -> Any:
    """A k/v argument as something with shape and dtype: device arrays pass through."""
    return obj if is_cuda_array(obj) else np.asarray(obj)


def block_pairs(
    pairs: Any,
    num_src_blocks: int,
    num_dst_blocks: int,
    same_pool: bool,
    what: str,
) -> np.ndarray:
    """Check host ``(src, dst)`` block pairs; return them as an int32 ``[n, 2]`` array.

    Rules: every src id in ``[0, num_src_blocks)``, every dst id in
    ``[0, num_dst_blocks)``; no dst twice (two writers, one block: the result would
    depend on thread order); and, when source and destination are the same pool, no
    dst that is also a src (a block read and overwritten in the same launch: the
    copy would see old or new bytes depending on thread order). A src may appear
    several times (one block copied to several destinations).
    """
    if np.asarray(pairs).size == 0:
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
    return np.ascontiguousarray(arr, dtype=np.int32)


def device_block_pairs(pairs: Any, what: str) -> Any:
    """Check a device-resident ``[n, 2]`` int32 pairs array's form (not its values)."""
    device_index_array(pairs, what, "pairs", np.int32, ndim=2)
    if int(pairs.shape[1]) != 2:
        raise ValueError(
            f"{what}: pairs must have shape [n, 2] (src, dst), got {tuple(pairs.shape)}"
        )
    return pairs


def _check_ids(ids: np.ndarray, num_blocks: int, what: str, role: str) -> None:
    bad = np.flatnonzero((ids < 0) | (ids >= num_blocks))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{what}: {role} block id {int(ids[i])} (pair {i}) out of range "
            f"[0, {num_blocks})"
        )
