"""What every ``paged-kv`` subcommand shares: argument types, output, one style of errors.

The rules every subcommand follows:

* **Bad values are refused before any work**, in one line that names the flag, with
  exit status 2. Argument types here raise `argparse.ArgumentTypeError`, which argparse
  turns into ``paged-kv <command>: error: argument --flag: <why>`` (see `Parser`).
  A check that needs several flags at once raises `UsageError` from the command's
  ``check(args)`` hook, which also runs before any work.
* **Output paths are checked up front**: the folder must exist and be writable, the
  suffix must be one the command writes; nothing creates folders.
* **One output style**: a table on stdout (`emit`), and with ``--output FILE.csv`` or
  ``FILE.json`` the same rows written with the settings that produced them and the
  package version (`write_results`).
* A run longer than a few seconds shows a progress bar (``tqdm.auto``) unless
  ``--no-progress`` is given, or says up front how long it will take; work the CUDA
  simulator would spend minutes on is refused unless ``--allow-slow`` is given
  (`check_simulator_time`).
* **Options that do not apply are refused**: `refuse_if_given` names the flag and why.
* **Environment**: ``PAGED_KV_DEVICE`` is checked before any command runs (a value other
  than ``gpu`` or ``sim`` is refused, and ``gpu`` is refused without a GPU by commands
  that run kernels), with the same one-line error and exit status 2.

Every argument type here carries ``bad_values``: examples it refuses, which
``tests/test_cli_common.py`` feeds to every option of every subcommand (so a new
subcommand is checked as soon as its module exists). A type of your own may carry them
too; one without them is fed ``""`` and ``"banana"``. An option that takes any text
uses `text`, which says so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

#: suffixes ``--output`` accepts, and the format each selects
RESULT_FORMATS = {".csv": "csv", ".json": "json"}
#: suffixes ``--figure`` accepts (anything matplotlib writes without extra packages)
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


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


# -- argument types -----------------------------------------------------------------------
# Each returns the parsed value or raises ArgumentTypeError with a reason that reads well
# after "argument --flag: ". The function's __name__ is what argparse prints for a value
# it cannot convert, so each is named for what it expects.


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
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """A type accepting whole numbers in ``[minimum, maximum]`` (``1e4`` is refused)."""

    def parse(text: str) -> int:
        value = _int(text)
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
            raise argparse.ArgumentTypeError(f"must be a whole number {bound}, got {text!r}")
        return value

    parse.__name__ = "integer"
    bad = [str(minimum - 1), "1e4", "1.5", "banana", ""]
    if maximum is not None:
        bad.append(str(maximum + 1))
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
    return _refuses("no-such-name", f"{valid[0]},{valid[0]}", ",")(parse)


def int_list(minimum: int = 1, maximum: int | None = None) -> Callable[[str], list[int]]:
    """A type accepting a comma-separated list of distinct whole numbers in range."""
    item = int_at_least(minimum, maximum)

    def parse(text: str) -> list[int]:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if not parts:
            raise argparse.ArgumentTypeError("expected at least one whole number")
        values = [item(part) for part in parts]
        _no_repeats(values)
        return values

    parse.__name__ = "integers"
    return _refuses(*item.bad_values, f"{minimum},{minimum}", ",")(parse)  # type: ignore


def _no_repeats(values: Sequence[object]) -> None:
    seen = set()
    for value in values:
        if value in seen:
            raise argparse.ArgumentTypeError(f"{value!r} is listed twice")
        seen.add(value)


def distinct(values: Sequence[object], flag: str) -> None:
    """Raise `UsageError` if a list given with ``nargs`` repeats a value."""
    try:
        _no_repeats(values)
    except argparse.ArgumentTypeError as err:
        raise UsageError(f"argument {flag}: {err}") from None


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
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"cannot write {text!r} (permission denied)")
    return path


_BAD_PATHS = ("", " ", "/missing-folder/x", ".", "/etc/passwd/x")


@_refuses(*_BAD_PATHS, "results.txt", "/missing-folder/r.csv", "/etc/passwd/r.json")
def results_file(text: str) -> Path:
    """A type for ``--output``: a writable ``.csv`` or ``.json`` path in an existing folder."""
    return _writable_file(text, RESULT_FORMATS, "results")


@_refuses(*_BAD_PATHS, "figure.txt", "/missing-folder/f.png", "/etc/passwd/f.png")
def figure_file(text: str) -> Path:
    """A type for ``--figure``: a writable ``.png``/``.pdf``/``.svg`` path in an existing folder."""
    return _writable_file(text, FIGURE_SUFFIXES, "figure")


# -- checks after parsing, before any work ------------------------------------------------


def given(args: argparse.Namespace, flag: str) -> bool:
    """Whether `flag` (``"--rate"``) was typed on the command line (not left at its
    default). Abbreviated options are refused by `Parser`, so this is exact."""
    typed = getattr(args, "_argv", ())
    return any(token == flag or token.startswith(flag + "=") for token in typed)


def refuse_if_given(args: argparse.Namespace, flag: str, why: str) -> None:
    """Raise `UsageError` naming `flag` if it was given: it does not apply (`why`)."""
    if given(args, flag):
        raise UsageError(f"argument {flag}: {why}")


def check_repeats(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a value listed twice in any list option of `parser` (``--block-sizes 16
    16``). An option where repeats mean something sets ``repeats_ok = True`` on its
    action (the object ``add_argument`` returns)."""
    for action in parser._actions:
        if not action.option_strings or getattr(action, "repeats_ok", False):
            continue
        values = getattr(args, action.dest, None)
        if action.nargs in ("+", "*") or (isinstance(action.nargs, int) and action.nargs > 1):
            if isinstance(values, (list, tuple)):
                distinct(values, action.option_strings[-1])


def check_device_setting(*, runs_kernels: bool) -> None:
    """Refuse a ``PAGED_KV_DEVICE`` other than ``gpu`` or ``sim``, and, for a command that
    runs kernels, ``gpu`` on a machine whose CUDA driver reports no GPU. Loads no numba."""
    from paged_kv import device  # noqa: PLC0415 - the package imports this module

    raw = os.environ.get(device.ENV_OVERRIDE, "")
    value = raw.strip().lower()
    if value and value not in ("gpu", "sim"):
        raise UsageError(
            f"{device.ENV_OVERRIDE} must be 'gpu' or 'sim' (or unset: the driver decides), "
            f"got {raw!r}"
        )
    if runs_kernels and value == "gpu" and not device.gpu_present():
        raise UsageError(
            f"{device.ENV_OVERRIDE}=gpu, but the CUDA driver reports no GPU on this machine: "
            f"unset it, or set {device.ENV_OVERRIDE}=sim for Numba's CUDA simulator"
        )


#: workloads whose arrival times are recorded in the trace (``--rate`` does not apply)
RECORDED_ARRIVALS = ("azure-conv", "azure-code")


def check_serving_options(args: argparse.Namespace) -> None:
    """The checks of a serving simulation's options (``--model``, ``--gpu``, ``--kv-gib``,
    ``--block-size``, ``--workload``, ``--rate``), run for every command that has them:
    the model and the GPU are presets, the KV pool holds one longest sequence (in whole
    blocks, with a block size), and ``--rate`` is refused for a trace with recorded
    arrivals (a command then prints no rate: `applies_rate`)."""
    try:  # the simulator's presets: paged_kv.config's and the extra models it knows
        from paged_kv.sim.hardware import model_spec as get_model  # noqa: PLC0415
    except ImportError:
        from paged_kv.config import get_model  # noqa: PLC0415

    spec = None
    if isinstance(getattr(args, "model", None), str):
        try:
            spec = get_model(args.model)
        except ValueError as err:
            raise UsageError(f"argument --model: {err}") from None
    if spec is not None and isinstance(getattr(args, "kv_gib", None), float):
        slots = int(args.kv_gib * 2**30) // spec.bytes_per_token
        if slots < spec.max_seq_len:
            raise UsageError(
                f"argument --kv-gib: {args.kv_gib:g} GiB holds {slots:,} token slots of "
                f"{spec.name}, fewer than one {spec.max_seq_len}-token sequence"
            )
        block = getattr(args, "block_size", None)
        if isinstance(block, int):
            from paged_kv.config import CacheConfig  # noqa: PLC0415

            blocks = slots // block
            usable = blocks - (CacheConfig(block, max(1, blocks)).watermark_reserve_blocks
                               if blocks else 0)  # admission keeps the watermark free
            if usable * block < spec.max_seq_len:
                raise UsageError(
                    f"argument --block-size: the {slots:,}-slot pool holds {blocks} blocks of "
                    f"{block} tokens, {usable} of them admissible under the watermark: "
                    f"fewer than one {spec.max_seq_len}-token sequence"
                )
    if isinstance(getattr(args, "gpu", None), str):
        try:
            from paged_kv.sim.hardware import get_gpu  # noqa: PLC0415 - where GPU presets live
        except ImportError:
            get_gpu = None
        if get_gpu is not None:
            try:
                get_gpu(args.gpu)
            except ValueError as err:
                raise UsageError(f"argument --gpu: {err}") from None
    if getattr(args, "workload", None) in RECORDED_ARRIVALS and hasattr(args, "rate"):
        refuse_if_given(args, "--rate", f"{args.workload} keeps its recorded arrival times")


def applies_rate(args: argparse.Namespace) -> bool:
    """Whether ``--rate`` applies to this run's workload (not to recorded arrivals)."""
    return getattr(args, "workload", None) not in RECORDED_ARRIVALS


#: estimated seconds above which a run on the CUDA simulator needs ``--allow-slow``
SLOW_SIMULATOR_S = 60.0
#: estimated seconds above which a run says up front how long it will take
ANNOUNCE_S = 5.0


def add_allow_slow(parser: argparse.ArgumentParser) -> None:
    """Add ``--allow-slow``: run even when the CUDA simulator would take minutes."""
    parser.add_argument(
        "--allow-slow", action="store_true",
        help=f"run even if the CUDA simulator would take over {SLOW_SIMULATOR_S:.0f} s "
             f"(the estimate is printed first)",
    )


def check_simulator_time(args: argparse.Namespace, seconds: float, flag: str,
                         what: str) -> None:
    """Before kernels run: refuse `what` (naming `flag`, the option that sizes it) when
    the CUDA simulator would take more than `SLOW_SIMULATOR_S` (`seconds` is the
    estimate) unless ``--allow-slow``; announce any estimate over `ANNOUNCE_S` on stderr.
    On a real GPU nothing is refused or announced."""
    from paged_kv.device import device_kind  # noqa: PLC0415 - decides the device, no numba
    from paged_kv.humanize import format_seconds  # noqa: PLC0415

    if device_kind() != "sim" or seconds <= ANNOUNCE_S:
        return
    if seconds > SLOW_SIMULATOR_S and not getattr(args, "allow_slow", False):
        raise UsageError(
            f"argument {flag}: {what} would take about {format_seconds(seconds)} in the CUDA "
            f"simulator (no GPU here); pass --allow-slow to run it anyway"
        )
    sys.stderr.write(f"{what}: about {format_seconds(seconds)} in the CUDA simulator\n")


# -- options most subcommands share -------------------------------------------------------


def add_serving_options(parser: argparse.ArgumentParser, *, workloads: Sequence[str],
                        block_size_help: str = "tokens per block of the paged cache",
                        num_requests: int = 2000) -> None:
    """Add the options of a serving simulation: ``--workload`` (from `workloads`, the first
    is the default), ``--model``, ``--kv-gib``, ``--block-size``, ``--rate``,
    ``--num-requests`` and ``--seed`` (`check_serving_options` checks them together)."""
    from paged_kv.sim.hardware import MODEL_COMPUTE  # noqa: PLC0415 - the simulator's models

    parser.add_argument("--workload", default=workloads[0], choices=workloads,
                        help="request lengths: shipped ShareGPT, synthetic, or Azure traces")
    parser.add_argument("--model", default="opt-13b", choices=sorted(MODEL_COMPUTE),
                        help="model preset")
    parser.add_argument("--kv-gib", type=positive_number, default=12.0,
                        help="KV cache size in GiB")
    parser.add_argument("--block-size", type=int_at_least(1, 4096), default=16,
                        help=block_size_help)
    parser.add_argument("--rate", type=positive_number, default=10.0,
                        help="arrivals per second (not for the Azure traces, which keep "
                             "their recorded arrivals)")
    parser.add_argument("--num-requests", type=int_at_least(1, 100_000), default=num_requests,
                        help="requests to serve")
    parser.add_argument("--seed", type=seed, default=0, help="seed of lengths and arrivals")


def add_output_options(parser: argparse.ArgumentParser, *, figure: str | None = None) -> None:
    """Add ``--output`` (results with settings), ``--figure`` if the command draws one
    (`figure` is its default path, or "" for none by default), and ``--no-progress``."""
    parser.add_argument(
        "--output", type=results_file, default=None, metavar="FILE.csv|FILE.json",
        help="also write the results, with the settings and package version, to this file",
    )
    if figure is not None:
        parser.add_argument(
            "--figure", type=figure_file, default=Path(figure) if figure else None,
            metavar="FILE.png",
            help="write the figure here (.png, .pdf or .svg; the folder must exist)",
        )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


# -- output ---------------------------------------------------------------------------------


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
    skip = {"run", "check", "output", "no_progress", "command", "runs_kernels", "allow_slow"}
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
                  settings: Mapping[str, Any]) -> Path:
    """Write `frame` to `path` with the settings and the package version beside it.

    * ``.json``: ``{"paged_kv_version", "command", "settings", "results": [rows]}``;
    * ``.csv``: leading ``# key: value`` comment lines (version, command, one per
      setting as JSON), then the rows; ``pandas.read_csv(path, comment="#")`` reads
      the rows back.
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
        path.write_text(json.dumps(document, indent=2) + "\n")
    else:
        header = [f"# paged_kv_version: {__version__}", f"# command: {command}"]
        header += [f"# {key}: {json.dumps(value)}" for key, value in settings.items()]
        path.write_text("\n".join(header) + "\n" + frame.to_csv(index=False))
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
        write_results(frame, output, command=args.command,
                      settings=settings_of(args, **extra_settings))
        print(f"wrote {output}")


def paper_columns(columns: Mapping[str, str], model: Any) -> dict[str, str]:
    """`columns`, less those of the paper's numbers (keys starting ``paper``) when
    `model` (a `ModelSpec`) stores quantized KV: the paper ran FP16 caches only."""
    if not model.kv.quantized:
        return dict(columns)
    return {key: header for key, header in columns.items() if not key.startswith("paper")}


def progress_enabled(args: argparse.Namespace) -> bool:
    """Whether to draw progress bars: not with ``--no-progress``, and only on a terminal
    or in a notebook (tqdm.auto decides the look)."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()
