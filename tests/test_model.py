"""The small model end to end: paged logits against the dense model's.

The dense reference (`DenseModel`) recomputes every sequence from its tokens with no
cache; the paged runner writes K/V through the slot-write kernel and attends through
block tables. Most tests use the NumPy reference attention (K/V still read through the
gather kernel, so block tables, forks and swaps are exercised) to stay quick; one
scripted run goes through the device paged-attention kernels end to end.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from paged_kv import CacheConfig, OutOfBlocksError, PagedKVCache
from paged_kv.model import (
    DenseModel,
    ModelConfig,
    PagedModelRunner,
    Transformer,
    get_model_config,
    random_weights,
)
from paged_kv.model.dense import LOGITS_TOLERANCE
from paged_kv.model.generation import compare_prompt_logits, run_generation
from paged_kv.model.transformer import rope

TINY = get_model_config("tiny")
BS = 4


def make(kv_dtype="float32", *, keep=False, num_gpu_blocks=32, num_host_blocks=8,
         attention="reference", seed=0):
    config = get_model_config("tiny", kv_dtype=kv_dtype)
    weights = random_weights(config, seed)
    cache = PagedKVCache(CacheConfig(block_size=BS, num_gpu_blocks=num_gpu_blocks,
                                     num_host_blocks=num_host_blocks,
                                     enable_prefix_caching=True), config.spec)
    runner = PagedModelRunner(weights, cache, attention=attention, keep_prompt_logits=keep)
    return runner, DenseModel(weights)


def tokens(n, seed=1):
    return np.random.default_rng(seed).integers(0, TINY.vocab_size, n).tolist()


def assert_close(paged, dense_logits, kv_dtype="float32"):
    diff = np.abs(np.asarray(paged) - dense_logits).max()
    assert diff <= LOGITS_TOLERANCE[kv_dtype], diff
    assert np.argmax(paged) == np.argmax(dense_logits)


# -- the model and its reference ---------------------------------------------------------
def test_weights_are_seeded():
    a, b, c = random_weights(TINY, 3), random_weights(TINY, 3), random_weights(TINY, 4)
    assert np.array_equal(a.layers[1].wk, b.layers[1].wk)
    assert np.array_equal(a.lm_head, b.lm_head)
    assert not np.array_equal(a.lm_head, c.lm_head)
    spec = TINY.spec
    assert (spec.num_layers, spec.num_kv_heads, spec.q_heads, spec.head_dim) == (2, 2, 4, 8)
    assert a.layers[0].wq.shape == (32, 4 * 8) and a.layers[0].wk.shape == (32, 2 * 8)


def test_dense_model_is_causal_and_not_trivial():
    dense = DenseModel(random_weights(TINY))
    seq = tokens(12)
    full = dense.logits(seq)
    # a prefix's logits do not depend on later tokens
    np.testing.assert_allclose(dense.logits(seq[:5]), full[:5], atol=1e-12)
    # but do depend on earlier ones, and on order (positions)
    assert np.abs(dense.next_logits([7] + seq[1:6]) - full[5]).max() > 1e-3
    assert np.abs(dense.next_logits(seq[:6][::-1]) - full[5]).max() > 1e-3


def test_rope_scores_depend_only_on_distance():
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((1, 1, 8)), rng.standard_normal((1, 1, 8))

    def score(pq, pk):
        return float(np.sum(rope(q, [pq], 1e4) * rope(k, [pk], 1e4)))

    assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-12)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-6)


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="vocab_size"):
        ModelConfig(dataclasses.replace(TINY.spec, vocab_size=None))
    with pytest.raises(ValueError, match="vocab_size"):
        dataclasses.replace(TINY.spec, vocab_size=0)
    with pytest.raises(ValueError, match="Llama-style"):
        ModelConfig(dataclasses.replace(TINY.spec, gated_mlp=False))
    with pytest.raises(ValueError, match="rope_theta"):
        ModelConfig(TINY.spec, rope_theta=-1.0)
    with pytest.raises(ValueError, match="valid names: tiny"):
        get_model_config("huge")
    with pytest.raises(ValueError, match="float16"):
        TINY.with_kv_dtype("int8")
    assert TINY.with_kv_dtype("float16").spec.dtype == "float16"


def test_runner_refuses_a_cache_of_another_shape():
    weights = random_weights(TINY)
    other = PagedKVCache(CacheConfig(block_size=BS, num_gpu_blocks=4),
                         TINY.with_kv_dtype("float16").spec)
    with pytest.raises(ValueError, match="another shape"):
        PagedModelRunner(weights, other)
    with pytest.raises(ValueError, match="unknown attention backend"):
        PagedModelRunner(weights, PagedKVCache(CacheConfig(block_size=BS, num_gpu_blocks=4),
                                               TINY.spec), attention="gpu")


# -- paged against dense -----------------------------------------------------------------
@pytest.mark.parametrize("kv_dtype", ["float32", "float16"])
def test_prefill_and_decode_match_the_dense_model(kv_dtype):
    runner, dense = make(kv_dtype)
    seq = tokens(14)
    first = runner.prefill(seq[:9])
    assert (first.num_computed, first.num_cached) == (9, 0)
    assert_close(first.logits, dense.next_logits(seq[:9]), kv_dtype)
    for i in range(9, 14):  # across a block boundary (positions 12+)
        assert_close(runner.decode([first.seq_id], [seq[i]])[0],
                     dense.next_logits(seq[: i + 1]), kv_dtype)


def test_prefix_hit_computes_only_the_rest_and_matches():
    runner, dense = make()
    shared = tokens(8)
    a = runner.prefill(shared + [1, 2])
    b = runner.prefill(shared + [3, 4, 5])
    assert (b.num_cached, b.num_computed) == (8, 3)
    assert runner.cache.get(b.seq_id).block_table[:2] == runner.cache.get(a.seq_id).block_table[:2]
    assert_close(b.logits, dense.next_logits(shared + [3, 4, 5]))
    logits = runner.decode([a.seq_id, b.seq_id], [6, 7])
    assert_close(logits[0], dense.next_logits(shared + [1, 2, 6]))
    assert_close(logits[1], dense.next_logits(shared + [3, 4, 5, 7]))


def test_forks_copy_on_write_and_each_sample_matches():
    runner, dense = make()
    prompt = tokens(6)
    parent = runner.prefill(prompt).seq_id
    children = [runner.fork(parent) for _ in range(2)]
    family = [parent, *children]
    before = runner.cache.stats().cow_copies
    logits = runner.decode(family, [10, 11, 12])
    assert runner.cache.stats().cow_copies - before == 2  # every writer but the last copies
    for row, token in zip(logits, [10, 11, 12]):
        assert_close(row, dense.next_logits(prompt + [token]))
    tables = [runner.cache.get(s).block_table for s in family]
    assert len({t[0] for t in tables}) == 1 and len({t[1] for t in tables}) == 3


def test_swap_out_and_in_keeps_the_logits():
    runner, dense = make(num_gpu_blocks=4, num_host_blocks=4)
    cache = runner.cache
    seq = tokens(11)
    a = runner.prefill(seq[:7]).seq_id
    before = cache.get(a).block_table
    cache.swap_out(a)
    other = runner.prefill(tokens(12, seed=2)).seq_id
    assert set(before) & set(cache.get(other).block_table)  # it overwrites a block a held
    runner.free(other)
    cache.swap_in(a)
    for i in range(7, 11):
        assert_close(runner.decode([a], [seq[i]])[0], dense.next_logits(seq[: i + 1]))


def test_the_comparison_notices_wrong_kv():
    """The check can fail: logits read from a zeroed pool are far from the dense model's."""
    runner, dense = make()
    seq = tokens(9)
    a = runner.prefill(seq[:8]).seq_id
    pool = runner.cache.storage.gpu_pool
    pool.copy_to_device(np.zeros(pool.shape, dtype=pool.dtype))
    far = runner.decode([a], [seq[8]])[0]
    assert np.abs(far - dense.next_logits(seq)).max() > 1e-2


# -- prompt logits kept with the last full block -----------------------------------------
def test_kept_logits_are_served_while_the_prompt_is_cached():
    runner, dense = make(keep=True, num_gpu_blocks=8)
    prompt = tokens(8)
    result = runner.prefill(prompt)
    kept = runner.cached_logits(prompt)
    assert np.array_equal(kept, result.logits)
    assert runner.cached_logits(prompt[:6]) is None  # not block-aligned: nothing kept
    runner.prefill(tokens(6, seed=5))
    assert runner.cached_logits(tokens(6, seed=5)) is None
    # admitted with one more token, the whole prompt is served and one token computed
    admitted = runner.prefill(prompt + [int(np.argmax(kept))])
    assert (admitted.num_cached, admitted.num_computed) == (8, 1)
    assert_close(admitted.logits, dense.next_logits(prompt + [int(np.argmax(kept))]))
    # once a block of the prompt is evicted, the logits are no longer served
    runner.free(result.seq_id)
    runner.free(admitted.seq_id)
    cache = runner.cache
    cache.evict_cached(cache.num_free_blocks)
    assert cache.stats().prefix_evictions >= 2
    assert runner.cached_logits(prompt) is None
    assert len(runner.prompt_logits) == 0  # the dead entry was dropped


def test_kept_logits_never_outnumber_the_pool_blocks():
    runner, dense = make(keep=True, num_gpu_blocks=3)
    prompts = [tokens(BS, seed=10 + i) for i in range(7)]
    for prompt in prompts:  # each evicts older cached blocks to make room
        runner.free(runner.prefill(prompt).seq_id)
        assert len(runner.prompt_logits) <= 3
    assert runner.cached_logits(prompts[0]) is None
    assert_close(runner.cached_logits(prompts[-1]), dense.next_logits(prompts[-1]))


def test_without_keeping_no_logits_are_served():
    runner, _ = make(keep=False)
    prompt = tokens(8)
    runner.prefill(prompt)
    assert runner.prompt_logits is None and runner.cached_logits(prompt) is None


def test_kept_logits_skip_the_last_block_vllm_recomputes():
    steps, summary = compare_prompt_logits(attention="reference", prompt_blocks=2,
                                           block_size=BS, new_tokens=3)
    by_mode = summary.set_index("prompt_logits")
    recompute, keep = by_mode.loc["recompute"], by_mode.loc["keep"]
    assert (keep["prefills_skipped"], recompute["prefills_skipped"]) == (1, 0)
    # vLLM's rule recomputes the repeated prompt's last block: bs tokens more
    assert recompute["prompt_tokens_computed"] - keep["prompt_tokens_computed"] == BS
    assert recompute["tokens_computed"] - keep["tokens_computed"] == BS
    assert keep["generated_tokens_computed"] == recompute["generated_tokens_computed"]
    assert (summary["max_abs_diff"] <= summary["tolerance"]).all()
    # both modes generate the same tokens for every request
    decoded = steps[steps["phase"] == "decode"]
    per_mode = {m: rows.groupby("request")["token"].apply(list).to_dict()
                for m, rows in decoded.groupby("prompt_logits")}
    assert per_mode["recompute"] == per_mode["keep"]


# -- refusals change nothing -------------------------------------------------------------
def test_bad_tokens_are_refused_before_the_cache_is_touched():
    runner, _ = make()
    with pytest.raises(ValueError, match="not a token id"):
        runner.prefill([1, 2, TINY.vocab_size])
    assert len(runner.cache) == 0
    a = runner.prefill([1, 2, 3]).seq_id
    with pytest.raises(ValueError, match="not a token id"):
        runner.decode([a], [-1])
    with pytest.raises(ValueError, match="not a token id"):
        runner.decode([a], [2.5])
    assert runner.cache.num_tokens(a) == 3


def test_decode_out_of_blocks_changes_nothing():
    runner, _ = make(num_gpu_blocks=2)
    a = runner.prefill(tokens(4)).seq_id
    b = runner.prefill(tokens(4, seed=3)).seq_id
    before = runner.cache.snapshot()
    with pytest.raises(OutOfBlocksError):
        runner.decode([a, b], [1, 2])
    assert runner.cache.snapshot() == before


# -- on the device -----------------------------------------------------------------------
def test_scripted_generation_on_the_device_matches_the_dense_model():
    """Prefill, a prefix hit, a skipped prefill, a fork with copy-on-write, a swap out
    and in, batched decode: all through the paged-attention kernels."""
    run = run_generation(attention="device", prompt_blocks=1, block_size=BS, new_tokens=3,
                         samples=2, prompt_logits="keep")
    steps, summary = run.steps, run.summary
    compared = steps.dropna(subset=["max_abs_diff"])
    assert (compared["max_abs_diff"] <= LOGITS_TOLERANCE["float32"]).all()
    assert compared["argmax_agrees"].astype(bool).all()
    phases = set(steps["phase"])
    assert {"prefill", "kept logits", "fork", "swap out", "swap in", "decode"} <= phases
    prefills = steps[steps["phase"] == "prefill"]
    assert (prefills["cached"] > 0).any()  # request C's prefix hit
    swapped_in = steps.index[steps["phase"] == "swap in"][0]
    after = steps.loc[swapped_in:]
    assert ((after["request"] == "A") & (after["phase"] == "decode")).any()
    assert summary["cow_copies"] >= 1 and summary["blocks_swapped_in"] >= 1
    assert summary["prefills_skipped"] == 1


def test_transformer_rows_are_independent_of_batching():
    """A decode batch computes each row as it would alone (what batching relies on)."""
    model = Transformer(random_weights(TINY))
    seen = []

    def attend(layer, q, k, v):
        seen.append(q.shape[0])
        return np.repeat(v, 2, axis=1)  # any row-wise function of the row's own K/V

    both = model.forward([3, 9], [4, 7], attend)
    alone = model.forward([9], [7], attend)
    np.testing.assert_allclose(both[1], alone[0], atol=1e-12)
    assert seen == [2, 2, 1, 1]
