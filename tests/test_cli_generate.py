"""``paged-kv generate``: the per-step comparison with the dense model, the tokens each
prompt-logits mode computed, --output and --figure, refusals, and a failing status when
the logits stray. The NumPy attention keeps these quick; tests/test_model.py runs the
same script through the device kernels."""

import json
from pathlib import Path

import pytest

from paged_kv.cli import main

QUICK = ["generate", "--attention", "reference", "--no-progress"]


def test_prints_each_step_and_the_tokens_each_mode_computed(capsys):
    assert main(QUICK) == 0
    out = capsys.readouterr().out
    assert out.startswith("tiny: 2 layers, 4 query / 2 KV heads, head_dim 8")
    header = ("| prompt logits | step | request | seq | phase | position | computed | cached | "
              "max abs diff | argmax agrees | greedy token | note |")
    assert header in out
    assert "| keep | 2 | B | - | kept logits | 7 | 0 | 8 |" in out
    assert "| recompute | 2 | B | 1 | prefill | 7 | 4 | 4 |" in out
    assert "| False |" not in out
    # default 2 prompt blocks of 4: vLLM's rule recomputes 4 tokens the kept logits skip
    assert "4 fewer tokens computed than vLLM's rule (18 vs 22)" in out


def test_the_documented_counts_are_what_the_command_prints(capsys):
    page = (Path(__file__).resolve().parents[1] / "docs" / "studies" / "model.md").read_text()
    assert main(QUICK) == 0
    out = capsys.readouterr().out
    for mode, shown in (("recompute", "recompute (vLLM)"), ("keep", "keep")):
        printed = next(line for line in out.splitlines() if line.startswith(f"| {mode} | 26 |"))
        counts = printed.split("|")[2:8]  # prompt tokens .. tokens computed
        assert f"| {shown} |" + "|".join(counts) + "|" in page


def test_output_holds_every_step_with_the_settings(tmp_path, capsys):
    target = tmp_path / "gen.json"
    assert main(QUICK + ["--prompt-logits", "keep", "--kv-dtype", "float16",
                         "--output", str(target)]) == 0
    document = json.loads(target.read_text())
    assert document["command"] == "generate"
    assert document["settings"]["kv_dtype"] == "float16"
    rows = document["results"]
    assert {r["prompt_logits"] for r in rows} == {"keep"}
    compared = [r for r in rows if r["max_abs_diff"] is not None]
    assert compared and all(r["max_abs_diff"] <= 2e-3 for r in compared)
    assert "fewer tokens computed" not in capsys.readouterr().out  # one mode only


def test_figure(tmp_path):
    target = tmp_path / "gen.png"
    assert main(QUICK + ["--figure", str(target)]) == 0
    assert target.stat().st_size > 10_000


@pytest.mark.parametrize("argv, flag", [
    (["--new-tokens", "2"], "--new-tokens"),
    (["--block-size", "0"], "--block-size"),
    (["--block-size", "257"], "--block-size"),
    (["--model", "opt-13b"], "--model"),
    (["--attention", "gpu"], "--attention"),
    (["--prompt-logits", "maybe"], "--prompt-logits"),
])
def test_bad_values_are_refused_naming_the_flag(argv, flag, capsys):
    assert main(QUICK + argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("paged-kv generate: error:") and flag in err and "\n" not in err


def test_a_run_longer_than_the_model_allows_is_refused(capsys):
    assert main(QUICK + ["--prompt-blocks", "64"]) == 2
    assert "max_seq_len of 256" in capsys.readouterr().err


def test_status_1_when_the_logits_stray(monkeypatch, capsys):
    from paged_kv.model import dense

    monkeypatch.setitem(dense.LOGITS_TOLERANCE, "float32", 0.0)
    assert main(QUICK + ["--prompt-logits", "keep"]) == 1
    assert "more than the tolerance" in capsys.readouterr().out


@pytest.mark.parametrize("versions, why", [
    ({"torch": None, "transformers": None}, "not installed here"),
    ({"torch": "2.11.0", "transformers": "5.17.0"}, "transformers 5.24 or newer, found 5.17.0"),
])
def test_hf_without_the_extra_is_one_line(monkeypatch, tmp_path, capsys, versions, why):
    """``--hf`` where torch or transformers is missing, or transformers too old, is one
    line naming --hf and status 2, before anything is loaded (read from the packages'
    metadata, so this runs without the extra too)."""
    from paged_kv.cli import _hf_generate

    monkeypatch.setattr(_hf_generate, "installed_version", versions.get)
    (tmp_path / "config.json").write_text("{}")
    assert main(["generate", "--hf", str(tmp_path), "--prompt", "the cache"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("paged-kv generate: error: argument --hf: needs ") and "\n" not in err
    assert why in err and "pip install 'paged_kv[hf]'" in err
