"""``paged-kv tiers``: the tier study's tables, results file and figure, at a small size."""

import json

import pytest

from paged_kv.cli import main
from paged_kv.studies.tiers import SESSIONS_SETTING, tier_study


def test_tiers_prints_the_tables_beside_the_papers(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written here but what --figure names
    out, fig = tmp_path / "tiers.json", tmp_path / "tiers.png"
    argv = ["tiers", "--sessions", "60", "--head", "200", "--placements", "write_back",
            "--tier-policies", "lru", "--output", str(out), "--figure", str(fig),
            "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    study = tier_study(sessions=60, head=200, placements=["write_back"], tier_policies=["lru"],
                       progress=False)
    sessions = study.sweeps["sharegpt-sessions"]
    at = sessions[(sessions["host_bytes"] == 128 * 10**9) & (sessions["disk_bytes"] == 0)]
    assert (f"| sharegpt-sessions | write_back | lru | 128 | 0 | {at['hit_rate'].iloc[0]:.3f} "
            f"| {at['gpu_hit_rate'].iloc[0]:.3f} | {at['host_hit_rate'].iloc[0]:.3f} |") in text
    assert "CachedAttention (ATC'24) LLaMA-13B" in text and "| 0.86 |" in text
    assert "Mooncake FAST'25 Fig. 9" in text and "| 1000000 |" in text
    assert "| llama-3-8b | H100 | 1 |" in text  # the break-even table, every preset
    document = json.loads(out.read_text())
    assert len(document["results"]) == len(SESSIONS_SETTING.host_bytes) * 2 + 7
    assert set(document["tables"]) == {"cachedattention", "mooncake", "break_even"}
    assert document["settings"]["sessions"] == 60
    assert fig.stat().st_size > 20_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiers.json", "tiers.png"]


@pytest.mark.parametrize(("argv", "message"), [
    (["tiers", "--workloads", "sharegpt"], "argument --workloads: unknown name 'sharegpt'"),
    (["tiers", "--placements", "write_back,write_back"], "argument --placements"),
    (["tiers", "--tier-policies", "lfu"], "argument --tier-policies: unknown name 'lfu'"),
    (["tiers", "--disk-bandwidth", "0"], "argument --disk-bandwidth"),
    (["tiers", "--sessions", "0"], "argument --sessions"),
    (["tiers", "--figure", "/no/such/dir/t.png"], "argument --figure"),
])
def test_bad_tiers_flags_exit_2_naming_the_flag(argv, message, capsys):
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
