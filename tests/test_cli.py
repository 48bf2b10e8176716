"""The command line and the default studies it runs."""

import subprocess
import sys

import pandas as pd

from paged_kv.cli import main
from paged_kv.studies import block_size_sweep


def test_fragmentation_command_prints_the_table_and_writes_the_figure(tmp_path, capsys):
    out = tmp_path / "frag.png"
    assert main(["fragmentation", "--num-requests", "150", "--seeds", "0", "--figure",
                 str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    for scheme in ("| Max |", "| Pow2 |", "| Oracle |", "| paged (block 16) |"):
        assert scheme in text
    # the paper's columns: token states, reservation, internal and external & others
    assert "| 20.4 | " in text and "| 96.3 |" in text and "| 41.6 |" in text
    assert "| 30.42 |" in text  # Fig. 13a's batch
    assert out.stat().st_size > 10_000


def test_fragmentation_first_fit_and_the_shipped_conversations(tmp_path, capsys):
    assert main(["fragmentation", "--workload", "sharegpt", "--allocator", "first-fit",
                 "--num-requests", "100", "--seeds", "0", "--figure", str(tmp_path / "f.png"),
                 "--no-progress"]) == 0
    assert "| Max (first-fit) |" in capsys.readouterr().out


def test_throughput_command_prints_the_ratios_beside_the_papers(tmp_path, capsys):
    out = tmp_path / "t.json"
    assert main(["throughput", "--workloads", "sharegpt-like", "--duration", "120",
                 "--output", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "| sharegpt-like | Oracle |" in text and "| 1.7-2.7x |" in text
    assert "| 2.7-8x |" in text
    import json

    document = json.loads(out.read_text())
    assert document["command"] == "throughput" and len(document["results"]) == 4
    assert main(["throughput", "--figure", str(tmp_path / "t.png"), "--no-progress"]) == 2


def test_sharing_command(tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["sharing", "--workloads", "alpaca-like", "--widths", "2", "--seeds", "0,1",
                 "--num-requests", "30", "--figure", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "| alpaca-like | beam | 2 |" in text and "| 37.6 | 55.2 |" in text
    assert out.exists()


def test_block_size_command(tmp_path, capsys):
    out = tmp_path / "bs.png"
    assert main(["block-size", "--block-sizes", "8,64", "--num-requests", "100",
                 "--figure", str(out), "--no-progress"]) == 0
    assert "alpaca-like" in capsys.readouterr().out and out.exists()


def test_block_size_waste_grows_with_the_block():
    frame = block_size_sweep(block_sizes=(4, 32, 256), workloads=("alpaca-like",),
                             num_requests=150, progress=False)
    assert frame["waste_pct"].is_monotonic_increasing


def test_replay_command_prints_the_hit_rate(capsys):
    assert main(["replay", "--trace", "mooncake-conversation", "--capacity", "unbounded",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    # the columns of paged-kv sweep, one row
    assert "| policy | capacity (blocks) | hit rate (tokens) | hit rate (blocks) |" in text
    assert "| lru | unbounded | 0.3734 | 0.3660 | 0 | 12031 |" in text


def test_bad_arguments_exit_2_with_a_message(capsys):
    assert main(["replay", "--capacity", "0", "--no-progress"]) == 2
    assert "argument --capacity: must be a whole number of blocks" in capsys.readouterr().err
    assert main(["fragmentation", "--workload", "nope", "--no-progress"]) == 2


def test_python_dash_m_runs_the_demo():
    done = subprocess.run([sys.executable, "-m", "paged_kv", "demo"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from paged_kv.gpu.device import device_name

    assert device_name() in done.stdout and "all verified" in done.stdout


def test_the_papers_numbers_stand_only_beside_its_setting(tmp_path, capsys):
    """Another model or workload (or GPU, KV size, KV dtype) is not the paper's Fig. 2
    setting: neither the table, the --output file nor the figure carries its numbers,
    and a line says what differs. Recorded arrivals print no rate."""
    out = tmp_path / "f.csv"
    assert main(["fragmentation", "--workload", "azure-conv", "--model", "llama-2-7b",
                 "--num-requests", "40", "--seeds", "0", "--output", str(out),
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "| paper %" not in text and "Fig. 2" not in text
    assert "it did not run model llama-2-7b, workload azure-conv" in text
    assert "recorded arrivals" in text and "req/s" not in text
    written = out.read_text()
    assert "# rate: null" in written and "paper_token_states_pct" not in written
    assert main(["sharing", "--workloads", "alpaca-like", "--samplings", "parallel",
                 "--widths", "2", "--seeds", "0", "--num-requests", "20", "--model",
                 "llama-13b", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "paper low" not in text and "it did not run model llama-13b" in text


def test_unlike_paper_names_each_difference_from_the_papers_setting():
    from argparse import Namespace

    from paged_kv.cli._common import unlike_paper, without_paper
    from paged_kv.core.config import get_model

    opt = get_model("opt-13b")
    paper = Namespace(gpu="A100-40GB", kv_gib=12.0, workload="sharegpt-like")
    assert unlike_paper(paper, opt) == []
    assert unlike_paper(Namespace(workload="sharegpt"), opt) == []  # ShareGPT's own lengths
    assert unlike_paper(paper, opt.with_kv_dtype("int8")) == ["int8 KV"]
    other = Namespace(gpu="H100", kv_gib=20.0, workload="alpaca-like")
    assert unlike_paper(other, get_model("llama-13b")) == [
        "model llama-13b", "GPU H100", "20 GiB of KV", "workload alpaca-like"]
    frame = pd.DataFrame({"a": [1.0], "paper_a": [2.0]})
    assert without_paper(frame, {"a": "a", "paper_a": "paper"}, [])[1] == {
        "a": "a", "paper_a": "paper"}
    shown, columns = without_paper(frame, {"a": "a", "paper_a": "paper"}, ["GPU H100"])
    assert list(shown) == ["a"] and columns == {"a": "a"}
