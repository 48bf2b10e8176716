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
