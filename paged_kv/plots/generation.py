"""Paged against dense logits per step, and the tokens each prompt-logits mode computed."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

MARKERS = {"recompute": ("o", "-"), "keep": ("s", "--")}
LABELS = {"recompute": "vLLM's rule (recompute last block)", "keep": "logits kept with block"}


def plot_generation(steps: pd.DataFrame, summary: pd.DataFrame, title: str = "") -> plt.Figure:
    """Left: ``max |paged - dense|`` of each row of logits, by step, against the tolerance.
    Right: tokens computed per mode, split into prompt and generated tokens.

    `steps` and `summary` are `paged_kv.model.generation.compare_prompt_logits`'s frames.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4),
                                      gridspec_kw={"width_ratios": [3, 2]})
    compared = steps.dropna(subset=["max_abs_diff"])
    for i, (mode, rows) in enumerate(compared.groupby("prompt_logits", sort=False)):
        marker, line = MARKERS.get(mode, ("^", ":"))
        worst = rows.groupby("step")["max_abs_diff"].max()
        left.plot(worst.index + 0.1 * i, worst.values, marker=marker, linestyle=line,
                  label=LABELS.get(mode, mode))
    tolerance = float(summary["tolerance"].iloc[0])
    left.axhline(tolerance, color="#e03131", linestyle=":", label=f"tolerance {tolerance:g}")
    left.set_yscale("log")
    left.set_xlabel("step (prefill, decode batch, ...)")
    left.set_ylabel("max |paged - dense| logit")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8)

    modes = list(summary["prompt_logits"])
    prompt = summary["prompt_tokens_computed"].to_numpy()
    generated = summary["generated_tokens_computed"].to_numpy()
    right.bar(modes, prompt, color="#1c7ed6", label="prompt tokens computed")
    right.bar(modes, generated, bottom=prompt, color="#adb5bd", hatch="//",
              label="generated tokens computed")
    for x, (p, g) in enumerate(zip(prompt, generated)):
        right.annotate(f"{p + g}", (x, p + g), ha="center", va="bottom", fontsize=9)
    right.set_ylabel("tokens computed")
    right.set_ylim(0, 1.4 * max(prompt + generated))
    right.legend(fontsize=8, loc="upper center", ncol=1)
    first = summary.iloc[0]
    fig.suptitle(title or f"Model {first['model']!r} (random weights) through the paged cache: "
                 f"{first['kv_dtype']} KV, block size {first['block_size']}, attention: "
                 f"{first['attention']}")
    fig.tight_layout()
    return fig
