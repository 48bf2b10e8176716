"""A command writes only where it is told: run with its defaults (or with flags that only
make it small), from another working directory, it leaves the checkout exactly as it was
(``git status`` and every file's bytes and time) and writes nothing where it runs.

Every subcommand must be listed in `SMALL` (an empty list: its defaults), so a command
added later is checked as soon as it exists. Only sizes are changed there, never an
output: what a command does by default with its results and figures is what is tested.
"""

import os
import subprocess
from pathlib import Path

import pytest

import paged_kv
from paged_kv.cli import build_parser, commands, main
from paged_kv.cli._types import figure_file, results_file

REPO = Path(paged_kv.__file__).resolve().parent.parent

#: flags that make each command quick and change nothing about where it writes
SMALL = {
    "block-map": ["--num-requests", "4"],
    "block-size": ["--block-sizes", "16", "--workloads", "alpaca-like", "--num-requests", "20"],
    "demo": [],
    "fragmentation": ["--num-requests", "20", "--seeds", "0"],
    "generate": ["--attention", "reference", "--prompt-logits", "recompute"],
    "kv-quant": ["--tokens", "64", "--head-dim", "16", "--queries", "2"],
    "replay": ["--capacity", "1000", "--trace", "mooncake-synthetic"],
    "sharing": ["--num-requests", "10", "--seeds", "0", "--widths", "2", "--workloads",
                "alpaca-like", "--samplings", "parallel"],
    "sweep": ["--capacities", "1000", "--policies", "lru", "--workers", "1", "--trace",
              "mooncake-synthetic"],
    "throughput": ["--duration", "10", "--workloads", "alpaca-like", "--schemes", "paged"],
    "tiers": ["--sessions", "20", "--head", "100", "--placements", "write_back",
              "--tier-policies", "lru"],
    "timeline": ["--num-requests", "20"],
}


def _git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"],
                          cwd=REPO, capture_output=True, text=True, check=True).stdout


def _checkout_files() -> dict[str, tuple[int, int]]:
    """Every file of the checkout outside caches and environments: (size, mtime)."""
    skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis",
            "_build", ".ipynb_checkpoints"}
    files = {}
    for folder, subfolders, names in os.walk(REPO):
        subfolders[:] = [d for d in subfolders if d not in skip and not d.endswith(".egg-info")]
        for name in names:
            stat = os.stat(os.path.join(folder, name))
            files[os.path.relpath(os.path.join(folder, name), REPO)] = (stat.st_size,
                                                                         stat.st_mtime_ns)
    return files


def test_every_command_is_listed():
    assert set(SMALL) == {m.NAME for m in commands()}


def _subcommands():
    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices


def test_no_command_has_a_default_output_or_figure_path():
    for name, command in _subcommands().items():
        for action in command._actions:
            if action.type in (results_file, figure_file):
                assert action.default is None, (name, action.option_strings)


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="needs the git checkout")
@pytest.mark.parametrize("name", sorted(SMALL))
def test_a_command_run_with_its_defaults_writes_nothing(name, tmp_path, monkeypatch, capsys):
    status, files = _git_status(), _checkout_files()
    monkeypatch.chdir(tmp_path)
    argv = [name, *SMALL[name]]
    if "--no-progress" in _subcommands()[name]._option_string_actions:
        argv.append("--no-progress")
    assert main(argv) == 0, capsys.readouterr().err
    assert "wrote" not in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
    assert _checkout_files() == files
    assert _git_status() == status
