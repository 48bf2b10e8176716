"""KVStorage: pools, sizes, and NumPy-in / NumPy-out data operations.

Each operation is checked against a NumPy model of both pools, kept by plain indexing,
after every step: the bytes read back are exactly the bytes written, through writes,
copies and swaps in both directions.
"""

from __future__ import annotations

import numpy as np
import pytest

from paged_kv.config import ModelSpec, get_model
from paged_kv.storage import KVStorage

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
