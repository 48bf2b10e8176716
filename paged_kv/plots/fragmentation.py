"""Fig. 2: where the KV memory goes, per scheme, beside the vLLM paper's bars."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from paged_kv.plots._style import COLORS, new_axes

#: Fig. 2's categories (the paper's last one counts free slots too) and their colours
FIG2_BARS = {
    "token_states": ("token states", COLORS["token_states"]),
    "reservation": ("reservation", COLORS["reservation"]),
    "internal_frag": ("internal frag.", COLORS["internal_frag"]),
    "external_and_others": ("external frag. & others (free)", COLORS["external_frag"]),
}


def plot_fragmentation(table: pd.DataFrame, ax=None, title: str | None = None) -> plt.Figure:
    """Stacked shares of the whole KV pool per scheme: ours (left bar of each pair,
    labelled with the token-state share) and the paper's (right, hatched) where it gives
    them; the paper breaks down only the token states of vLLM.

    `table` is `FragmentationStudy.table` (columns ``{category}_pct`` and
    ``paper_{category}_pct`` for the categories of `FIG2_BARS`); without the paper's
    columns (a setting the paper did not run, such as a quantized cache) only ours.
    """
    fig, ax = new_axes(ax, size=(8, 4.2))
    x = np.arange(len(table))
    paper = "paper_token_states_pct" in table
    width = 0.38 if paper else 0.6
    bars = ((-width / 2, "", None), (width / 2, "paper_", "//")) if paper else ((0, "", None),)
    for offset, prefix, hatch in bars:
        bottom = np.zeros(len(table))
        for cat, (label, color) in FIG2_BARS.items():
            column = f"{prefix}{cat}_pct"
            if column not in table:
                continue
            values = table[column].fillna(0.0).to_numpy()
            ax.bar(x + offset, values, bottom=bottom, width=width, color=color,
                   hatch=hatch, edgecolor="white", linewidth=0.5,
                   label=label if not prefix else None)
            bottom += values
        if prefix:  # what the paper leaves unbroken (vLLM beyond its token states)
            rest = np.where(bottom > 0, 100.0 - bottom, 0.0)
            ax.bar(x + offset, rest, bottom=bottom, width=width, color="#ced4da",
                   hatch=hatch, edgecolor="white", linewidth=0.5,
                   label="not broken down by the paper")
    for xi, ours in zip(x, table["token_states_pct"]):
        _share_label(ax, xi + bars[0][0], ours)
    if paper:
        for xi, theirs in zip(x, table["paper_token_states_pct"]):
            _share_label(ax, xi + width / 2, theirs)
    ax.set_xticks(x, [f"{s}\nours | paper" if paper else s for s in table["scheme"]],
                  fontsize=8)
    ax.set_ylabel("share of the KV pool (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title or "Where the KV memory goes (ours | vLLM paper Fig. 2, hatched)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return fig


#: token-state shares (%) below this are labelled above their segment, in dark text:
#: inside a segment that thin the label would sit on the axis line
_INSIDE_MIN_PCT = 6.0


def _share_label(ax, x: float, share: float) -> None:
    """Label a token-state segment of height `share` with its value: centred inside in
    white where it fits, just above it in dark text where it does not."""
    inside = share >= _INSIDE_MIN_PCT
    ax.text(x, share / 2 if inside else share + 1.0, f"{share:.1f}", ha="center",
            va="center" if inside else "bottom", color="white" if inside else "#212529",
            fontsize=8, fontweight="bold")
