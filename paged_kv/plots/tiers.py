"""Tiered prefix caching: hit rate by tier against host capacity, and time to first token.

`plot_tier_hit_rates` draws the figure readers of CachedAttention and Mooncake expect: the
token hit rate as stacked bars, the part the GPU served at the bottom, then the host
tier's, then the disk tier's, against the host tier's capacity (or any other column),
with published values as markers. `plot_ttft` draws the time to first token against the
same axis, per load mode, beside recomputing every prompt. `plot_tier_sweep` lays out
one `plot_tier_hit_rates` panel per setting of a `paged_kv.sim.replay_sweep.sweep`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import FormatStrFormatter, LogLocator

from paged_kv.plots._style import curve_style, new_axes

#: colour of each tier's share of the hit rate
TIER_COLORS = {"gpu": "#2b8a3e", "host": "#1971c2", "disk": "#f08c00"}
_TIER_LABELS = {"gpu": "GPU", "host": "host tier", "disk": "disk tier"}


def _tick_labels(values, formatter: Callable[[object], str] | None) -> list[str]:
    return [formatter(v) if formatter else str(v) for v in values]


def plot_tier_hit_rates(
    frame: pd.DataFrame,
    *,
    x: str = "host_capacity",
    ax=None,
    title: str = "",
    xlabel: str | None = None,
    format_x: Callable[[object], str] | None = None,
    reference: Mapping[object, float] | None = None,
    reference_label: str = "published",
) -> plt.Figure:
    """Stacked bars of the hit rate served by the GPU, the host and the disk tier (%),
    one bar per row of `frame` in order, labelled by column `x` (`format_x` formats a
    value). `frame` holds one setting (rows differ in `x` only) with the columns
    ``gpu_hit_rate``, ``host_hit_rate`` and ``disk_hit_rate``. `reference` maps values
    of `x` to published hit rates (fractions), drawn as markers."""
    fig, ax = new_axes(ax)
    positions = range(len(frame))
    bottom = [0.0] * len(frame)
    for tier in ("gpu", "host", "disk"):
        values = [100 * v for v in frame[f"{tier}_hit_rate"]]
        if not any(values) and tier != "gpu":
            continue
        ax.bar(positions, values, bottom=bottom, color=TIER_COLORS[tier], width=0.7,
               label=f"served by the {_TIER_LABELS[tier]}" if tier != "gpu"
               else "served by the GPU")
        bottom = [b + v for b, v in zip(bottom, values)]
    if reference:
        points = [(i, 100 * reference[v]) for i, v in enumerate(frame[x]) if v in reference]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], "k*", markersize=10,
                    label=reference_label, linestyle="none")
    ax.set_xticks(list(positions), _tick_labels(frame[x], format_x))
    ax.set_xlabel(xlabel or x.replace("_", " "))
    ax.set_ylabel("token hit rate (%)")
    top = max([*bottom, *(100 * v for v in (reference or {}).values())], default=0.0)
    ax.set_ylim(0, max(5.0, 1.45 * top))  # room for the legend above the bars
    ax.set_title(title or "Hit rate by tier")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def plot_ttft(
    frame: pd.DataFrame,
    *,
    x: str = "host_capacity",
    modes: tuple[str, ...] = ("serial", "layerwise"),
    ax=None,
    title: str = "",
    xlabel: str | None = None,
    format_x: Callable[[object], str] | None = None,
) -> plt.Figure:
    """Mean and p99 time to first token (s) of each load mode against column `x`, and
    recomputing every prompt (the ``recompute_*`` columns), for a `frame` of one setting
    with the ``ttft_mean_s_<mode>`` / ``ttft_p99_s_<mode>`` columns of
    `paged_kv.studies.tiers.tier_sweep`."""
    fig, ax = new_axes(ax)
    positions = list(range(len(frame)))
    for i, mode in enumerate(modes):
        style = curve_style(i)
        ax.plot(positions, frame[f"ttft_mean_s_{mode}"], label=f"mean, {mode} load", **style)
        ax.plot(positions, frame[f"ttft_p99_s_{mode}"], label=f"p99, {mode} load",
                **{**style, "linestyle": ":"})
    ax.axhline(frame["recompute_mean_s"].iloc[0], color="grey", linestyle="-", linewidth=1,
               label="mean, recompute every prompt")
    ax.axhline(frame["recompute_p99_s"].iloc[0], color="grey", linestyle=":", linewidth=1,
               label="p99, recompute every prompt")
    ax.set_yscale("log")
    # seconds as plain decimals (0.3, 2), not powers of ten, on the major and minor ticks
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 3.0, 5.0)))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.set_xticks(positions, _tick_labels(frame[x], format_x))
    ax.set_xlabel(xlabel or x.replace("_", " "))
    ax.set_ylabel("time to first token (s)")
    ax.set_title(title or "Time to first token")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def plot_tier_sweep(sweep: pd.DataFrame, title: str = "") -> plt.Figure:
    """One `plot_tier_hit_rates` panel per (policy, placement, GPU capacity, disk
    capacity) of a `paged_kv.sim.replay_sweep.sweep` frame, bars by host capacity."""
    keys = ["policy", "placement", "capacity", "disk_capacity"]
    groups = list(sweep.groupby(keys, sort=False, dropna=False))
    columns = min(3, len(groups))
    rows = math.ceil(len(groups) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.6 * rows),
                             squeeze=False, sharey=True)
    for ax, ((policy, placement, capacity, disk), frame) in zip(axes.flat, groups):
        gpu = "unbounded" if pd.isna(capacity) else f"{int(capacity):,}"
        plot_tier_hit_rates(frame, x="host_capacity", ax=ax, xlabel="host tier (blocks)",
                            format_x=lambda v: f"{int(v):,}",
                            title=f"{policy}, {placement}\nGPU {gpu}, disk {int(disk):,}")
    top = max(ax.get_ylim()[1] for ax in list(axes.flat)[:len(groups)])
    for ax in list(axes.flat)[:len(groups)]:
        ax.set_ylim(0, top)  # shared: the tallest panel's
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_placements(frame: pd.DataFrame, *, x: str = "host_bytes", ax=None, title: str = "",
                    xlabel: str | None = None,
                    format_x: Callable[[object], str] | None = None) -> plt.Figure:
    """Total hit rate (%) against column `x`, one line per (placement, tier policy) of a
    `paged_kv.studies.tiers.tier_sweep` frame (of one disk capacity)."""
    fig, ax = new_axes(ax)
    values = sorted(frame[x].unique())
    for i, ((placement, policy), rows) in enumerate(
            frame.groupby(["placement", "tier_policy"], sort=False)):
        rows = rows.set_index(x).reindex(values)
        ax.plot(range(len(values)), 100 * rows["hit_rate"], label=f"{placement}, {policy}",
                **curve_style(i))
    ax.set_xticks(range(len(values)), _tick_labels(values, format_x))
    ax.set_xlabel(xlabel or x.replace("_", " "))
    ax.set_ylabel("token hit rate (%)")
    ax.set_title(title or "Hit rate by placement and tier policy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def _gb(value: object) -> str:
    gigabytes = int(value) / 1e9
    return f"{gigabytes / 1000:g} TB" if gigabytes >= 1000 else f"{gigabytes:g}"


def _mtokens(value: object) -> str:
    return f"{int(value) / 1e6:g}M"


def plot_tier_study(sessions: pd.DataFrame | None, mooncake: pd.DataFrame | None, *,
                    placement: str = "write_through", tier_policy: str = "lru",
                    sessions_reference: Mapping[int, float] | None = None,
                    mooncake_reference: Mapping[int, float] | None = None,
                    title: str = "") -> plt.Figure:
    """The study's figure: hit rate by tier against the host tier's capacity.

    Panels (each `plot_tier_hit_rates`, for `placement` and `tier_policy`): the sessions
    workload without and with its largest disk tier (host capacity in GB), the Mooncake
    trace (host capacity in tokens), with published values as markers
    (`sessions_reference`: host bytes -> hit rate, drawn on the disk panel;
    `mooncake_reference`: tokens -> hit rate); and the sessions' total hit rate for
    every placement and tier policy (`plot_placements`, no disk).
    """
    panels = []
    if sessions is not None:
        chosen = sessions[(sessions["placement"] == placement)
                          & (sessions["tier_policy"] == tier_policy)]
        disks = sorted(chosen["disk_bytes"].unique())
        panels.append(("sessions", chosen[chosen["disk_bytes"] == disks[0]], None,
                       "ShareGPT-style sessions, no disk tier"))
        if len(disks) > 1:
            panels.append(("sessions", chosen[chosen["disk_bytes"] == disks[-1]],
                           sessions_reference,
                           f"ShareGPT-style sessions, {_gb(disks[-1])} disk tier"))
    if mooncake is not None:
        chosen = mooncake[(mooncake["placement"] == placement)
                          & (mooncake["tier_policy"] == tier_policy)]
        panels.append(("mooncake", chosen, mooncake_reference, "Mooncake conversation trace"))
    if sessions is not None:
        panels.append(("placements", sessions[sessions["disk_bytes"] == 0], None,
                       "ShareGPT-style sessions, no disk: every placement"))
    columns = min(2, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(7 * columns, 4.4 * rows), squeeze=False)
    for ax, (kind, frame, reference, name) in zip(axes.flat, panels):
        if kind == "placements":
            plot_placements(frame, ax=ax, title=name, xlabel="host tier (GB)", format_x=_gb)
        elif kind == "sessions":
            plot_tier_hit_rates(frame, x="host_bytes", ax=ax, title=name,
                                xlabel="host tier (GB)", format_x=_gb, reference=reference,
                                reference_label="CachedAttention, LLaMA-13B (Fig. 13)")
        else:
            plot_tier_hit_rates(frame, x="host_tokens", ax=ax, title=name,
                                xlabel="host tier (tokens)", format_x=_mtokens,
                                reference=reference,
                                reference_label="Mooncake FAST'25 Fig. 9 (one tier)")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title or f"Hit rate by tier against host capacity ({placement}, "
                          f"{tier_policy} tiers)")
    fig.tight_layout()
    return fig


__all__ = ["TIER_COLORS", "plot_placements", "plot_tier_hit_rates", "plot_tier_study",
           "plot_tier_sweep", "plot_ttft"]
