"""``paged-kv block-map`` and ``paged-kv timeline``: a table on stdout, every row in
``--output`` with the settings, the figure written."""

import json

import pandas as pd

from paged_kv.cli import main


def test_block_map_prints_what_happened_and_writes_every_step(tmp_path, capsys):
    out, fig = tmp_path / "steps.json", tmp_path / "map.png"
    assert main(["block-map", "--num-requests", "8", "--num-blocks", "48", "--output",
                 str(out), "--figure", str(fig), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "| COW copies |" in text and "evenly spaced; --output writes all" in text
    document = json.loads(out.read_text())
    assert document["settings"]["num_blocks"] == 48 and document["command"] == "block-map"
    steps = pd.DataFrame(document["results"])
    assert (steps[["owned", "shared", "evictable", "free"]].sum(axis=1) == 48).all()
    assert fig.stat().st_size > 10_000


def test_timeline_runs_on_recorded_arrivals_without_a_rate(tmp_path, capsys):
    out = tmp_path / "steps.csv"
    assert main(["timeline", "--workload", "azure-code", "--num-requests", "60", "--scheme",
                 "oracle", "--output", str(out), "--figure", str(tmp_path / "t.png"),
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "Oracle" in text and "recorded arrivals" in text and "req/s" not in text
    assert "# rate: null" in out.read_text()
    steps = pd.read_csv(out, comment="#")
    assert steps["time_s"].is_monotonic_increasing and len(steps) > 12


def test_the_default_figure_is_checked_before_the_run(tmp_path, monkeypatch, capsys):
    """Outside the checkout (no figures/ folder) the default figure is skipped with a
    note before any work, and no folder is created; --no-figure skips it quietly."""
    monkeypatch.chdir(tmp_path)
    argv = ["block-map", "--num-requests", "4", "--no-progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("paged-kv block-map: no figure written: folder 'figures'")
    assert "| COW copies |" in captured.out and "wrote" not in captured.out
    assert list(tmp_path.iterdir()) == []
    assert main([*argv, "--no-figure"]) == 0
    assert capsys.readouterr().err == ""
    assert main([*argv, "--no-figure", "--figure", str(tmp_path / "m.png")]) == 2
    assert "argument --no-figure: not allowed with --figure" in capsys.readouterr().err
