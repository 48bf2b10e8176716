"""Reference attention: `dense_attention` against a per-head loop written here, and the
paged forms (KV read back through the manager's gather) against `dense_attention` over
KV this test keeps in its own dense arrays. Kernels run in the CUDA simulator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from paged_kv import CacheConfig, ModelSpec, get_model
from paged_kv.cache import PagedKVCache
from paged_kv.core.errors import MetadataOnlyError
from paged_kv.reference.attention import decode as reference_decode
from paged_kv.reference.attention import dense_attention
from paged_kv.reference.attention import prefill as reference_prefill

pytestmark = pytest.mark.device  # kernels: the simulator here, the GPU in gpu_check.sh

TINY = get_model("tiny")  # 2 layers, 4 q heads over 2 KV heads, head_dim 8, float16
F32 = ModelSpec("f32-gqa", num_layers=1, num_kv_heads=2, head_dim=8, dtype="float32",
                num_q_heads=6)  # groups of 3
MODELS = pytest.mark.parametrize("model", [TINY, F32], ids=lambda m: m.name)
TOL = {"rtol": 1e-5, "atol": 1e-6}


# ------------------------------------------------------------------------------------
# an independent reference: one query head at a time, softmax by hand
# ------------------------------------------------------------------------------------
def loop_attention(q, k, v, *, q_offset=0, causal=True, scale=None, mask_shift=0,
                   kv_head_of=None):
    """Attention by explicit loops. `mask_shift` and `kv_head_of` exist only so the tests
    can show that a wrong mask or a wrong head mapping would be noticed."""
    num_q, q_heads, head_dim = q.shape
    num_kv, kv_heads, _ = k.shape
    group = q_heads // kv_heads
    if kv_head_of is None:
        def kv_head_of(h):
            return h // group
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    out = np.zeros((num_q, q_heads, head_dim))
    for t in range(num_q):
        last = min(q_offset + t + mask_shift, num_kv - 1) if causal else num_kv - 1
        if last < 0:
            continue  # this query sees no key (only a deliberately wrong mask does that)
        for h in range(q_heads):
            kh = kv_head_of(h)
            qv = [float(x) for x in q[t, h]]
            scores = []
            for j in range(last + 1):
                kvec = [float(x) for x in k[j, kh]]
                scores.append(scale * sum(a * b for a, b in zip(qv, kvec)))
            top = max(scores)
            exps = [math.exp(s - top) for s in scores]
            total = sum(exps)
            for j, e in enumerate(exps):
                out[t, h] += (e / total) * v[j, kh].astype(np.float64)
    return out


def rand(rng, shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("q_heads,kv_heads", [(4, 2), (6, 2), (3, 3), (4, 1)])
@pytest.mark.parametrize(
    "num_q,num_kv,q_offset",
    [(7, 7, 0), (4, 9, 3), (1, 9, 8), (3, 9, 5)],
    ids=["prefill", "chunk", "decode", "middle"],
)
def test_dense_attention_matches_the_loop(q_heads, kv_heads, num_q, num_kv, q_offset):
    rng = np.random.default_rng(q_heads * 100 + num_q * 10 + q_offset)
    q = rand(rng, (num_q, q_heads, 8))
    k, v = rand(rng, (num_kv, kv_heads, 8)), rand(rng, (num_kv, kv_heads, 8))
    got = dense_attention(q, k, v, q_offset=q_offset)
    assert got.shape == (num_q, q_heads, 8) and got.dtype == np.float32
    np.testing.assert_allclose(got, loop_attention(q, k, v, q_offset=q_offset), **TOL)
    # non-causal: every query sees all keys
    np.testing.assert_allclose(
        dense_attention(q, k, v, causal=False),
        loop_attention(q, k, v, causal=False), **TOL,
    )


def test_default_q_offset_puts_the_queries_last():
    rng = np.random.default_rng(1)
    q, k, v = rand(rng, (3, 4, 8)), rand(rng, (10, 2, 8)), rand(rng, (10, 2, 8))
    np.testing.assert_array_equal(dense_attention(q, k, v), dense_attention(q, k, v, q_offset=7))


def test_explicit_scale_and_float16_inputs():
    rng = np.random.default_rng(2)
    q = rand(rng, (5, 4, 8), np.float16)
    k, v = rand(rng, (5, 2, 8), np.float16), rand(rng, (5, 2, 8), np.float16)
    np.testing.assert_allclose(
        dense_attention(q, k, v, scale=0.3), loop_attention(q, k, v, scale=0.3), **TOL
    )


def test_softmax_is_stable_for_huge_scores():
    rng = np.random.default_rng(3)
    k = np.eye(8, dtype=np.float32)[:6, None, :]  # key j is the unit vector e_j
    v = rand(rng, (6, 1, 8))
    q = 1e4 * k[4:5]  # scores: 1e4 / sqrt(8) ~ 3,536 for key 4, 0 for the others;
    # exp(3,536) overflows even float64, so only a max-subtracting softmax survives
    got = dense_attention(q, k, v, causal=False)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[0, 0], v[4, 0], rtol=1e-6)


# -- the comparisons above can fail ---------------------------------------------------
@pytest.mark.parametrize("shift", [-1, 1])
def test_an_off_by_one_causal_mask_would_be_caught(shift):
    rng = np.random.default_rng(4)
    q, k, v = rand(rng, (6, 4, 8)), rand(rng, (6, 2, 8)), rand(rng, (6, 2, 8))
    wrong = loop_attention(q, k, v, mask_shift=shift)
    if shift < 0:  # query 0 would see nothing; compare the rows that still see something
        wrong, right = wrong[1:], dense_attention(q, k, v)[1:]
    else:
        right = dense_attention(q, k, v)
    assert not np.allclose(wrong, right, **TOL)


def test_a_wrong_gqa_head_mapping_would_be_caught():
    rng = np.random.default_rng(5)
    q, k, v = rand(rng, (5, 4, 8)), rand(rng, (5, 2, 8)), rand(rng, (5, 2, 8))
    wrong = loop_attention(q, k, v, kv_head_of=lambda h: h % 2)  # interleaved, not grouped
    assert not np.allclose(wrong, dense_attention(q, k, v), **TOL)


def test_causal_differs_from_full_attention():
    rng = np.random.default_rng(6)
    q, k, v = rand(rng, (6, 4, 8)), rand(rng, (6, 2, 8)), rand(rng, (6, 2, 8))
    causal, full = dense_attention(q, k, v), dense_attention(q, k, v, causal=False)
    np.testing.assert_allclose(causal[-1], full[-1], **TOL)  # the last row sees all anyway
    assert not np.allclose(causal[:-1], full[:-1], **TOL)


# -- argument checking ----------------------------------------------------------------
def test_dense_attention_rejects_bad_shapes_with_the_numbers():
    q, k = np.zeros((2, 4, 8)), np.zeros((5, 2, 8))
    with pytest.raises(ValueError, match=r"q_heads=3 .* kv_heads=2"):
        dense_attention(np.zeros((2, 3, 8)), k, k)
    with pytest.raises(ValueError, match="head_dim 4 but k and v have 8"):
        dense_attention(np.zeros((2, 4, 4)), k, k)
    with pytest.raises(ValueError, match=r"shapes differ: \(5, 2, 8\) vs \(4, 2, 8\)"):
        dense_attention(q, k, np.zeros((4, 2, 8)))
    with pytest.raises(ValueError, match=r"3-D .* got shape \(2, 32\)"):
        dense_attention(np.zeros((2, 32)), k, k)
    with pytest.raises(ValueError, match=r"positions 4..5 .* 5 keys"):
        dense_attention(q, k, k, q_offset=4)
    with pytest.raises(ValueError, match="no keys"):
        dense_attention(q, np.zeros((0, 2, 8)), np.zeros((0, 2, 8)), causal=False)
    assert dense_attention(np.zeros((0, 4, 8)), k, k).shape == (0, 4, 8)


# ------------------------------------------------------------------------------------
# paged attention: KV read back through the manager
# ------------------------------------------------------------------------------------
def make_cache(model, num_blocks=16, block_size=4):
    return PagedKVCache(CacheConfig(block_size=block_size, num_gpu_blocks=num_blocks), model)


def write_dense(cache, seq, model, rng, n, start=None):
    """Write random KV for `n` positions in every layer; return {layer: (k, v)}."""
    out = {}
    for layer in range(model.num_layers):
        k = rand(rng, (n, model.num_kv_heads, model.head_dim), model.dtype)
        v = rand(rng, (n, model.num_kv_heads, model.head_dim), model.dtype)
        cache.write_kv(seq, layer, k, v, start=start)
        out[layer] = (k, v)
    return out


def queries(rng, model, n):
    return rand(rng, (n, model.q_heads, model.head_dim))


@MODELS
def test_prefill_over_eleven_tokens_in_three_blocks_equals_dense(model):
    rng = np.random.default_rng(10)
    cache = make_cache(model)
    s = cache.allocate(11)  # blocks of 4: 4 + 4 + 3 (partial last block)
    assert cache.get(s).num_blocks == 3
    dense = write_dense(cache, s, model, rng, 11)
    for layer, (k, v) in dense.items():
        q = queries(rng, model, 11)
        got = reference_prefill(cache, layer, s, q)
        np.testing.assert_allclose(got, dense_attention(q, k, v), **TOL)
        np.testing.assert_allclose(got, loop_attention(q, k, v), **TOL)
        # a chunk of queries in the middle: positions 5..8 see keys 0..8 at most
        q = queries(rng, model, 4)
        got = reference_prefill(cache, layer, s, q, q_start=5)
        np.testing.assert_allclose(got, dense_attention(q, k[:9], v[:9], q_offset=5), **TOL)
        np.testing.assert_allclose(got, loop_attention(q, k, v, q_offset=5), **TOL)
        # non-causal: all 11 tokens
        got = reference_prefill(cache, layer, s, q, q_start=5, causal=False)
        np.testing.assert_allclose(got, dense_attention(q, k, v, causal=False), **TOL)


@MODELS
def test_decode_at_the_last_position_equals_dense(model):
    rng = np.random.default_rng(11)
    cache = make_cache(model)
    s = cache.allocate(10)
    dense = write_dense(cache, s, model, rng, 10)
    cache.append(s)  # the decode token: position 10, in the partial third block
    new = write_dense(cache, s, model, rng, 1)
    for layer in dense:
        k = np.concatenate([dense[layer][0], new[layer][0]])
        v = np.concatenate([dense[layer][1], new[layer][1]])
        q = queries(rng, model, 1)
        got = reference_prefill(cache, layer, s, q)
        np.testing.assert_allclose(got, dense_attention(q, k, v, causal=False), **TOL)
        np.testing.assert_allclose(got, loop_attention(q, k, v, q_offset=10), **TOL)


@MODELS
def test_batched_decode_uses_one_gather_and_equals_dense(model, monkeypatch):
    rng = np.random.default_rng(12)
    cache = make_cache(model)
    lengths = [11, 4, 1, 9]
    seqs = [cache.allocate(n) for n in lengths]
    dense = {s: write_dense(cache, s, model, rng, n) for s, n in zip(seqs, lengths)}
    calls = []
    real = cache.read_kv_batch

    def counting(*args, **kw):
        calls.append(args)
        return real(*args, **kw)

    monkeypatch.setattr(cache, "read_kv_batch", counting)
    for layer in range(model.num_layers):
        q = queries(rng, model, len(seqs))
        got = reference_decode(cache, layer, seqs, q)
        assert got.shape == (len(seqs), model.q_heads, model.head_dim)
        for i, s in enumerate(seqs):
            k, v = dense[s][layer]
            np.testing.assert_allclose(got[i], dense_attention(q[i:i + 1], k, v)[0], **TOL)
    assert len(calls) == model.num_layers  # one gather per layer for the whole batch


@MODELS
def test_fork_and_copy_on_write_append_attend_to_their_own_tails(model):
    rng = np.random.default_rng(13)
    cache = make_cache(model)
    a = cache.allocate(6)  # 4 + 2: the second block is partial and will be shared
    prompt = write_dense(cache, a, model, rng, 6)
    b = cache.fork(a)
    cache.append(b)  # COW of the shared partial block
    tail_b = write_dense(cache, b, model, rng, 1)
    cache.append(a)
    tail_a = write_dense(cache, a, model, rng, 1)
    assert cache.stats().cow_copies == 1
    assert cache.get(a).block_table[0] == cache.get(b).block_table[0]  # still shared
    assert cache.get(a).block_table[1] != cache.get(b).block_table[1]
    for layer in prompt:
        q = queries(rng, model, 2)
        got = reference_decode(cache, layer, [a, b], q)
        for i, tail in enumerate([tail_a, tail_b]):
            k = np.concatenate([prompt[layer][0], tail[layer][0]])
            v = np.concatenate([prompt[layer][1], tail[layer][1]])
            np.testing.assert_allclose(got[i], dense_attention(q[i:i + 1], k, v)[0], **TOL)
            single = reference_prefill(cache, layer, [a, b][i], q[i:i + 1])
            np.testing.assert_allclose(single, got[i:i + 1], **TOL)
        # and the two differ: each saw its own tail, not the other's
        assert not np.allclose(got[0], got[1], **TOL)


def test_paged_prefill_notices_a_changed_key_only_from_its_position_on():
    """Overwrite position 6 in the cache but not in the dense copy: causal queries before
    position 6 are unaffected, queries at 6 and after differ. A mask that let a query
    see later keys, or a gather that read the wrong slot, would break one of the two."""
    rng = np.random.default_rng(14)
    cache = make_cache(TINY)
    s = cache.allocate(11)
    dense = write_dense(cache, s, TINY, rng, 11)
    k, v = dense[0]
    k_new = rand(rng, (1, 2, 8), np.float16)
    cache.write_kv(s, 0, k_new, v[6:7], start=6)
    q = queries(rng, TINY, 11)
    got = reference_prefill(cache, 0, s, q)
    expected = dense_attention(q, k, v)
    np.testing.assert_allclose(got[:6], expected[:6], **TOL)
    for row in range(6, 11):
        assert not np.allclose(got[row], expected[row], **TOL)


def test_paged_attention_checks_its_arguments():
    rng = np.random.default_rng(15)
    cache = make_cache(TINY)
    s = cache.allocate(5)
    write_dense(cache, s, TINY, rng, 5)
    with pytest.raises(ValueError, match=r"\[num_q_tokens, 4, 8\] .* got \(5, 2, 8\)"):
        reference_prefill(cache, 0, s, np.zeros((5, 2, 8)))
    with pytest.raises(ValueError, match=r"3 queries from position 3 .* 5 stored tokens"):
        reference_prefill(cache, 0, s, np.zeros((3, 4, 8)), q_start=3)
    with pytest.raises(ValueError, match=r"6 queries from position -1 .* 5 stored tokens"):
        reference_prefill(cache, 0, s, np.zeros((6, 4, 8)))
    with pytest.raises(ValueError, match=r"layer 2 out of range \[0, 2\)"):
        reference_prefill(cache, 2, s, np.zeros((1, 4, 8)))
    with pytest.raises(ValueError, match="q has 1 rows for 2 sequences"):
        reference_decode(cache, 0, [s, s], np.zeros((1, 4, 8)))
    with pytest.raises(ValueError, match=r"\[num_seqs, 4, 8\]"):
        reference_decode(cache, 0, [s], np.zeros((1, 4, 4)))
    empty = cache.allocate(0)
    with pytest.raises(ValueError, match=f"sequence {empty} stores no tokens"):
        reference_decode(cache, 0, [s, empty], np.zeros((2, 4, 8)))
    meta = PagedKVCache(CacheConfig(block_size=4, num_gpu_blocks=4))
    m = meta.allocate(3)
    with pytest.raises(MetadataOnlyError):
        reference_prefill(meta, 0, m, np.zeros((1, 4, 8)))
