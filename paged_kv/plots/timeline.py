"""Memory categories over the time of one run."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from paged_kv.plots._style import COLORS, LABELS, new_axes
from paged_kv.sim.accounting import CATEGORIES


def _binned(steps: pd.DataFrame, x: str, max_points: int) -> pd.DataFrame:
    """`steps` averaged over at most `max_points` equal spans of column `x` (a run of
    70k steps would otherwise draw a band of step-to-step noise)."""
    if len(steps) <= max_points:
        return steps
    edges = np.linspace(steps[x].min(), steps[x].max(), max_points + 1)
    span = np.clip(np.searchsorted(edges, steps[x], side="right") - 1, 0, max_points - 1)
    return steps[[x, *CATEGORIES]].groupby(span).mean()


def plot_timeline(steps: pd.DataFrame, ax=None, title: str = "",
                  max_points: int = 1500) -> plt.Figure:
    """Stacked memory categories over one run (in token slots), against time.

    `steps` is `SimResult.steps`; the x axis is its ``time_s`` column (seconds of
    simulated time; ``step`` when there is none). Runs longer than `max_points` steps
    are averaged over `max_points` equal spans of time. A category that is zero
    throughout gets neither a band nor a legend entry.
    """
    x = "time_s" if "time_s" in steps else "step"
    drawn = _binned(steps, x, max_points)
    shown = [c for c in CATEGORIES if (steps[c] != 0).any()]
    fig, ax = new_axes(ax, size=(8, 3.5))
    ax.stackplot(drawn[x], *[drawn[c] for c in shown], colors=[COLORS[c] for c in shown],
                 labels=[LABELS[c] for c in shown], linewidth=0)
    ax.set_xlabel("time (s)" if x == "time_s" else "step")
    ax.set_ylabel("token slots")
    ax.set_xlim(steps[x].min(), steps[x].max())
    ax.set_ylim(0, None)
    ax.set_title(title or "Memory categories over one run", fontsize=10, wrap=True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return fig
