"""README: its code example runs, and its fragmentation table is what the command prints."""

import re
from pathlib import Path

from paged_kv.cli import main

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_the_ten_line_example_runs():
    block = re.search(r"## The cache in ten lines\n\n```python\n(.*?)```", README, re.S)
    assert block, "README lost its example"
    code = block.group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 16
    exec(compile(code, "README.md", "exec"), {})


def test_the_fragmentation_table_is_what_the_command_prints(capsys, tmp_path):
    assert main(["fragmentation", "--no-progress", "--figure", str(tmp_path / "f.png")]) == 0
    out = capsys.readouterr().out
    assert "(mean prompt 592, output 404 tokens)" in out
    assert "average 592 prompt + 404 output tokens" in README.replace("\n", " ")
    printed = [line for line in out.splitlines() if line.startswith("| ")]
    table = [line for line in README.splitlines()
             if line.startswith("| ") and line.split("|")[1].strip() in
             {"scheme", "Max", "Pow2", "Oracle", "paged (block 16)"}]
    assert table == printed


def test_the_replay_numbers_are_what_the_command_prints(capsys):
    assert main(["replay", "--capacity", "10000", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| mooncake-conversation | lru | 10000 | 0.2192 |" in out
    assert "0.2192 at 10,000 blocks" in README
    assert "0.3734 unbounded" in README  # tests/test_cli.py checks the unbounded run
