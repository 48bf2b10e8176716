"""On a real GPU: a model's CUDA tensors and the pools exchange memory in place, and
generation gives DynamicCache's tokens on PyTorch's default stream and on a side stream.
Marked ``gpu``: skipped unless ``PAGED_KV_DEVICE=gpu`` and PyTorch sees CUDA (as
scripts/gpu_check.sh runs the suite on a GPU machine)."""

import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers", minversion="5.24")

from paged_kv.hf import PagedHFCache, use_paged_attention  # noqa: E402
from paged_kv.hf.exchange import DeviceExchange  # noqa: E402
from paged_kv.hf.tiny import tiny_model  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.usefixtures("hf_env"),
    pytest.mark.skipif(os.environ.get("PAGED_KV_DEVICE") != "gpu"
                       or not torch.cuda.is_available(),
                       reason="needs a real NVIDIA GPU: PAGED_KV_DEVICE=gpu and CUDA torch"),
]

GREEDY = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
IDS = [[1, 11, 12, 13, 14, 15, 16, 17, 18], [0, 0, 0, 1, 21, 22, 23, 24, 25]]


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=4).to("cuda")


def _inputs():
    ids = torch.tensor(IDS, device="cuda")
    return dict(input_ids=ids, attention_mask=(ids != 0).long())


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generation_on_the_gpu_gives_dynamic_cache_tokens_without_copies(model, num_beams):
    expected = model.generate(**_inputs(), num_beams=num_beams, **GREEDY)
    cache = PagedHFCache.for_model(model, num_blocks=64, block_size=4)
    out = model.generate(**_inputs(), cache=cache, num_beams=num_beams, **GREEDY)
    assert torch.equal(out, expected)
    assert isinstance(cache.exchange, DeviceExchange)
    x = torch.randn(6, 2, 8, device="cuda")
    view = cache.exchange.to_pool(x, "float32")
    assert view.__cuda_array_interface__["data"][0] == x.data_ptr()  # the same memory


def test_a_side_stream_orders_the_writes_and_reads(model):
    expected = model.generate(**_inputs(), **GREEDY)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        cache = PagedHFCache.for_model(model, num_blocks=64, block_size=4)
        out = model.generate(**_inputs(), cache=cache, **GREEDY)
    side.synchronize()
    assert torch.equal(out, expected)


def test_the_paged_attention_kernels_on_the_gpu(model):
    ids = torch.tensor([row[3:] for row in IDS[:1]] * 2, device="cuda")  # no padding
    expected = model.generate(input_ids=ids, **GREEDY)
    use_paged_attention(model)
    try:
        cache = PagedHFCache.for_model(model, num_blocks=64, block_size=4)
        assert torch.equal(model.generate(input_ids=ids, cache=cache, **GREEDY), expected)
    finally:
        model.set_attn_implementation("sdpa")
