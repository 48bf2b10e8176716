"""``paged-kv tiers``: tiered prefix caching, hit rate by tier and time to first token."""

from __future__ import annotations

import argparse

import pandas as pd

from paged_kv.cli import add_command
from paged_kv.cli._common import (
    add_output_options,
    choice_list,
    emit,
    emit_table,
    positive_int,
    positive_number,
    progress_enabled,
    seed,
    write_figure,
)

NAME = "tiers"
HELP = "tiered prefix cache: hit rate by tier and TTFT against host capacity"
DESCRIPTION = """\
Replay two workloads through a GPU prefix cache with a host tier (and a disk tier)
below it, at every host capacity, placement policy (write_through, write_back,
selective) and tier eviction policy (lru, arc), and report the hit rate served by each
tier and the time to first token (mean, p50, p99), the load serial or layer by layer,
against recomputing every prompt, with the prefill tokens saved.

sharegpt-sessions: ShareGPT-style conversations returning after a think time, in
CachedAttention's setting (LLaMA-13B, A100-80GB over PCIe Gen4, 128 GB DRAM + 10 TB
SSD, ~9K conversations at 1 per second) beside its published hit rate, TTFT reduction
and prefill throughput. mooncake-conversation: the Mooncake trace, the host tier sized
in tokens beside FAST'25 Fig. 9. Then, for every model and GPU preset, the shortest
cached prefix worth loading rather than recomputing.

Which settings are the papers' and which are chosen is printed with the results
(paged_kv.studies.tiers.SETTING_STATUS). The figure is written only where --figure
says."""
WORKLOADS = ("sharegpt-sessions", "mooncake-conversation")
PLACEMENTS = ("write_through", "write_back", "selective")
TIER_POLICIES = ("lru", "arc")

#: the sweep's table (name -> header)
SWEEP_COLUMNS = {
    "workload": "workload", "placement": "placement", "tier_policy": "tiers",
    "host_gb": "host GB", "disk_gb": "disk GB", "hit_rate": "hit|{:.3f}",
    "gpu_hit_rate": "GPU|{:.3f}", "host_hit_rate": "host|{:.3f}",
    "disk_hit_rate": "disk|{:.3f}", "ttft_mean_s_serial": "TTFT mean, serial (s)|{:.3f}",
    "ttft_mean_s_layerwise": "mean, layerwise|{:.3f}",
    "ttft_p50_s_layerwise": "p50, layerwise|{:.3f}",
    "ttft_p99_s_layerwise": "p99, layerwise|{:.3f}",
    "recompute_mean_s": "mean, recompute|{:.3f}",
    "recompute_p99_s": "p99, recompute|{:.3f}",
    "prefill_saved_share": "prefill saved|{:.3f}",
}
CACHEDATTENTION_COLUMNS = {
    "placement": "placement", "tier_policy": "tiers", "hit_rate": "hit rate|{:.3f}",
    "paper_hit_rate": "paper|{:.2f}", "ttft_reduction_pct": "TTFT reduction %",
    "paper_ttft_reduction_pct": "paper %|{:.0f}",
    "prefill_throughput_x": "prefill throughput x|{:.2f}",
    "paper_prefill_throughput_x": "paper x|{:.1f}",
}
MOONCAKE_COLUMNS = {
    "placement": "placement", "tier_policy": "tiers", "host_tokens": "host tokens",
    "hit_rate": "hit rate|{:.3f}", "gpu_hit_rate": "GPU|{:.3f}",
    "host_hit_rate": "host|{:.3f}", "paper_hit_rate": "Fig. 9 (one tier)|{:.3f}",
}


def register(subparsers) -> None:
    """Add ``tiers`` and its options."""
    parser = add_command(subparsers, __name__, NAME, HELP, DESCRIPTION)
    parser.add_argument("--workloads", type=choice_list(WORKLOADS), default=list(WORKLOADS),
                        help="comma-separated workloads")
    parser.add_argument("--sessions", type=positive_int, default=None,
                        help="conversations of sharegpt-sessions (default: CachedAttention's "
                             "9,000)")
    parser.add_argument("--head", type=positive_int, default=None,
                        help="replay the first N requests of the Mooncake trace (default: "
                             "all 12,031)")
    parser.add_argument("--placements", type=choice_list(PLACEMENTS), default=list(PLACEMENTS),
                        help="comma-separated placement policies")
    parser.add_argument("--tier-policies", type=choice_list(TIER_POLICIES),
                        default=list(TIER_POLICIES),
                        help="comma-separated eviction policies of the host and disk tiers")
    parser.add_argument("--disk-bandwidth", type=positive_number, default=6.5,
                        metavar="GB/S",
                        help="disk read bandwidth (default: a Gen4 NVMe SSD's datasheet "
                             "6.5 GB/s)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the conversations")
    add_output_options(parser, figure=True,
                       tables=("cachedattention", "mooncake", "break_even"))


def run(args: argparse.Namespace) -> int:
    """Run the study, print its tables beside the papers', write the figure if asked."""
    from paged_kv.sim import published  # noqa: PLC0415
    from paged_kv.studies.tiers import SETTING_STATUS, SETTINGS, tier_study  # noqa: PLC0415

    study = tier_study(args.workloads, sessions=args.sessions, head=args.head,
                       placements=args.placements, tier_policies=args.tier_policies,
                       disk_bandwidth=args.disk_bandwidth * 1e9, seed=args.seed,
                       progress=progress_enabled(args))
    for name, frame in study.sweeps.items():
        setting = SETTINGS[name]
        print(f"{name}: {frame.attrs['requests']:,} requests ({setting.warmup:.0%} warm-up), "
              f"{setting.block_size}-token blocks; {setting.model} on {setting.gpu}: "
              f"{frame.attrs['gpu_blocks']:,} GPU blocks "
              f"({frame.attrs['gpu_blocks'] * setting.block_size:,} tokens)")
    print("\nSettings: " + "; ".join(f"{k}: {v}" for k, v in SETTING_STATUS.items()) + "\n")
    sweeps = pd.concat(study.sweeps.values(), ignore_index=True)
    sweeps["host_gb"] = sweeps["host_bytes"] / 1e9
    sweeps["disk_gb"] = sweeps["disk_bytes"] / 1e9
    print("Hit rate by tier and time to first token (one request at a time, no queueing):\n")
    emit(sweeps, args, columns=SWEEP_COLUMNS, floatfmt="{:g}")
    if study.cachedattention is not None:
        print("\nCachedAttention (ATC'24) LLaMA-13B: hit rate (Fig. 13), TTFT reduction "
              "(Fig. 14) and prefill throughput (Fig. 15), second-hand, beside ours at 128 GB "
              "host + 10 TB disk, layer-wise loading. Its TTFT includes queueing under load; "
              "ours is a request served alone:\n")
        emit_table(study.cachedattention, args, "cachedattention",
                   columns=CACHEDATTENTION_COLUMNS)
    if study.mooncake is not None:
        print("\nMooncake FAST'25 Fig. 9 (conversation; one cache of that many tokens) beside "
              "our host tier of that many tokens below the GPU:\n")
        emit_table(study.mooncake, args, "mooncake", columns=MOONCAKE_COLUMNS)
    attrs = study.break_even.attrs
    print(f"\nShortest cached prefix (tokens) worth loading rather than recomputing, "
          f"{attrs['block_size']}-token blocks, disk at {args.disk_bandwidth:g} GB/s "
          f"('-': none up to {attrs['max_tokens']:,}):\n")
    table = study.break_even
    emit_table(table.astype(object).where(table.notna(), None), args, "break_even")
    if args.figure is not None:
        from paged_kv.plots import plot_tier_study  # noqa: PLC0415

        sessions = study.sweeps.get("sharegpt-sessions")
        mooncake = study.sweeps.get("mooncake-conversation")
        placement = "write_through" if "write_through" in args.placements else args.placements[0]
        fig = plot_tier_study(
            sessions, mooncake, placement=placement, tier_policy=args.tier_policies[0],
            sessions_reference={128 * 10**9: published.CACHEDATTENTION_RESULTS[
                "llama-13b"]["hit_rate"]},
            mooncake_reference=dict(published.MOONCAKE_FIG9_CURVES["mooncake-conversation"]))
        write_figure(fig, args)
    return 0
