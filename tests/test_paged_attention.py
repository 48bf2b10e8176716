"""`paged_kv.cache.attention` (attention on the device, through the cache) against the
NumPy reference `paged_kv.reference.attention` and against dense attention over KV this test
keeps itself: decode after fork and copy-on-write, prefill over a prefix served by the
prefix cache (only the new tokens' KV written), and the refusals. Models and helpers
come from tests/test_attention.py, the simulator speed-up from
tests/test_kernels_paged_attention.py."""

from __future__ import annotations

import numpy as np
import pytest
from test_attention import MODELS, TINY, queries
from test_attention import write_dense as write

from paged_kv import CacheConfig, PagedKVCache
from paged_kv.cache.attention import decode, prefill
from paged_kv.core.errors import MetadataOnlyError, SequenceStateError, UnknownSequenceError
from paged_kv.gpu.device import cuda_api
from paged_kv.reference.attention import decode as reference_decode
from paged_kv.reference.attention import dense_attention
from paged_kv.reference.attention import prefill as reference_prefill

pytestmark = [pytest.mark.device,  # kernels: the simulator here, the GPU in gpu_check.sh
              pytest.mark.usefixtures("fast_simulator_barriers")]  # conftest: speed only
cuda = cuda_api()  # numba.cuda on a GPU, numba.cuda.simulator otherwise

TOL = {"rtol": 2e-5, "atol": 2e-6}  # float32 accumulation against a float64 reference


@MODELS
def test_decode_after_fork_and_copy_on_write_equals_the_reference(model) -> None:
    rng = np.random.default_rng(1)
    cache = PagedKVCache(CacheConfig(block_size=4, num_gpu_blocks=16), model)
    a = cache.allocate(6)  # 4 + 2: the partial block is shared by the fork
    prompt = write(cache, a, model, rng, 6)
    b = cache.fork(a)
    cache.append(b)  # copy-on-write of the shared partial block
    tail_b = write(cache, b, model, rng, 1)
    cache.append(a)
    tail_a = write(cache, a, model, rng, 1)
    c = cache.allocate(1)  # one token, one partial block
    only_c = write(cache, c, model, rng, 1)
    assert cache.stats().cow_copies == 1
    layer = model.num_layers - 1
    q = queries(rng, model, 3)
    got = decode(cache, layer, [a, b, c], q)
    assert got.shape == q.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, reference_decode(cache, layer, [a, b, c], q), **TOL)
    for i, tail in enumerate([tail_a, tail_b]):
        k = np.concatenate([prompt[layer][0], tail[layer][0]])
        v = np.concatenate([prompt[layer][1], tail[layer][1]])
        np.testing.assert_allclose(got[i], dense_attention(q[i:i + 1], k, v)[0], **TOL)
    k, v = only_c[layer]
    np.testing.assert_allclose(got[2], dense_attention(q[2:], k, v)[0], **TOL)
    assert not np.allclose(got[0], got[1], **TOL)  # each saw its own tail


@MODELS
def test_prefill_without_a_prefix_equals_dense_causal_attention(model) -> None:
    rng = np.random.default_rng(2)
    cache = PagedKVCache(CacheConfig(block_size=4, num_gpu_blocks=16), model)
    s = cache.allocate(5)
    k, v = write(cache, s, model, rng, 5)[0]
    q = queries(rng, model, 5)
    got = prefill(cache, 0, s, q)
    np.testing.assert_allclose(got, dense_attention(q, k, v), **TOL)
    np.testing.assert_allclose(got, reference_prefill(cache, 0, s, q), **TOL)


def test_prefill_over_a_prefix_cache_hit_computes_only_the_new_tokens() -> None:
    """B's first 8 tokens are A's cached blocks: only B's 5 new tokens are written and
    queried, and they attend to A's KV through B's block table."""
    rng = np.random.default_rng(3)
    config = CacheConfig(block_size=4, num_gpu_blocks=16, enable_prefix_caching=True)
    cache = PagedKVCache(config, TINY)
    prompt = list(range(100, 112))
    a = cache.allocate(token_ids=prompt)
    kv_a = write(cache, a, TINY, rng, 12)
    b = cache.allocate(token_ids=prompt[:8] + [7, 8, 9, 10, 11])
    hit = cache.num_cached_tokens(b)
    assert hit == 8 and cache.get(b).block_table[:2] == cache.get(a).block_table[:2]
    new = write(cache, b, TINY, rng, 5, start=hit)
    for layer in range(TINY.num_layers):
        q = queries(rng, TINY, 5)
        got = prefill(cache, layer, b, q, q_start=hit)
        assert got.shape == (5, TINY.q_heads, TINY.head_dim)
        k = np.concatenate([kv_a[layer][0][:8], new[layer][0]])
        v = np.concatenate([kv_a[layer][1][:8], new[layer][1]])
        np.testing.assert_allclose(got, dense_attention(q, k, v, q_offset=8), **TOL)
    # q_start defaults to the last len(q) positions
    np.testing.assert_allclose(prefill(cache, layer, b, q), got, rtol=0, atol=0)


def test_decode_and_prefill_on_a_stream() -> None:
    rng = np.random.default_rng(4)
    cache = PagedKVCache(CacheConfig(block_size=2, num_gpu_blocks=8), TINY)
    s = cache.allocate(5)
    k, v = write(cache, s, TINY, rng, 5)[1]
    stream = cuda.stream()
    q = queries(rng, TINY, 1)
    np.testing.assert_allclose(decode(cache, 1, [s], q, stream=stream),
                               dense_attention(q, k, v), **TOL)
    q = queries(rng, TINY, 2)
    np.testing.assert_allclose(prefill(cache, 1, s, q, q_start=2, scale=0.5, stream=stream),
                               dense_attention(q, k[:4], v[:4], q_offset=2, scale=0.5), **TOL)


def test_refusals() -> None:
    rng = np.random.default_rng(5)
    config = CacheConfig(block_size=4, num_gpu_blocks=8, num_host_blocks=4)
    cache = PagedKVCache(config, TINY)
    s = cache.allocate(5)
    write(cache, s, TINY, rng, 5)
    with pytest.raises(ValueError, match=r"\[num_seqs, 4, 8\] .* got \(1, 2, 8\)"):
        decode(cache, 0, [s], np.zeros((1, 2, 8)))
    with pytest.raises(ValueError, match="q has 1 rows for 2 sequences"):
        decode(cache, 0, [s, s], np.zeros((1, 4, 8)))
    with pytest.raises(ValueError, match="a sequence appears twice"):
        decode(cache, 0, [s, s], np.zeros((2, 4, 8)))
    with pytest.raises(ValueError, match=r"layer 2 out of range \[0, 2\)"):
        decode(cache, 2, [s], np.zeros((1, 4, 8)))
    with pytest.raises(ValueError, match=r"3 queries from position 3 .* 5 stored tokens"):
        prefill(cache, 0, s, np.zeros((3, 4, 8)), q_start=3)
    with pytest.raises(ValueError, match="q_start must be an integer"):
        prefill(cache, 0, s, np.zeros((3, 4, 8)), q_start=1.0)
    empty = cache.allocate(0)
    with pytest.raises(ValueError, match=f"sequence {empty} stores no tokens"):
        decode(cache, 0, [s, empty], np.zeros((2, 4, 8)))
    with pytest.raises(UnknownSequenceError):
        decode(cache, 0, [12345], np.zeros((1, 4, 8)))
    cache.swap_out(s)
    with pytest.raises(SequenceStateError, match="swap_in first"):
        decode(cache, 0, [s], np.zeros((1, 4, 8)))
    with pytest.raises(SequenceStateError, match="swap_in first"):
        prefill(cache, 0, s, np.zeros((1, 4, 8)))
    meta = PagedKVCache(CacheConfig(block_size=4, num_gpu_blocks=4))
    m = meta.allocate(3)
    with pytest.raises(MetadataOnlyError):
        decode(meta, 0, [m], np.zeros((1, 4, 8)))
    assert decode(cache, 0, [], np.zeros((0, 4, 8))).shape == (0, 4, 8)
