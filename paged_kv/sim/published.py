"""Published reference numbers that the project's studies hold themselves against.

Every constant cites its source. Shares of memory are in percent, as the papers print
them (names end in ``_PCT``); hit rates are fractions, as Mooncake's Table 1 prints
them. Mappings are read-only (`types.MappingProxyType`) so no study can change them.
See ``paged_kv/data/README.md`` for the same numbers next to the shipped traces.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

# --- vLLM: Kwon et al., "Efficient Memory Management for Large Language Model Serving
# --- with PagedAttention", SOSP 2023.

#: vLLM paper §6.1 / Fig. 11: mean prompt (input) length of its ShareGPT workload, tokens.
VLLM_SHAREGPT_MEAN_PROMPT_LEN: float = 161.31
#: vLLM paper §6.1 / Fig. 11: mean output length of its ShareGPT workload, tokens.
VLLM_SHAREGPT_MEAN_OUTPUT_LEN: float = 337.99
#: vLLM paper §6.1 / Fig. 11: mean prompt (input) length of its Alpaca workload, tokens.
VLLM_ALPACA_MEAN_PROMPT_LEN: float = 19.31
#: vLLM paper §6.1 / Fig. 11: mean output length of its Alpaca workload, tokens.
VLLM_ALPACA_MEAN_OUTPUT_LEN: float = 58.45

#: vLLM paper Fig. 2: average share (%) of KV-cache memory per use, by system.
#: Categories follow the figure: token states, reservation (slots held for tokens not
#: yet generated), internal fragmentation (slots never used), external fragmentation
#: (memory the allocator cannot hand out). Orca (Oracle) knows each output length, so
#: it has no internal fragmentation (0.0). For vLLM only the token-state share (96.3%)
#: is recorded here. Each Orca row sums to 100% within the figure's rounding.
VLLM_FIG2_KV_USAGE_PCT: Mapping[str, Mapping[str, float]] = MappingProxyType({
    "orca-max": MappingProxyType({
        "token_states": 20.4,
        "reservation": 13.3,
        "internal_fragmentation": 57.3,
        "external_fragmentation": 8.9,
    }),
    "orca-pow2": MappingProxyType({
        "token_states": 26.8,
        "reservation": 17.9,
        "internal_fragmentation": 13.6,
        "external_fragmentation": 41.6,
    }),
    "orca-oracle": MappingProxyType({
        "token_states": 38.2,
        "reservation": 25.2,
        "internal_fragmentation": 0.0,
        "external_fragmentation": 36.6,
    }),
    "vllm": MappingProxyType({
        "token_states": 96.3,
    }),
})

#: vLLM paper Fig. 2: the setting the shares were measured in. 12 GB (GiB) of KV cache
#: at 819,200 bytes per OPT-13B token is about 15.7K token slots.
VLLM_FIG2_SETTING: Mapping[str, object] = MappingProxyType({
    "model": "opt-13b",
    "gpu": "A100-40GB",
    "kv_cache_bytes": 12 * 2**30,
    "bytes_per_token": 819_200,
    "token_slots": (12 * 2**30) // 819_200,  # 15,728
    "max_seq_len": 2048,
    "workload": "sharegpt",
    "mean_prompt_len": VLLM_SHAREGPT_MEAN_PROMPT_LEN,
    "mean_output_len": VLLM_SHAREGPT_MEAN_OUTPUT_LEN,
    "allocator": "buddy",
    "pow2_rounds": "output",
    "rate": 2.0,
    "duration_s": 3600,
    "arrivals": "poisson",
    "shares_of": "whole pool",
})

#: Which of `VLLM_FIG2_SETTING` the paper states and which this project infers, and why.
VLLM_FIG2_SETTING_STATUS: Mapping[str, str] = MappingProxyType({
    "model": "stated: Fig. 2 reports the experiment of §6.2, whose Fig. 13a is OPT-13B",
    "gpu": "stated: Table 1, OPT-13B on one A100 (40 GB)",
    "kv_cache_bytes": "stated: Table 1, 12 GB of KV cache, 15.7K slots",
    "bytes_per_token": "stated: §3, 800 KB per OPT-13B token (2 x 5120 x 40 x 2 bytes)",
    "token_slots": "stated: Table 1, 'Max. # KV cache slots 15.7K'",
    "max_seq_len": "stated: §6.1, Orca (Max) reserves 'up to ... 2048 tokens'",
    "workload": "stated: §6.2 / Fig. 13a, ShareGPT",
    "mean_prompt_len": "stated: §6.1 / Fig. 11, ShareGPT mean input length",
    "mean_output_len": "stated: §6.1 / Fig. 11, ShareGPT mean output length",
    "allocator": "stated: §6.1, 'We assume Orca uses the buddy allocation algorithm'",
    "pow2_rounds": "stated: §6.1, 'if the true output length is 25, it reserves 32 "
                   "positions for outputs'",
    "rate": "inferred: Fig. 2 reports 'the experiment in §6.2'; §6.2's Fig. 13a, the "
            "batch sizes of the same OPT-13B ShareGPT runs, is at 2 req/s",
    "duration_s": "stated: §6.1, 'we evaluate the systems with 1-hour traces'",
    "arrivals": "stated: §6.1, Poisson arrivals",
    "shares_of": "inferred: the Orca bars each sum to 100% and the Max bar's 8.9% "
                 "external fragmentation is (15,728 - 7 x 2,048) / 15,728, so the bars "
                 "are shares of the whole pool, free slots counted in 'External frag. & "
                 "Others'",
})

#: vLLM paper Fig. 13a: average number of batched requests serving OPT-13B on ShareGPT at
#: 2 req/s (caption), by system. Keys are ``(workload, system)``.
VLLM_FIG13_BATCH_SIZE: Mapping[tuple[str, str], float] = MappingProxyType({
    ("sharegpt", "orca-max"): 7.00,
    ("sharegpt", "orca-pow2"): 9.81,
    ("sharegpt", "orca-oracle"): 13.62,
    ("sharegpt", "vllm"): 30.42,
})
#: vLLM paper Fig. 13 caption: the request rates (req/s) its batch sizes were measured at.
VLLM_FIG13_RATE: Mapping[str, float] = MappingProxyType({"sharegpt": 2.0, "alpaca": 30.0})

#: vLLM paper §6.2: on ShareGPT vLLM sustains these multiples (low, high) of each Orca
#: baseline's request rate at similar latency, over OPT-13B, 66B and 175B.
VLLM_SUSTAINED_RATE_RATIO: Mapping[str, tuple[float, float]] = MappingProxyType({
    "orca-oracle": (1.7, 2.7),
    "orca-max": (2.7, 8.0),
})

#: vLLM paper §6.4 / Fig. 16 (LLaMA-13B, WMT16 En-De): vLLM's throughput over Orca
#: (Oracle) with a shared prefix of 80 tokens (one example) and 341 tokens (five).
VLLM_SHARED_PREFIX_SPEEDUP: Mapping[int, float] = MappingProxyType({80: 1.67, 341: 3.58})

#: vLLM paper §7.1 / Fig. 18a: PagedAttention's kernel latency above FasterTransformer's
#: contiguous attention kernel, percent (low, high).
VLLM_FIG18A_KERNEL_OVERHEAD_PCT: tuple[float, float] = (20.0, 26.0)

#: vLLM paper Fig. 15 (OPT-13B): memory saved by sharing, in percent, as the
#: (low, high) range over n (parallel sampling) or beam width 2, 4 and 6.
#: Keys are ``(workload, decoding)``.
VLLM_FIG15_MEMORY_SAVED_PCT: Mapping[tuple[str, str], tuple[float, float]] = MappingProxyType({
    ("alpaca", "parallel_sampling"): (6.1, 9.8),
    ("alpaca", "beam_search"): (37.6, 55.2),
    ("sharegpt", "parallel_sampling"): (16.2, 30.5),
    ("sharegpt", "beam_search"): (44.3, 66.3),
})

#: vLLM paper §7.2: block sizes (inclusive range, tokens) that serve each workload best.
#: ShareGPT: 16 to 128; Alpaca: 16 and 32 (larger blocks waste memory on short sequences).
VLLM_BEST_BLOCK_SIZES: Mapping[str, tuple[int, int]] = MappingProxyType({
    "sharegpt": (16, 128),
    "alpaca": (16, 32),
})

# --- Mooncake: Qin et al., "Mooncake: Trading More Storage for Less Computation",
# --- FAST 2025 (Table 2), and its arXiv report (Table 1).

#: Mooncake FAST'25 Table 2: average input length (tokens) of the shipped traces.
MOONCAKE_AVG_INPUT_LEN: Mapping[str, int] = MappingProxyType({
    "mooncake-conversation": 12_035,
    "mooncake-synthetic": 15_325,
})
#: Mooncake FAST'25 Table 2: average output length (tokens) of the shipped traces.
MOONCAKE_AVG_OUTPUT_LEN: Mapping[str, int] = MappingProxyType({
    "mooncake-conversation": 343,
    "mooncake-synthetic": 149,
})
#: Mooncake FAST'25 Table 2: "cache ratio" (%) of the shipped traces.
MOONCAKE_CACHE_RATIO_PCT: Mapping[str, float] = MappingProxyType({
    "mooncake-conversation": 40.0,
    "mooncake-synthetic": 66.0,
})



# ======================================================================================
# Mooncake: FAST'25 Fig. 9 and the arXiv report's Table 1 in full (section kept by the
# replay work, paged_kv.sim.replay*; used by notebook 02 and paged_kv.sim.replay_mooncake)
# ======================================================================================

#: Mooncake FAST'25 Fig. 9 ("Quantitative analysis of prefix cache hit rates with
#: varying cache capacities. We consider only the sequence of requests"): hit rate at a
#: cache capacity in *tokens* (None = unbounded), per shipped trace. Values read off the
#: paper's log-scale figure (FAST25-release/Mooncake-FAST25.pdf in kvcache-ai/Mooncake),
#: so about +-0.01; the unbounded value is the plateau, which Table 2 reports as the
#: trace's "cache ratio" (40% and 66%).
MOONCAKE_FIG9_HIT_RATE: Mapping[str, Mapping[int | None, float]] = MappingProxyType({
    "mooncake-conversation": MappingProxyType({
        1_000_000: 0.087, 4_000_000: 0.215, 10_000_000: 0.326, 50_000_000: 0.398,
        None: 0.401,
    }),
    "mooncake-synthetic": MappingProxyType({
        1_000_000: 0.146, 4_000_000: 0.380, 10_000_000: 0.589, 50_000_000: 0.658,
        None: 0.658,
    }),
})

#: Mooncake arXiv report (Qin et al., arXiv:2407.00079, §4.2) Table 1, "Cache hit rates
#: under different cache policies and capacities", all rows and columns: policy -> block
#: capacity (512-token blocks; None = "Inf") -> hit rate, on the report's own
#: 23,608-request trace (arxiv-trace/mooncake_trace.jsonl, not shipped here). The report
#: describes LengthAwareCache only as "similar to LFU but prioritizing cache blocks
#: occurring later in requests" (see paged_kv.core.eviction.length_aware for our reading).
#: Sources: three independent public reading notes of the report, found by a full-text
#: search of public repositories, which agree cell for cell on all three rows. The
#: report's PDF itself could not be opened from here, so the rows are second-hand.
MOONCAKE_TABLE1_HIT_RATE: Mapping[str, Mapping[int | None, float]] = MappingProxyType({
    "lru": MappingProxyType({1_000: 0.30, 10_000: 0.40, 30_000: 0.48, 50_000: 0.50,
                             100_000: 0.51, None: 0.51}),
    "lfu": MappingProxyType({1_000: 0.30, 10_000: 0.35, 30_000: 0.43, 50_000: 0.49,
                             100_000: 0.51, None: 0.51}),
    "length_aware": MappingProxyType({1_000: 0.30, 10_000: 0.35, 30_000: 0.42, 50_000: 0.48,
                                      100_000: 0.50, None: 0.51}),
})

#: Mooncake arXiv report Table 1: prefix-cache block hit rate of LRU by cache capacity
#: in 512-token blocks ("1k" etc. read as 1,000; None = unbounded), the LRU row of
#: `MOONCAKE_TABLE1_HIT_RATE` without its 100k column. LRU is
#: never behind LFU or LengthAware in that table (all three are level at 1k and
#: unbounded).
MOONCAKE_TABLE1_LRU_HIT_RATE: Mapping[int | None, float] = MappingProxyType({
    capacity: rate for capacity, rate in MOONCAKE_TABLE1_HIT_RATE["lru"].items()
    if capacity != 100_000
})

#: Mooncake FAST'25 Fig. 9, all four curves at every vertex of the figure (hit rate at a
#: cache capacity in tokens): Conversation and Synthetic (the shipped traces),
#: Tool&Agent (its trace is not shipped) and All (the three together). Values read from
#: the vector paths of the figure in FAST25-release/Mooncake-FAST25.pdf
#: (kvcache-ai/Mooncake, commit 3cca71dac), the y axis calibrated on its tick labels,
#: about +-0.003; they agree with `MOONCAKE_FIG9_HIT_RATE` within 0.002. The curves
#: plateau from 5e7 tokens on (the trace's "cache ratio" of Table 2).
MOONCAKE_FIG9_CURVES: Mapping[str, Mapping[int, float]] = MappingProxyType({
    name: MappingProxyType(dict(zip(
        (10_000, 100_000, 1_000_000, 2_000_000, 4_000_000, 5_000_000, 8_000_000,
         10_000_000, 50_000_000, 100_000_000, 500_000_000, 1_000_000_000), values)))
    for name, values in (
        ("mooncake-conversation", (0.045, 0.073, 0.086, 0.120, 0.214, 0.247, 0.299, 0.326,
                                   0.398, 0.400, 0.400, 0.400)),
        ("mooncake-toolagent", (0.173, 0.362, 0.386, 0.413, 0.483, 0.505, 0.544, 0.560,
                                0.594, 0.595, 0.595, 0.595)),
        ("mooncake-synthetic", (0.000, 0.011, 0.146, 0.234, 0.380, 0.435, 0.544, 0.588,
                                0.658, 0.658, 0.658, 0.658)),
        ("mooncake-all", (0.095, 0.186, 0.226, 0.242, 0.273, 0.296, 0.352, 0.381, 0.530,
                          0.535, 0.535, 0.535)),
    )
})
#: Mooncake FAST'25 Fig. 9: the dashed line at 3M tokens, one node's local cache
#: (LLaMA3-70B at 320 KB per token in about 1 TB of DRAM, §5.3.1).
MOONCAKE_FIG9_LOCAL_CACHE_TOKENS: int = 3_000_000


# --- CachedAttention (AttentionStore): Gao et al., "Cost-Efficient Large Language Model
# --- Serving for Multi-turn Conversations with CachedAttention", USENIX ATC 2024
# --- (arXiv:2403.19708 v3). Multi-turn KV kept in host DRAM and SSD between turns,
# --- loaded back layer by layer while the new tokens are computed.

#: CachedAttention abstract (USENIX ATC '24 and arXiv v3, read first-hand): the best
#: gains over recomputing the history, across its models. TTFT reduction and cost
#: reduction in percent, prompt-prefill throughput as a multiple. (arXiv v1/v2, titled
#: AttentionStore, print other numbers; they are not used here.)
CACHEDATTENTION_HEADLINE: Mapping[str, float] = MappingProxyType({
    "ttft_reduction_pct": 87.0,
    "prefill_throughput_x": 7.8,
    "cost_reduction_pct": 70.0,
})

#: CachedAttention §4 per model: hit rate (Fig. 13, fraction), TTFT reduction (Fig. 14,
#: percent) and prompt-prefill throughput (Fig. 15, multiple of recomputation). Read
#: second-hand, from a public reading note of the v3 text that cites the figures; the
#: best of each column equals the abstract's first-hand headline (87%, 7.8x). The PDF
#: could not be opened from here.
CACHEDATTENTION_RESULTS: Mapping[str, Mapping[str, float]] = MappingProxyType({
    "llama-13b": MappingProxyType({"hit_rate": 0.86, "ttft_reduction_pct": 85.0,
                                   "prefill_throughput_x": 6.8}),
    "llama-65b": MappingProxyType({"hit_rate": 0.71, "ttft_reduction_pct": 61.0,
                                   "prefill_throughput_x": 2.6}),
    "llama-70b": MappingProxyType({"hit_rate": 0.89, "ttft_reduction_pct": 87.0,
                                   "prefill_throughput_x": 7.8}),
    "falcon-40b": MappingProxyType({"hit_rate": 0.90, "ttft_reduction_pct": 86.0,
                                    "prefill_throughput_x": 7.2}),
})

#: CachedAttention §4.1 testbed, quoted first-hand: "4 NVIDIA A100 GPUs, each with 80GB
#: HBM ... 128GB DRAM and 10TB SSDs. GPUs are connected to the host via PCIe Gen 4."
CACHEDATTENTION_TESTBED: Mapping[str, object] = MappingProxyType({
    "gpu": "A100-80GB",
    "num_gpus": 4,
    "dram_bytes": 128 * 10**9,
    "ssd_bytes": 10 * 10**12,
    "host_link": "PCIe Gen4",
})

#: CachedAttention's ShareGPT workload (§2.3, §4.1; second-hand, from the same reading
#: note): about 9K conversations of 5.75 turns on average (about 52K turns), 73% of
#: them multi-turn, sessions arriving as a Poisson process at 1.0 per second; the first
#: 10K turns warm the store. The paper states no think time between turns.
CACHEDATTENTION_WORKLOAD: Mapping[str, float] = MappingProxyType({
    "conversations": 9_000,
    "mean_turns": 5.75,
    "multi_turn_share": 0.73,
    "session_rate": 1.0,
    "warmup_turns": 10_000,
    "turns": 52_000,
})
