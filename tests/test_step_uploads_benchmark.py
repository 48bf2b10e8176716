"""benchmarks/step_uploads.py keeps working: a one-layer, one-step run prints its row
with the exact counts, and a bad flag value is refused before any work."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "step_uploads.py"


def _load():
    spec = importlib.util.spec_from_file_location("paged_kv_step_uploads_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_one_layer_one_step_prints_exact_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert _load().main(["--layers", "1", "--steps", "1", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    # per call: slot mapping, tables, tiles. Planned: the packed slots and tiles only;
    # the resident table already holds the prefill plan's row, and the new token
    # stays in the prompt's last block (5 tokens -> 6, block size 4)
    assert "| 1 | 3 (max 3) | 1 (max 1) | 3.0x | 3 |" in out


@pytest.mark.parametrize("flag", ["--steps", "--batch", "--layers"])
def test_a_bad_count_is_refused(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _load().main([flag, "0"])
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err
