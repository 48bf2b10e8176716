"""The quantized-KV study: capacity per KV dtype, attention error, and its command."""

from __future__ import annotations

from pathlib import Path

import pytest

from paged_kv.cli import main
from paged_kv.studies.quant_accuracy import (
    SCHEMES,
    capacity_table,
    error_table,
    model_logit_drift,
    outlier_sweep,
    serving_gain,
)

SMALL = dict(num_tokens=64, num_kv_heads=2, head_dim=32, group=2, num_queries=3)


def test_capacity_table_counts_scales_and_whole_blocks() -> None:
    table = capacity_table(("opt-13b",)).set_index("kv_dtype")
    assert table["bytes_per_token"].tolist() == [819_200, 422_400, 409_600]
    assert table.loc["float16", "tokens"] == 983 * 16  # the vLLM paper's ~15.7k slots
    assert table.loc["fp8_e4m3", "capacity_ratio"] == 2.0
    assert 1.93 < table.loc["int8", "capacity_ratio"] < 1.94


def test_error_table_measures_against_float16() -> None:
    table = error_table(outlier_scale=20.0, **SMALL).set_index(["kv", "scheme"])
    assert set(table.index.get_level_values("kv")) == {"random", "outlier channels"}
    assert len(table) == 2 * len(SCHEMES)
    exact = table.xs("float16", level="scheme")
    assert (exact[["k_error", "v_error", "attention_error"]] == 0).all().all()
    random = table.xs("random")["attention_error"]
    assert 0 < random[SCHEMES[1].label] < random[SCHEMES[2].label] < 0.1  # int8 < fp8
    outliers = table.xs("outlier channels")["attention_error"]
    for scheme in SCHEMES[1:]:  # larger keys: larger scores, larger errors
        assert outliers[scheme.label] > random[scheme.label]


def test_outlier_sweep_has_a_row_per_scale_and_scheme() -> None:
    sweep = outlier_sweep((1, 10), **SMALL)
    assert sweep["outlier_scale"].tolist() == [1.0] * 3 + [10.0] * 3
    assert set(sweep["scheme"]) == {s.label for s in SCHEMES[1:]}


def test_a_quantized_cache_serves_larger_batches() -> None:
    gain = serving_gain(("float16", "int8"), rates=(2.0, 8.0), saturating_rate=8.0,
                        duration_s=60.0).set_index("kv_dtype")
    assert gain["bytes_per_token"].tolist() == [819_200, 422_400]
    assert gain["kv_slots"].tolist() == [15_728, 30_504]  # 12 GiB / bytes per token
    assert gain.loc["float16", "batch_at_saturation_gain"] == 1.0
    assert gain.loc["int8", "batch_at_saturation_gain"] > 1.5  # memory bounds the batch


def test_the_small_model_decodes_through_quantized_caches() -> None:
    """Teacher-forced on the unquantized run's tokens, the logits move, int8 less than
    FP8 (127 levels per token and head against 3 mantissa bits)."""
    drift = model_logit_drift(prompt_len=5, new_tokens=1).set_index("kv_dtype")
    assert list(drift.index) == ["int8", "fp8_e4m3"]
    assert (drift["logit_rows"] == 2).all()
    assert 0 < drift.loc["int8", "max_abs_diff"] < drift.loc["fp8_e4m3", "max_abs_diff"] < 1
    assert drift["top_token_agreement"].between(0, 1).all()


def test_kv_quant_command_prints_both_tables_and_writes_the_figure(tmp_path, capsys):
    figure = tmp_path / "q.png"
    argv = ["kv-quant", "--tokens", "32", "--kv-heads", "1", "--head-dim", "16",
            "--queries", "2", "--figure", str(figure)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| opt-13b | int8 | 422400 | 30496 | 1.94 |" in out
    assert "| outlier channels | int8, scale per token and head |" in out
    assert figure.stat().st_size > 0


@pytest.mark.parametrize("argv", [["kv-quant", "--outlier-channels", "9", "--head-dim", "8"],
                                  ["kv-quant", "--kv-heads", "0"]])
def test_kv_quant_refuses_bad_values_with_status_2(argv, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_the_documented_tables_are_what_the_command_prints(capsys) -> None:
    root = Path(__file__).resolve().parents[1]
    page = (root / "docs" / "studies" / "quantized_kv.md").read_text()
    assert main(["kv-quant"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines()
               if line.startswith(("| opt-13b |", "| random |", "| outlier channels |"))]
    shown = [line for line in page.splitlines()
             if line.startswith(("| opt-13b |", "| random |", "| outlier channels |"))]
    assert len(shown) == 9 and shown == printed


def test_fragmentation_and_throughput_take_the_kv_dtype(tmp_path, capsys) -> None:
    argv = ["fragmentation", "--kv-dtype", "int8", "--num-requests", "40", "--seeds", "0",
            "--no-progress", "--figure", str(tmp_path / "f.png")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "opt-13b (int8 KV) on A100-40GB: 30,504 KV token slots" in out
    # the paper ran FP16 caches only: none of its numbers, and a line that says why
    note = "(the vLLM paper's numbers are left out: it did not run int8 KV)\n"
    assert note in out and "paper" not in out.replace(note, "").replace(str(tmp_path), "")
    argv = ["throughput", "--kv-dtype", "fp8_e4m3", "--workloads", "sharegpt-like",
            "--schemes", "paged", "--duration", "20", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(fp8_e4m3 KV)" in out and "31,457 KV token slots" in out and "§6.2" not in out
