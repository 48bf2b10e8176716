"""Launching: streams, reusable device buffers for the wrappers' inputs, the error count.

Streams
-------
Every wrapper takes ``stream=None``: None is the default stream (numba's ``0``, CUDA's
legacy default stream), otherwise a ``cuda.stream()`` of `paged_kv.gpu.device.cuda_api`.
A wrapper only *enqueues* work: uploads of its host inputs, then the kernel (or the
copies), all on that stream, and returns. Later work on the same stream sees the
result; work on another stream must wait for it (an event; `paged_kv.gpu.storage` does
this for the pools it owns), and the host must synchronize the stream before reading
memory the work writes.

Buffers
-------
Host inputs (index arrays, and K/V given as NumPy) are copied into device buffers that
`DeviceBuffers` keeps per (input name, stream) and grows geometrically, so a steady
stream of calls allocates nothing: no ``cuda.to_device`` per launch. Reuse is safe
because the next upload into a buffer is enqueued on the same stream, after the kernel
that read it. The source of an upload is pageable NumPy memory, which the driver stages
before the call returns, so callers may reuse their arrays at once.

Counting uploads
----------------
Every host-to-device copy of a wrapper's input goes through `DeviceBuffers.copy_in`
(`upload` uses it, and so does `paged_kv.gpu.device_block_table.DeviceBlockTable`), which
counts it by input name. `DeviceBuffers.upload_counts` returns the counts as an immutable
`UploadCounts`; the difference of two snapshots is what happened in between, split into
index uploads (slot mappings, block tables, query tiles, pairs, offsets) and data
uploads (`DATA_INPUTS`: keys, values, queries). The simulator counts the same copies.

Errors
------
Index arrays that are already on the device are not copied back to be checked (see
`paged_kv.gpu.kernels._validate`); the kernels guard every id they use and skip (or, in
gather, zero) what is out of range, counting each in `DeviceBuffers.errors`, a device
int32 counter that `DeviceBuffers.take_errors` reads and resets (one small copy, which
synchronizes; `paged_kv.gpu.storage.KVStorage` does it whenever it synchronizes anyway).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from paged_kv.gpu import device
from paged_kv.gpu.fences import stream_arg, stream_key

#: Most threads per CUDA block: eight warps, enough to hide memory latency on every
#: architecture since Volta, while staying under the 1024 limit.
THREADS_PER_BLOCK = 256

#: Smallest buffer allocated, in bytes (one allocation covers most small calls).
_MIN_BUFFER_BYTES = 4096


#: Upload names that carry KV or queries; every other upload carries indices.
DATA_INPUTS = frozenset({"k", "v", "attention_q"})


@dataclass(frozen=True)
class UploadCounts:
    """Host-to-device input copies by input name, at one moment (`DeviceBuffers`).

    ``later - earlier`` is the copies made in between.
    """

    #: input name -> copies made
    by_name: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def index(self) -> int:
        """Copies of index inputs (every name not in `DATA_INPUTS`)."""
        return sum(n for name, n in self.by_name.items() if name not in DATA_INPUTS)

    @property
    def data(self) -> int:
        """Copies of K, V and query inputs (`DATA_INPUTS`)."""
        return sum(n for name, n in self.by_name.items() if name in DATA_INPUTS)

    def __sub__(self, other: UploadCounts) -> UploadCounts:
        names = set(self.by_name) | set(other.by_name)
        diff = {name: self.by_name.get(name, 0) - other.by_name.get(name, 0) for name in names}
        return UploadCounts(MappingProxyType({k: n for k, n in sorted(diff.items()) if n}))


def launch(kernel: Any, num_blocks: int, threads: int, stream: Any, *args: Any) -> None:
    """Launch `kernel` on ``num_blocks`` CUDA blocks of `threads`; nothing when zero."""
    if num_blocks <= 0:
        return
    kernel[num_blocks, threads, stream_arg(stream)](*args)


class DeviceBuffers:
    """Device buffers reused across calls for the wrappers' host inputs (module doc).

    One instance per owner (each `KVStorage` has its own; the bare wrappers share
    `default_buffers()`). Buffers belong to the CUDA context current when they were
    made: paged_kv uses one device per process.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, int], Any] = {}
        self._errors: Any = None
        self._uploads: dict[str, int] = {}

    def copy_in(self, name: str, dst: Any, host: np.ndarray, stream: Any = None) -> None:
        """Copy `host` into the device array `dst` on `stream`, counted as an upload of
        `name`: the one place a wrapper's input crosses from host to device."""
        dst.copy_to_device(host, stream=stream_arg(stream))
        self._uploads[name] = self._uploads.get(name, 0) + 1

    def upload_counts(self) -> UploadCounts:
        """The uploads made so far, by input name (an immutable snapshot)."""
        return UploadCounts(MappingProxyType(dict(sorted(self._uploads.items()))))

    def upload(self, name: str, host: np.ndarray, stream: Any = None) -> Any:
        """`host` (C-contiguous NumPy) copied into the reused buffer `name` of `stream`.

        Returns a device array of `host`'s shape and dtype viewing the buffer; valid
        until the next upload of the same name on the same stream.
        """
        api = device.cuda_api()
        host = np.ascontiguousarray(host)
        nbytes = host.nbytes
        key = (name, stream_key(stream))
        buf = self._buffers.get(key)
        if buf is None or buf.size < nbytes:
            size = max(_MIN_BUFFER_BYTES, nbytes, 2 * (0 if buf is None else buf.size))
            buf = api.device_array(size, np.uint8)
            self._buffers[key] = buf
        view = buf[: max(nbytes, host.dtype.itemsize)].view(host.dtype)[: host.size]
        view = view.reshape(host.shape)
        if nbytes:
            self.copy_in(name, view, host, stream)
        return view

    @property
    def errors(self) -> Any:
        """The device int32[1] count of out-of-range ids the kernels skipped."""
        if self._errors is None:
            self._errors = device.cuda_api().to_device(np.zeros(1, dtype=np.int32))
        return self._errors

    def take_errors(self) -> int:
        """The count of skipped out-of-range ids since the last call; resets it.

        Copies 4 bytes back, which waits for every kernel that may still count.
        """
        if self._errors is None:
            return 0
        device.cuda_api().synchronize()
        count = int(self._errors.copy_to_host()[0])
        if count:
            self._errors.copy_to_device(np.zeros(1, dtype=np.int32))
        return count

    def __len__(self) -> int:
        return len(self._buffers)


_DEFAULT: DeviceBuffers | None = None


def default_buffers() -> DeviceBuffers:
    """The buffers the wrappers use when the caller passes none (one per process)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = DeviceBuffers()
    return _DEFAULT
