"""Output of the ``paged-kv`` commands: one table on stdout, ``--output FILE.csv|FILE.json``
with the settings and the package version, ``--figure``, progress bars.

The rules, the same for every command:

* **A command writes only where it is told.** Nothing is written by default: the
  results go to ``--output`` and a figure to ``--figure`` only when given, so that no
  run overwrites a committed figure or litters the working directory.
* **Every file a run will write is tried before the run** (`check_output_paths`): the
  ``--output`` file, each ``FILE.NAME.csv`` written beside a CSV file for the tables a
  command declares (``add_output_options(tables=...)``), and the ``--figure`` file.
* **No partial file**: each file is written to a temporary name in its folder and moved
  into place when complete (`write_atomically`), so Ctrl-C or a crash leaves the old
  file, or none, never half of one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from paged_kv.cli._parser import UsageError
from paged_kv.cli._types import RESULT_FORMATS, cannot_write, figure_file, results_file


def add_output_options(parser: argparse.ArgumentParser, *, figure: bool | str = False,
                       tables: Sequence[str] = ()) -> None:
    """Add ``--output`` (results with settings), ``--figure`` if the command draws one
    (`figure` true; a string is read as true: there is no default path), and
    ``--no-progress``. `tables` names the further tables the command may write with
    `emit_table` (beside a CSV file as ``FILE.NAME.csv``), so that those files are tried
    before any work too."""
    parser.add_argument(
        "--output", type=results_file, default=None, metavar="FILE.csv|FILE.json",
        help="also write the results, with the settings and package version, to this file"
             + (f" (and the tables {', '.join(tables)} to FILE.NAME.csv beside a CSV file)"
                if tables else ""),
    )
    if figure is not None and figure is not False:
        parser.add_argument(
            "--figure", type=figure_file, default=None, metavar="FILE.png",
            help="write the figure here (.png, .pdf or .svg; the folder must exist); "
                 "without it no figure is drawn",
        )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(_output_tables=tuple(tables))


def side_file(output: Path, name: str) -> Path:
    """Where table `name` of a run goes beside the CSV file `output`: ``STEM.NAME.csv``."""
    return output.with_name(f"{output.stem}.{name}{output.suffix}")


def check_output_paths(args: argparse.Namespace) -> None:
    """Before any work, try every file beside ``--output`` that the run may write (the
    ``--output`` and ``--figure`` files themselves were tried by their types), and
    refuse two options naming one file."""
    output = getattr(args, "output", None)
    figure = getattr(args, "figure", None)
    if output is None:
        return
    if figure is not None and Path(os.path.abspath(figure)) == Path(os.path.abspath(output)):
        raise UsageError(f"argument --figure: {str(figure)!r} is the --output file too")
    if _is_json(output):
        return
    for name in getattr(args, "_output_tables", ()):
        path = side_file(output, name)
        why = "it is a folder" if path.is_dir() else cannot_write(path)
        if why is not None:
            raise UsageError(f"argument --output: cannot write {str(path)!r}, the {name} "
                             f"table beside {str(output)!r} ({why})")


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary)`` with a fresh path in `path`'s folder (same suffix), then
    move it onto `path` in one step; on any exception, Ctrl-C included, the temporary
    file is removed and `path` is left as it was. Returns `path`."""
    path = Path(path)
    target = Path(os.path.realpath(path))  # write through a symbolic link, not over it
    temporary = target.with_name(f".{target.stem}.partial-{os.getpid()}{target.suffix}")
    try:
        write(temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def write_figure(fig: Any, args: argparse.Namespace) -> Path:
    """Write the matplotlib figure `fig` to ``--figure`` (`write_atomically`), say so on
    stdout and close it; returns the path."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from paged_kv.plots import save  # noqa: PLC0415 - plots load matplotlib

    path = write_atomically(args.figure, lambda temporary: save(fig, temporary))
    plt.close(fig)
    print(f"wrote {path}")
    return path


def format_table(frame: pd.DataFrame, columns: Mapping[str, str] | None = None,
                 floatfmt: str = "{:.1f}") -> str:
    """A Markdown table of `frame`'s `columns` (name -> header; default: all, as named).

    Floats use `floatfmt` unless the column is listed with its own format as
    ``"header|{:.4f}"``; missing values print as ``-``.
    """
    columns = dict(columns) if columns is not None else {c: c for c in frame.columns}
    headers, formats = [], []
    for header in columns.values():
        title, _, fmt = header.partition("|")
        headers.append(title)
        formats.append(fmt or floatfmt)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in frame[list(columns)].itertuples(index=False):
        cells = []
        for value, fmt in zip(row, formats):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                cells.append("-")
            elif isinstance(value, float):
                cells.append(fmt.format(value))
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def settings_of(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """The run's settings: every option given on the command line (paths as text), plus
    `extra` (derived values such as a trace checksum), JSON-ready."""
    skip = {"run", "check", "output", "no_progress", "command", "runs_kernels", "allow_slow",
            "allow_large"}
    settings = {k: _plain(v) for k, v in vars(args).items()
                if k not in skip and not k.startswith("_")}
    settings.update({k: _plain(v) for k, v in extra.items()})
    return settings


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # NumPy scalars
        return value.item()
    return value


def write_results(frame: pd.DataFrame, path: Path, *, command: str,
                  settings: Mapping[str, Any],
                  tables: Mapping[str, pd.DataFrame] | None = None) -> Path:
    """Write `frame` to `path` with the settings and the package version beside it.

    * ``.json``: ``{"paged_kv_version", "command", "settings", "results": [rows]}``, and
      ``"tables": {name: [rows]}`` for the run's further `tables`;
    * ``.csv``: leading ``# key: value`` comment lines (version, command, one per
      setting as JSON), then the rows; ``pandas.read_csv(path, comment="#")`` reads
      the rows back. One table per file: `tables` must be empty (`emit_table` writes
      each beside it as ``STEM.NAME.csv``).
    """
    from paged_kv import __version__  # noqa: PLC0415 - the package imports this module

    fmt = RESULT_FORMATS[path.suffix.lower()]
    if fmt == "json":
        document = {
            "paged_kv_version": __version__,
            "command": command,
            "settings": dict(settings),
            "results": json.loads(frame.to_json(orient="records")),
        }
        if tables:
            document["tables"] = {name: json.loads(table.to_json(orient="records"))
                                  for name, table in tables.items()}
        write_atomically(path, lambda temporary: temporary.write_text(
            json.dumps(document, indent=2) + "\n"))
    else:
        if tables:
            raise ValueError("a CSV file holds one table; write the others beside it")
        header = [f"# paged_kv_version: {__version__}", f"# command: {command}"]
        header += [f"# {key}: {json.dumps(value)}" for key, value in settings.items()]
        write_atomically(path, lambda temporary: temporary.write_text(
            "\n".join(header) + "\n" + frame.to_csv(index=False)))
    return path


def emit(frame: pd.DataFrame, args: argparse.Namespace, *,
         columns: Mapping[str, str] | None = None, floatfmt: str = "{:.1f}",
         max_rows: int | None = None, **extra_settings: Any) -> None:
    """Print `frame` as a table and, with ``--output``, write it with the settings.

    A frame of more than `max_rows` rows (one per step of a long run) prints evenly
    spaced rows, first and last included, and says so; ``--output`` gets every row.
    """
    shown = frame
    if max_rows is not None and len(frame) > max_rows:
        picks = sorted({round(i * (len(frame) - 1) / (max_rows - 1)) for i in range(max_rows)})
        shown = frame.iloc[picks]
    print(format_table(shown, columns, floatfmt))
    if len(shown) < len(frame):
        print(f"({len(shown)} of {len(frame)} rows, evenly spaced; --output writes all)")
    output = getattr(args, "output", None)
    if output is not None:
        settings = settings_of(args, **extra_settings)
        args._results = (frame, settings)  # for the tables emit_table adds after it
        write_results(frame, output, command=args.command, settings=settings,
                      tables=_tables(args) if _is_json(output) else None)
        print(f"wrote {output}")


def emit_table(frame: pd.DataFrame, args: argparse.Namespace, name: str, *,
               columns: Mapping[str, str] | None = None, floatfmt: str = "{:.1f}") -> None:
    """Print a further table of the run (one beside `emit`'s results: a capacity table, a
    summary) and, with ``--output``, write it too, under `name`: in the JSON file's
    ``"tables"``, or for ``FILE.csv`` in ``FILE.NAME.csv`` beside it, with the same
    settings header. Before or after `emit`, in the order the command prints them.
    `name` must be one of the `tables` the command gave `add_output_options`."""
    declared = getattr(args, "_output_tables", ())
    if name not in declared:  # a command's mistake: its side files were not tried up front
        raise RuntimeError(f"table {name!r} is not declared in add_output_options(tables="
                           f"{declared!r}) of paged-kv {args.command}")
    print(format_table(frame, columns, floatfmt))
    output = getattr(args, "output", None)
    if output is None:
        return
    if not _is_json(output):
        path = side_file(output, name)
        write_results(frame, path, command=args.command, settings=settings_of(args))
        print(f"wrote {path}")
        return
    _tables(args)[name] = frame
    results = getattr(args, "_results", None)
    if results is not None:  # the results are written already: write them again with it
        write_results(results[0], output, command=args.command, settings=results[1],
                      tables=_tables(args))
        print(f"wrote {output} (table {name!r} added)")


def _is_json(path: Path) -> bool:
    return RESULT_FORMATS[path.suffix.lower()] == "json"


def _tables(args: argparse.Namespace) -> dict[str, pd.DataFrame]:
    """The further tables of this run (`emit_table`), kept on `args` until written."""
    if getattr(args, "_tables", None) is None:
        args._tables = {}
    return args._tables


def progress_enabled(args: argparse.Namespace) -> bool:
    """Whether to draw progress bars: not with ``--no-progress``, and only on a terminal
    or in a notebook (tqdm.auto decides the look)."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()
