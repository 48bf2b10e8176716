"""Attention error of quantized KV against the outlier magnitude of the keys."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from paged_kv.plots._style import curve_style, new_axes


def plot_quantization_error(sweep: pd.DataFrame, ax=None, title: str = "") -> plt.Figure:
    """Relative attention-output error against the key outlier scale, one line per scheme
    (told apart by marker and line style).

    `sweep` is `paged_kv.studies.quant_accuracy.outlier_sweep`'s frame.
    """
    fig, ax = new_axes(ax)
    for i, (scheme, rows) in enumerate(sweep.groupby("scheme", sort=False)):
        ax.plot(rows["outlier_scale"], 100 * rows["attention_error"], label=scheme,
                **curve_style(i))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("magnitude of the keys' outlier channels (x the other channels)")
    ax.set_ylabel("attention error vs float16 KV (%)")
    ax.set_title(title or "Attention error of a quantized KV cache", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig
