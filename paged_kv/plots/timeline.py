"""Memory categories over the steps of one run."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from paged_kv.plots._style import COLORS, LABELS, new_axes
from paged_kv.sim.accounting import CATEGORIES


def plot_timeline(steps: pd.DataFrame, ax=None, title: str = "") -> plt.Figure:
    """Stacked memory categories over the steps of one run (in token slots)."""
    fig, ax = new_axes(ax, size=(8, 3.5))
    ax.stackplot(steps["step"], *[steps[c] for c in CATEGORIES],
                 colors=[COLORS[c] for c in CATEGORIES], labels=[LABELS[c] for c in CATEGORIES],
                 linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel("token slots")
    ax.set_xlim(steps["step"].min(), steps["step"].max())
    ax.set_title(title or "Memory categories over one run")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return fig
