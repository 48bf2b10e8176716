"""What every ``paged-kv`` subcommand shares: argument types, output, one style of errors.

The rules every subcommand follows:

* **Bad values are refused before any work**, in one line that names the flag, with
  exit status 2. Argument types raise `argparse.ArgumentTypeError`, which argparse
  turns into ``paged-kv <command>: error: argument --flag: <why>`` (see
  `~paged_kv.cli._parser.Parser`). A check that needs several flags at once raises
  `~paged_kv.cli._parser.UsageError` from the command's ``check(args)`` hook, which
  also runs before any work.
* **Output paths are tried up front**: the folder must exist, the suffix must be one
  the command writes, and each file the run will write (``--output``, the
  ``FILE.NAME.csv`` tables beside it, ``--figure``) is created and removed, or opened
  for appending, before any work (`~paged_kv.cli._output.check_output_paths`); nothing
  creates folders. Files are written whole or not at all
  (`~paged_kv.cli._output.write_atomically`).
* **A command writes only where it is told**: no default output or figure path, so
  that no run overwrites a committed figure; a figure is drawn only with ``--figure``.
* **One output style**: a table on stdout (`~paged_kv.cli._output.emit`), and with
  ``--output FILE.csv`` or ``FILE.json`` the same rows written with the settings that
  produced them and the package version (`~paged_kv.cli._output.write_results`); a
  command that prints further tables writes them too (`~paged_kv.cli._output.emit_table`).
* A run longer than a few seconds shows a progress bar (``tqdm.auto``) unless
  ``--no-progress`` is given, or says up front how long it will take; work the CUDA
  simulator would spend minutes on is refused unless ``--allow-slow`` is given
  (`~paged_kv.cli._preflight.check_simulator_time`).
* **Sizes are bounded by what the run needs**: every whole number is at most
  `~paged_kv.cli._types.MAX_INT` (an int64), and a run whose estimated memory exceeds
  what the machine has available is refused unless ``--allow-large`` is given
  (`~paged_kv.cli._preflight.check_memory`, with `paged_kv.sim.footprint`'s estimate
  for serving runs). A server named by an address is tried within
  `~paged_kv.cli._preflight.CONNECT_TIMEOUT_S` seconds
  (`~paged_kv.cli._preflight.check_reachable`).
* **Options that do not apply are refused**: `~paged_kv.cli._preflight.refuse_if_given`
  names the flag and why.
* **Environment**: ``PAGED_KV_DEVICE`` is checked before any command runs (a value other
  than ``gpu`` or ``sim`` is refused, and ``gpu`` is refused without a GPU by commands
  that run kernels), with the same one-line error and exit status 2.

Subcommand modules import everything from here; the pieces live by concern:
`paged_kv.cli._parser` (the parser, its help and the usage error),
`paged_kv.cli._types` (argument types, each declaring the ``bad_values`` it refuses),
`paged_kv.cli._preflight` (checks after parsing), `paged_kv.cli._serving` (a serving
simulation's options) and `paged_kv.cli._output` (the table, ``--output``,
``--figure``, progress).
"""

from paged_kv.cli._output import (
    add_output_options,
    check_output_paths,
    emit,
    emit_table,
    format_table,
    progress_enabled,
    settings_of,
    side_file,
    write_atomically,
    write_figure,
    write_results,
)
from paged_kv.cli._parser import (
    HelpFormatter,
    Parser,
    UsageError,
    one_line,
)
from paged_kv.cli._preflight import (
    ANNOUNCE_S,
    CONNECT_TIMEOUT_S,
    SLOW_SIMULATOR_S,
    add_allow_large,
    add_allow_slow,
    available_memory,
    check_device_setting,
    check_memory,
    check_reachable,
    check_simulator_time,
    given,
    refuse_if_given,
)
from paged_kv.cli._serving import (
    RECORDED_ARRIVALS,
    add_model_options,
    add_serving_options,
    applies_rate,
    check_serving_memory,
    check_serving_options,
    kv_pool_slots,
    paper_note,
    unlike_paper,
    without_paper,
)
from paged_kv.cli._types import (
    FIGURE_SUFFIXES,
    MAX_INT,
    RESULT_FORMATS,
    address,
    cannot_write,
    choice_list,
    figure_file,
    fraction,
    int_at_least,
    int_list,
    nonnegative_int,
    number_in,
    positive_int,
    positive_number,
    results_file,
    seed,
    text,
)

__all__ = [
    "ANNOUNCE_S",
    "CONNECT_TIMEOUT_S",
    "FIGURE_SUFFIXES",
    "HelpFormatter",
    "MAX_INT",
    "Parser",
    "RECORDED_ARRIVALS",
    "RESULT_FORMATS",
    "SLOW_SIMULATOR_S",
    "UsageError",
    "add_allow_large",
    "add_allow_slow",
    "add_model_options",
    "add_output_options",
    "add_serving_options",
    "address",
    "applies_rate",
    "available_memory",
    "cannot_write",
    "check_device_setting",
    "check_memory",
    "check_output_paths",
    "check_reachable",
    "check_serving_memory",
    "check_serving_options",
    "check_simulator_time",
    "choice_list",
    "emit",
    "emit_table",
    "figure_file",
    "format_table",
    "fraction",
    "given",
    "int_at_least",
    "int_list",
    "kv_pool_slots",
    "nonnegative_int",
    "number_in",
    "one_line",
    "paper_note",
    "positive_int",
    "positive_number",
    "progress_enabled",
    "refuse_if_given",
    "results_file",
    "seed",
    "settings_of",
    "side_file",
    "text",
    "unlike_paper",
    "without_paper",
    "write_atomically",
    "write_figure",
    "write_results",
]
