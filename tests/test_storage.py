"""KVStorage: pools, sizes, and NumPy-in / NumPy-out data operations.

Each operation is checked against a NumPy model of both pools, kept by plain indexing,
after every step: the bytes read back are exactly the bytes written, through writes,
copies and swaps in both directions.
"""

from __future__ import annotations

import numpy as np
import pytest

from paged_kv.core.config import ModelSpec, get_model
from paged_kv.gpu import device
from paged_kv.gpu.kernels import SWAP_METHODS
from paged_kv.gpu.storage import KVStorage

pytestmark = pytest.mark.device  # kernels: the simulator here, the GPU in gpu_check.sh

cuda = device.cuda_api()

MODELS = {
    "float16": get_model("tiny"),  # 2 layers, 2 KV heads, head_dim 8
    "float32": ModelSpec("tiny32", num_layers=2, num_kv_heads=2, head_dim=4, dtype="float32"),
}
BLOCK_SIZE = 4


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Exact equality of shape, dtype and bytes."""
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


@pytest.fixture(params=sorted(MODELS))
def model(request: pytest.FixtureRequest) -> ModelSpec:
    return MODELS[request.param]


def test_pools_are_zeroed_with_the_documented_layout(model: ModelSpec) -> None:
    storage = KVStorage(model, BLOCK_SIZE, num_gpu_blocks=6, num_host_blocks=3)
    shape = (model.num_layers, 2, 6, BLOCK_SIZE, model.num_kv_heads, model.head_dim)
    gpu, host = storage.gpu_snapshot(), storage.host_snapshot()
    assert gpu.shape == shape and gpu.dtype == np.dtype(model.dtype)
    assert host.shape == shape[:2] + (3,) + shape[3:] and host.dtype == gpu.dtype
    assert not gpu.any() and not host.any()
    assert tuple(storage.gpu_pool.shape) == shape
    assert storage.nbytes_gpu == gpu.nbytes == 6 * model.bytes_per_block(BLOCK_SIZE)
    assert storage.nbytes_host == host.nbytes == 3 * model.bytes_per_block(BLOCK_SIZE)
    assert (storage.model, storage.block_size) == (model, BLOCK_SIZE)
    assert (storage.num_gpu_blocks, storage.num_host_blocks) == (6, 3)


def test_snapshots_are_copies() -> None:
    storage = KVStorage(MODELS["float16"], BLOCK_SIZE, 4, 2)
    storage.gpu_snapshot()[:] = 1
    storage.host_snapshot()[:] = 1
    assert not storage.gpu_snapshot().any() and not storage.host_snapshot().any()


def test_write_gather_copy_swap_round_trip(model: ModelSpec) -> None:
    rng = np.random.default_rng(0)
    dtype = np.dtype(model.dtype)
    storage = KVStorage(model, BLOCK_SIZE, num_gpu_blocks=10, num_host_blocks=6)
    gpu_model = storage.gpu_snapshot()
    host_model = storage.host_snapshot()
    heads = (model.num_kv_heads, model.head_dim)

    # two sequences: 7 tokens (partial last block) in blocks [6, 2], 4 tokens in [9]
    tables = [[6, 2], [9]]
    seq_lens = [7, 4]
    slots = [6 * 4 + p for p in range(4)] + [2 * 4 + p for p in range(3)] + [
        9 * 4 + p for p in range(4)
    ]
    mapping = np.array(slots[:7] + [-1] + slots[7:])  # one padding token in the batch
    for layer in range(model.num_layers):
        k = rng.standard_normal((len(mapping), *heads)).astype(dtype)
        v = rng.standard_normal((len(mapping), *heads)).astype(dtype)
        storage.write(layer, k, v, mapping)
        for i, slot in enumerate(mapping):
            if slot >= 0:
                gpu_model[layer, 0, slot // BLOCK_SIZE, slot % BLOCK_SIZE] = k[i]
                gpu_model[layer, 1, slot // BLOCK_SIZE, slot % BLOCK_SIZE] = v[i]
        assert same_bytes(storage.gpu_snapshot(), gpu_model)
        got_k, got_v = storage.gather(layer, tables, seq_lens)
        assert isinstance(got_k, np.ndarray) and isinstance(got_v, np.ndarray)
        real = mapping >= 0
        assert same_bytes(got_k, k[real]) and same_bytes(got_v, v[real])
        # with a start offset: positions 5..6 of sequence 0, 1..3 of sequence 1
        got_k, _ = storage.gather(layer, tables, seq_lens, starts=[5, 1])
        assert same_bytes(got_k, np.concatenate([k[5:7], k[9:12]]))

    storage.copy_blocks([(6, 0), (6, 1)])  # copy-on-write of a shared block
    gpu_model[:, :, 0] = gpu_model[:, :, 6]
    gpu_model[:, :, 1] = gpu_model[:, :, 6]
    assert same_bytes(storage.gpu_snapshot(), gpu_model)

    storage.swap_out([(6, 4), (2, 0), (9, 5)])
    for src, dst in [(6, 4), (2, 0), (9, 5)]:
        host_model[:, :, dst] = gpu_model[:, :, src]
    assert same_bytes(storage.host_snapshot(), host_model)
    assert same_bytes(storage.gpu_snapshot(), gpu_model)

    storage.swap_in([(4, 3), (0, 7), (5, 8)])  # back into different GPU blocks
    for src, dst in [(4, 3), (0, 7), (5, 8)]:
        gpu_model[:, :, dst] = host_model[:, :, src]
    assert same_bytes(storage.gpu_snapshot(), gpu_model)
    for layer in range(model.num_layers):
        before = storage.gather(layer, tables, seq_lens)
        after = storage.gather(layer, [[3, 7], [8]], seq_lens)
        assert same_bytes(before[0], after[0]) and same_bytes(before[1], after[1])


def test_failed_operations_change_nothing() -> None:
    storage = KVStorage(MODELS["float32"], BLOCK_SIZE, 4, 2)
    k = np.ones((1, 2, 4), dtype=np.float32)
    storage.write(0, k, k, [3])
    gpu, host = storage.gpu_snapshot(), storage.host_snapshot()
    with pytest.raises(ValueError, match="out of range"):
        storage.write(0, k, k, [16])
    with pytest.raises(ValueError, match="dtype"):
        storage.write(0, k.astype(np.float16), k, [2])
    with pytest.raises(ValueError, match=r"destination block id 2 .* \[0, 2\)"):
        storage.swap_out([(0, 2)])
    with pytest.raises(ValueError, match=r"source block id 4"):
        storage.swap_in([(0, 1), (4, 0)])
    with pytest.raises(ValueError, match="both a source and a destination"):
        storage.copy_blocks([(0, 1), (1, 2)])
    with pytest.raises(ValueError, match="needs 2 blocks"):
        storage.gather(0, [[0]], [5])
    assert same_bytes(storage.gpu_snapshot(), gpu)
    assert same_bytes(storage.host_snapshot(), host)


def test_no_host_blocks_means_no_swap() -> None:
    storage = KVStorage(MODELS["float16"], BLOCK_SIZE, 4, 0)
    assert storage.nbytes_host == 0 and storage.host_snapshot().shape[2] == 0
    storage.swap_out([])  # nothing to move is fine
    with pytest.raises(ValueError, match=r"out of range \[0, 0\)"):
        storage.swap_out([(0, 0)])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("tiny", 4, 4, 0), "ModelSpec"),
        ((None, 0, 4, 0), "block_size must be an integer >= 1, got 0"),
        ((None, 4, 0, 0), "num_gpu_blocks must be an integer >= 1, got 0"),
        ((None, 4, 4, -1), "num_host_blocks must be an integer >= 0, got -1"),
        ((None, 4.0, 4, 0), "block_size"),
        ((None, 4, True, 0), "num_gpu_blocks"),
    ],
)
def test_constructor_rejects_bad_values(args: tuple, message: str) -> None:
    model = args[0] if args[0] is not None else MODELS["float16"]
    with pytest.raises(ValueError, match=message):
        KVStorage(model, *args[1:])


# -- swap paths and streams -------------------------------------------------------------


@pytest.mark.parametrize("method", SWAP_METHODS)
def test_swap_methods_move_the_same_bytes(method: str) -> None:
    rng = np.random.default_rng(1)
    model = MODELS["float16"]
    storage = KVStorage(model, BLOCK_SIZE, num_gpu_blocks=8, num_host_blocks=6,
                        swap_method=method)
    assert storage.swap_method == method and repr(storage).endswith(f"swap_method={method!r})")
    heads = (model.num_kv_heads, model.head_dim)
    for layer in range(model.num_layers):
        k = rng.standard_normal((32, *heads)).astype(np.float16)
        storage.write(layer, k, -k, np.arange(32))
    gpu = storage.gpu_snapshot()
    pairs = [(2, 3), (3, 4), (4, 5), (7, 0)]  # one run of three, one single block
    storage.swap_out(pairs)
    host = storage.host_snapshot()
    for src, dst in pairs:
        assert same_bytes(host[:, :, dst], gpu[:, :, src])
    other = "kernel" if method == "memcpy" else "memcpy"  # per-call override
    storage.swap_in([(3, 0), (4, 1), (0, 6)], method=other)
    after = storage.gpu_snapshot()
    assert same_bytes(after[:, :, 0], gpu[:, :, 2]) and same_bytes(after[:, :, 1], gpu[:, :, 3])
    assert same_bytes(after[:, :, 6], gpu[:, :, 7])
    with pytest.raises(ValueError, match="swap_method must be one of"):
        KVStorage(model, BLOCK_SIZE, 4, 2, swap_method="dma")


class SpyEvent:
    """An event that logs what is done with it (under the simulator events do nothing)."""

    log: list[tuple[str, object, object]] = []

    def record(self, stream=0) -> None:
        SpyEvent.log.append(("record", self, stream))

    def wait(self, stream=0) -> None:
        SpyEvent.log.append(("wait", self, stream))


@pytest.fixture
def spied(monkeypatch: pytest.MonkeyPatch) -> KVStorage:
    """Storage whose fences make SpyEvents; two layers of 4-token blocks, written."""
    SpyEvent.log = []
    monkeypatch.setattr(device, "new_event", SpyEvent)
    storage = KVStorage(MODELS["float32"], BLOCK_SIZE, num_gpu_blocks=8, num_host_blocks=4)
    k = np.arange(32 * 2 * 4, dtype=np.float32).reshape(32, 2, 4)
    for layer in range(2):
        storage.write(layer, k, k + 1, np.arange(32))
    return storage


def waits_on(stream, since: int = 0) -> list[tuple[object, object]]:
    """(event, the stream it was recorded on) for each wait enqueued on `stream`, from
    entry `since` of the log on."""
    recorded_on = {id(e): s for kind, e, s in SpyEvent.log if kind == "record"}
    return [(e, recorded_on.get(id(e))) for kind, e, s in SpyEvent.log[since:]
            if kind == "wait" and s is stream]


def test_one_stream_records_no_event(spied: KVStorage) -> None:
    spied.swap_out([(1, 0)])
    spied.copy_blocks([(2, 3)])
    spied.write(0, np.zeros((1, 2, 4), np.float32), np.zeros((1, 2, 4), np.float32), [4])
    assert SpyEvent.log == []


def test_a_swapped_out_block_is_not_overwritten_before_the_swap_read_it(
    spied: KVStorage,
) -> None:
    copy_stream, compute = cuda.stream(), cuda.stream()
    spied.gather(0, [[5]], [4], stream=compute)  # waits once for the setup's writes
    assert [s for _, s in waits_on(compute)] == [0]  # ... on the default stream
    spied.swap_out([(1, 0), (2, 1)], stream=copy_stream)  # reads GPU blocks 1, 2
    swap_event = [e for kind, e, s in SpyEvent.log if kind == "record" and s is copy_stream]
    assert swap_event, "the swap on a second stream records an event"
    since = len(SpyEvent.log)
    row = np.ones((1, 2, 4), np.float32)

    spied.write(0, row, row, [5 * BLOCK_SIZE], stream=compute)  # block 5: unrelated
    assert waits_on(compute, since) == []
    spied.write(0, row, row, [1 * BLOCK_SIZE + 2], stream=compute)  # block 1: the source
    [(event, recorded_on)] = waits_on(compute, since)
    assert event in swap_event and recorded_on is copy_stream
    # and the bytes are right: the host has the old block 1, the GPU the new row
    assert not spied.host_snapshot()[0, 0, 0, 2].tolist() == row[0].tolist()
    assert same_bytes(spied.gpu_snapshot()[0, 0, 1, 2], row[0])


def test_cow_source_and_swap_destinations_are_fenced(spied: KVStorage) -> None:
    s1, s2 = cuda.stream(), cuda.stream()
    spied.copy_blocks([(3, 6)], stream=s1)  # reads block 3
    since = len(SpyEvent.log)
    spied.swap_in([(0, 3)], stream=s2)  # writes block 3, the COW source: waits for s1
    # (and once for the set-up's writes on the default stream, as every new stream does)
    assert sorted(map(id, (s for _, s in waits_on(s2, since)))) == sorted(map(id, [0, s1]))
    since = len(SpyEvent.log)
    spied.gather(0, [[3]], [4], stream=s1)  # reads block 3, written by s2's swap in
    assert [s for _, s in waits_on(s1, since)] == [s2]
    spied.swap_out([(7, 1)], stream=s2)  # writes host block 1
    since = len(SpyEvent.log)
    spied.swap_in([(1, 7)], stream=s1)  # reads host block 1 that s2 wrote, and writes
    # GPU block 7 that s2 read: one wait per pool, both on s2's swap out
    assert [s for _, s in waits_on(s1, since)] == [s2, s2]


def test_device_ids_fence_the_whole_pool_and_report_skipped_ids(spied: KVStorage) -> None:
    s1, s2 = cuda.stream(), cuda.stream()
    spied.swap_out([(2, 0)], stream=s1)
    since = len(SpyEvent.log)
    row = np.ones((1, 2, 4), np.float32)
    spied.write(1, row, row, cuda.to_device(np.array([7 * BLOCK_SIZE])), stream=s2)
    # unknown blocks: waits for all, the set-up's writes (default stream) and the swap
    assert sorted(map(id, (s for _, s in waits_on(s2, since)))) == sorted(map(id, [0, s1]))
    spied.write(1, row, row, cuda.to_device(np.array([10**6])))  # beyond the pool
    with pytest.raises(ValueError, match="skipped 1 out-of-range ids given as device arrays"):
        spied.synchronize()
    spied.synchronize()  # reported once
