"""benchmarks/allocator.py keeps working: a tiny run prints its whole table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "allocator.py"


def _load():
    spec = importlib.util.spec_from_file_location("paged_kv_allocator_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_tiny_run_prints_its_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--sizes", "10", "33", "--chunk", "4", "--cycles", "20", "--repeats", "2",
            "--min-ops", "1"]
    assert _load().main(argv) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert [c.strip() for c in rows[0].split("|")[1:-1]] == [
        "operation", "count (ops)", "wall time (ms)", "ops/s", "deque-loop time (ms)", "ratio",
    ]
    assert len(rows) == 1 + 2 * 2 + 1  # header, two rows per size, the fork row
    counts = [row.split("|")[2].strip() for row in rows[1:]]
    assert counts == ["20", "20", "66", "66", "40"]
    assert all(row.rstrip(" |").endswith("x") for row in rows[1:])


def test_nonpositive_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        _load().main(["--sizes", "0"])
