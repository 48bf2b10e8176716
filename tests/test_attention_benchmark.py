"""benchmarks/attention.py keeps working: a tiny run writes its table and JSON, and the
simulator run without --tiny says it needs a GPU. What it measures needs a GPU."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from paged_kv.gpu.device import is_simulator

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "attention.py"


def _load():
    spec = importlib.util.spec_from_file_location("paged_kv_attention_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_tiny_run_prints_a_row_per_block_size_and_writes_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    before = sys.getswitchinterval()
    try:
        assert _load().main(["--tiny", "--out", str(tmp_path)]) == 0
    finally:
        sys.setswitchinterval(before)  # --tiny shortens it under the simulator
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0].split("|")[1].strip() == "block size"
    assert [row.split("|")[1].strip() for row in rows[1:]] == ["1", "4", "16"]
    record = json.loads((tmp_path / "attention.json").read_text())
    assert [r["block_size"] for r in record["rows"]] == [1, 4, 16]
    assert record["kv_bytes"] == 2 * 9 * 2 * 2 * 8 * 2  # batch, context, K+V, heads, dim, fp16
    assert record["goal_vs_copy"] == 0.5 and record["setup"]["dtype"] == "float16"


@pytest.mark.skipif(not is_simulator(), reason="the notice is what the simulator prints")
def test_simulator_run_says_it_needs_a_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert _load().main([]) == 0
    assert "needs an NVIDIA GPU" in capsys.readouterr().out
