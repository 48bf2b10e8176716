"""benchmarks/quantized.py keeps working: a tiny run prints a row per operation and KV
dtype and writes its JSON; the simulator run without --tiny says it needs a GPU. What it
measures needs a GPU (scripts/gpu_check.sh runs it there)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from paged_kv.gpu.device import is_simulator

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "quantized.py"


def _load():
    spec = importlib.util.spec_from_file_location("paged_kv_quantized_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_tiny_run_prints_every_operation_and_kv_dtype(capsys, tmp_path: Path) -> None:
    before = sys.getswitchinterval()
    try:
        assert _load().main(["--tiny", "--out", str(tmp_path)]) == 0
    finally:
        sys.setswitchinterval(before)  # --tiny shortens it under the simulator
    rows = [line.split("|")[1:3] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and "---" not in line][1:]
    want = [(op, kv) for kv in ("float16", "int8", "fp8_e4m3")
            for op in ("write", "gather", "decode")]
    assert [(op.strip(), kv.strip()) for op, kv in rows] == want
    record = json.loads((tmp_path / "quantized.json").read_text())
    assert [(r["operation"], r["kv_dtype"]) for r in record["rows"]] == want
    assert record["setup"]["num_kv_heads"] == 1


@pytest.mark.skipif(not is_simulator(), reason="the notice is what the simulator prints")
def test_simulator_run_says_it_needs_a_gpu(capsys) -> None:
    assert _load().main([]) == 0
    assert "needs an NVIDIA GPU" in capsys.readouterr().out
