"""Quantized pools in the kernels: the quantizing write, the dequantizing gather, paged
attention over int8 and FP8 codes, and copy/swap carrying codes and scales together.

The write and the gather are held to `paged_kv.reference.quantization` (NumPy) bit for bit, codes
and scales; attention to `paged_kv.reference.attention.dense_attention` over the reference's
dequantized K/V (the same arithmetic, float32 against float64). Sizes are tiny: every
launch here is a few hundred simulator threads.
"""

from __future__ import annotations

import numpy as np
import pytest

from paged_kv.core.config import get_model
from paged_kv.gpu import device
from paged_kv.gpu.kernels import (
    SWAP_METHODS,
    decode_attention,
    gather_kv_dequantized,
    paged_attention,
    prefill_attention,
    write_slots_quantized,
)
from paged_kv.gpu.kernels._quant_math import e4m3_decode, e4m3_encode
from paged_kv.gpu.kernels.paged_attention import _stride
from paged_kv.gpu.storage import KVStorage
from paged_kv.reference.attention import dense_attention
from paged_kv.reference.quantization import (
    dequantize_int8,
    fp8_e4m3_decode,
    fp8_e4m3_encode,
    quantize_fp8,
    quantize_int8,
    round_trip,
)

pytestmark = [pytest.mark.device,  # kernels: the simulator here, the GPU in gpu_check.sh
              pytest.mark.usefixtures("fast_simulator_barriers")]  # conftest: speed only
cuda = device.cuda_api()

NUM_LAYERS, BLOCK_SIZE, HEADS, HEAD_DIM = 2, 4, 2, 8
FORMATS = ("int8", "fp8")  # pool element types int8 and uint8
TOL = {"rtol": 2e-5, "atol": 2e-6}  # float32 accumulation against a float64 reference




def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


class QuantPool:
    """A zeroed quantized pool and its scales on the device (FP8: random static scales)."""

    def __init__(self, fmt: str, num_blocks: int, rng: np.random.Generator, *,
                 heads: int = HEADS, head_dim: int = HEAD_DIM) -> None:
        self.fmt = fmt
        shape = (NUM_LAYERS, 2, num_blocks, BLOCK_SIZE, heads, head_dim)
        self.pool = cuda.to_device(np.zeros(shape, np.int8 if fmt == "int8" else np.uint8))
        if fmt == "int8":
            self.scales = cuda.to_device(np.zeros(shape[:5] + (1,), np.float32))
        else:
            self.scales = cuda.to_device(rng.uniform(0.01, 0.05, (NUM_LAYERS, 2, heads))
                                         .astype(np.float32))

    def write(self, layer, k, v, slots):
        write_slots_quantized(self.pool, self.scales, layer, k, v, slots)

    def dequantized(self) -> np.ndarray:
        """The whole pool decoded by the NumPy reference, float32."""
        codes, scales = self.pool.copy_to_host(), self.scales.copy_to_host()
        if self.fmt == "int8":
            return dequantize_int8(codes, scales[..., 0])
        return fp8_e4m3_decode(codes) * scales[:, :, None, None, :, None]


def expected_codes(fmt, x, static_scales=None):
    """Reference codes (and int8 scales) of x [tokens, heads, head_dim]."""
    if fmt == "int8":
        return quantize_int8(x)
    return quantize_fp8(x, static_scales), None


# -- per-element arithmetic ---------------------------------------------------------------


def test_kernel_e4m3_helpers_match_the_reference_on_every_pattern_and_beyond() -> None:
    patterns = np.arange(256, dtype=np.uint8)
    decoded = np.array([e4m3_decode(c) for c in patterns], dtype=np.float32)
    assert same_bytes(decoded, fp8_e4m3_decode(patterns))  # NaN bits and -0 included
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(500) * 10.0 ** rng.uniform(-4, 3, 500),
                        [np.inf, -np.inf, np.nan, 1e9, 464.0, -0.0]]).astype(np.float32)
    assert [e4m3_encode(v) for v in x] == fp8_e4m3_encode(x).tolist()


# -- write and gather ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kv_dtype", ["float16", "float32"])
def test_quantizing_write_matches_the_reference_bit_for_bit(fmt, kv_dtype) -> None:
    rng = np.random.default_rng(1)
    qp = QuantPool(fmt, num_blocks=4, rng=rng)
    before_codes, before_scales = qp.pool.copy_to_host(), qp.scales.copy_to_host()
    slots = np.array([5, -1, 0, 14, 9, 3])
    k = (rng.standard_normal((6, HEADS, HEAD_DIM)) * 3).astype(kv_dtype)
    v = (rng.standard_normal((6, HEADS, HEAD_DIM)) / 7).astype(kv_dtype)
    k[0, 0, :3] = [np.inf, np.nan, 1e4]  # the saturation and NaN rules, in the kernel
    qp.write(1, k, v, slots)
    codes, scales = qp.pool.copy_to_host(), qp.scales.copy_to_host()
    real = slots >= 0
    blocks, offsets = slots[real] // BLOCK_SIZE, slots[real] % BLOCK_SIZE
    static = before_scales[1] if fmt == "fp8" else (None, None)
    for kv, x in ((0, k), (1, v)):
        want, want_scales = expected_codes(fmt, x[real], static[kv])
        assert same_bytes(codes[1, kv, blocks, offsets], want)
        if fmt == "int8":
            assert same_bytes(scales[1, kv, blocks, offsets, :, 0], want_scales)
    # nothing else moved: other layer, other slots, padding row, static scales
    untouched = np.ones(codes.shape[:4], bool)
    untouched[1, :, blocks, offsets] = False
    assert same_bytes(codes[untouched], before_codes[untouched])
    if fmt == "fp8":
        assert same_bytes(scales, before_scales)


def test_fp8_write_stores_every_pattern_it_is_given_the_value_of() -> None:
    """All 256 decoded values (scale 1) written through the kernel store their own
    pattern, NaN sign included."""
    qp = QuantPool("fp8", num_blocks=4, rng=np.random.default_rng(2))
    qp.scales = cuda.to_device(np.ones((NUM_LAYERS, 2, HEADS), np.float32))
    patterns = np.arange(256, dtype=np.uint8).reshape(16, HEADS, HEAD_DIM)
    values = fp8_e4m3_decode(patterns)
    qp.write(0, values, -values, np.arange(16))
    codes = qp.pool.copy_to_host()[0, :, :4].reshape(2, 16, HEADS, HEAD_DIM)
    assert same_bytes(codes[0], patterns)
    assert same_bytes(codes[1], patterns ^ np.uint8(0x80))


@pytest.mark.parametrize("fmt", FORMATS)
def test_dequantizing_gather_matches_the_reference_bit_for_bit(fmt) -> None:
    rng = np.random.default_rng(3)
    qp = QuantPool(fmt, num_blocks=5, rng=rng)
    n = 5 * BLOCK_SIZE
    qp.write(0, rng.standard_normal((n, HEADS, HEAD_DIM)).astype(np.float32),
             rng.standard_normal((n, HEADS, HEAD_DIM)).astype(np.float32), np.arange(n))
    tables, lens, starts = [[4, 1], [0, 3, 2]], [7, 10], [2, 0]  # partial blocks, a start
    k, v = gather_kv_dequantized(qp.pool, qp.scales, 0, tables, lens, starts, dtype="float16")
    k, v = k.copy_to_host(), v.copy_to_host()
    ref = qp.dequantized().astype(np.float16)
    rows = [(b, p % BLOCK_SIZE) for t, ln, st in zip(tables, lens, starts)
            for p in range(st, ln) for b in [t[p // BLOCK_SIZE]]]
    blocks, offsets = np.array(rows).T
    assert same_bytes(k, ref[0, 0, blocks, offsets])
    assert same_bytes(v, ref[0, 1, blocks, offsets])


def test_quantized_wrappers_refuse_bad_scales_and_shapes() -> None:
    rng = np.random.default_rng(4)
    qp = QuantPool("int8", num_blocks=2, rng=rng)
    k = np.zeros((1, HEADS, HEAD_DIM), np.float16)
    with pytest.raises(ValueError, match="int8 pool .* needs its scales"):
        write_slots_quantized(qp.pool, None, 0, k, k, [0])
    wrong = cuda.to_device(np.zeros((NUM_LAYERS, 2, HEADS), np.float32))
    with pytest.raises(ValueError, match=r"needs float32 scales of shape \(2, 2, 2, 4, 2, 1\)"):
        write_slots_quantized(qp.pool, wrong, 0, k, k, [0])
    with pytest.raises(ValueError, match="k and v must both be one of"):
        write_slots_quantized(qp.pool, qp.scales, 0, k.astype(np.int32), k, [0])
    odd = QuantPool("fp8", num_blocks=2, rng=rng, head_dim=6)
    with pytest.raises(ValueError, match="head_dim a multiple of 4"):
        gather_kv_dequantized(odd.pool, odd.scales, 0, [[0]], [1])
    with pytest.raises(ValueError, match="takes no kv_scales"):
        decode_attention(cuda.to_device(np.zeros((1, 2, 1, 4, 1, 8), np.float32)), 0,
                         np.zeros((1, 1, 8)), [[0]], [1], kv_scales=qp.scales)
    assert not qp.pool.copy_to_host().any() and not qp.scales.copy_to_host().any()


# -- paged attention over quantized KV ----------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_attention_over_quantized_kv_matches_the_reference(monkeypatch, fmt) -> None:
    """Decode (GQA 2, two sequences) and prefill over a cached prefix, with KV tiles of
    3 tokens so that the online softmax crosses tiles."""
    rng = np.random.default_rng(5)
    qp = QuantPool(fmt, num_blocks=6, rng=rng, heads=1)  # one KV head: fewer CUDA blocks
    n = 6 * BLOCK_SIZE
    k = (rng.standard_normal((n, 1, HEAD_DIM)) * 2).astype(np.float16)
    v = rng.standard_normal((n, 1, HEAD_DIM)).astype(np.float16)
    qp.write(1, k, v, np.arange(n))
    monkeypatch.setattr(paged_attention, "TILE_BYTES", 3 * _stride(HEAD_DIM, 1))
    ref = qp.dequantized()
    tables, lens = [[5, 1, 3], [0, 4]], [11, 6]

    def kv_of(table, length):
        pos = np.arange(length)
        blocks = np.asarray(table)[pos // BLOCK_SIZE]
        return ref[1, 0, blocks, pos % BLOCK_SIZE], ref[1, 1, blocks, pos % BLOCK_SIZE]

    q = rng.standard_normal((2, 2, HEAD_DIM)).astype(np.float32)
    got = decode_attention(qp.pool, 1, q, tables, lens, kv_scales=qp.scales).copy_to_host()
    for s in range(2):
        np.testing.assert_allclose(got[s], dense_attention(q[s:s + 1], *kv_of(tables[s],
                                                                             lens[s]))[0], **TOL)
    qp_rows = rng.standard_normal((3, 2, HEAD_DIM)).astype(np.float32)
    got = prefill_attention(qp.pool, 1, qp_rows, tables[0], 8,
                            kv_scales=qp.scales).copy_to_host()
    np.testing.assert_allclose(got, dense_attention(qp_rows, *kv_of(tables[0], 11), q_offset=8),
                               **TOL)


@pytest.mark.parametrize("fmt", FORMATS)
def test_out_of_range_device_ids_are_skipped_over_quantized_kv(monkeypatch, fmt) -> None:
    """A device table's bad id: its tokens add nothing and are counted. The kernel reads
    block 0 in their place, which holds NaN (int8: its scales; FP8: its codes)."""
    rng = np.random.default_rng(6)
    qp = QuantPool(fmt, num_blocks=5, rng=rng, heads=1)
    n = 5 * BLOCK_SIZE
    k = rng.standard_normal((n, 1, HEAD_DIM)).astype(np.float16)
    v = rng.standard_normal((n, 1, HEAD_DIM)).astype(np.float16)
    qp.write(1, k, v, np.arange(n))
    if fmt == "int8":
        scales = qp.scales.copy_to_host()
        scales[1, :, 0] = np.nan
        qp.scales = cuda.to_device(scales)
    else:
        codes = qp.pool.copy_to_host()
        codes[1, :, 0] = 0x7F  # E4M3 NaN
        qp.pool = cuda.to_device(codes)
    monkeypatch.setattr(paged_attention, "TILE_BYTES", 3 * _stride(HEAD_DIM, 1))
    ref = qp.dequantized()
    table, length = [1, 10**6, 3], 11  # positions 4 .. 7 skipped
    buffers = paged_attention.DeviceBuffers()
    q = rng.standard_normal((1, 2, HEAD_DIM)).astype(np.float32)
    got = decode_attention(qp.pool, 1, q, cuda.to_device(np.array([table], np.int32)),
                           [length], kv_scales=qp.scales, buffers=buffers).copy_to_host()
    assert buffers.take_errors() == 4
    pos = np.array([0, 1, 2, 3, 8, 9, 10])
    blocks = np.asarray(table)[pos // BLOCK_SIZE]
    want = dense_attention(q, ref[1, 0, blocks, pos % BLOCK_SIZE],
                           ref[1, 1, blocks, pos % BLOCK_SIZE])
    np.testing.assert_allclose(got, want, **TOL)


# -- storage: blocks carry codes and scales -------------------------------------------------


@pytest.mark.parametrize(("kv_dtype", "method"), [("int8", m) for m in SWAP_METHODS]
                         + [("fp8_e4m3", SWAP_METHODS[0])])
def test_storage_copy_and_swap_move_codes_and_scales_byte_exact(kv_dtype, method) -> None:
    model = get_model("tiny").with_kv_dtype(kv_dtype)
    storage = KVStorage(model, BLOCK_SIZE, num_gpu_blocks=6, num_host_blocks=4,
                        swap_method=method, fp8_scales=0.03 if kv_dtype != "int8" else None)
    assert storage.nbytes_gpu == 6 * model.bytes_per_block(BLOCK_SIZE)
    rng = np.random.default_rng(6)
    heads = (model.num_kv_heads, model.head_dim)
    k = rng.standard_normal((8, *heads)).astype(np.float16)
    v = rng.standard_normal((8, *heads)).astype(np.float16)
    slots = np.r_[1 * BLOCK_SIZE:2 * BLOCK_SIZE, 4 * BLOCK_SIZE:5 * BLOCK_SIZE]  # blocks 1, 4
    for layer in range(model.num_layers):
        storage.write(layer, k, v, slots)
    gk, gv = storage.gather(0, [[1, 4]], [8])
    scales = None if kv_dtype == "int8" else np.float32([0.03, 0.03])
    assert same_bytes(gk, round_trip(k, kv_dtype, scales))
    assert same_bytes(gv, round_trip(v, kv_dtype, scales))

    storage.copy_blocks([(1, 2)])  # copy-on-write
    storage.swap_out([(4, 3), (1, 0)])
    storage.swap_in([(3, 5)])
    gpu, host = storage.gpu_snapshot(), storage.host_snapshot()
    gpu_scales, host_scales = storage.gpu_scales_snapshot(), storage.host_scales_snapshot()
    for a, b in ((gpu[:, :, 2], gpu[:, :, 1]), (host[:, :, 3], gpu[:, :, 4]),
                 (host[:, :, 0], gpu[:, :, 1]), (gpu[:, :, 5], gpu[:, :, 4])):
        assert same_bytes(a, b) and a.any()
    if kv_dtype == "int8":  # paged scales went along, block for block
        for a, b in ((gpu_scales[:, :, 2], gpu_scales[:, :, 1]),
                     (host_scales[:, :, 3], gpu_scales[:, :, 4]),
                     (gpu_scales[:, :, 5], gpu_scales[:, :, 4])):
            assert same_bytes(a, b) and a.all()
    else:  # static scales: per layer and head, never moved
        assert host_scales is None and np.all(gpu_scales == np.float32(0.03))
    assert same_bytes(storage.gather(1, [[5]], [4])[0], round_trip(k[4:], kv_dtype, scales))
