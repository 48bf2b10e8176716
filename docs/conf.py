"""Sphinx configuration of the paged_kv documentation (``make docs``).

Sphinx, not MkDocs: the docstrings are reStructuredText already (``literals``, `name`
references, numpydoc sections, tables), so autodoc renders them as written and turns
every `name` into a link; ``-W`` (``make docs``) makes every warning an error. Guides
and studies are MyST Markdown, and the notebooks are pages with their committed outputs
(myst-nb, never executed here: ``make notebooks`` runs them).
"""

import os
import shutil
import sys
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive

# The docs describe the kernels, they never launch them: the simulator imports everywhere.
os.environ.setdefault("PAGED_KV_DEVICE", "sim")
DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

from paged_kv import __version__  # noqa: E402

project = "paged_kv"
author = "The paged_kv contributors"
copyright = "The paged_kv contributors, Apache-2.0"
release = version = __version__

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
default_role = "py:obj"  # `name` in a docstring links to name's documentation
autodoc_default_options = {
    "members": True,
    "undoc-members": True,
    "show-inheritance": True,
    "member-order": "bysource",
    # each name where it is defined: a module that re-exports another's names in its
    # __all__ does not document them twice (two targets for one `name`)
    "ignore-module-all": True,
}
autodoc_preserve_defaults = True
autodoc_typehints = "signature"
autoclass_content = "class"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
exclude_patterns = ["_build", "**/.ipynb_checkpoints"]

# MyST pages and notebooks: `[text](page.md#a-section)` links reach headings of levels
# 1-3; notebooks are shown as committed (outputs and figures included), never executed.
myst_heading_anchors = 3
nb_execution_mode = "off"

html_theme = "furo"
# No table-of-contents entry per documented object: furo draws the whole navigation tree
# on each of the ~140 pages (module sources included), and with an entry for every
# class and function that tree doubles the build's CPU time. Pages keep their section
# headings in the tree; objects are in the index and the search.
toc_object_entries = False
html_title = f"paged_kv {release}"
html_static_path: list[str] = []


def copy_notebooks() -> None:
    """Copy ``notebooks/*.ipynb`` into ``docs/notebooks/`` (ignored by git), where Sphinx
    reads them as pages: a source must lie inside the documentation folder. A copy is
    rewritten only when it differs, so an unchanged notebook is not read again."""
    pages = DOCS / "notebooks"
    pages.mkdir(exist_ok=True)
    sources = {nb.name: nb for nb in (ROOT / "notebooks").glob("*.ipynb")}
    for stale in pages.glob("*.ipynb"):
        if stale.name not in sources:
            stale.unlink()
    for name, source in sources.items():
        target = pages / name
        if not target.exists() or target.read_bytes() != source.read_bytes():
            shutil.copyfile(source, target)


copy_notebooks()


class CommandHelp(Directive):
    """``.. paged-kv-help::``: ``paged-kv --help`` and every subcommand's ``--help``, read
    from the parser itself, so a new subcommand is documented as soon as it exists."""

    def run(self):
        os.environ["COLUMNS"] = "92"  # argparse wraps help to the terminal's width
        from paged_kv.cli import build_parser

        parser = build_parser()
        out = [nodes.literal_block(text=parser.format_help())]
        sub = next(a for a in parser._actions if a.dest == "command")
        for name, command in sub.choices.items():
            out.append(nodes.rubric(text=f"paged-kv {name}"))
            out.append(nodes.literal_block(text=command.format_help()))
        return out


def setup(app):
    app.add_directive("paged-kv-help", CommandHelp)
