"""The parser of every ``paged-kv`` command: one-line errors with exit status 2, help that
shows defaults and choices, and `UsageError` for combinations of flags that cannot work."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any


class UsageError(ValueError):
    """A combination of arguments that cannot work; reported like a bad flag (exit 2)."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit status 2.

    argparse prints the usage block before the message; a researcher scanning a batch
    log wants the one line that says what was wrong, and ``--help`` for the rest.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # no prefix matching: ``--rate`` is ``--rate`` (scripts stay valid as options are
        # added, and `given` can tell which options were typed)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print ``<prog>: error: <message>`` (one line) and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows each option's default (when it has one worth showing), keeps the
    description's line breaks and never breaks a name at its hyphen."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        names = getattr(action.type, "choices", None)
        if names and "%(choices)" not in text:
            text = f"{text} (from: {', '.join(names)})"
        default = action.default
        if (default is None or default is False or default == argparse.SUPPRESS
                or action.option_strings == [] or "%(default)" in text):
            return text
        shown = ", ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {shown})".strip()


def one_line(message: object) -> str:
    """`message` squeezed onto one line (a multi-line exception text stays readable)."""
    return " ".join(str(message).split())

