"""Fig. 2: stacked shares of KV memory per scheme, the paper's token share as a mark."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from paged_kv.plots._style import COLORS, LABELS, new_axes
from paged_kv.sim.accounting import CATEGORIES


def plot_fragmentation(table: pd.DataFrame, ax=None, title: str | None = None) -> plt.Figure:
    """Stacked shares of non-free KV memory per scheme; the paper's token share as a mark.

    `table` is `FragmentationStudy.table` (columns ``*_pct`` and
    ``paper_token_states_pct``).
    """
    fig, ax = new_axes(ax)
    x = np.arange(len(table))
    bottom = np.zeros(len(table))
    for cat in CATEGORIES[:-1]:
        values = table[f"{cat}_pct"].to_numpy()
        ax.bar(x, values, bottom=bottom, color=COLORS[cat], label=LABELS[cat], width=0.6)
        bottom += values
    paper = table.get("paper_token_states_pct", pd.Series([np.nan] * len(table)))
    for xi, ours, theirs in zip(x, table["token_states_pct"], paper):
        # the label sits near the top of the green bar, or mid-bar if the mark is there
        y = ours - 5 if not abs(ours - 5 - theirs) < 6 else ours / 2
        ax.text(xi, y, f"{ours:.1f}%", ha="center", va="center", color="white",
                fontsize=9, fontweight="bold")
    if "paper_token_states_pct" in table:
        ax.scatter(x, table["paper_token_states_pct"], marker="D", color="black", zorder=3,
                   label="token states, vLLM paper Fig. 2")
    ax.set_xticks(x, table["scheme"])
    ax.set_ylabel("share of KV memory in use (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title or "Where the KV memory goes")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return fig
