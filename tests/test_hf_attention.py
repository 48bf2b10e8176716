"""The ``"paged_kv"`` attention implementation: transformers' layers attending through
the paged-attention kernels (CUDA simulator) give the tokens sdpa over DynamicCache
gives; masks the kernels cannot express are refused, not computed wrongly."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers", minversion="5.24")

from paged_kv.hf import ATTENTION_NAME, PagedHFCache, use_paged_attention  # noqa: E402
from paged_kv.hf.tiny import tiny_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("hf_env", "fast_simulator_barriers")

GREEDY = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)


@pytest.mark.parametrize("arch, rows", [("llama", 2), ("gpt2", 1)])  # GQA 4/2, RoPE; MHA
def test_generation_through_the_kernels_gives_the_sdpa_tokens(arch, rows):
    model = tiny_model(arch, seed=3)
    ids = torch.tensor([[1, 11, 12, 13, 14], [1, 21, 22, 23, 24]][:rows])
    expected = model.generate(input_ids=ids, **GREEDY)
    use_paged_attention(model)
    assert model.config._attn_implementation == ATTENTION_NAME
    cache = PagedHFCache.for_model(model, num_blocks=8, block_size=4)
    assert torch.equal(model.generate(input_ids=ids, cache=cache, **GREEDY), expected)
    assert cache.tokens_computed == rows * 5 + rows * 2


def test_a_prefill_over_a_cached_prefix_goes_through_the_kernels():
    model = tiny_model("qwen2", seed=3)
    system = [1, 40, 41, 42, 43, 44, 45, 46, 47]
    first, second = torch.tensor([system + [50]]), torch.tensor([system + [60, 61]])
    expected = model.generate(input_ids=second, **GREEDY)
    use_paged_attention(model)
    root = PagedHFCache.for_model(model, num_blocks=8, block_size=4, prefix_caching=True)
    root.admit(first)
    model.generate(input_ids=first, cache=root, **GREEDY)
    root.release()
    cache = root.new()
    assert cache.admit(second) == 8  # the queries of positions 8..10 attend over 0..10
    assert torch.equal(model.generate(input_ids=second, cache=cache, **GREEDY), expected)


def _holds_nothing(cache):
    return (cache.seq_ids, cache.get_seq_length(), [layer.length for layer in cache.layers],
            cache.tokens_computed, cache.kv.num_used_blocks) == ((), 0, [0, 0], 0, 0)


def test_masks_the_kernels_cannot_express_are_refused_before_the_cache_changes():
    """The mask is checked where transformers builds it, before any layer writes: a
    refused forward leaves the cache as it was (no rows, no layer ahead of another)."""
    model = use_paged_attention(tiny_model("llama", seed=3))
    padded = torch.tensor([[0, 0, 1, 11, 12], [1, 21, 22, 23, 24]])
    cache = PagedHFCache.for_model(model, num_blocks=8, block_size=4)
    with pytest.raises(ValueError, match="plain causal attention"):
        model.generate(input_ids=padded, attention_mask=(padded != 0).long(), cache=cache,
                       **GREEDY)
    assert _holds_nothing(cache)
    window = use_paged_attention(tiny_model("mistral", seed=3, sliding_window=4))
    cache = PagedHFCache.for_model(window, num_blocks=8, block_size=4)
    with pytest.raises(ValueError, match="sliding"):
        window.generate(input_ids=torch.tensor([[1, 11, 12, 13, 14, 15]]), cache=cache,
                        **GREEDY)
    assert _holds_nothing(cache)
    with pytest.raises(ValueError, match="reads a PagedHFCache"):
        model(input_ids=torch.tensor([[1, 2, 3]]))  # no cache at all
