"""benchmarks/hf_decode.py keeps working: a tiny run writes its table and JSON; the
simulator run without --tiny says it needs a GPU. What it measures needs a GPU."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers", minversion="5.24")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "hf_decode.py"

pytestmark = pytest.mark.usefixtures("hf_env")


def _load():
    spec = importlib.util.spec_from_file_location("paged_kv_hf_decode_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_tiny_run_prints_a_row_per_cache_and_writes_json(capsys, tmp_path):
    before = sys.getswitchinterval()
    try:
        assert _load().main(["--tiny", "--out", str(tmp_path)]) == 0
    finally:
        sys.setswitchinterval(before)
    out = capsys.readouterr().out
    rows = [line.split("|")[1].strip() for line in out.splitlines()
            if line.startswith("| ") and "---" not in line]
    assert rows == ["cache", "DynamicCache", "paged, gather", "paged, kernels"]
    record = json.loads((tmp_path / "hf_decode.json").read_text())
    assert [r["mode"] for r in record["rows"]] == rows[1:]
    assert record["rows"][0]["vs_dynamic"] == 1.0 and record["measured"] is False
    assert record["settings"]["batch"] == 2 and record["settings"]["context"] == 4


def test_simulator_run_says_it_needs_a_gpu(capsys):
    from paged_kv.gpu.device import is_simulator

    if not is_simulator():
        pytest.skip("the notice is what the simulator prints")
    assert _load().main([]) == 0
    assert "needs an NVIDIA GPU" in capsys.readouterr().out
