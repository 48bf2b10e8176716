"""Normalised latency against request rate (the vLLM paper's Fig. 12), per scheme."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from paged_kv.plots._style import new_axes

#: marker and line style per scheme key, so curves are told apart without colour
SCHEME_STYLES = {
    "max": ("v", ":"),
    "pow2": ("s", "-."),
    "oracle": ("^", "--"),
    "paged": ("o", "-"),
}


def plot_latency(curves: pd.DataFrame, ax=None, *, title: str | None = None,
                 threshold_s: float | None = None, ylim: float = 1.0) -> plt.Figure:
    """Normalised latency (s/token) against rate, one curve per scheme of `curves` (one
    workload's rows of `ThroughputStudy.curves`); the sustain threshold dotted."""
    fig, ax = new_axes(ax, size=(5, 3.6))
    for key, rows in curves.groupby("key", sort=False):
        marker, line = SCHEME_STYLES.get(key, ("x", "-"))
        rows = rows.sort_values("rate")
        ax.plot(rows["rate"], rows["normalized_latency_s"], marker=marker, linestyle=line,
                markersize=4, label=rows["scheme"].iloc[0])
    if threshold_s is not None:
        ax.axhline(threshold_s, color="grey", linestyle=":", linewidth=1,
                   label=f"sustained: <= {threshold_s:g} s/token")
    ax.set_ylim(0, ylim)
    ax.set_xlim(left=0)
    ax.set_xlabel("request rate (req/s)")
    ax.set_ylabel("normalised latency (s/token)")
    ax.set_title(title or "Normalised latency against request rate")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig
