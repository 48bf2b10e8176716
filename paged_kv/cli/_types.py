"""Argument types of the ``paged-kv`` commands: each returns the parsed value or raises
`argparse.ArgumentTypeError` with a reason that reads well after ``argument --flag:``.

Every type here carries ``bad_values``: examples it refuses, which
``tests/test_cli_bad_values.py`` feeds to every option of every subcommand (so a new
subcommand is checked as soon as its module exists). A type of your own may carry them
too; one without them is fed ``""`` and ``"banana"``. An option that takes any text uses
`text`, which says so.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

#: the largest whole number any option takes: what a NumPy int64 holds (counts, sizes and
#: ids end up indexing or filling int64 arrays); ``2**70`` is refused up front
MAX_INT = 2**63 - 1
#: suffixes ``--output`` accepts, and the format each selects
RESULT_FORMATS = {".csv": "csv", ".json": "json"}
#: suffixes ``--figure`` accepts (anything matplotlib writes without extra packages)
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")

# A type's __name__ is what argparse prints for a value it cannot convert, so each is
# named for what it expects.


def _refuses(*examples: str) -> Callable[[Callable], Callable]:
    """Record on an argument type some values it must refuse (for the generic CLI test)."""

    def mark(parse: Callable) -> Callable:
        parse.bad_values = examples  # type: ignore[attr-defined]
        return parse

    return mark


def text(value: str) -> str:
    """A type for an option that takes any text (a prompt, a label): nothing to refuse."""
    return value


text.bad_values = ()  # type: ignore[attr-defined]


def _int(text: str) -> int:
    if len(text) > 40:  # int() refuses over 4,300 digits, in words that name no flag
        raise argparse.ArgumentTypeError(f"expected a whole number up to {MAX_INT}, got "
                                         f"{text[:20]!r}... ({len(text)} characters)")
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """A type accepting whole numbers in ``[minimum, maximum]`` (``1e4`` is refused);
    without a `maximum`, up to `MAX_INT`."""
    limit = MAX_INT if maximum is None else maximum

    def parse(text: str) -> int:
        value = _int(text)
        if value < minimum or value > limit:
            bound = (f">= {minimum}" if maximum is None and value < minimum
                     else f"in [{minimum}, {limit}]")
            raise argparse.ArgumentTypeError(f"must be a whole number {bound}, got {text!r}")
        return value

    parse.__name__ = "integer"
    bad = [str(minimum - 1), "1e4", "1.5", "banana", "", str(limit + 1), str(2**70)]
    return _refuses(*bad)(parse)


#: a whole number >= 1 (counts, sizes)
positive_int = int_at_least(1)
#: a whole number >= 0
nonnegative_int = int_at_least(0)
#: a seed for NumPy's generators: 0 .. 2**32 - 1
seed = int_at_least(0, 2**32 - 1)


def number_in(
    low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False
) -> Callable[[str], float]:
    """A type accepting finite numbers in the interval from `low` to `high`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        below = value <= low if low_open else value < low
        above = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or below or above:
            left = "(" if low_open else "["
            right = "inf)" if high is None else (f"{high})" if high_open else f"{high}]")
            raise argparse.ArgumentTypeError(
                f"must be a number in {left}{low}, {right}, got {text!r}"
            )
        return value

    parse.__name__ = "number"
    bad = ["nan", "inf", "banana", "", repr(low if low_open else low - 1)]
    if high is not None:
        bad.append(repr(high if high_open else high + 1))
    return _refuses(*bad)(parse)


#: a number > 0 (rates, sizes in GiB)
positive_number = number_in(0.0, low_open=True)
#: a fraction in [0, 1) (warm-up shares)
fraction = number_in(0.0, 1.0, high_open=True)


@_refuses("", "banana", "host:0", "host:99999", "tcp://:8786", "tcp://host")
def address(text: str) -> str:
    """A type for a network address ``[scheme://]host:port`` (a Dask scheduler, a
    server): the host non-empty, the port in 1..65535. Returns the text as given."""
    rest = text.split("://", 1)[1] if "://" in text else text
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected an address [scheme://]host:port (port 1..65535), got {text!r}")
    return text


def choice_list(choices: Iterable[str]) -> Callable[[str], list[str]]:
    """A type accepting a comma-separated list of distinct names from `choices`."""
    valid = list(choices)

    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        if not names:
            raise argparse.ArgumentTypeError("expected at least one name")
        for name in names:
            if name not in valid:
                raise argparse.ArgumentTypeError(
                    f"unknown name {name!r}; valid names: {', '.join(valid)}"
                )
        _no_repeats(names)
        return names

    parse.__name__ = "names"
    parse.choices = tuple(valid)  # type: ignore[attr-defined]  (shown in --help)
    parse.metavar = "NAME,..."  # type: ignore[attr-defined]  (the usage line says how)
    return _refuses("no-such-name", f"{valid[0]},{valid[0]}", ",")(parse)


def int_list(minimum: int = 1, maximum: int | None = None, *,
             repeats: bool = False) -> Callable[[str], list[int]]:
    """A type accepting a comma-separated list of whole numbers in range, each listed once
    unless `repeats` (where a repeat means something: two prompts of one length)."""
    item = int_at_least(minimum, maximum)

    def parse(text: str) -> list[int]:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if not parts:
            raise argparse.ArgumentTypeError("expected at least one whole number")
        values = [item(part) for part in parts]
        if not repeats:
            _no_repeats(values)
        return values

    parse.__name__ = "integers"
    parse.metavar = "N,..."  # type: ignore[attr-defined]  (the usage line says how)
    bad = [*item.bad_values, ","]  # type: ignore[attr-defined]
    return _refuses(*bad, *([] if repeats else [f"{minimum},{minimum}"]))(parse)


def _no_repeats(values: Sequence[object]) -> None:
    seen = set()
    for value in values:
        if value in seen:
            raise argparse.ArgumentTypeError(f"{value!r} is listed twice")
        seen.add(value)



def cannot_write(path: Path) -> str | None:
    """Why `path` cannot be written, or None: found out by doing what the run will do.

    A new file is created and removed again (its folder entry is what the run makes);
    an existing one is opened for appending and closed, unchanged. `os.access` is not
    enough: it says yes to root everywhere, ``/proc`` and read-only mounts included.
    """
    try:
        if path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        else:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            os.unlink(path)
    except OSError as err:
        return (err.strerror or type(err).__name__).lower()
    return None


def _writable_file(text: str, suffixes: Mapping[str, str] | Sequence[str], what: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a {what} file name, got an empty string")
    path = Path(text).expanduser()
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        raise argparse.ArgumentTypeError(
            f"{what} file must end in {', '.join(suffixes)}, got {text!r}"
        )
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, not a {what} file")
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{str(folder)!r} is a file, not a folder")
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"folder {str(folder)!r} does not exist (create it first)")
    why = cannot_write(path)
    if why is not None:
        raise argparse.ArgumentTypeError(f"cannot write {text!r} ({why})")
    return path


_BAD_PATHS = ("", " ", "/missing-folder/x", ".", "/etc/passwd/x")
#: a path on a pseudo file system, where nothing can be created (root included)
_PSEUDO = "/proc/paged-kv-cannot-write"


@_refuses(*_BAD_PATHS, "results.txt", "/missing-folder/r.csv", "/etc/passwd/r.json",
          f"{_PSEUDO}.csv")
def results_file(text: str) -> Path:
    """A type for ``--output``: a writable ``.csv`` or ``.json`` path in an existing folder."""
    return _writable_file(text, RESULT_FORMATS, "results")


@_refuses(*_BAD_PATHS, "figure.txt", "/missing-folder/f.png", "/etc/passwd/f.png",
          f"{_PSEUDO}.png")
def figure_file(text: str) -> Path:
    """A type for ``--figure``: a writable ``.png``/``.pdf``/``.svg`` path in an existing folder."""
    return _writable_file(text, FIGURE_SUFFIXES, "figure")
