"""The command line: ``paged-kv <command>`` or ``python -m paged_kv <command>``.

Each subcommand is one module of this package that defines ``NAME``, ``HELP``,
``register(subparsers)`` and ``run(args) -> int`` (and optionally ``check(args)``,
which refuses combinations of flags before any work, and ``RUNS_KERNELS = True`` when
it launches kernels, so that ``PAGED_KV_DEVICE=gpu`` is refused up front without a
GPU). Modules are found by name, so a new subcommand is a new file. The shared rules
(one-line errors naming the flag with exit status 2, output paths checked up front, a
table on stdout and ``--output`` CSV or JSON with the settings) live in
`paged_kv.cli._common`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import TextIO

from paged_kv.cli._common import (
    HelpFormatter,
    Parser,
    check_device_setting,
    check_output_paths,
    check_serving_options,
    one_line,
)

__all__ = ["build_parser", "main"]


def commands() -> list[ModuleType]:
    """The subcommand modules, in name order (private modules start with ``_``)."""
    return [
        importlib.import_module(f"{__name__}.{info.name}")
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name)
        if not info.name.startswith("_")
    ]


def build_parser() -> Parser:
    """The argument parser of every command."""
    from paged_kv import __version__  # noqa: PLC0415 - the package imports this module

    parser = Parser(
        prog="paged-kv",
        description="A research toolkit for paged KV-cache memory management: kernels, the\n"
        "cache, trace replay and serving studies.",
        epilog="'paged-kv COMMAND --help' lists a command's options with their defaults.\n"
        "A bad value is refused before any work, in one line, with exit status 2.\n"
        "PAGED_KV_DEVICE=gpu|sim chooses the device (default: a GPU if the driver sees one).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"paged-kv {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in commands():
        module.register(sub)
    for command in sub.choices.values():  # a list type's usage: NAME,... or N,...
        for action in command._actions:
            if action.metavar is None and hasattr(action.type, "metavar"):
                action.metavar = action.type.metavar
    return parser


def add_command(subparsers, module_name: str, name: str, help: str,
                description: str) -> argparse.ArgumentParser:
    """Add subcommand `name` (help line, description) whose ``run``/``check`` live in
    module `module_name`; returns its parser for the module to add options to."""
    parser = subparsers.add_parser(name, help=help, description=description,
                                   formatter_class=HelpFormatter)
    module = sys.modules[module_name]
    parser.set_defaults(run=module.run, check=getattr(module, "check", None),
                        runs_kernels=getattr(module, "RUNS_KERNELS", False))
    return parser


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of subcommand `name`."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _list_hint(command: argparse.ArgumentParser, argv: list[str], token: str) -> str:
    """A hint when `token` follows a list option's value (``--block-sizes 16 32``): lists
    are comma-separated."""
    at = argv.index(token) if token in argv else 0
    flag = argv[at - 2] if at >= 2 else ""
    action = command._option_string_actions.get(flag)
    if action is not None and str(action.metavar).endswith(",..."):
        return f" ({flag} takes a comma-separated list: {flag} {argv[at - 1]},{token})"
    return ""


def _quiet_broken_pipe(stream: TextIO) -> None:
    """`stream`'s reader went away (``| head``): send what is left to /dev/null."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
    except (OSError, ValueError):  # no real file descriptor (captured in tests)
        pass


class _PipeGuard:
    """stdout that keeps the command running when its reader goes away.

    ``paged-kv sweep --output r.csv | head -1`` must still write ``r.csv`` and the
    figure: after the first write that finds the pipe closed, output is dropped (not
    raised), so the command finishes its work and ends quietly with its own status.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._closed = False

    def _guarded(self, call, *args):
        if self._closed:
            return None
        try:
            return call(*args)
        except BrokenPipeError:
            self._closed = True
            _quiet_broken_pipe(self._stream)
            return None

    def write(self, text: str) -> int:
        self._guarded(self._stream.write, text)
        return len(text)

    def flush(self) -> None:
        self._guarded(self._stream.flush)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; returns its exit status.

    Bad arguments end with one line on stderr and status 2 (returned, not raised, so
    callers and tests see a status either way); Ctrl-C ends quietly with status 130; a
    closed pipe on stdout drops the rest of the output but not the work: files named by
    ``--output`` and ``--figure`` are still written.
    """
    stdout = sys.stdout
    sys.stdout = _PipeGuard(stdout)
    try:
        return _run(argv)
    except KeyboardInterrupt:
        sys.stderr.write("\npaged-kv: interrupted\n")
        return 130
    except BrokenPipeError:  # raised below the guard (a write straight to the descriptor)
        _quiet_broken_pipe(stdout)
        return 0
    finally:
        sys.stdout = stdout


def _run(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # reported by the subcommand, whose --help lists what it takes
            command = _subparser(parser, args.command)
            command.error(f"unrecognized arguments: {' '.join(unknown)}"
                          + _list_hint(command, argv, unknown[0]))
    except SystemExit as done:  # --help, --version, or a bad flag (already reported)
        return done.code if isinstance(done.code, int) else 2
    args._argv = argv  # what was typed: `paged_kv.cli._preflight.given` reads it
    try:
        # every check before any work: the device setting, a serving run's
        # pool and workload options, the files beside --output, then the command's own
        check_device_setting(runs_kernels=args.runs_kernels)
        check_serving_options(args)
        check_output_paths(args)
        if args.check is not None:
            args.check(args)
        result = args.run(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return result
    except ValueError as err:  # a UsageError, or the library refused a value
        sys.stderr.write(f"paged-kv {args.command}: error: {one_line(err)}\n")
        return 2

if __name__ == "__main__":
    sys.exit(main())
