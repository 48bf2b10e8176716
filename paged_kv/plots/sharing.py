"""Memory saved by block sharing (parallel sampling, beam search) beside the paper's ranges."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from paged_kv.plots._style import new_axes

_HATCHES = ("", "..", "//", "xx", "\\\\")


def plot_sharing(frame: pd.DataFrame, ax=None, title: str | None = None) -> plt.Figure:
    """Memory saved by sharing per workload, decoding and width; the paper's ranges shaded.

    `frame` is `sharing_study`'s table; with a ``saved_sd`` column (several seeds) each
    bar carries its standard deviation as an error bar, and with ``paper_low_pct`` /
    ``paper_high_pct`` the paper's range is shaded behind each group (without them, a
    setting the paper did not run, only ours).
    """
    groups = list(frame.groupby(["workload", "sampling"], sort=False))
    # wider with more groups, so that their two-line labels never run into each other
    fig, ax = new_axes(ax, size=(max(8.0, 1.4 * len(groups)), 4))
    widths = sorted(frame["n"].unique())
    bar = 0.8 / len(widths)
    ranged = False  # the paper's range labelled once
    for gi, (_, rows) in enumerate(groups):
        for wi, n in enumerate(widths):
            row = rows[rows["n"] == n]
            if row.empty:
                continue
            error = row["saved_sd"].iloc[0] if "saved_sd" in row else None
            ax.bar(gi - 0.4 + (wi + 0.5) * bar, row["saved_pct"].iloc[0], width=bar,
                   yerr=error, capsize=2, hatch=_HATCHES[wi % len(_HATCHES)],
                   color=plt.cm.viridis(wi / max(1, len(widths) - 1)), edgecolor="white",
                   label=f"n = {n}" if gi == 0 else None)
        if {"paper_low_pct", "paper_high_pct"} <= set(rows) and rows["paper_low_pct"].notna().all():
            low, high = rows["paper_low_pct"].iloc[0], rows["paper_high_pct"].iloc[0]
            ax.fill_between([gi - 0.45, gi + 0.45], low, high, color="black", alpha=0.12,
                            label=None if ranged else "vLLM paper Fig. 15 range")
            ranged = True
    ax.set_xticks(range(len(groups)), [f"{w}\n{s}" for (w, s), _ in groups])
    ax.set_ylabel("memory saved by sharing (%)")
    ax.set_title(title or "Block sharing: parallel sampling and beam search")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig
