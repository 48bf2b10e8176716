"""Figures of the studies (matplotlib), shared by the command line and the notebooks.

Each function draws on a given or new Axes and returns the Figure; `save` writes one
into ``figures/``. Colours are fixed per memory category so figures compare at a glance.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from paged_kv.block_map import EVICTABLE, FREE, SHARED, BlockMapRecorder
from paged_kv.sim.accounting import CATEGORIES
from paged_kv.sim.published import VLLM_FIG15_MEMORY_SAVED_PCT

#: colour of each memory category
COLORS = {
    "token_states": "#2b8a3e",
    "reservation": "#f59f00",
    "internal_frag": "#e03131",
    "external_frag": "#7048e8",
    "free": "#dee2e6",
}
LABELS = {
    "token_states": "token states",
    "reservation": "reservation",
    "internal_frag": "internal fragmentation",
    "external_frag": "external fragmentation",
    "free": "free",
}


def _axes(ax, size=(7, 4)):
    if ax is None:
        fig, ax = plt.subplots(figsize=size)
    return ax.figure, ax


def save(fig: plt.Figure, path: str | Path) -> Path:
    """Write `fig` to `path` (PNG, 150 dpi), creating the folder; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


def plot_fragmentation(table: pd.DataFrame, ax=None, title: str | None = None) -> plt.Figure:
    """Stacked shares of non-free KV memory per scheme; the paper's token share as a mark.

    `table` is `FragmentationStudy.table` (columns ``*_pct`` and
    ``paper_token_states_pct``).
    """
    fig, ax = _axes(ax)
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


def plot_block_size(frame: pd.DataFrame, ax=None) -> plt.Figure:
    """Paged waste (all but token states) against block size, one line per workload."""
    fig, ax = _axes(ax)
    for name, rows in frame.groupby("workload", sort=False):
        ax.plot(rows["block_size"], rows["waste_pct"], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("block size (tokens)")
    ax.set_ylabel("waste: reservation + fragmentation (%)")
    ax.set_title("Paged KV waste against block size")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig


def plot_timeline(steps: pd.DataFrame, ax=None, title: str = "") -> plt.Figure:
    """Stacked memory categories over the steps of one run (in token slots)."""
    fig, ax = _axes(ax, size=(8, 3.5))
    ax.stackplot(steps["step"], *[steps[c] for c in CATEGORIES],
                 colors=[COLORS[c] for c in CATEGORIES], labels=[LABELS[c] for c in CATEGORIES],
                 linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel("token slots")
    ax.set_xlim(steps["step"].min(), steps["step"].max())
    ax.set_title(title or "Memory categories over one run")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return fig


def plot_hit_rates(sweep: pd.DataFrame, ax=None, title: str = "") -> plt.Figure:
    """Prefix-cache hit rate against capacity, one line per policy.

    `sweep` is `paged_kv.sim.replay.sweep`'s frame; the unbounded run (capacity None)
    is drawn as a dashed line.
    """
    fig, ax = _axes(ax)
    bounded = sweep[sweep["capacity"].notna()]
    for policy, rows in bounded.groupby("policy", sort=False):
        ax.plot(rows["capacity"], 100 * rows["hit_rate"], marker="o", label=policy,
                linestyle="--" if policy == "belady" else "-")
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


def plot_sharing(frame: pd.DataFrame, ax=None) -> plt.Figure:
    """Memory saved by sharing per workload, decoding and width; the paper's ranges shaded."""
    fig, ax = _axes(ax, size=(8, 4))
    groups = list(frame.groupby(["workload", "sampling"], sort=False))
    widths = sorted(frame["n"].unique())
    bar = 0.8 / len(widths)
    for gi, ((workload, sampling), rows) in enumerate(groups):
        for wi, n in enumerate(widths):
            value = rows.loc[rows["n"] == n, "saved_pct"]
            if not value.empty:
                ax.bar(gi - 0.4 + (wi + 0.5) * bar, value.iloc[0], width=bar,
                       color=plt.cm.viridis(wi / max(1, len(widths) - 1)),
                       label=f"n = {n}" if gi == 0 else None)
        key = (workload.replace("-like", ""),
               "parallel_sampling" if sampling == "parallel" else "beam_search")
        if key in VLLM_FIG15_MEMORY_SAVED_PCT:
            low, high = VLLM_FIG15_MEMORY_SAVED_PCT[key]
            ax.fill_between([gi - 0.45, gi + 0.45], low, high, color="black", alpha=0.12,
                            label="vLLM paper Fig. 15 range" if gi == 0 else None)
    ax.set_xticks(range(len(groups)), [f"{w}\n{s}" for (w, s), _ in groups])
    ax.set_ylabel("memory saved by sharing (%)")
    ax.set_title("Block sharing: parallel sampling and beam search")
    ax.legend(fontsize=8)
    return fig


# --- block maps (paged_kv.block_map) -----------------------------------------------------

#: colours of the block-map states that are not an owner
BLOCK_MAP_COLORS = {
    "shared": "#212529",
    "unfilled": "#ff8787",
    "evictable": "#868e96",
    "free": "#f8f9fa",
}
# tab20 without its reds, pinks and greys, so owners never look like a state
_OWNER_COLORS = [plt.cm.tab20(i) for i in (0, 2, 4, 8, 10, 16, 18, 1, 3, 5, 9, 11, 17, 19)]


def plot_block_map(recorder: BlockMapRecorder, ax=None, title: str = "") -> plt.Figure:
    """The GPU pool over time: one column per snapshot, one row per token slot.

    `recorder` is a `paged_kv.block_map.BlockMapRecorder` (or anything with ``states``
    and ``fill`` arrays of shape ``[snapshot, block]`` and a ``block_size``). A slot that
    holds a token takes its owner's colour (black when several owners share the block);
    a slot of a held block with no token yet is internal fragmentation; evictable cached
    blocks are grey and free blocks blank.
    """
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Patch

    states = np.asarray(recorder.states)
    fill = np.asarray(recorder.fill)
    bs = int(recorder.block_size)
    num_snaps, num_blocks = states.shape
    rgb = {k: np.array(to_rgb(c)) for k, c in BLOCK_MAP_COLORS.items()}
    owners = np.array([to_rgb(c) for c in _OWNER_COLORS])
    block_rgb = np.empty((num_snaps, num_blocks, 3))
    block_rgb[:] = rgb["free"]
    held = states >= 0
    block_rgb[held] = owners[states[held] % len(owners)]
    block_rgb[states == SHARED] = rgb["shared"]
    block_rgb[states == EVICTABLE] = rgb["evictable"]
    block_rgb[states == FREE] = rgb["free"]
    # expand each block into its slots: slot o of a held block is filled when o < fill
    offset = np.arange(bs)[None, None, :]
    image = np.repeat(block_rgb[:, :, None, :], bs, axis=2)
    unfilled = ((states >= 0) | (states == SHARED))[:, :, None] & (offset >= fill[:, :, None])
    image[unfilled] = rgb["unfilled"]
    image = image.reshape(num_snaps, num_blocks * bs, 3).transpose(1, 0, 2)

    fig, ax = _axes(ax, size=(9, 5))
    ax.imshow(image, aspect="auto", interpolation="nearest",
              extent=(-0.5, num_snaps - 0.5, num_blocks, 0))
    ax.set_xlabel("snapshot (step)")
    ax.set_ylabel(f"physical block (rows: its {bs} token slots)")
    ax.set_title(title or "The GPU block pool over time")
    handles = [
        Patch(color=owners[0], label="token of one request (a colour each)"),
        Patch(color=rgb["shared"], label="block shared by several requests"),
        Patch(color=rgb["unfilled"], label="slot reserved, no token yet (internal frag.)"),
        Patch(color=rgb["evictable"], label="evictable cached block"),
        Patch(facecolor=rgb["free"], edgecolor="#adb5bd", label="free block"),
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return fig


def figures_dir(*, temporary: bool = False) -> Path:
    """Where notebooks write figures: the checkout's ``figures/``, or a fresh temporary one.

    The checkout is the nearest folder, from the working directory up, that holds both
    ``pyproject.toml`` and ``paged_kv/`` (notebooks run with the working directory
    ``notebooks/``), else the folder above an editable install of the package. Small
    test runs pass ``temporary=True`` so they never overwrite the committed figures; that
    folder is removed when the interpreter exits.
    """
    if temporary:
        import atexit
        import shutil
        import tempfile

        path = Path(tempfile.mkdtemp(prefix="paged_kv_figures_"))
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        return path
    here = Path.cwd().resolve()
    package_parent = Path(__file__).resolve().parents[1]
    for folder in (here, *here.parents, package_parent):
        if (folder / "pyproject.toml").is_file() and (folder / "paged_kv").is_dir():
            return folder / "figures"
    raise ValueError(
        f"no paged_kv checkout (pyproject.toml beside paged_kv/) above {here} or at "
        f"{package_parent}; pass temporary=True or save figures elsewhere"
    )
