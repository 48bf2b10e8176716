"""``paged-kv sweep`` and ``paged-kv replay --trace PATH``."""

import json

import pandas as pd
import pytest

from paged_kv.cli import main
from paged_kv.sim import load_trace
from paged_kv.sim.replay_arrays import TraceArrays
from paged_kv.sim.replay_sweep import sweep


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory):
    """The first 300 conversation requests as a Mooncake JSONL file."""
    path = tmp_path_factory.mktemp("traces") / "head.jsonl"
    rows = [{"timestamp": int(r.arrival_time * 1000), "input_length": r.prompt_len,
             "output_length": r.output_len, "hash_ids": list(r.block_keys)}
            for r in load_trace("mooncake-conversation", limit=300)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.slow
def test_sweep_prints_the_table_writes_results_and_figure(small_trace, tmp_path, capsys):
    out, fig = tmp_path / "r.csv", tmp_path / "hit.png"
    assert main(["sweep", "--trace", str(small_trace), "--policies", "lru,belady",
                 "--capacities", "50,unbounded", "--workers", "1", "--output", str(out),
                 "--figure", str(fig), "--no-progress"]) == 0
    text = capsys.readouterr().out
    expected = sweep(load_trace(str(small_trace)), [50, None], ["lru", "belady"], workers=1,
                     progress=False)
    assert f"| lru | 50 | {expected['hit_rate'].iloc[0]:.4f} |" in text
    assert "| belady | unbounded |" in text
    checksum = TraceArrays.from_workload(load_trace("mooncake-conversation", limit=300)).checksum
    assert f"checksum {checksum}" in text
    header = [line for line in out.read_text().splitlines() if line.startswith("#")]
    assert "# paged_kv_version: " in header[0] and "# command: sweep" in header
    assert f'# trace_checksum: "{checksum}"' in header
    assert '# policies: ["lru", "belady"]' in header and "# engine: \"compiled\"" in header
    rows = pd.read_csv(out, comment="#")
    assert list(rows["hit_rate"]) == pytest.approx(list(expected["hit_rate"]))
    assert fig.stat().st_size > 10_000


def test_replay_reads_a_trace_file(small_trace, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["replay", "--trace", str(small_trace), "--capacity", "unbounded",
                 "--output", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("head.jsonl: 300 requests measured") and "| lru | unbounded |" in text
    document = json.loads(out.read_text())
    assert document["results"][0]["trace"] == "head.jsonl"
    assert document["settings"]["trace"] == str(small_trace)
    assert len(document["settings"]["trace_checksum"]) == 16


@pytest.mark.parametrize(("argv", "message"), [
    (["sweep", "--policies", "lru,mru"], "argument --policies: unknown name 'mru'"),
    (["sweep", "--capacities", "10,0"], "argument --capacities: must be a whole number"),
    (["sweep", "--capacities", "10,10"], "argument --capacities: a capacity is listed twice"),
    (["sweep", "--engine", "gpu"], "argument --engine: invalid choice"),
    (["sweep", "--workers", "0"], "argument --workers"),
    (["sweep", "--trace", "sharegpt"], "argument --trace: 'sharegpt' is neither a trace"),
    (["replay", "--trace", "/no/such.jsonl"], "argument --trace"),
    (["sweep", "--scheduler", "tcp://x:1", "--workers", "2"], "argument --workers: not used"),
    (["sweep", "--host-capacities", "0,-5"], "argument --host-capacities"),
    (["sweep", "--disk-capacities", "10,10"], "argument --disk-capacities: 10 is listed twice"),
    (["sweep", "--placements", "write_around"], "argument --placements: unknown name"),
    (["sweep", "--placements", "write_back"], "argument --placements: applies to the tiers"),
    (["sweep", "--host-capacities", "0,0"], "argument --host-capacities: 0 is listed twice"),
    (["sweep", "--disk-capacities", "100", "--host-policy", "arc"],
     "argument --host-policy: there is no host tier"),
    (["sweep", "--host-capacities", "100", "--host-policy", "lfu"],
     "argument --host-policy: the compiled engine runs lru or arc tiers"),
])
def test_bad_sweep_flags_exit_2_naming_the_flag(argv, message, capsys):
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_bad_trace_file_names_the_line(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"input_length": 600, "hash_ids": [1, 2]}\n{"input_length": 6}\n')
    assert main(["sweep", "--trace", str(path), "--no-progress", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl line 2: no 'hash_ids' field" in err and err.count("\n") == 1


def test_a_tiered_sweep_prints_the_hit_rate_by_tier(small_trace, tmp_path, capsys):
    out, fig = tmp_path / "tiers.csv", tmp_path / "tiers.png"
    assert main(["sweep", "--trace", str(small_trace), "--policies", "lru",
                 "--capacities", "20", "--host-capacities", "0,3000",
                 "--disk-capacities", "0,4000", "--placements", "write_back",
                 "--host-policy", "arc", "--workers", "1", "--output", str(out),
                 "--figure", str(fig), "--no-progress"]) == 0
    text = capsys.readouterr().out
    expected = sweep(load_trace(str(small_trace)), [20], ["lru"], host_capacities=[0, 3000],
                     disk_capacities=[0, 4000], placements=["write_back"], host_policy="arc",
                     workers=1, progress=False)
    assert "| policy | placement | GPU (blocks) | host (blocks) | disk (blocks) | hit rate | " \
           "GPU | host | disk |" in text
    row = expected.iloc[3]
    assert (f"| lru | write_back | 20 | 3000 | 4000 | {row['hit_rate']:.4f} | "
            f"{row['gpu_hit_rate']:.4f} | {row['host_hit_rate']:.4f} | "
            f"{row['disk_hit_rate']:.4f} |") in text
    rows = pd.read_csv(out, comment="#")
    assert list(rows["host_hit_rate"]) == pytest.approx(list(expected["host_hit_rate"]))
    assert rows["stored_host_disk"].iloc[3] == expected["stored_host_disk"].iloc[3] > 0
    assert fig.stat().st_size > 10_000
