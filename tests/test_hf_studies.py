"""The studies over real generation loops: beams and parallel samples sharing blocks
against DynamicCache (vLLM Fig. 15's measure), int8/FP8 KV drift against an independent
emulation, and transformers' continuous batching on the same requests. Tiny sizes,
explicit everywhere (transformers' CB sizes itself from the machine's memory otherwise)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers", minversion="5.24")

from transformers import DynamicCache  # noqa: E402

from paged_kv.hf.continuous import compare_with_continuous_batching  # noqa: E402
from paged_kv.hf.kv_drift import kv_drift  # noqa: E402
from paged_kv.hf.sharing import sharing_run  # noqa: E402
from paged_kv.hf.tiny import tiny_model  # noqa: E402
from paged_kv.reference.quantization import round_trip  # noqa: E402

pytestmark = pytest.mark.usefixtures("hf_env", "fast_simulator_barriers")

PROMPT = torch.tensor([[1, 11, 12, 13, 14, 15, 16]])


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=2)


def test_beams_hold_fewer_blocks_than_dynamic_cache(model):
    run = sharing_run(model, PROMPT, decoding="beam", width=3, new_tokens=4, block_size=4)
    steps = run.steps
    assert run.same_tokens
    assert list(steps["rows"]) == [3] * 4 and list(steps["length"]) == [7, 8, 9, 10]
    # without sharing: 3 rows x ceil(length / 4) blocks, what DynamicCache holds in tokens
    assert list(steps["blocks_unshared"]) == [6, 6, 9, 9]
    assert list(steps["dynamic_bytes"]) == [3 * n * 2 * 2 * 2 * 8 * 4 for n in (7, 8, 9, 10)]
    assert steps["blocks_held"].iloc[0] == 2  # the prompt, once
    assert (steps["blocks_held"] < steps["blocks_unshared"]).all()
    expected = 1 - steps["blocks_held"].mean() / steps["blocks_unshared"].mean()
    assert run.saved == pytest.approx(expected) and 0 < run.saved < 1
    assert run.paper_pct == {"alpaca": (37.6, 55.2), "sharegpt": (44.3, 66.3)}


def test_parallel_samples_share_their_prompt(model):
    run = sharing_run(model, PROMPT, decoding="parallel", width=3, new_tokens=2,
                      block_size=4, seed=3)
    assert run.same_tokens
    first = run.steps.iloc[0]
    assert (first["blocks_held"], first["blocks_unshared"]) == (2, 6)
    assert run.paper_pct["sharegpt"] == (16.2, 30.5)


class _EmulatedCache(DynamicCache):
    """DynamicCache whose K/V are what a `kv_dtype` pool gives back, by the NumPy
    reference (float16 first: the pools read back as float16)."""

    def __init__(self, config, kv_dtype):
        super().__init__(config=config)
        self.kv_dtype = kv_dtype

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        def stored(x):
            rows = x.transpose(1, 2).numpy().astype(np.float16)  # [batch, tokens, heads, dim]
            back = np.stack([round_trip(row, self.kv_dtype) for row in rows])
            return torch.from_numpy(back.astype(np.float32)).transpose(1, 2)

        return super().update(stored(key_states), stored(value_states), layer_idx, *args,
                              **kwargs)


def _logits(model, cache, forced):
    with torch.no_grad():
        out = model(input_ids=PROMPT, cache=cache, use_cache=True)
        rows = [out.logits[0, -1]]
        for token in forced:
            out = model(input_ids=torch.tensor([[token]]), cache=cache, use_cache=True)
            rows.append(out.logits[0, -1])
    return torch.log_softmax(torch.stack(rows).double(), -1)


def test_kv_drift_matches_an_independent_emulation(model):
    table = kv_drift(model, PROMPT, new_tokens=3, block_size=4).set_index("kv_dtype")
    tokens = model.generate(input_ids=PROMPT, max_new_tokens=3, do_sample=False,
                            pad_token_id=0)[0, 7:].tolist()
    log_p = _logits(model, _EmulatedCache(model.config, "float16"), tokens[:-1])
    for kv_dtype in ("int8", "fp8_e4m3"):
        log_q = _logits(model, _EmulatedCache(model.config, kv_dtype), tokens[:-1])
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        row = table.loc[kv_dtype]
        assert row["positions"] == 3 and row["new_tokens"] == 3
        assert row["kl_mean"] == pytest.approx(float(kl.mean()), rel=1e-3, abs=1e-12)
        assert row["kl_max"] == pytest.approx(float(kl.max()), rel=1e-3, abs=1e-12)
        agree = float((log_p.argmax(-1) == log_q.argmax(-1)).double().mean())
        assert row["top1_agreement"] == agree
        assert 0 <= row["greedy_prefix"] <= 3
    # int8's scale per token and head is finer than FP8's 3 mantissa bits at scale 1.0
    assert table.loc["int8", "kl_mean"] < table.loc["fp8_e4m3", "kl_mean"]


def test_beside_transformers_continuous_batching(model):
    system = list(range(4, 15))  # 11 tokens: with <s>, three full pages of 4
    prompts = [[1, *system, 40, 41], [1, *system, 50], [1, 60, 61]]
    table = compare_with_continuous_batching(model, prompts, new_tokens=3, block_size=4,
                                             num_blocks=16, max_batch_tokens=16)
    table = table.set_index("engine")
    assert list(table.index) == ["paged_kv", "transformers CB"]
    assert table["same_tokens"].all()
    for engine in table.index:
        row = table.loc[engine]
        # the second prompt (13 tokens) finds the first's 3 full pages; the others nothing
        assert (row["prompt_tokens"], row["prefix_hit_tokens"]) == (30, 12)
        # prompts minus hits, then 2 decode steps each
        assert row["tokens_computed"] == (30 - 12) + 3 * 2
        assert row["peak_blocks"] == 4  # the first request: 14 + 2 positions, blocks of 4
