"""The command line and the default studies it runs."""

import subprocess
import sys

from paged_kv.cli import main
from paged_kv.sim.studies import block_size_sweep, fragmentation_study, sharing_study


def test_default_fragmentation_study_meets_the_targets():
    table = fragmentation_study(progress=False).table.set_index("scheme")
    shares = table["token_states_pct"]
    # token-state share orders Max < Pow2 < Oracle < paged; paged waste under 4%
    assert list(shares.index) == ["Max", "Pow2", "Oracle", "paged (block 16)"]
    assert shares.is_monotonic_increasing and shares.is_unique
    assert table.loc["paged (block 16)", "waste_pct"] < 4.0
    # only the contiguous schemes hold slots they will never use
    assert table.loc["paged (block 16)", "internal_frag_pct"] < 0.1
    assert table.loc["Max", "internal_frag_pct"] > table.loc["Pow2", "internal_frag_pct"] > 0


def test_fragmentation_command_prints_the_table_and_writes_the_figure(tmp_path, capsys):
    out = tmp_path / "frag.png"
    assert main(["fragmentation", "--num-requests", "150", "--figure", str(out),
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    for scheme in ("| Max |", "| Pow2 |", "| Oracle |", "| paged (block 16) |"):
        assert scheme in text
    assert "| 20.4 |" in text and "| 96.3 |" in text  # the paper's column
    assert out.stat().st_size > 10_000


def test_block_size_command(tmp_path, capsys):
    out = tmp_path / "bs.png"
    assert main(["block-size", "--block-sizes", "8", "64", "--num-requests", "100",
                 "--figure", str(out), "--no-progress"]) == 0
    assert "alpaca-like" in capsys.readouterr().out and out.exists()


def test_block_size_waste_grows_with_the_block():
    frame = block_size_sweep(block_sizes=(4, 32, 256), workloads=("alpaca-like",),
                             num_requests=150, progress=False)
    assert frame["waste_pct"].is_monotonic_increasing


def test_replay_command_prints_the_hit_rate(capsys):
    assert main(["replay", "--trace", "mooncake-conversation", "--capacity", "unbounded",
                 "--no-progress"]) == 0
    assert "| mooncake-conversation | lru | - | 0.3734 |" in capsys.readouterr().out


def test_bad_arguments_exit_2_with_a_message(capsys):
    assert main(["replay", "--capacity", "0", "--no-progress"]) == 2
    assert "argument --capacity: must be a whole number of blocks" in capsys.readouterr().err
    assert main(["fragmentation", "--workload", "nope", "--no-progress"]) == 2


def test_sharing_study_small():
    frame = sharing_study(widths=(2,), workloads=("alpaca-like",), num_requests=30,
                          progress=False)
    assert list(frame["sampling"]) == ["parallel", "beam"]
    assert (frame["saved_pct"] > 0).all()


def test_python_dash_m_runs_the_demo():
    done = subprocess.run([sys.executable, "-m", "paged_kv", "demo"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from paged_kv.device import device_name

    assert device_name() in done.stdout and "all verified" in done.stdout
