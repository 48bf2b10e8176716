"""PagedKVCache with storage: the bytes read back are the bytes written, through fork,
copy-on-write, swap and reuse. Kernels run in the CUDA simulator (tiny model)."""

import numpy as np
import pytest

from paged_kv import CacheConfig, get_model
from paged_kv.cache import PagedKVCache
from paged_kv.gpu.kernels import gather, slot_write

pytestmark = pytest.mark.device  # kernels: the simulator here, the GPU in gpu_check.sh

MODEL = get_model("tiny")  # 2 layers, 2 KV heads, head_dim 8, float16
H, D = MODEL.num_kv_heads, MODEL.head_dim


def make(num_blocks=8, block_size=4, host=0, **kw):
    config = CacheConfig(
        block_size=block_size, num_gpu_blocks=num_blocks, num_host_blocks=host, **kw
    )
    return PagedKVCache(config, MODEL)


def kv(rng, n):
    k = rng.standard_normal((n, H, D)).astype(np.float16)
    v = rng.standard_normal((n, H, D)).astype(np.float16)
    return k, v


def write_all_layers(cache, seq, rng, n, start=None):
    """Write random KV for `n` positions in every layer; return {layer: (k, v)}."""
    out = {}
    for layer in range(MODEL.num_layers):
        k, v = kv(rng, n)
        cache.write_kv(seq, layer, k, v, start=start)
        out[layer] = (k, v)
    return out


def assert_reads(cache, seq, expected):
    for layer, (k, v) in expected.items():
        got_k, got_v = cache.read_kv(seq, layer)
        np.testing.assert_array_equal(got_k, k)
        np.testing.assert_array_equal(got_v, v)


def test_six_tokens_over_block_size_four_read_back_exactly():
    rng = np.random.default_rng(0)
    cache = make()
    s = cache.allocate(6)
    assert cache.get(s).num_blocks == 2
    assert_reads(cache, s, write_all_layers(cache, s, rng, 6))


def test_two_requests_share_a_pool_without_corrupting_each_other():
    rng = np.random.default_rng(1)
    cache = make()
    a, b = cache.allocate(5), cache.allocate(7)
    ea = write_all_layers(cache, a, rng, 5)
    eb = write_all_layers(cache, b, rng, 7)
    assert_reads(cache, a, ea)
    assert_reads(cache, b, eb)


def test_extend_across_blocks_and_read_all_tokens_back():
    rng = np.random.default_rng(2)
    cache = make()
    s = cache.allocate(3)
    expected = write_all_layers(cache, s, rng, 3)
    for _ in range(7):  # one token at a time, crossing two block boundaries
        cache.append(s)
        new = write_all_layers(cache, s, rng, 1)
        for layer in expected:
            expected[layer] = tuple(np.concatenate([e, n]) for e, n in
                                    zip(expected[layer], new[layer]))
    assert cache.get(s).num_tokens == 10 and cache.get(s).num_blocks == 3
    assert_reads(cache, s, expected)


def test_freed_blocks_are_reused_once_the_pool_was_full():
    rng = np.random.default_rng(3)
    cache = make(num_blocks=4)
    a = cache.allocate(16)
    write_all_layers(cache, a, rng, 16)
    assert cache.num_free_blocks == 0
    cache.free(a)
    b = cache.allocate(9)
    assert set(cache.get(b).block_table) <= {0, 1, 2, 3}
    assert_reads(cache, b, write_all_layers(cache, b, rng, 9))


def test_ten_allocate_write_free_cycles_leak_no_block():
    rng = np.random.default_rng(4)
    cache = make(num_blocks=5)
    for i in range(10):
        s = cache.allocate(3 + i)
        assert_reads(cache, s, write_all_layers(cache, s, rng, 3 + i))
        cache.free(s)
        assert cache.num_free_blocks == 5
    cache.check_invariants()


def test_copy_on_write_moves_the_bytes_once():
    rng = np.random.default_rng(5)
    cache = make()
    a = cache.allocate(6)
    prompt = write_all_layers(cache, a, rng, 6)
    b = cache.fork(a)
    cache.append(b)  # COW of the shared partial block
    tail_b = write_all_layers(cache, b, rng, 1)
    cache.append(a)  # a is now sole holder: no copy
    tail_a = write_all_layers(cache, a, rng, 1)
    assert cache.stats().cow_copies == 1
    for layer in prompt:
        ka, va = cache.read_kv(a, layer)
        kb, vb = cache.read_kv(b, layer)
        np.testing.assert_array_equal(ka[:6], prompt[layer][0])
        np.testing.assert_array_equal(kb[:6], prompt[layer][0])  # copied bytes
        np.testing.assert_array_equal(vb[:6], prompt[layer][1])
        np.testing.assert_array_equal(ka[6], tail_a[layer][0][0])
        np.testing.assert_array_equal(kb[6], tail_b[layer][0][0])
        np.testing.assert_array_equal(va[6], tail_a[layer][1][0])


def test_writing_a_shared_full_block_is_refused_and_changes_nothing():
    rng = np.random.default_rng(6)
    cache = make()
    a = cache.allocate(8)
    write_all_layers(cache, a, rng, 8)
    cache.fork(a)
    before = cache.snapshot()
    k, v = kv(rng, 2)
    with pytest.raises(ValueError, match="immutable"):
        cache.write_kv(a, 0, k, v, start=2)
    with pytest.raises(ValueError, match="shape"):
        cache.write_kv(a, 0, k[:, :1], v[:, :1], start=2)
    with pytest.raises(ValueError, match="float16"):
        cache.write_kv(a, 0, k.astype(np.float32), v.astype(np.float32), start=2)
    with pytest.raises(ValueError, match="layer"):
        cache.write_kv(a, 5, k, v, start=2)
    assert cache.snapshot() == before


def test_swap_out_and_in_round_trips_the_bytes():
    rng = np.random.default_rng(7)
    cache = make(num_blocks=4, host=4)
    a = cache.allocate(7)
    expected = write_all_layers(cache, a, rng, 7)
    cache.swap_out(a)
    # overwrite the freed GPU blocks with someone else's KV
    b = cache.allocate(16)
    write_all_layers(cache, b, rng, 16)
    cache.free(b)
    cache.swap_in(a)
    assert_reads(cache, a, expected)
    assert cache.stats().blocks_swapped_in == 2
    cache.check_invariants()


def test_batched_write_and_read_are_one_launch_each_and_agree(monkeypatch):
    launches = []

    def counting(module):
        real = module.launch

        def launch(kernel, *args):
            launches.append(kernel)
            return real(kernel, *args)
        monkeypatch.setattr(module, "launch", launch)

    counting(slot_write)
    counting(gather)
    rng = np.random.default_rng(8)
    cache = make(num_blocks=12)
    seqs = [cache.allocate(n) for n in (3, 5, 9)]
    expected = {s: write_all_layers(cache, s, rng, cache.get(s).num_tokens) for s in seqs}
    for s in seqs:  # a decode step: one new token each
        cache.append(s)
    for layer in range(MODEL.num_layers):
        k, v = kv(rng, 3)
        del launches[:]
        cache.write_kv_batch(layer, seqs, k, v, num_tokens=[1, 1, 1])
        assert launches == [slot_write.slot_write_kernel]  # three sequences, one launch
        for i, s in enumerate(seqs):
            old_k, old_v = expected[s][layer]
            expected[s][layer] = (np.concatenate([old_k, k[i:i + 1]]),
                                  np.concatenate([old_v, v[i:i + 1]]))
    for layer in range(MODEL.num_layers):
        del launches[:]
        k, v, cu = cache.read_kv_batch(layer, seqs, starts=[1, 0, 4])
        assert launches == [gather.gather_kernel]
        np.testing.assert_array_equal(cu, [0, 3, 9, 15])
        for i, (s, start) in enumerate(zip(seqs, [1, 0, 4])):
            np.testing.assert_array_equal(k[cu[i]:cu[i + 1]], expected[s][layer][0][start:])
            np.testing.assert_array_equal(v[cu[i]:cu[i + 1]], expected[s][layer][1][start:])


def test_prefix_hit_reads_the_kv_its_first_owner_wrote():
    rng = np.random.default_rng(9)
    cache = make(enable_prefix_caching=True)
    tokens = list(range(10))
    a = cache.allocate(token_ids=tokens)
    expected = write_all_layers(cache, a, rng, 10)
    cache.free(a)
    b = cache.allocate(token_ids=tokens + [99])
    assert cache.get(b).num_cached_tokens == 8
    for layer in expected:
        k, v = cache.read_kv(b, layer, end=8)
        np.testing.assert_array_equal(k, expected[layer][0][:8])
        np.testing.assert_array_equal(v, expected[layer][1][:8])


def test_batched_write_over_forks_copies_once_per_writer_but_the_last():
    rng = np.random.default_rng(10)
    cache = make(num_blocks=12, enable_prefix_caching=True)
    pairs = []
    for start in (0, 50):
        a = cache.allocate(token_ids=list(range(start, start + 6)))
        write_all_layers(cache, a, rng, 6)
        pairs.append((a, cache.fork(a)))
    before_free = cache.num_free_blocks
    seqs = [s for pair in pairs for s in pair]
    k, v = kv(rng, 4)
    cache.write_kv_batch(0, seqs, k, v, num_tokens=[1, 1, 1, 1], starts=[5, 5, 5, 5])
    # one copy per forked pair: the second holder writes into the original block
    assert cache.stats().cow_copies == 2 and cache.num_free_blocks == before_free - 2
    for i, s in enumerate(seqs):
        got_k, _ = cache.read_kv(s, 0, start=5, end=6)
        np.testing.assert_array_equal(got_k[0], k[i])
    cache.check_invariants()


def test_fractional_positions_are_refused():
    cache = make()
    s = cache.allocate(6)
    with pytest.raises(ValueError, match="starts"):
        cache.read_kv(s, 0, start=1.5)


def test_device_arrays_are_written_where_they_are_and_land_like_host_ones():
    """A GPU tensor reaches write_kv_batch as a zero-copy device array (paged_kv.hf): the
    check takes it as it is, and the pool gets the bytes NumPy rows would give."""
    from paged_kv.gpu.device import cuda_api

    rng = np.random.default_rng(7)
    host, device = make(), make()
    k, v = kv(rng, 6)
    seqs = {}
    for cache in (host, device):
        seqs[id(cache)] = [cache.allocate(2), cache.allocate(4)]
    host.write_kv_batch(1, seqs[id(host)], k, v, num_tokens=[2, 4])
    api = cuda_api()
    k_dev, v_dev = api.to_device(k), api.to_device(v)
    given = []
    write = device.storage.write

    def spy(layer, k_arg, v_arg, slots, **kwargs):
        given.append((k_arg, v_arg))
        return write(layer, k_arg, v_arg, slots, **kwargs)

    device.storage.write = spy
    device.write_kv_batch(1, seqs[id(device)], k_dev, v_dev, num_tokens=[2, 4])
    assert len(given) == 1 and given[0][0] is k_dev and given[0][1] is v_dev  # no host copy
    assert host.snapshot() == device.snapshot()
    with pytest.raises(ValueError, match="must be float16"):
        device.write_kv_batch(0, seqs[id(device)], api.to_device(k.astype(np.float32)),
                              api.to_device(v.astype(np.float32)), num_tokens=[2, 4])
