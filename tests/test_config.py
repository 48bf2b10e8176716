"""Configuration: model presets, bytes per token, validation naming field and value."""

import numpy as np
import pytest

from paged_kv import MODEL_PRESETS, CacheConfig, ModelSpec, blocks_for_bytes, get_model


def test_opt_13b_takes_819200_bytes_per_token():
    opt = get_model("opt-13b")
    assert (opt.num_layers, opt.num_kv_heads, opt.head_dim, opt.dtype) == (40, 40, 128,
                                                                           "float16")
    assert opt.bytes_per_token == 819_200
    assert opt.bytes_per_block(16) == 16 * 819_200


@pytest.mark.parametrize(
    ("name", "per_token"),
    [
        ("llama-2-7b", 2 * 32 * 32 * 128 * 2),  # 524,288
        ("llama-3-8b", 2 * 32 * 8 * 128 * 2),  # 131,072: 8 KV heads (GQA)
        ("tiny", 2 * 2 * 2 * 8 * 2),
    ],
)
def test_presets(name, per_token):
    assert get_model(name).bytes_per_token == per_token
    assert name in MODEL_PRESETS


def test_blocks_for_bytes_matches_the_vllm_paper_budget():
    opt = get_model("opt-13b")
    assert blocks_for_bytes(12 * 2**30, opt, 16) == 983  # 15,728 slots: "about 15.7k"
    assert blocks_for_bytes(0, opt, 16) == 0
    with pytest.raises(ValueError, match="num_bytes"):
        blocks_for_bytes(-1, opt, 16)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(block_size=0), "CacheConfig.block_size must be an integer >= 1, got 0"),
        (dict(num_gpu_blocks=-3), "CacheConfig.num_gpu_blocks must be an integer >= 1, got -3"),
        (dict(num_host_blocks=1.5), "CacheConfig.num_host_blocks must be an integer >= 0, got 1.5"),
        (dict(watermark_high=1.5), "CacheConfig.watermark_high must be in \\[0, 1\\], got 1.5"),
        (dict(watermark_low=0.95, watermark_high=0.9), "watermark_low must not exceed"),
        (dict(enable_prefix_caching="yes"), "enable_prefix_caching must be a bool"),
        (dict(block_size=True), "block_size must be an integer >= 1, got True"),
    ],
)
def test_cache_config_names_the_field_and_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CacheConfig(**kwargs)


def test_model_spec_validation():
    with pytest.raises(ValueError, match="ModelSpec.dtype must be one of"):
        ModelSpec("m", 1, 1, 8, dtype="bfloat16")
    with pytest.raises(ValueError, match="ModelSpec.head_dim must be an integer >= 1, got 0"):
        ModelSpec("m", 1, 1, 0)
    with pytest.raises(ValueError, match="multiple of num_kv_heads=2"):
        ModelSpec("m", 1, 2, 8, num_q_heads=3)
    with pytest.raises(ValueError, match="valid names"):
        get_model("gpt-5")
    assert CacheConfig(num_gpu_blocks=np.int64(4)).num_gpu_slots == 64
