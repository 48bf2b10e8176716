"""`PagedHFCache` under transformers' generate: the same tokens as DynamicCache for
greedy, sampling and beam search on four model families, logits within float tolerance
for float32 and float16 pools, beams as forks with copy-on-write, prefix caching across
calls, and refusals that change nothing. Tiny random models (paged_kv.hf.tiny), kernels
in the CUDA simulator."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers", minversion="5.24")

from transformers import DynamicCache  # noqa: E402

from paged_kv.core.errors import OutOfBlocksError  # noqa: E402
from paged_kv.hf import PagedHFCache  # noqa: E402
from paged_kv.hf.tiny import ARCHITECTURES, tiny_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("hf_env")

# two prompts, the second left-padded by three
IDS = torch.tensor([[1, 11, 12, 13, 14, 15, 16], [0, 0, 0, 1, 21, 22, 23]])
MASK = (IDS != 0).long()
NEW = 3


@pytest.fixture(scope="module")
def models():
    return {arch: tiny_model(arch, seed=1) for arch in ARCHITECTURES}


def _generate(model, cache=None, **kwargs):
    torch.manual_seed(1234)
    extra = {} if cache is None else {"cache": cache}
    return model.generate(input_ids=IDS, attention_mask=MASK, max_new_tokens=NEW,
                          min_new_tokens=NEW, pad_token_id=0, **kwargs, **extra)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_and_beam_search_give_dynamic_cache_tokens(models, arch):
    model = models[arch]
    cache = PagedHFCache.for_model(model, num_blocks=48, block_size=4)
    assert torch.equal(_generate(model, cache, do_sample=False), _generate(model, do_sample=False))
    cache.kv.check_invariants()
    assert cache.tokens_computed == 2 * 7 + 2 * (NEW - 1)  # prompt rows, then one per step

    beams = PagedHFCache.for_model(model, num_blocks=48, block_size=4)
    out = _generate(model, beams, do_sample=False, num_beams=2)
    assert torch.equal(out, _generate(model, do_sample=False, num_beams=2))
    beams.kv.check_invariants()
    assert len(beams.seq_ids) == 4  # 2 prompts x 2 beams
    # the prompt's second beam became a fork of the first after the prefill (2), and the
    # first reorder fans every beam out of beam 0 (4); a reorder that keeps every beam
    # where it is forks nothing
    assert beams.forks >= 2 + 4
    trace = beams.trace_frame()
    assert (trace["blocks_held"] < trace["blocks_unshared"]).all()  # beams share blocks


def test_sampling_gives_dynamic_cache_tokens_and_stores_each_prompt_once(models):
    model = models["llama"]
    cache = PagedHFCache.for_model(model, num_blocks=48, block_size=4)
    kwargs = dict(do_sample=True, top_k=20, num_return_sequences=3)
    assert torch.equal(_generate(model, cache, **kwargs), _generate(model, **kwargs))
    first = cache.trace[0]
    # 6 rows of 7 positions: 12 blocks of 4 without sharing; each prompt's 2 once
    assert (first["rows"], first["blocks_unshared"], first["blocks_held"]) == (6, 12, 4)


def test_the_old_keyword_past_key_values_works_too(models):
    model = models["gpt2"]
    cache = PagedHFCache.for_model(model, num_blocks=24, block_size=4)
    with pytest.warns(FutureWarning):
        out = model.generate(input_ids=IDS, attention_mask=MASK, max_new_tokens=2,
                             pad_token_id=0, do_sample=False, past_key_values=cache)
    ref = model.generate(input_ids=IDS, attention_mask=MASK, max_new_tokens=2,
                         pad_token_id=0, do_sample=False)
    assert torch.equal(out, ref) and cache.get_seq_length() == 8


def _teacher_forced_logits(model, cache, tokens):
    """Logits after the prompt and after each of `tokens` fed one at a time."""
    with torch.no_grad():
        out = model(input_ids=IDS[:1], cache=cache, use_cache=True)
        rows = [out.logits[0, -1]]
        for token in tokens:
            out = model(input_ids=torch.tensor([[token]]), cache=cache, use_cache=True)
            rows.append(out.logits[0, -1])
    return torch.stack(rows)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("float16", 2e-3)])
def test_logits_agree_with_dynamic_cache(models, arch, dtype, tolerance):
    model = models[arch]
    tokens = [5, 6, 7]
    exact = _teacher_forced_logits(model, DynamicCache(config=model.config), tokens)
    paged = PagedHFCache.for_model(model, num_blocks=8, block_size=4, dtype=dtype)
    logits = _teacher_forced_logits(model, paged, tokens)
    scale = exact.abs().max()
    assert (logits - exact).abs().max() <= tolerance * scale
    assert torch.equal(logits.argmax(-1), exact.argmax(-1))


def test_a_second_prompt_sharing_the_system_prompt_computes_only_its_new_tokens(models):
    model = models["qwen2"]
    system = [1, 60, 61, 62, 63, 64, 65, 66, 67]  # 9 tokens: two full blocks of 4 and one
    first_ids = torch.tensor([system + [70, 71]])
    second_ids = torch.tensor([system + [80, 81, 82]])
    greedy = dict(max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=0)

    first = PagedHFCache.for_model(model, num_blocks=32, block_size=4, prefix_caching=True)
    assert first.admit(first_ids) == 0
    model.generate(input_ids=first_ids, cache=first, **greedy)
    first.release()
    assert first.kv.stats().prefix_cached_blocks == 2  # the prompt's full blocks

    second = first.new()
    assert second.admit(second_ids) == 8 and second.get_seq_length() == 8
    out = model.generate(input_ids=second_ids, cache=second, **greedy)
    assert torch.equal(out, model.generate(input_ids=second_ids, **greedy))
    # 12 prompt tokens, 8 served: 4 computed in the prefill, then one per new token
    assert second.tokens_computed == (12 - 8) + (NEW - 1)
    assert second.tokens_cached == 8
    assert second.kv.stats().prefix_hit_tokens == 8


def test_beam_reorder_forks_rows_and_reads_back_what_dynamic_cache_would(models):
    model = models["llama"]
    paged = PagedHFCache.for_model(model, num_blocks=16, block_size=4)
    dynamic = DynamicCache(config=model.config)
    ids = torch.tensor([[1, 11, 12, 13, 14, 15], [1, 21, 22, 23, 24, 25]])
    with torch.no_grad():
        model(input_ids=ids, cache=paged, use_cache=True)
        model(input_ids=ids, cache=dynamic, use_cache=True)
    before = paged.seq_ids
    order = torch.tensor([1, 1, 0])
    paged.reorder_cache(order)
    dynamic.reorder_cache(order)
    kv = paged.kv
    assert all(s not in kv for s in before)  # the old rows are freed
    tables = [kv.get(s).block_table for s in paged.seq_ids]
    assert tables[0] == tables[1] and kv.gpu.ref_counts[tables[0][0]] == 2
    assert kv.gpu.ref_counts[tables[2][0]] == 1 and paged.blocks_held() == 4
    for layer in range(2):
        k, v, _ = kv.read_kv_batch(layer, paged.seq_ids)
        want = dynamic.layers[layer]
        assert torch.equal(torch.from_numpy(k).view(3, 6, 2, 8).transpose(1, 2), want.keys)
        assert torch.equal(torch.from_numpy(v).view(3, 6, 2, 8).transpose(1, 2), want.values)
    # the next token goes into each row's shared partial last block: copy on write
    copies = kv.stats().cow_copies
    with torch.no_grad():
        model(input_ids=torch.tensor([[3], [4], [5]]), cache=paged, use_cache=True)
    assert kv.stats().cow_copies == copies + 1  # rows 0 and 1 shared block 1: one copies
    kv.check_invariants()


def test_refusals_change_nothing(models):
    model = models["llama"]
    cache = PagedHFCache.for_model(model, num_blocks=4, block_size=4)
    with torch.no_grad():
        model(input_ids=IDS[:1], cache=cache, use_cache=True)  # 7 positions: 2 blocks
    state = cache.kv.snapshot()
    with pytest.raises(ValueError, match="model gives 2 rows but this cache holds 1"):
        model(input_ids=IDS[:, :1], cache=cache, use_cache=True)
    with pytest.raises(OutOfBlocksError):  # 7 + 10 positions need 5 blocks of the 4
        model(input_ids=torch.tensor([[5] * 10]), cache=cache, use_cache=True)
    with pytest.raises(ValueError, match="cannot crop"):
        cache.crop(-1)
    with pytest.raises(ValueError, match="holds sequences already"):
        cache.admit(IDS[:1])
    assert cache.kv.snapshot() == state and cache.get_seq_length() == 7
    with pytest.raises(ValueError, match="left padding"):
        cache.new().admit(IDS, attention_mask=MASK.flip(1))
    with pytest.raises(ValueError, match="cast the model first"):
        PagedHFCache.for_model(model.to(torch.bfloat16))
    model.to(torch.float32)
    with pytest.raises(ValueError, match="this model has"):
        PagedHFCache(cache.kv, models["gpt2"].config)


def test_a_batch_starts_at_its_shortest_hit_and_beams_admit_their_prompt(models):
    model = models["llama"]
    system = [1, 60, 61, 62, 63, 64, 65, 66, 67]
    greedy = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)
    root = PagedHFCache.for_model(model, num_blocks=48, block_size=4, prefix_caching=True)
    root.admit(torch.tensor([system]))
    model.generate(input_ids=torch.tensor([system]), cache=root, **greedy)
    root.release()

    # row 0 holds the system prompt's 8 cached positions, row 1 (left-padded) none: the
    # batch computes from position 0, and row 0 skips writing the 8 it holds
    ids = torch.tensor([system + [70, 71], [0, 0, 0, 0, 0, 0, 1, 80, 81, 82, 83]])
    mask = (ids != 0).long()
    cache = root.new()
    assert cache.admit(ids, mask) == 0
    hits = [cache.kv.num_cached_tokens(s) for s in cache.seq_ids]
    assert hits == [8, 0]
    out = model.generate(input_ids=ids, attention_mask=mask, cache=cache, **greedy)
    assert torch.equal(out, model.generate(input_ids=ids, attention_mask=mask, **greedy))
    cache.kv.check_invariants()
    cache.release()

    # beam search over an admitted prompt: one row per beam, each served the 8 positions
    beams = root.new()
    second = torch.tensor([system + [90, 91]])
    assert beams.admit(second, num_beams=2) == 8 and len(beams.seq_ids) == 2
    out = model.generate(input_ids=second, cache=beams, num_beams=2, **greedy)
    assert torch.equal(out, model.generate(input_ids=second, num_beams=2, **greedy))
    assert beams.tokens_cached == 2 * 8


def test_the_readme_three_lines_generate_dynamic_cache_tokens(models):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## A Hugging Face model on the cache\n\n```python\n(.*?)```", readme,
                      re.S).group(1)
    model = models["llama"]
    inputs = {"input_ids": IDS[:1], "attention_mask": MASK[:1]}
    namespace = {"model": model, "inputs": inputs}
    exec(compile(block, "README.md", "exec"), namespace)
    expected = model.generate(**inputs, max_new_tokens=32, pad_token_id=0)
    assert torch.equal(namespace["out"], expected)
    assert isinstance(namespace["cache"], PagedHFCache)


def test_batch_select_indices_takes_row_numbers_or_a_boolean_mask(models):
    """As DynamicCache indexes its rows: ``[2, 0]`` keeps rows 2 and 0 in that order, a
    boolean mask the rows where it is True."""
    model = models["llama"]
    cache = PagedHFCache.for_model(model, num_blocks=16, block_size=4)
    ids = torch.tensor([[1, 11, 12], [1, 21, 22], [1, 31, 32]])
    with torch.no_grad():
        model(input_ids=ids, cache=cache, use_cache=True)
    tables = [cache.kv.get(s).block_table for s in cache.seq_ids]
    cache.batch_select_indices(torch.tensor([True, False, True]))
    assert [cache.kv.get(s).block_table for s in cache.seq_ids] == [tables[0], tables[2]]
    cache.batch_select_indices(torch.tensor([1, 0]))
    assert [cache.kv.get(s).block_table for s in cache.seq_ids] == [tables[2], tables[0]]
    assert cache.kv.num_used_blocks == 2
    cache.kv.check_invariants()
