"""Results read back on the stream that wrote them, as a non-blocking stream needs.

numba's own streams are blocking: the legacy default stream waits for them, so a copy
on the default stream after work on such a stream happens to see the work's bytes. A
stream created non-blocking (PyTorch's, seen through ``cuda.external_stream``) is
ordered with nothing else: a copy on the default stream may run before the work, and the
host reads bytes nobody has written yet. The simulator runs everything at once, so
these tests model such a stream: `NonBlockingStream` and `WrittenOn` (a device array
whose writing work is still in flight on it) return garbage to a copy on any other
stream before the stream is synchronized, and fill a copy enqueued on the stream itself
only when the host synchronizes it.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from paged_kv.core.config import ModelSpec
from paged_kv.gpu import storage as storage_module
from paged_kv.gpu.device import cuda_api, host_copy, is_simulator
from paged_kv.gpu.kernels import decode_attention, gather_kv, swap_blocks, write_slots
from paged_kv.gpu.storage import KVStorage
from paged_kv.reference.attention import dense_attention

pytestmark = pytest.mark.skipif(
    not is_simulator(), reason="the stand-in stream is not one a GPU launch takes")
cuda = cuda_api()
GARBAGE = -7  # what a read that overtakes the work sees (any value the work never writes)


class NonBlockingStream:
    """A CUDA stream ordered with no other stream (module docstring)."""

    _handles = itertools.count(0x5000)

    def __init__(self) -> None:
        self.handle = next(self._handles)  # what `paged_kv.gpu.fences.stream_key` reads
        self.in_flight: list[WrittenOn] = []
        self.copies: list[tuple[np.ndarray, np.ndarray]] = []

    def synchronize(self) -> None:
        """The host waits: the work and the copies enqueued here complete."""
        for array in self.in_flight:
            array.done = True
        for out, values in self.copies:
            np.copyto(out, values)
        self.in_flight.clear()
        self.copies.clear()


class WrittenOn:
    """A device array whose bytes are written by work still in flight on `stream`."""

    __cuda_ndarray__ = True

    def __init__(self, array, stream: NonBlockingStream) -> None:
        self._array, self._stream, self.done = array, stream, False
        stream.in_flight.append(self)

    def __getattr__(self, name: str):
        return getattr(self._array, name)

    def copy_to_host(self, ary=None, stream=0) -> np.ndarray:
        values = self._array.copy_to_host()
        out = np.full_like(values, GARBAGE)
        if stream is self._stream:  # ordered after the work, complete at synchronize
            self._stream.copies.append((out, values))
        elif self.done:
            np.copyto(out, values)
        return out


def test_the_model_returns_garbage_to_a_read_on_the_default_stream() -> None:
    stream = NonBlockingStream()
    early = WrittenOn(cuda.to_device(np.arange(3)), stream)
    assert early.copy_to_host().tolist() == [GARBAGE] * 3
    stream.synchronize()
    assert early.copy_to_host().tolist() == [0, 1, 2]


MODEL = ModelSpec(name="nb", num_layers=1, num_kv_heads=2, head_dim=4, dtype="float32")


def _written_pool(rng: np.random.Generator, num_blocks: int = 4, block_size: int = 2):
    pool = cuda.to_device(np.zeros((1, 2, num_blocks, block_size, 2, 4), np.float32))
    k = rng.standard_normal((num_blocks * block_size, 2, 4)).astype(np.float32)
    write_slots(pool, 0, k, -k, np.arange(num_blocks * block_size))
    return pool, k


def test_storage_gather_reads_its_result_back_on_the_callers_stream(
        monkeypatch: pytest.MonkeyPatch) -> None:
    storage = KVStorage(MODEL, block_size=2, num_gpu_blocks=4, num_host_blocks=0)
    k = np.arange(8 * 2 * 4, dtype=np.float32).reshape(8, 2, 4)
    storage.write(0, k, k + 1, np.arange(8))
    stream = NonBlockingStream()
    real = storage_module.gather_kv

    def gather_in_flight(*args, **kwargs):
        return tuple(WrittenOn(out, kwargs["stream"]) for out in real(*args, **kwargs))

    monkeypatch.setattr(storage_module, "gather_kv", gather_in_flight)
    got_k, got_v = storage.gather(0, [[3, 1]], [3], stream=stream)
    assert np.array_equal(got_k, k[[6, 7, 2]]) and np.array_equal(got_v, k[[6, 7, 2]] + 1)


def test_device_lengths_are_read_back_on_the_callers_stream() -> None:
    pool, k = _written_pool(np.random.default_rng(1))
    stream = NonBlockingStream()
    lens = WrittenOn(cuda.to_device(np.array([3], dtype=np.int64)), stream)
    starts = WrittenOn(cuda.to_device(np.array([1], dtype=np.int64)), stream)
    got_k, got_v = gather_kv(pool, 0, [[2, 0]], lens, starts, stream=stream)
    stream.synchronize()
    assert np.array_equal(got_k.copy_to_host(), k[[5, 0]])
    assert np.array_equal(got_v.copy_to_host(), -k[[5, 0]])


def test_device_pairs_of_a_memcpy_swap_are_read_back_on_the_callers_stream() -> None:
    pool, k = _written_pool(np.random.default_rng(2))
    host = cuda.mapped_array((1, 2, 3, 2, 2, 4), np.float32)
    host[:] = np.float32(0)
    stream = NonBlockingStream()
    pairs = WrittenOn(cuda.to_device(np.array([[3, 2]], dtype=np.int32)), stream)
    swap_blocks(pool, host, pairs, method="memcpy", stream=stream)
    stream.synchronize()
    assert np.array_equal(host_copy(host)[0, 0, 2], k[6:8])


def test_device_lengths_of_decode_attention_are_read_back_on_the_callers_stream() -> None:
    pool, k = _written_pool(np.random.default_rng(3))
    stream = NonBlockingStream()
    q = np.random.default_rng(4).standard_normal((1, 2, 4)).astype(np.float32)
    lens = WrittenOn(cuda.to_device(np.array([3], dtype=np.int64)), stream)
    out = decode_attention(pool, 0, q, [[1, 2]], lens, stream=stream)
    stream.synchronize()
    want = dense_attention(q, k[[2, 3, 4]], -k[[2, 3, 4]])  # positions 0..2: slots 2..4
    np.testing.assert_allclose(out.copy_to_host(), want, rtol=1e-5, atol=1e-6)
