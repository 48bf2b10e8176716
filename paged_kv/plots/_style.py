"""Shared figure style: category colours and labels, curve styles, new axes, saving, the
figures folder, and a check that no two labels of a figure overprint each other."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

#: colour of each memory category
COLORS = {
    "token_states": "#2b8a3e",
    "reservation": "#f59f00",
    "internal_frag": "#e03131",
    "external_frag": "#7048e8",
    "free": "#dee2e6",
}
#: legend label of each memory category
LABELS = {
    "token_states": "token states",
    "reservation": "reservation",
    "internal_frag": "internal fragmentation",
    "external_frag": "external fragmentation",
    "free": "free",
}


#: (marker, line style) per curve: curves that coincide stay told apart by their marks
CURVE_STYLES = (
    ("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"), ("P", "--"), ("X", "-."),
    ("*", ":"), ("<", "-"), (">", "--"),
)


def curve_style(index: int) -> dict[str, object]:
    """Keyword arguments of ``Axes.plot`` for the `index`-th curve of a figure: its marker,
    line style and colour (the default colour cycle), so overlapping curves stay apart."""
    marker, linestyle = CURVE_STYLES[index % len(CURVE_STYLES)]
    return {"marker": marker, "linestyle": linestyle, "color": f"C{index % 10}",
            "markersize": 5, "markerfacecolor": "none" if index % 2 else None}


def new_axes(ax=None, size: tuple[float, float] = (7, 4)) -> tuple[plt.Figure, plt.Axes]:
    """`ax` and its figure, or a new figure of `size` inches with one Axes."""
    if ax is None:
        fig, ax = plt.subplots(figsize=size)
    return ax.figure, ax


def save(fig: plt.Figure, path: str | Path) -> Path:
    """Write `fig` to `path` (150 dpi; the format from the suffix); return the path.

    The folder must exist: a figure path is checked before a study runs (the command
    line does so at argument parsing), and nothing creates folders behind the caller.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"cannot write {path}: folder {path.parent} does not exist")
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


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
    package_parent = Path(__file__).resolve().parents[2]
    for folder in (here, *here.parents, package_parent):
        if (folder / "pyproject.toml").is_file() and (folder / "paged_kv").is_dir():
            return folder / "figures"
    raise ValueError(
        f"no paged_kv checkout (pyproject.toml beside paged_kv/) above {here} or at "
        f"{package_parent}; pass temporary=True or save figures elsewhere"
    )


def _text_boxes(fig: plt.Figure) -> list[tuple[str, object]]:
    """Every visible, non-empty label of `fig` with its box in display units: titles, axis
    labels, tick labels, texts placed on the axes or the figure, and each legend whole."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = list(fig.texts)
    if getattr(fig, "_suptitle", None) is not None and fig._suptitle not in texts:
        texts.append(fig._suptitle)  # not among fig.texts in every matplotlib version
    boxes = []
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
        for axis in (ax.xaxis, ax.yaxis):  # the ticks drawn (inside the view limits)
            for tick in axis._update_ticks():
                texts += [tick.label1, tick.label2]
        texts += list(ax.texts)
        legend = ax.get_legend()
        if legend is not None and legend.get_visible():
            boxes.append(("legend", legend.get_window_extent(renderer)))
    for legend in fig.legends:
        boxes.append(("legend", legend.get_window_extent(renderer)))
    for text in texts:
        if text.get_visible() and text.get_text().strip():
            boxes.append((text.get_text(), text.get_window_extent(renderer)))
    return boxes


def overlapping_labels(fig: plt.Figure, tolerance: float = 1.0) -> list[tuple[str, str]]:
    """Pairs of labels of `fig` whose boxes overlap by more than `tolerance` pixels each
    way (drawn once with the figure's renderer): an empty list means nothing overprints."""
    boxes = _text_boxes(fig)
    clashes = []
    for i, (name_a, a) in enumerate(boxes):
        for name_b, b in boxes[i + 1:]:
            dx = min(a.x1, b.x1) - max(a.x0, b.x0)
            dy = min(a.y1, b.y1) - max(a.y0, b.y0)
            if dx > tolerance and dy > tolerance:
                clashes.append((name_a, name_b))
    return clashes
