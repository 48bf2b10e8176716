"""Paged waste against block size, one line per workload."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from paged_kv.plots._style import curve_style, new_axes


def plot_block_size(frame: pd.DataFrame, ax=None, title: str = "") -> plt.Figure:
    """Paged waste (all but token states) against block size, one line per workload.

    `title` should state the setup (model, memory, requests)."""
    fig, ax = new_axes(ax)
    for i, (name, rows) in enumerate(frame.groupby("workload", sort=False)):
        ax.plot(rows["block_size"], rows["waste_pct"], label=name, **curve_style(i))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("block size (tokens)")
    ax.set_ylabel("waste: reservation + fragmentation (%)")
    ax.set_title(title or "Paged KV waste against block size", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig
