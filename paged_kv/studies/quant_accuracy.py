"""What a quantized KV cache costs in accuracy and buys in capacity.

Accuracy: attention over K/V stored in a quantized cache against the same attention over
float16 K/V, the model's compute dtype. The stored K/V are exactly what the kernels keep
and read back (`paged_kv.reference.quantization.round_trip`; the tests hold the kernels to it bit
for bit), and attention is `paged_kv.reference.attention.dense_attention` (float64), so the error
is the quantization's alone. Two kinds of K/V:

* **random**: K and V standard normal;
* **outlier channels**: as real keys have (KIVI, KVQuant: a few channels of the key
  cache are larger than the rest by one to two orders of magnitude, in every token),
  `outlier_channels` channels per KV head of K scaled by `outlier_scale`; V unchanged.

Schemes (`SCHEMES`): int8 with a scale per token and head; FP8 E4M3 with vLLM's default
static scale 1.0; FP8 E4M3 with per-head scales calibrated on the data (``amax / 448``).

Capacity (`capacity_table`): bytes per token of each KV dtype, scales included, and the
tokens a KV budget holds (whole blocks, `paged_kv.core.config.blocks_for_bytes`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from paged_kv.core.config import ModelSpec, blocks_for_bytes, get_model
from paged_kv.reference.attention import dense_attention
from paged_kv.reference.quantization import fp8_scales_for, round_trip


@dataclass(frozen=True)
class Scheme:
    """One way of storing KV: a KV dtype and, for FP8, how its static scales are set."""

    #: row label
    label: str
    #: ModelSpec.kv_dtype
    kv_dtype: str
    #: FP8 only: "default" (1.0, vLLM's scale without calibration) or "calibrated"
    #: (per KV head, amax / 448 over the data itself)
    fp8_scales: str = "default"

    def fp8_scale_values(self, x: np.ndarray) -> np.ndarray | None:
        """The static per-head scales this scheme uses for `x` ``[tokens, heads, dim]``."""
        if self.kv_dtype != "fp8_e4m3":
            return None
        if self.fp8_scales == "calibrated":
            return fp8_scales_for(np.abs(x.astype(np.float32)).max(axis=(0, 2)))
        return np.ones(x.shape[1], np.float32)

    def store(self, x: np.ndarray) -> np.ndarray:
        """`x` as this scheme's cache gives it back (in x's dtype)."""
        return round_trip(x, self.kv_dtype, self.fp8_scale_values(x))


#: The schemes of the study, float16 (the reference) first.
SCHEMES = (
    Scheme("float16", "float16"),
    Scheme("int8, scale per token and head", "int8"),
    Scheme("fp8 e4m3, scale 1.0 (vLLM default)", "fp8_e4m3", "default"),
    Scheme("fp8 e4m3, per-head scale amax/448", "fp8_e4m3", "calibrated"),
)


#: the largest outlier scale whose keys float16 holds: float16 reaches 65,504 and a
#: standard normal draw exceeds 8 with probability 1.2e-15 (so about once in 10**15
#: draws; the command line's error study holds at most 2**24), and 65,504 / 8 = 8,188
MAX_OUTLIER_SCALE = 8000.0


def synthetic_kv(num_tokens: int, num_kv_heads: int, head_dim: int, *,
                 outlier_channels: int = 0, outlier_scale: float = 1.0,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Float16 ``k, v[num_tokens, num_kv_heads, head_dim]``, standard normal; with
    `outlier_channels`, that many channels of each KV head of K (chosen at random, the
    same for every token) are `outlier_scale` times larger. Raises `ValueError` when a
    scaled key overflows float16 (see `MAX_OUTLIER_SCALE`)."""
    k = rng.standard_normal((num_tokens, num_kv_heads, head_dim))
    v = rng.standard_normal((num_tokens, num_kv_heads, head_dim))
    for h in range(num_kv_heads):
        channels = rng.choice(head_dim, size=outlier_channels, replace=False)
        k[:, h, channels] *= outlier_scale
    largest = float(np.abs(k).max(initial=0.0))
    if not largest <= float(np.finfo(np.float16).max):
        raise ValueError(f"outlier_scale={outlier_scale!r} makes a key of {largest:.3g}, "
                         f"beyond float16's {np.finfo(np.float16).max:g}; keep it at most "
                         f"{MAX_OUTLIER_SCALE:g}")
    return k.astype(np.float16), v.astype(np.float16)


def relative_error(approx: np.ndarray, exact: np.ndarray) -> float:
    """``||approx - exact||_2 / ||exact||_2`` over all elements (float64)."""
    exact = exact.astype(np.float64)
    return float(np.linalg.norm(approx.astype(np.float64) - exact) / np.linalg.norm(exact))


def scheme_errors(q: np.ndarray, k: np.ndarray, v: np.ndarray,
                  schemes: Sequence[Scheme] = SCHEMES) -> pd.DataFrame:
    """One row per scheme: relative errors of stored K, stored V and the decode attention
    output of queries `q` ``[num_q, q_heads, head_dim]`` (each at the last position,
    attending to all of `k`, `v`), against float16 K/V; and the largest output error."""
    exact = dense_attention(q, k, v, causal=False)
    rows = []
    for scheme in schemes:
        k_s, v_s = scheme.store(k), scheme.store(v)
        out = dense_attention(q, k_s, v_s, causal=False)
        rows.append({
            "scheme": scheme.label,
            "kv_dtype": scheme.kv_dtype,
            "k_error": relative_error(k_s, k),
            "v_error": relative_error(v_s, v),
            "attention_error": relative_error(out, exact),
            "attention_max_abs": float(np.abs(out - exact).max()),
        })
    return pd.DataFrame(rows)


def error_table(*, num_tokens: int = 1024, num_kv_heads: int = 8, head_dim: int = 128,
                group: int = 4, num_queries: int = 16, outlier_channels: int = 4,
                outlier_scale: float = 20.0, seed: int = 0,
                schemes: Sequence[Scheme] = SCHEMES) -> pd.DataFrame:
    """`scheme_errors` on random K/V and on K/V with outlier channels (column ``kv``),
    queries standard normal with ``group`` query heads per KV head."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((num_queries, num_kv_heads * group, head_dim)).astype(np.float32)
    frames = []
    for kind, channels in (("random", 0), ("outlier channels", outlier_channels)):
        k, v = synthetic_kv(num_tokens, num_kv_heads, head_dim, outlier_channels=channels,
                            outlier_scale=outlier_scale, rng=rng)
        frames.append(scheme_errors(q, k, v, schemes).assign(kv=kind))
    table = pd.concat(frames, ignore_index=True)
    return table[["kv", *[c for c in table.columns if c != "kv"]]]


def outlier_sweep(outlier_scales: Iterable[float], *, num_tokens: int = 1024,
                  num_kv_heads: int = 8, head_dim: int = 128, group: int = 4,
                  num_queries: int = 16, outlier_channels: int = 4, seed: int = 0,
                  schemes: Sequence[Scheme] = SCHEMES[1:]) -> pd.DataFrame:
    """`scheme_errors` for each outlier magnitude (column ``outlier_scale``), the same
    base K/V and queries throughout."""
    rows = []
    for scale in outlier_scales:
        rng = np.random.default_rng(seed)  # the same draws at every scale
        q = rng.standard_normal((num_queries, num_kv_heads * group, head_dim))
        k, v = synthetic_kv(num_tokens, num_kv_heads, head_dim,
                            outlier_channels=outlier_channels, outlier_scale=scale, rng=rng)
        rows.append(scheme_errors(q.astype(np.float32), k, v, schemes)
                    .assign(outlier_scale=float(scale)))
    return pd.concat(rows, ignore_index=True)


def capacity_table(models: Iterable[ModelSpec | str] = ("opt-13b", "llama-3-8b"),
                   kv_dtypes: Iterable[str] = ("float16", "int8", "fp8_e4m3"), *,
                   kv_bytes: int = 12 * 2**30, block_size: int = 16) -> pd.DataFrame:
    """Bytes per token (scales included) and the tokens `kv_bytes` of KV memory hold, in
    whole blocks, per model and KV dtype; ``capacity_ratio`` against float16."""
    rows = []
    for model in models:
        base = get_model(model) if isinstance(model, str) else model
        reference = None
        for kv_dtype in kv_dtypes:
            spec = base.with_kv_dtype(kv_dtype)
            tokens = blocks_for_bytes(kv_bytes, spec, block_size) * block_size
            reference = tokens if reference is None else reference
            rows.append({
                "model": base.name,
                "kv_dtype": spec.kv.name,
                "bytes_per_token": spec.bytes_per_token,
                "tokens": tokens,
                "capacity_ratio": tokens / reference,
            })
    return pd.DataFrame(rows)


def model_logit_drift(kv_dtypes: Sequence[str] = ("int8", "fp8_e4m3"), *,
                      model: str = "tiny", prompt_len: int = 16, new_tokens: int = 8,
                      block_size: int = 4, seed: int = 0,
                      attention: str = "reference") -> pd.DataFrame:
    """How far the small model's logits move when its cache stores quantized KV.

    The model of `paged_kv.model` (preset `model`, random weights from `seed`) prefills a
    random prompt of `prompt_len` tokens through a `PagedKVCache` that stores its KV in
    the compute dtype, then greedily decodes `new_tokens` tokens. The same tokens
    (teacher-forced, so every run sees the same sequence) then go through a cache of each
    of `kv_dtypes` (FP8 with vLLM's default scale 1.0). One row per KV dtype, over the
    ``new_tokens + 1`` rows of logits (after the prompt and after each new token):
    largest absolute logit difference from the unquantized run, relative L2 difference,
    the share of rows whose top token is unchanged, and the unquantized logits' largest
    magnitude for scale. `attention` is the runner's backend ("reference": NumPy over
    `read_kv`'s dequantized K/V; "device": the paged-attention kernels on the codes).
    """
    from paged_kv.cache import PagedKVCache  # noqa: PLC0415 - the model loads storage
    from paged_kv.core.config import CacheConfig  # noqa: PLC0415
    from paged_kv.model import PagedModelRunner, get_model_config, random_weights  # noqa: PLC0415

    config = get_model_config(model)
    weights = random_weights(config, seed)
    prompt = np.random.default_rng(seed).integers(0, config.vocab_size, prompt_len).tolist()
    num_blocks = -(-(prompt_len + new_tokens) // block_size)

    def run(kv_dtype: str, forced: list[int] | None) -> tuple[np.ndarray, list[int]]:
        cache = PagedKVCache(CacheConfig(block_size=block_size, num_gpu_blocks=num_blocks),
                             config.spec.with_kv_dtype(kv_dtype))
        runner = PagedModelRunner(weights, cache, attention=attention)
        result = runner.prefill(prompt)
        rows, tokens = [result.logits], []
        for i in range(new_tokens):
            token = int(np.argmax(rows[-1])) if forced is None else forced[i]
            tokens.append(token)
            rows.append(runner.decode([result.seq_id], [token])[0])
        return np.array(rows), tokens

    exact, tokens = run("auto", None)
    out = []
    for kv_dtype in kv_dtypes:
        logits, _ = run(kv_dtype, tokens)
        out.append({
            "model": config.name,
            "kv_dtype": config.spec.with_kv_dtype(kv_dtype).kv.name,
            "logit_rows": len(logits),
            "max_abs_diff": float(np.abs(logits - exact).max()),
            "relative_diff": relative_error(logits, exact),
            "top_token_agreement": float(np.mean(logits.argmax(1) == exact.argmax(1))),
            "max_abs_logit": float(np.abs(exact).max()),
        })
    return pd.DataFrame(out)


def serving_gain(kv_dtypes: Sequence[str] = ("float16", "int8", "fp8_e4m3"), *,
                 model: str = "opt-13b", workload: str = "sharegpt-like",
                 rates: Sequence[float] = tuple(np.arange(1, 33) / 4),
                 saturating_rate: float = 8.0, duration_s: float | None = None, seed: int = 0,
                 progress: bool = False) -> pd.DataFrame:
    """What a quantized cache buys a server: the simulator (`paged_kv.sim`) serving
    `workload` with paged memory for `model` on its default GPU and KV budget (the
    vLLM paper's 12 GiB for OPT-13B on an A100-40GB), once per KV dtype.

    One row per KV dtype: bytes per token, token slots, the highest request rate whose
    normalised latency stays under the throughput study's threshold (grid `rates`, by
    default that study's ShareGPT grid, 0.25 req/s apart, carried on to 8; then
    bisection; `paged_kv.studies.throughput`), and the mean batch (running requests)
    at `saturating_rate`, where memory bounds the batch; ``*_gain`` against the first
    KV dtype. `duration_s` of arrivals per run (default: the throughput study's, an
    hour). The step-time model reads the KV bytes of every decode step, so a
    quantized cache also shortens steps; dequantization is taken as free (a modelling
    choice: decode is memory-bound).
    """
    from paged_kv.studies.throughput import throughput_study  # noqa: PLC0415

    rows = []
    for kv_dtype in tqdm(kv_dtypes, desc="serving", disable=not progress):
        spec = get_model(model).with_kv_dtype(kv_dtype)
        setting = dict(workloads=(workload,), schemes=("paged",), model=spec, seed=seed,
                       progress=False)
        if duration_s is not None:
            setting["duration_s"] = duration_s
        study = throughput_study(rates={workload: tuple(rates)}, curves=False, **setting)
        saturated = throughput_study(rates={workload: (saturating_rate,)}, curves=True,
                                     **setting).curves
        rows.append({
            "model": spec.name,
            "kv_dtype": spec.kv.name,
            "bytes_per_token": spec.bytes_per_token,
            "kv_slots": study.settings["kv_slots"],
            "sustained_rate": float(study.sustained["sustained_rate"].iloc[0]),
            "batch_at_saturation": float(saturated["mean_requests"].iloc[0]),
        })
    table = pd.DataFrame(rows)
    for column in ("sustained_rate", "batch_at_saturation"):
        table[f"{column}_gain"] = table[column] / table[column].iloc[0]
    return table
