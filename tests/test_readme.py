"""README and the documentation pages: their code runs, their links resolve, and the
numbers they show are what the commands they name print."""

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import paged_kv
from paged_kv.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"


def test_the_ten_line_example_runs():
    block = re.search(r"## The cache in ten lines\n\n```python\n(.*?)```", README, re.S)
    assert block, "README lost its example"
    code = block.group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 16
    exec(compile(code, "README.md", "exec"), {})


def test_the_readme_starts_a_newcomer_in_about_200_lines():
    assert len(README.splitlines()) <= 200, "move detail into docs/ and link to it"
    for heading in ("## Status", "## Quick start", "## The cache in ten lines", "## Layout",
                    "## Documentation", "## Known gaps"):
        assert f"\n{heading}\n" in README, heading
    assert "no GPU has run it yet" in README


def test_every_relative_link_resolves():
    for page in [ROOT / "README.md", *DOCS.rglob("*.md")]:
        if "_build" in page.parts or "notebooks" in page.relative_to(ROOT).parts[1:2]:
            continue
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)}: {target}"


def test_the_layout_lists_every_package_with_its_docstring():
    rows = dict(re.findall(r"^\| `(paged_kv\.\w+)` \| (.*) \|$", README, re.M))
    packages = {f"paged_kv.{m.name}" for m in pkgutil.iter_modules(paged_kv.__path__)
                if m.ispkg}
    assert set(rows) == packages, "README's layout table: one row per package"
    for name, line in rows.items():
        first = importlib.import_module(name).__doc__.strip().splitlines()[0]
        assert line == first, f"{name}: the README says {line!r}, its docstring {first!r}"


def _table(text: str, first: set[str]) -> list[str]:
    """The lines of the Markdown table in `text` whose first cell is in `first`."""
    return [line for line in text.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip() in first]


@pytest.mark.slow
def test_the_fragmentation_table_is_what_the_command_prints(capsys, tmp_path):
    assert main(["fragmentation", "--no-progress", "--figure", str(tmp_path / "f.png")]) == 0
    out = capsys.readouterr().out
    assert "(mean prompt 160, output 338 tokens)" in out
    printed = [line for line in out.splitlines() if line.startswith("| ")]
    rows = {"scheme", "Max", "Pow2", "Oracle", "paged (block 16)"}
    assert _table(README, rows) == printed
    assert _table((DOCS / "studies" / "fragmentation.md").read_text(), rows) == printed
    # the README's claim: every token-state share within 3 points of the paper's Fig. 2
    for line in printed[2:]:
        ours, paper = (float(cell) for cell in line.split("|")[2:4])
        assert abs(ours - paper) <= 3.0, line


def test_the_replay_numbers_are_what_the_command_prints(capsys):
    assert main(["replay", "--capacity", "10000", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mooncake-conversation: 12,031 requests measured")
    assert "| lru | 10000 | 0.2192 |" in out
    page = (DOCS / "studies" / "prefix_caching.md").read_text()
    assert "0.2192 at 10,000 blocks" in page
    assert "0.3734 unbounded" in page  # tests/test_cli.py checks the unbounded run


def test_every_make_target_is_listed_and_the_docs_are_linked():
    makefile = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY: (.*)$", makefile, re.M).group(1).split()
    assert {"demo", "test", "lint", "bench", "gpu-check", "docs", "notebooks", "clean"} <= set(
        phony)
    for target in phony:
        assert f"| `make {target}` |" in README, f"README does not list make {target}"
    assert "](docs/index.rst)" in README and "](LICENSE)" in README
    assert "](CITATION.cff)" in README and "](CHANGELOG.md)" in README


def test_the_simulator_estimate_quoted_is_what_the_demo_says(capsys, monkeypatch):
    from paged_kv.gpu import device

    monkeypatch.setattr(device, "device_kind", lambda: "sim")
    assert main(["demo", "--model", "opt-13b"]) == 2
    cli_page = (DOCS / "cli.rst").read_text()
    quoted = re.search(r'"(would take about [^"]+ in the\s+CUDA simulator)"', cli_page).group(1)
    assert " ".join(quoted.split()) in capsys.readouterr().err
