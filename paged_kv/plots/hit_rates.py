"""Prefix-cache hit rate against capacity, one line per eviction policy."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from paged_kv.plots._style import curve_style, new_axes


def plot_hit_rates(sweep: pd.DataFrame, ax=None, title: str = "") -> plt.Figure:
    """Prefix-cache hit rate against capacity, one line per policy.

    `sweep` is `paged_kv.sim.replay_sweep.sweep`'s frame; the unbounded run (capacity NA)
    is drawn as a dashed line.
    """
    fig, ax = new_axes(ax)
    bounded = sweep[sweep["capacity"].notna()]
    for i, (policy, rows) in enumerate(bounded.groupby("policy", sort=False)):
        # coinciding policies (ARC, Clock, LRU often do) stay apart by marker and line style
        ax.plot(rows["capacity"], 100 * rows["hit_rate"], label=policy, **curve_style(i))
    unbounded = sweep[sweep["capacity"].isna()]
    if not unbounded.empty:  # every policy agrees when nothing is evicted
        ax.axhline(100 * unbounded["hit_rate"].iloc[0], color="grey", linestyle=":",
                   label="unbounded")
    ax.set_xscale("log")
    ax.set_xlabel("cache capacity (blocks)")
    ax.set_ylabel("token hit rate (%)")
    ax.set_title(title or "Prefix-cache hit rate by eviction policy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig
