"""How torch tensors reach the pools and come back: through NumPy, or in place on a GPU.

=================  ===================  ==================================================
model tensors on   kernels run on       path
=================  ===================  ==================================================
CPU                CUDA simulator       `HostExchange`: ``tensor.numpy()`` in,
                                        ``torch.from_numpy`` out
CPU                GPU                  `HostExchange` (the manager uploads NumPy rows)
CUDA               GPU                  `DeviceExchange`: no copy, no host round trip
CUDA               CUDA simulator       `HostExchange` (the simulator's pools are host
                                        memory; the tensors are copied to the CPU)
=================  ===================  ==================================================

On a GPU, torch and numba share the device's primary context and exchange memory
through ``__cuda_array_interface__``: ``numba.cuda.as_cuda_array(tensor, sync=False)``
is a view of the tensor's memory, ``torch.as_tensor(device_array, device=...)`` one of a
kernel's output; neither copies a byte.

Streams. Kernels that this adapter launches itself (gather, paged attention) run on
PyTorch's current stream, wrapped by ``numba.cuda.external_stream`` (`kernel_stream`),
so they are ordered with the model's own work. `PagedKVCache.write_kv_batch` enqueues
on numba's default stream (the legacy stream, handle 0); when PyTorch's current stream
is another one (PyTorch's streams are non-blocking: they do not wait for the legacy
stream, nor it for them), `before_default_stream` makes the default stream wait for the
K/V being produced and tells PyTorch's allocator the tensors are used there, and the
pools' block fences (`paged_kv.gpu.fences`) order the later kernels on PyTorch's stream
after the write. Nothing here reads device memory on the host; a caller that does
synchronizes PyTorch's stream first (``torch.cuda.current_stream().synchronize()``).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from paged_kv.hf.spec import TORCH_DTYPES


class Exchange(Protocol):
    """Moves `torch` tensors to what the pools' calls take, and their results back."""

    def to_pool(self, x: torch.Tensor, dtype: str) -> Any:
        """`x` (contiguous rows ``[n, heads, head_dim]``) as an array of `dtype` the
        write and attention calls accept."""

    def from_pool(self, array: Any, like: torch.Tensor) -> torch.Tensor:
        """A pool call's result as a tensor on `like`'s device, in `like`'s dtype."""

    def kernel_stream(self) -> Any:
        """The stream for kernels this adapter launches (None: the default stream)."""

    def before_default_stream(self, tensors: list[torch.Tensor]) -> None:
        """Order work about to be enqueued on the default stream after `tensors`."""


class HostExchange:
    """NumPy in, torch out: the path for CPU tensors and for the CUDA simulator."""

    on_device = False

    def to_pool(self, x: torch.Tensor, dtype: str) -> np.ndarray:
        """`x` as a C-contiguous NumPy array of `dtype` (a copy when it lives on a GPU)."""
        return x.detach().to(device="cpu", dtype=TORCH_DTYPES[dtype]).contiguous().numpy()

    def from_pool(self, array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        """`array` as a tensor on `like`'s device and in its dtype."""
        return torch.from_numpy(np.ascontiguousarray(array)).to(device=like.device,
                                                                dtype=like.dtype)

    def kernel_stream(self) -> None:
        """The default stream: host data is uploaded and waited for by the calls."""
        return None

    def before_default_stream(self, tensors: list[torch.Tensor]) -> None:
        """Nothing to order: `to_pool` copied the data to the host already."""


class DeviceExchange:
    """CUDA tensors and numba device arrays as views of each other (module docstring).

    `api` is numba's ``cuda`` module (`paged_kv.gpu.device.cuda_api`); `torch_cuda` is
    ``torch.cuda`` (both injectable, so the stream logic is testable without a GPU).
    """

    on_device = True

    def __init__(self, device: torch.device, api: Any, torch_cuda: Any = None) -> None:
        self._device = device
        self._api = api
        self._torch_cuda = torch.cuda if torch_cuda is None else torch_cuda
        self._wrapped: dict[int, Any] = {}  # stream handle -> numba's external stream

    def _current(self) -> Any:
        return self._torch_cuda.current_stream(self._device)

    def kernel_stream(self) -> Any:
        """PyTorch's current stream as numba takes it: None for the legacy default
        stream (handle 0), else ``external_stream(handle)`` (made once per handle)."""
        handle = int(self._current().cuda_stream)
        if handle == 0:
            return None
        stream = self._wrapped.get(handle)
        if stream is None:
            stream = self._wrapped[handle] = self._api.external_stream(handle)
        return stream

    def before_default_stream(self, tensors: list[torch.Tensor]) -> None:
        """When PyTorch computes on a stream other than the default one: the default
        stream waits for that stream's work so far (which produced `tensors`), and
        PyTorch's caching allocator is told the tensors are in use on the default
        stream, so their memory is not handed out again before it has read them."""
        current = self._current()
        if int(current.cuda_stream) == 0:
            return
        default = self._torch_cuda.default_stream(self._device)
        default.wait_stream(current)
        for tensor in tensors:
            tensor.record_stream(default)

    def to_pool(self, x: torch.Tensor, dtype: str) -> Any:
        """A numba view of `x` in `dtype` (converted, and made contiguous, on the GPU by
        PyTorch when needed). No stream synchronisation: the ordering is
        `before_default_stream`'s and the fences'."""
        tensor = x.detach().to(dtype=TORCH_DTYPES[dtype]).contiguous()
        return self._api.as_cuda_array(tensor, sync=False)

    def from_pool(self, array: Any, like: torch.Tensor) -> torch.Tensor:
        """A tensor viewing the device array `array` (which it keeps alive), converted
        to `like`'s dtype on the GPU if needed."""
        return torch.as_tensor(array, device=like.device).to(dtype=like.dtype)


def exchange_for(tensor_device: torch.device, kind: str | None = None,
                 api: Any = None) -> HostExchange | DeviceExchange:
    """The exchange for tensors on `tensor_device` when kernels run on `kind` ("gpu" or
    "sim"; default `paged_kv.gpu.device.device_kind`): `DeviceExchange` for CUDA
    tensors with a real GPU, `HostExchange` otherwise (module table)."""
    from paged_kv.gpu import device  # noqa: PLC0415 - decides the device at first use

    kind = device.device_kind() if kind is None else kind
    if torch.device(tensor_device).type == "cuda" and kind == "gpu":
        return DeviceExchange(torch.device(tensor_device),
                              device.cuda_api() if api is None else api)
    return HostExchange()
