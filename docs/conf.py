"""Sphinx configuration of the paged_kv documentation (``make docs``).

Sphinx, not MkDocs: the docstrings are reStructuredText already (``literals``, `name`
references, numpydoc sections, tables), so autodoc renders them as written and turns
every `name` into a link; ``-W`` (``make docs``) makes every warning an error.
"""

import os
import sys
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive

# The docs describe the kernels, they never launch them: the simulator imports everywhere.
os.environ.setdefault("PAGED_KV_DEVICE", "sim")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paged_kv import __version__  # noqa: E402

project = "paged_kv"
author = "The paged_kv contributors"
copyright = "The paged_kv contributors, Apache-2.0"
release = version = __version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
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
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_theme_options = {"description": "paged KV-cache memory management", "fixed_sidebar": True}
html_static_path: list[str] = []


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
