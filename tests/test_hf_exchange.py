"""How tensors reach the pools (paged_kv.hf.exchange): the path chosen for each device
pairing, the host round trip, and on a GPU the stream handling, checked here with
stand-ins for torch.cuda and numba's cuda module (the real thing runs under the ``gpu``
marker in scripts/gpu_check.sh)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers", minversion="5.24")

from paged_kv.hf.exchange import DeviceExchange, HostExchange, exchange_for  # noqa: E402

pytestmark = pytest.mark.usefixtures("hf_env")


@pytest.mark.parametrize("tensor_device, kind, path", [
    ("cpu", "sim", HostExchange),
    ("cpu", "gpu", HostExchange),    # CPU tensors: NumPy rows, uploaded by the manager
    ("cuda", "sim", HostExchange),   # the simulator's pools are host memory
    ("cuda", "gpu", DeviceExchange),  # zero copy, no host round trip
])
def test_the_path_for_each_pairing(tensor_device, kind, path):
    assert type(exchange_for(torch.device(tensor_device), kind, api=object())) is path


def test_the_host_path_round_trips_in_the_pool_dtype():
    exchange = HostExchange()
    x = torch.randn(5, 2, 8)
    rows = exchange.to_pool(x.transpose(0, 1).transpose(0, 1), "float16")
    assert isinstance(rows, np.ndarray) and rows.dtype == np.float16
    assert rows.flags.c_contiguous and rows.shape == (5, 2, 8)
    back = exchange.from_pool(rows, x)
    assert back.dtype == torch.float32 and torch.equal(back, x.half().float())
    assert exchange.kernel_stream() is None


class FakeStream:
    def __init__(self, handle):
        self.cuda_stream = handle
        self.waited = []

    def wait_stream(self, other):
        self.waited.append(other)


class FakeTorchCuda:
    def __init__(self, handle):
        self.current = FakeStream(handle)
        self.default = FakeStream(0)

    def current_stream(self, device):
        return self.current

    def default_stream(self, device):
        return self.default


class FakeNumbaCuda:
    def __init__(self):
        self.wrapped, self.viewed = [], []

    def external_stream(self, handle):
        self.wrapped.append(handle)
        return ("numba stream", handle)

    def as_cuda_array(self, tensor, sync=True):
        self.viewed.append((tensor, sync))
        return "device view"


class FakeTensor:
    def __init__(self):
        self.recorded = []

    def record_stream(self, stream):
        self.recorded.append(stream)


def test_on_the_default_stream_nothing_is_wrapped_or_waited_for():
    cuda, api = FakeTorchCuda(0), FakeNumbaCuda()
    exchange = DeviceExchange(torch.device("cpu"), api, cuda)
    assert exchange.kernel_stream() is None and api.wrapped == []
    tensor = FakeTensor()
    exchange.before_default_stream([tensor])
    assert cuda.default.waited == [] and tensor.recorded == []


def test_kernels_run_on_pytorchs_current_stream_and_writes_wait_for_it():
    cuda, api = FakeTorchCuda(0x7F00), FakeNumbaCuda()
    exchange = DeviceExchange(torch.device("cpu"), api, cuda)
    assert exchange.kernel_stream() == ("numba stream", 0x7F00)
    assert exchange.kernel_stream() == ("numba stream", 0x7F00)
    assert api.wrapped == [0x7F00]  # wrapped once per stream handle
    k, v = FakeTensor(), FakeTensor()
    exchange.before_default_stream([k, v])
    # the default stream (where write_kv_batch enqueues) waits for PyTorch's stream, and
    # the allocator keeps the K/V memory until the default stream has read it
    assert cuda.default.waited == [cuda.current]
    assert k.recorded == [cuda.default] and v.recorded == [cuda.default]


def test_a_tensor_becomes_a_view_without_a_host_synchronisation():
    api = FakeNumbaCuda()
    exchange = DeviceExchange(torch.device("cpu"), api, FakeTorchCuda(0))
    x = torch.randn(2, 3, 4).transpose(0, 1)  # not contiguous, float32
    assert exchange.to_pool(x, "float16") == "device view"
    (tensor, sync), = api.viewed
    assert sync is False and tensor.is_contiguous() and tensor.dtype == torch.float16
    assert torch.equal(tensor, x.half())


class RecordingExchange(DeviceExchange):
    """A DeviceExchange noting the tensors it is asked to keep for the default stream."""

    def __init__(self, api):
        super().__init__(torch.device("cpu"), api, FakeTorchCuda(0x7F00))
        self.kept = []

    def before_default_stream(self, tensors):
        self.kept.extend(tensors)


class FakeKV:
    """What `pool_io.write` calls on a PagedKVCache: the model's dtype and the write."""

    def __init__(self, dtype):
        self.model = type("Model", (), {"dtype": dtype})()
        self.written = []

    def write_kv_batch(self, layer, rows, k, v, *, num_tokens, starts):
        self.written.append((layer, list(rows), k, v, list(num_tokens), list(starts)))


@pytest.mark.parametrize("pool_dtype", ["float16", "float32"])
def test_the_memory_the_default_stream_reads_is_kept_for_it(pool_dtype):
    """On a side stream, the write kernel (default stream) reads the views `to_pool`
    made: the tensors behind them, converted to the pool's dtype where the model's
    differs, are the ones PyTorch's allocator must keep until that stream has read
    them (otherwise their memory is handed out again on the side stream at once)."""
    from paged_kv.hf import pool_io

    api, kv = FakeNumbaCuda(), FakeKV(pool_dtype)
    exchange = RecordingExchange(api)
    k, v = torch.randn(2, 2, 3, 8), torch.randn(2, 2, 3, 8)  # float32 [batch, heads, tokens, dim]
    pool_io.write(kv, exchange, 0, [5, 6], k, v, starts=[0, 0], skip=[0, 1])
    viewed = [tensor for tensor, _ in api.viewed]
    assert len(viewed) == 2 and all(t.dtype == getattr(torch, pool_dtype) for t in viewed)
    kept = {t.untyped_storage().data_ptr() for t in exchange.kept}  # record_stream's unit
    assert all(t.untyped_storage().data_ptr() in kept for t in viewed)
    (layer, rows, _, _, counts, starts), = kv.written
    assert (layer, rows, counts, starts) == (0, [5, 6], [3, 2], [0, 1])
