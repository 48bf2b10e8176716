"""Shared figure style: category colours and labels, new axes, saving, the figures folder."""

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
