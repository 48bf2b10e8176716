"""Paged waste against block size, one line per workload."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import pandas as pd

from paged_kv.plots._style import curve_style, new_axes


def plot_block_size(frame: pd.DataFrame, ax=None, title: str = "",
                    best_ranges: Mapping[str, tuple[int, int]] | None = None,
                    range_label: str = "paper's best") -> plt.Figure:
    """Paged waste (all but token states) against block size, one line per workload.

    `title` should state the setup (model, memory, requests). `best_ranges` maps a
    workload to a ``(low, high)`` block-size range (e.g. the vLLM paper's best block
    sizes): each is drawn as a bar in its workload's colour along the top of the plot,
    one row per workload, so ranges that overlap stay readable.
    """
    fig, ax = new_axes(ax)
    colors = {}
    for i, (name, rows) in enumerate(frame.groupby("workload", sort=False)):
        (line,) = ax.plot(rows["block_size"], rows["waste_pct"], label=name, **curve_style(i))
        colors[name] = line.get_color()
    ax.set_xscale("log", base=2)
    ax.set_xlabel("block size (tokens)")
    ax.set_ylabel("waste: reservation + fragmentation (%)")
    ax.set_ylim(bottom=0)
    if best_ranges:
        top = ax.get_ylim()[1]
        ax.set_ylim(top=top * (1.0 + 0.12 * len(best_ranges)))  # room for the bars
        on_x = ax.get_xaxis_transform()  # x in data, y in axes fractions
        for row, (name, (low, high)) in enumerate(best_ranges.items()):
            y = 0.95 - 0.09 * row
            color = colors.get(name, "black")
            ax.plot([low, high], [y, y], color=color, linewidth=5, alpha=0.45,
                    solid_capstyle="butt", transform=on_x)
            ax.text(low / 1.12, y, f"{range_label} for {name}: {low}-{high}", color=color,
                    fontsize=8, ha="right", va="center", transform=on_x)
    ax.set_title(title or "Paged KV waste against block size", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center left")
    return fig
