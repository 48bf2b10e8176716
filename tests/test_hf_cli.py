"""``paged-kv generate --hf PATH``: a tiny random checkpoint and its offline tokenizer,
saved to a temporary folder and loaded back, generate through the paged cache; a missing
or broken checkpoint is one line and status 2; and neither ``import paged_kv`` nor the
command line's start loads torch or transformers."""

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers", minversion="5.24")

from paged_kv.cli import main  # noqa: E402
from paged_kv.hf.checkpoint import load_checkpoint  # noqa: E402
from paged_kv.hf.tiny import save_tiny_checkpoint  # noqa: E402

pytestmark = pytest.mark.usefixtures("hf_env")

PROMPT = "the paged kv cache"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"), "llama", seed=5)


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def test_generates_the_text_transformers_generates(checkpoint, capsys, tmp_path):
    model, tokenizer = load_checkpoint(checkpoint)
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    assert ids.shape == (1, 4)
    expected = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                              max_new_tokens=3, do_sample=False, pad_token_id=0)
    text = tokenizer.decode(expected[0, 4:], skip_special_tokens=True)
    target = tmp_path / "gen.json"
    assert main(["generate", "--hf", str(checkpoint), "--prompt", PROMPT, "--new-tokens", "3",
                 "--block-size", "4", "--num-blocks", "4", "--output", str(target)]) == 0
    out = capsys.readouterr().out
    assert f"generated (greedy, 3 tokens): {text}\n" in out
    assert "KV float32 in 4 blocks of 4 tokens" in out
    row = json.loads(target.read_text())["results"][0]
    # 4 prompt tokens in the prefill, then 2 decode steps; 6 positions: 2 blocks of 4
    assert (row["prompt_tokens"], row["tokens_computed"], row["peak_blocks"]) == (4, 6, 2)


def test_beams_share_blocks_and_kv_drift_reports_int8_and_fp8(checkpoint, capsys):
    assert main(["generate", "--hf", str(checkpoint), "--prompt", PROMPT, "--new-tokens", "2",
                 "--block-size", "4", "--beams", "2", "--kv-drift"]) == 0
    out = capsys.readouterr().out
    assert "generated (beam search, 2 beams, 2 tokens)" in out
    # 2 beams x 4 prompt tokens, then 2 x 1; the prompt's block is held once
    assert "| 4 | 2 | 10 | 3 | 4 |" in out
    assert "| int8 | 2 |" in out and "| fp8_e4m3 | 2 |" in out


@pytest.mark.parametrize("argv, flag", [
    (["--hf", "/no/such/folder", "--prompt", PROMPT], "--hf"),
    (["--prompt", PROMPT], "--prompt"),                       # needs --hf
    (["--beams", "2"], "--beams"),
    (["--kv-dtype", "int8"], "--kv-dtype"),                    # the NumPy model's pools
    (["--new-tokens", "2"], "--new-tokens"),
])
def test_refusals_name_the_flag(argv, flag, capsys):
    assert main(["generate", *argv]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("paged-kv generate: error: argument " + flag), line


def test_checkpoint_refusals(checkpoint, capsys, tmp_path):
    base = ["generate", "--hf", str(checkpoint)]
    for argv, flag in ((base, "--prompt"), (base + ["--prompt", PROMPT, "--samples", "3"],
                                            "--samples"),
                       (base + ["--prompt", PROMPT, "--num-blocks", "1"], "--num-blocks")):
        assert main(argv) == 2
        assert _one_error_line(capsys).startswith(f"paged-kv generate: error: argument {flag}")


@pytest.mark.parametrize("damage", ["garbled config", "no weights"])
def test_a_broken_checkpoint_is_one_line_and_status_2(checkpoint, tmp_path, capsys, damage):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        (broken / name).write_bytes((checkpoint / name).read_bytes())
    if damage == "garbled config":
        (broken / "config.json").write_text("{ not json")
    else:
        (broken / "model.safetensors").unlink()
    assert main(["generate", "--hf", str(broken), "--prompt", PROMPT]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("paged-kv generate: error: cannot load the checkpoint in"), line
    assert str(broken) in line


def test_neither_the_package_nor_the_command_line_loads_torch():
    code = ("import sys, paged_kv, paged_kv.cli; paged_kv.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
