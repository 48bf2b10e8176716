"""Synthetic workloads: request lengths calibrated to the vLLM paper, seeded arrivals.

Lengths
-------
The vLLM paper (§6.1, Fig. 11) publishes the mean prompt and output lengths of its two
workloads (ShareGPT 161.31 / 337.99 tokens, Alpaca 19.31 / 58.45) and their histograms,
not a fitted distribution. Here each length is an independent lognormal, rounded to
whole tokens and clipped, with a stated log-space sigma (a modelling choice, see
`SHAREGPT_LIKE` and `ALPACA_LIKE`) and a log-space mean ``mu`` solved for so that the
mean of the *clipped* lengths equals the published mean:

    prompt_len = clip(rint(exp(mu_p + sigma_p * Z1)), 1, max_len - 1)
    output_len = clip(rint(exp(mu_o + sigma_o * Z2)), 1, max_len - prompt_len)

so every request fits a model context of `max_len` tokens (prompt + output <= max_len,
the way a server stops generation at the context limit). ``max_len=None`` clips at 1
only. The expectation of the clipped lognormal has a closed form (normal CDFs); the
output's cap depends on the prompt, so its expectation is integrated over the prompt's
distribution on a fine grid. ``mu`` is then found by bisection.

Arrivals
--------
`arrival_times` draws i.i.d. inter-arrival gaps with mean ``1 / rate`` and returns their
running sum (the first request arrives after one gap): exponential gaps make a Poisson
process; gamma gaps with shape ``1 / cv**2`` give a renewal process whose gaps have
coefficient of variation `cv` (burstier than Poisson for cv > 1, smoother for cv < 1).
Gamma with ``cv == 1`` *is* the exponential and draws exactly the same numbers.
``rate = math.inf`` makes every request arrive at time 0 (an offline batch).

Seeds
-----
Every generator takes an integer `seed`. In a workload, arrivals come from
``np.random.default_rng(seed)`` (so they equal ``arrival_times(..., seed=seed)``) and
lengths from an independent child stream of the same seed, so changing the rate or the
arrival process never changes the lengths: a rate sweep compares like with like.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType

import numpy as np

from paged_kv.core.validate import cdiv, is_int, require_int
from paged_kv.sim import published
from paged_kv.sim.request import Request, Workload

#: Default context limit: the vLLM paper's OPT-13B serves at most 2048 tokens.
DEFAULT_MAX_LEN = 2048

#: Arrival processes `arrival_times` knows.
ARRIVAL_PROCESSES = ("poisson", "gamma")

_SQRT2 = math.sqrt(2.0)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, bool
    )


def _check_max_len(max_len: object) -> int | None:
    if max_len is None:
        return None
    if not is_int(max_len) or max_len < 2:
        raise ValueError(f"max_len must be an integer >= 2 or None, got {max_len!r}")
    return int(max_len)


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    """Standard normal CDF, elementwise (no SciPy dependency)."""
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * (1.0 + erf(np.asarray(x, dtype=np.float64) / _SQRT2))


def _clipped_lognormal_mean(mu: float, sigma: float, low: float, high: np.ndarray) -> np.ndarray:
    """``E[clip(X, low, high)]`` for ``X ~ LogNormal(mu, sigma)``, elementwise over `high`.

    With ``a = low``, ``b = high``, ``F`` the normal CDF::

        a * F((ln a - mu) / s) + b * (1 - F((ln b - mu) / s))
          + exp(mu + s^2 / 2) * [F((ln b - mu - s^2) / s) - F((ln a - mu - s^2) / s)]
    """
    high = np.asarray(high, dtype=np.float64)
    finite = np.isfinite(high)
    log_b = np.log(np.where(finite, high, 1.0))
    log_a = math.log(low)
    var = sigma * sigma
    lower = low * _normal_cdf((log_a - mu) / sigma)
    # X > inf never happens; zero the finite-cap term there instead of computing inf * 0.
    upper = np.where(finite, high, 0.0) * (1.0 - _normal_cdf((log_b - mu) / sigma))
    cdf_b = np.where(finite, _normal_cdf((log_b - mu - var) / sigma), 1.0)
    middle = math.exp(mu + var / 2) * (cdf_b - _normal_cdf((log_a - mu - var) / sigma))
    return lower + upper + middle


def _solve_mu(target: float, mean_of_mu, what: str, max_len: int | None) -> float:
    """Bisect for the ``mu`` at which the increasing function `mean_of_mu` hits `target`."""
    lo, hi = -30.0, 30.0
    if not mean_of_mu(lo) < target < mean_of_mu(hi):
        raise ValueError(
            f"max_len={max_len} cannot reach a mean {what} of {target} tokens with "
            f"lengths clipped to [1, max_len]"
        )
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if mean_of_mu(mid) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-10:
            break
    return 0.5 * (lo + hi)


# Grid over the prompt's standard-normal draw, for the output's expectation.
_Z_GRID = np.linspace(-8.0, 8.0, 2001)
_Z_WEIGHTS = np.exp(-0.5 * _Z_GRID**2)
_Z_WEIGHTS /= _Z_WEIGHTS.sum()


@dataclass(frozen=True)
class LengthModel:
    """Independent lognormal prompt and output lengths calibrated to target means.

    The sigmas are log-space standard deviations; the log-space means are derived by
    `log_means` for each `max_len` so that the clipped lengths have the target means.
    """

    #: workload name, e.g. ``"sharegpt-like"``.
    name: str
    #: target mean prompt length, tokens.
    prompt_mean: float
    #: log-space standard deviation of the prompt length.
    prompt_sigma: float
    #: target mean output length, tokens.
    output_mean: float
    #: log-space standard deviation of the output length.
    output_sigma: float
    #: where the target means come from.
    source: str

    def __post_init__(self) -> None:
        for field in ("prompt_mean", "output_mean"):
            value = getattr(self, field)
            if not _is_number(value) or not 1.0 < value < math.inf:
                raise ValueError(f"LengthModel.{field} must be a number > 1, got {value!r}")
        for field in ("prompt_sigma", "output_sigma"):
            value = getattr(self, field)
            if not _is_number(value) or not 0.0 < value < math.inf:
                raise ValueError(f"LengthModel.{field} must be a number > 0, got {value!r}")

    def log_means(self, max_len: int | None = DEFAULT_MAX_LEN) -> tuple[float, float]:
        """``(mu_prompt, mu_output)`` that make the clipped means hit the targets."""
        return _log_means(self, _check_max_len(max_len))

    def sample(
        self, n: int, rng: np.random.Generator, *, max_len: int | None = DEFAULT_MAX_LEN
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw `n` ``(prompt_len, output_len)`` pairs as two int64 arrays."""
        n = require_int("n", n)
        max_len = _check_max_len(max_len)
        mu_p, mu_o = _log_means(self, max_len)
        z_prompt = rng.standard_normal(n)
        z_output = rng.standard_normal(n)
        prompt_cap = math.inf if max_len is None else max_len - 1
        prompt = np.clip(np.rint(np.exp(mu_p + self.prompt_sigma * z_prompt)), 1, prompt_cap)
        output_cap = np.inf if max_len is None else max_len - prompt
        output = np.clip(np.rint(np.exp(mu_o + self.output_sigma * z_output)), 1, output_cap)
        return prompt.astype(np.int64), output.astype(np.int64)


@lru_cache(maxsize=64)
def _log_means(model: LengthModel, max_len: int | None) -> tuple[float, float]:
    prompt_cap = math.inf if max_len is None else float(max_len - 1)

    def prompt_mean(mu: float) -> float:
        return float(_clipped_lognormal_mean(mu, model.prompt_sigma, 1.0, prompt_cap))

    mu_p = _solve_mu(model.prompt_mean, prompt_mean, "prompt length", max_len)
    if max_len is None:
        output_caps = np.full(1, np.inf)
        weights = np.ones(1)
    else:
        prompts = np.clip(np.exp(mu_p + model.prompt_sigma * _Z_GRID), 1.0, prompt_cap)
        output_caps, weights = max_len - prompts, _Z_WEIGHTS

    def output_mean(mu: float) -> float:
        means = _clipped_lognormal_mean(mu, model.output_sigma, 1.0, output_caps)
        return float(np.dot(weights, means))

    mu_o = _solve_mu(model.output_mean, output_mean, "output length", max_len)
    return mu_p, mu_o


#: ShareGPT-like lengths: the ShareGPT first-turn requests the vLLM paper serves, means
#: 161.31 / 337.99 tokens (§6.1, stated). The spreads are fitted, not stated: the paper
#: prints only histograms (Fig. 11a), so the log-space sigmas (prompt 2.0, output 1.0)
#: were chosen on a grid (prompt 1.5-2.25, output 0.85-1.05), served at 2 req/s as in
#: §6.2, as the pair whose token-state shares best meet Fig. 2's for all four systems
#: (`paged_kv.studies.calibration.fit_length_spread`). Narrower outputs match the
#: Orca bars' other shares better but hold shorter sequences than the paper's vLLM does
#: (30.42 requests filling 96.3% of 15,728 slots: 498 tokens each), leaving its pool
#: emptier; wide prompts (many short questions, a tail of pasted documents) bring Pow2's
#: buddy rounding near the paper's.
SHAREGPT_LIKE = LengthModel(
    name="sharegpt-like",
    prompt_mean=published.VLLM_SHAREGPT_MEAN_PROMPT_LEN,
    prompt_sigma=2.0,
    output_mean=published.VLLM_SHAREGPT_MEAN_OUTPUT_LEN,
    output_sigma=1.0,
    source="vLLM paper (Kwon et al., SOSP 2023) §6.1 / Fig. 11, ShareGPT means; spreads "
           "fitted to its Figs. 2 and 13a",
)

#: Alpaca-like lengths: vLLM paper means 19.31 / 58.45 tokens; prompt sigma 0.6 (short,
#: similar instructions), output sigma 1.0 (a choice, not fitted).
ALPACA_LIKE = LengthModel(
    name="alpaca-like",
    prompt_mean=published.VLLM_ALPACA_MEAN_PROMPT_LEN,
    prompt_sigma=0.6,
    output_mean=published.VLLM_ALPACA_MEAN_OUTPUT_LEN,
    output_sigma=1.0,
    source="vLLM paper (Kwon et al., SOSP 2023) §6.1 / Fig. 11, Alpaca means",
)

#: Synthetic workloads by name, for `synthetic_workload`.
SYNTHETIC_WORKLOADS: Mapping[str, LengthModel] = MappingProxyType(
    {model.name: model for model in (SHAREGPT_LIKE, ALPACA_LIKE)}
)


def _gaps(
    n: int, rate: float, process: str, cv: float, rng: np.random.Generator
) -> np.ndarray:
    if math.isinf(rate):
        return np.zeros(n)
    mean_gap = 1.0 / rate
    if process == "poisson" or cv == 1.0:
        return rng.exponential(mean_gap, size=n)
    shape = 1.0 / (cv * cv)
    return rng.gamma(shape, mean_gap / shape, size=n)


def _check_arrivals(rate: object, process: object, cv: object) -> tuple[float, str, float]:
    if not _is_number(rate) or math.isnan(rate) or rate <= 0:
        raise ValueError(f"rate must be a positive number of requests/s, got {rate!r}")
    if process not in ARRIVAL_PROCESSES:
        raise ValueError(
            f"unknown arrival process {process!r}; valid names: {', '.join(ARRIVAL_PROCESSES)}"
        )
    if not _is_number(cv) or not 0.0 < cv < math.inf:
        raise ValueError(f"cv must be a finite number > 0, got {cv!r}")
    if process == "poisson" and cv != 1.0:
        raise ValueError(f"cv={cv!r} needs process='gamma' (a Poisson process has cv 1)")
    return float(rate), str(process), float(cv)


def arrival_times(
    n: int,
    rate: float,
    *,
    process: str = "poisson",
    cv: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """`n` non-decreasing arrival times in seconds, at `rate` requests per second.

    ``process="poisson"``: exponential gaps. ``process="gamma"``: gamma gaps with
    coefficient of variation `cv` (``cv=1`` draws exactly the Poisson numbers).
    ``rate=math.inf``: all zeros. Drawn from ``np.random.default_rng(seed)``.
    """
    n = require_int("n", n)
    rate, process, cv = _check_arrivals(rate, process, cv)
    seed = require_int("seed", seed)
    return np.cumsum(_gaps(n, rate, process, cv, np.random.default_rng(seed)))


def _generate(
    model: LengthModel,
    num_requests: int,
    rate: float,
    *,
    seed: int,
    process: str,
    cv: float,
    max_len: int | None,
) -> Workload:
    num_requests = require_int("num_requests", num_requests)
    rate, process, cv = _check_arrivals(rate, process, cv)
    seed = require_int("seed", seed)
    max_len = _check_max_len(max_len)
    times = np.cumsum(_gaps(num_requests, rate, process, cv, np.random.default_rng(seed)))
    length_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    prompts, outputs = model.sample(num_requests, length_rng, max_len=max_len)
    mu_p, mu_o = _log_means(model, max_len)
    metadata = {
        "source": "synthetic",
        "length_model": model.name,
        "length_distribution": (
            "lognormal, rounded to tokens; prompt clipped to [1, max_len - 1], "
            "output to [1, max_len - prompt]"
        ),
        "calibrated_to": model.source,
        "prompt_mean_target": model.prompt_mean,
        "prompt_sigma": model.prompt_sigma,
        "prompt_mu": mu_p,
        "output_mean_target": model.output_mean,
        "output_sigma": model.output_sigma,
        "output_mu": mu_o,
        "max_len": max_len,
        "rate": rate,
        "process": process,
        "cv": cv,
        "seed": seed,
    }
    return Workload.from_arrays(model.name, times, prompts, outputs, metadata)


def sharegpt_like(
    num_requests: int,
    rate: float,
    *,
    seed: int = 0,
    process: str = "poisson",
    cv: float = 1.0,
    max_len: int | None = DEFAULT_MAX_LEN,
) -> Workload:
    """`num_requests` ShareGPT-like requests (`SHAREGPT_LIKE` lengths) arriving at `rate`/s.

    See the module docstring for the length model, arrival processes and seeding.
    """
    return _generate(SHAREGPT_LIKE, num_requests, rate, seed=seed, process=process, cv=cv,
                     max_len=max_len)


def alpaca_like(
    num_requests: int,
    rate: float,
    *,
    seed: int = 0,
    process: str = "poisson",
    cv: float = 1.0,
    max_len: int | None = DEFAULT_MAX_LEN,
) -> Workload:
    """`num_requests` Alpaca-like requests (`ALPACA_LIKE` lengths) arriving at `rate`/s.

    See the module docstring for the length model, arrival processes and seeding.
    """
    return _generate(ALPACA_LIKE, num_requests, rate, seed=seed, process=process, cv=cv,
                     max_len=max_len)


def synthetic_workload(
    name: str | LengthModel,
    num_requests: int,
    rate: float,
    *,
    seed: int = 0,
    process: str = "poisson",
    cv: float = 1.0,
    max_len: int | None = DEFAULT_MAX_LEN,
) -> Workload:
    """The synthetic workload called `name` (a key of `SYNTHETIC_WORKLOADS`), or drawn
    from a `LengthModel` given instead of a name."""
    if isinstance(name, LengthModel):
        return _generate(name, num_requests, rate, seed=seed, process=process, cv=cv,
                         max_len=max_len)
    try:
        model = SYNTHETIC_WORKLOADS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown synthetic workload {name!r}; valid names: "
            f"{', '.join(SYNTHETIC_WORKLOADS)}"
        ) from None
    return _generate(model, num_requests, rate, seed=seed, process=process, cv=cv,
                     max_len=max_len)


#: Sentence lengths of the shared-prefix translation workload (vLLM paper §6.4: WMT16
#: English-to-German with LLaMA-13B). The paper gives only the prefixes (80 tokens, one
#: example; 341 tokens, five examples); the sentence and translation lengths are a
#: modelling choice: means of 30 and 40 tokens (a news sentence of about 23 words in
#: English, German taking more LLaMA tokens per word), log-space sigma 0.5.
TRANSLATION_SENTENCES = LengthModel(
    name="translation",
    prompt_mean=30.0,
    prompt_sigma=0.5,
    output_mean=40.0,
    output_sigma=0.5,
    source="modelling choice (WMT16 En-De sentence lengths, not published by the paper)",
)

#: Prefix lengths of the paper's §6.4 / Fig. 16: one-shot and five-shot prompts.
SHARED_PREFIX_LENGTHS = (80, 341)

#: Tokens per key of `shared_prefix_workload`'s block keys.
PREFIX_KEY_BLOCK_SIZE = 16


def shared_prefix_workload(
    num_requests: int,
    rate: float,
    *,
    prefix_len: int,
    seed: int = 0,
    max_len: int | None = DEFAULT_MAX_LEN,
) -> Workload:
    """Translation requests whose prompts start with one shared `prefix_len`-token prefix.

    Each prompt is the prefix followed by a sentence, each output its translation, both
    drawn from `TRANSLATION_SENTENCES`; arrivals are Poisson at `rate`. Requests carry
    prefix-chained `block_keys` over blocks of `PREFIX_KEY_BLOCK_SIZE` tokens: the
    prefix's full blocks have the same keys in every request (so a prefix cache shares
    them), every other block a key of its own.
    """
    prefix_len = require_int("prefix_len", prefix_len, 1)
    max_len = _check_max_len(max_len)
    if max_len is not None and max_len - prefix_len < 2:
        raise ValueError(f"prefix_len {prefix_len} leaves no room within max_len {max_len}")
    # sentence + translation within what the prefix leaves of the context
    base = _generate(TRANSLATION_SENTENCES, num_requests, rate, seed=seed,
                     process="poisson", cv=1.0,
                     max_len=None if max_len is None else max_len - prefix_len)
    size = PREFIX_KEY_BLOCK_SIZE
    shared = prefix_len // size
    requests = []
    for r in base:
        prompt = prefix_len + r.prompt_len
        output = r.output_len
        blocks = cdiv(prompt, size)
        keys = tuple(range(1, shared + 1)) + tuple(
            (r.request_id + 1) << 20 | j for j in range(shared, blocks))
        requests.append(Request(r.request_id, r.arrival_time, prompt, output, keys, size))
    metadata = {**base.metadata, "prefix_len": prefix_len, "key_block_size": size,
                "source": "synthetic shared-prefix translation (vLLM paper §6.4 setting)"}
    return Workload(f"shared-prefix-{prefix_len}", requests, metadata)
