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


def test_a_figure_is_drawn_only_where_figure_says(tmp_path, monkeypatch, capsys):
    """No default figure: a run writes nothing unless told, even with a figures/ folder
    beside it; --figure writes there and nowhere else."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "figures").mkdir()
    argv = ["block-map", "--num-requests", "4", "--no-progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "| COW copies |" in captured.out and "wrote" not in captured.out
    assert list(tmp_path.rglob("*")) == [tmp_path / "figures"]
    assert main([*argv, "--figure", "m.png"]) == 0
    assert capsys.readouterr().out.endswith("wrote m.png\n")
    assert sorted(tmp_path.rglob("*")) == [tmp_path / "figures", tmp_path / "m.png"]
