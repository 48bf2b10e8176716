"""A PagedKVCache whose model stores int8 or FP8 KV, end to end through the manager.

K/V go in as float16 (`write_kv`) and come back dequantized (`read_kv`), exactly what
the NumPy reference quantizer gives for them; a fork's copy-on-write, a swap out and
back in, and a prefix-cache hit move or share blocks whose codes AND scales stay byte
for byte what was written; device attention reads the codes and matches attention over
`read_kv`'s K/V (to float16 rounding: read_kv returns the model's dtype).
"""

from __future__ import annotations

import numpy as np
import pytest

from paged_kv import CacheConfig, PagedKVCache, get_model
from paged_kv.cache.attention import decode
from paged_kv.reference.attention import decode as reference_decode
from paged_kv.reference.quantization import round_trip

BLOCK = 4
KV_DTYPES = pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
# read_kv rounds the dequantized K/V to the model's float16; the kernel keeps float32
# (tests/test_kernels_quantized.py holds it to the float32 reference at 2e-5)
pytestmark = [pytest.mark.device,  # kernels: the simulator here, the GPU in gpu_check.sh
              pytest.mark.usefixtures("fast_simulator_barriers")]  # conftest: speed only
TOL = {"rtol": 4e-3, "atol": 1e-3}


def make_cache(kv_dtype: str, *, prefix: bool = False) -> PagedKVCache:
    config = CacheConfig(block_size=BLOCK, num_gpu_blocks=12, num_host_blocks=6,
                         enable_prefix_caching=prefix)
    return PagedKVCache(config, get_model("tiny").with_kv_dtype(kv_dtype))


def random_kv(rng: np.random.Generator, n: int, model) -> tuple[np.ndarray, np.ndarray]:
    shape = (n, model.num_kv_heads, model.head_dim)
    return (rng.standard_normal(shape).astype(np.float16),
            rng.standard_normal(shape).astype(np.float16))


def write_all_layers(cache: PagedKVCache, seq_id: int, kv: list, start: int = 0) -> None:
    for layer, (k, v) in enumerate(kv):
        cache.write_kv(seq_id, layer, k, v, start=start)


def block_bytes(cache: PagedKVCache, block: int) -> tuple[bytes, bytes]:
    """GPU block `block`'s codes and scales (every layer, K and V), as bytes."""
    storage = cache.storage
    return (storage.gpu_snapshot()[:, :, block].tobytes(),
            storage.gpu_scales_snapshot()[:, :, block].tobytes()
            if storage.host_scales_snapshot() is not None else b"static")


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@KV_DTYPES
def test_write_then_read_gives_the_reference_round_trip(kv_dtype) -> None:
    rng = np.random.default_rng(0)
    cache = make_cache(kv_dtype)
    model = cache.model
    assert cache.storage.nbytes_gpu == 12 * model.bytes_per_block(BLOCK)
    seq = cache.allocate(10)
    kv = [random_kv(rng, 10, model) for _ in range(model.num_layers)]
    write_all_layers(cache, seq, kv)
    for layer, (k, v) in enumerate(kv):
        got_k, got_v = cache.read_kv(seq, layer)
        assert same(got_k, round_trip(k, kv_dtype)) and same(got_v, round_trip(v, kv_dtype))


@KV_DTYPES
def test_fork_copy_on_write_carries_codes_and_scales(kv_dtype) -> None:
    rng = np.random.default_rng(1)
    cache = make_cache(kv_dtype)
    model = cache.model
    parent = cache.allocate(6)  # blocks: one full, one partial (2 of 4 slots)
    kv = [random_kv(rng, 6, model) for _ in range(model.num_layers)]
    write_all_layers(cache, parent, kv)
    child = cache.fork(parent)
    shared = cache.get(parent).block_table[1]
    before = block_bytes(cache, shared)
    cache.append(child, 1)
    new = [random_kv(rng, 1, model) for _ in range(model.num_layers)]
    write_all_layers(cache, child, new, start=6)  # copy-on-write of the partial block
    copied = cache.get(child).block_table[1]
    assert copied != shared
    assert block_bytes(cache, shared) == before  # the parent's block: untouched
    for layer in range(model.num_layers):
        k, v = cache.read_kv(child, layer)
        want_k = np.concatenate([kv[layer][0], new[layer][0]])
        want_v = np.concatenate([kv[layer][1], new[layer][1]])
        assert same(k, round_trip(want_k, kv_dtype)) and same(v, round_trip(want_v, kv_dtype))
        pk, _ = cache.read_kv(parent, layer)
        assert same(pk, round_trip(kv[layer][0], kv_dtype))


@KV_DTYPES
def test_swap_out_and_in_is_byte_exact_for_codes_and_scales(kv_dtype) -> None:
    rng = np.random.default_rng(2)
    cache = make_cache(kv_dtype)
    model = cache.model
    seq = cache.allocate(7)
    write_all_layers(cache, seq, [random_kv(rng, 7, model) for _ in range(model.num_layers)])
    blocks = cache.get(seq).block_table
    before = [block_bytes(cache, b) for b in blocks]
    reads = [cache.read_kv(seq, layer) for layer in range(model.num_layers)]
    snapshot = cache.snapshot()  # the checker's snapshot covers the scales too
    assert ("gpu_scale_bytes" in snapshot) and (("host_scale_bytes" in snapshot)
                                                 == (kv_dtype == "int8"))
    with pytest.raises(ValueError, match="float16"):  # refused: changes nothing
        cache.write_kv(seq, 0, *[x.astype(np.float32) for x in random_kv(rng, 1, model)])
    assert cache.snapshot() == snapshot
    cache.swap_out(seq)
    blocker = cache.allocate(len(blocks) * BLOCK)  # the old blocks go to someone else
    cache.swap_in(seq)
    assert [block_bytes(cache, b) for b in cache.get(seq).block_table] == before
    for layer, (k, v) in enumerate(reads):
        got_k, got_v = cache.read_kv(seq, layer)
        assert same(got_k, k) and same(got_v, v)
    cache.free(blocker)


@KV_DTYPES
def test_a_prefix_hit_reads_the_codes_and_scales_written_for_it(kv_dtype) -> None:
    rng = np.random.default_rng(3)
    cache = make_cache(kv_dtype, prefix=True)
    model = cache.model
    tokens = list(range(100, 109))  # 9 tokens: two full blocks can be a hit
    first = cache.allocate(token_ids=tokens)
    kv = [random_kv(rng, 9, model) for _ in range(model.num_layers)]
    write_all_layers(cache, first, kv)
    before = [block_bytes(cache, b) for b in cache.get(first).block_table[:2]]
    second = cache.allocate(token_ids=tokens)
    assert cache.num_cached_tokens(second) == 8
    assert cache.get(second).block_table[:2] == cache.get(first).block_table[:2]
    write_all_layers(cache, second, [(k[8:], v[8:]) for k, v in kv], start=8)
    assert [block_bytes(cache, b) for b in cache.get(second).block_table[:2]] == before
    for layer, (k, v) in enumerate(kv):
        got_k, got_v = cache.read_kv(second, layer)
        assert same(got_k, round_trip(k, kv_dtype)) and same(got_v, round_trip(v, kv_dtype))


def test_device_decode_reads_the_codes_as_read_kv_returns_them() -> None:
    """The cache hands the attention kernel its scales (int8 here; the kernels' own tests
    cover both formats)."""
    rng = np.random.default_rng(4)
    cache = make_cache("int8")
    model = cache.model
    seqs = [cache.allocate(n) for n in (5, 9)]
    for seq, n in zip(seqs, (5, 9)):
        write_all_layers(cache, seq, [random_kv(rng, n, model) for _ in range(model.num_layers)])
    q = rng.standard_normal((2, model.q_heads, model.head_dim)).astype(np.float32)
    np.testing.assert_allclose(decode(cache, 1, seqs, q),
                               reference_decode(cache, 1, seqs, q), **TOL)
