"""The command line's shared rules: one-line errors naming the flag, exit status 2, output
paths checked before any work, results written with their settings."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from paged_kv import __version__
from paged_kv.cli import build_parser, main
from paged_kv.cli._common import format_table, write_results


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"paged-kv {__version__}"


def test_no_folder_is_created_for_an_output(tmp_path, capsys):
    target = tmp_path / "new" / "r.json"
    assert main(["replay", "--output", str(target), "--no-progress"]) == 2
    assert not target.parent.exists()
    assert "does not exist" in one_error_line(capsys)


def test_every_option_says_its_default_in_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():
        for action in command._actions:
            if action.option_strings and action.default not in (None, False, "==SUPPRESS=="):
                assert action.help, f"{name} {action.option_strings} has no help text"


def test_results_carry_settings_and_version(tmp_path):
    frame = pd.DataFrame({"policy": ["lru", "fifo"], "hit_rate": [0.25, 0.125]})
    settings = {"trace": "t", "capacities": [1, 2]}
    path = write_results(frame, tmp_path / "r.json", command="sweep", settings=settings)
    document = json.loads(path.read_text())
    assert document["paged_kv_version"] == __version__ and document["command"] == "sweep"
    assert document["settings"] == settings
    assert document["results"] == [{"policy": "lru", "hit_rate": 0.25},
                                   {"policy": "fifo", "hit_rate": 0.125}]
    path = write_results(frame, tmp_path / "r.csv", command="sweep", settings=settings)
    text = path.read_text()
    assert f"# paged_kv_version: {__version__}\n" in text and '# capacities: [1, 2]\n' in text
    pd.testing.assert_frame_equal(pd.read_csv(path, comment="#"), frame)


def test_format_table_formats_floats_and_missing_values():
    frame = pd.DataFrame({"a": ["x", "y"], "b": [1.25, float("nan")], "c": [0.123456, 1.0]})
    assert format_table(frame, {"a": "A", "b": "B", "c": "C|{:.3f}"}).splitlines() == [
        "| A | B | C |", "|---|---|---|", "| x | 1.2 | 0.123 |", "| y | - | 1.000 |"]


def test_replay_writes_its_results_with_the_settings(tmp_path, capsys):
    out = tmp_path / "r.csv"
    assert main(["replay", "--capacity", "unbounded", "--output", str(out),
                 "--no-progress"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    rows = pd.read_csv(out, comment="#")
    assert rows.loc[0, "hit_rate"] == pytest.approx(0.3734, abs=5e-5)
    assert "# capacity: null" in out.read_text()


CLOSED_STDOUT = """
import os, sys
read, write = os.pipe()
os.close(read)             # nobody will read: the next write to stdout is a broken pipe
os.dup2(write, 1)
from paged_kv.cli import main
sys.exit(main({argv!r}))
"""


@pytest.mark.parametrize("argv", [["--help"], ["replay", "--capacity", "unbounded",
                                               "--no-progress"]])
def test_a_closed_pipe_ends_quietly(argv):
    done = subprocess.run([sys.executable, "-c", CLOSED_STDOUT.format(argv=argv)],
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (0, "")


def test_a_closed_pipe_still_gets_the_files_written(tmp_path):
    """``paged-kv replay --output r.csv | head -1``: the reader leaves, the results stay."""
    out = tmp_path / "r.csv"
    argv = ["replay", "--capacity", "unbounded", "--output", str(out), "--no-progress"]
    done = subprocess.run([sys.executable, "-c", CLOSED_STDOUT.format(argv=argv)],
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (0, "")
    assert pd.read_csv(out, comment="#").loc[0, "hit_rate"] == pytest.approx(0.3734, abs=5e-5)


class _ClosedPipe:
    """A stdout whose reader has gone away: every write raises BrokenPipeError."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        pass

    def fileno(self):
        raise ValueError("no descriptor")


def test_a_broken_pipe_while_printing_is_not_a_traceback(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["replay", "--capacity", "unbounded", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_ctrl_c_ends_quietly_with_status_130(monkeypatch, capsys):
    import paged_kv.sim.replay

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(paged_kv.sim.replay, "replay", interrupted)
    assert main(["replay", "--no-progress"]) == 130
    assert one_error_line(capsys) == "paged-kv: interrupted"


def test_every_list_option_is_comma_separated_and_says_so():
    """One list syntax everywhere (``--seeds 0,1,2``, ``--block-sizes 8,64``); the old
    space-separated habit gets a hint naming the option."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():
        for action in command._actions:
            assert action.nargs not in ("+", "*"), (name, action.option_strings)
            if isinstance(action.default, list):
                assert str(action.metavar).endswith(",..."), (name, action.option_strings)


def test_a_space_separated_list_gets_a_hint(capsys):
    assert main(["block-size", "--block-sizes", "16", "32"]) == 2
    assert one_error_line(capsys) == (
        "paged-kv block-size: error: unrecognized arguments: 32 (--block-sizes takes a "
        "comma-separated list: --block-sizes 16,32)")


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_emit_table_writes_every_table_the_run_prints(tmp_path, capsys, suffix):
    """A table printed before or after the results goes into --output too: under
    "tables" in the JSON file, or in FILE.NAME.csv beside the CSV file."""
    from argparse import Namespace

    from paged_kv.cli._common import emit, emit_table

    out = tmp_path / f"r{suffix}"
    args = Namespace(command="x", output=out, seed=3, _output_tables=("before", "after"))
    before, results, after = (pd.DataFrame({"v": [i, i + 1]}) for i in (10, 20, 30))
    emit_table(before, args, "before")
    emit(results, args)
    emit_table(after, args, "after")
    text = capsys.readouterr().out
    assert "| 10 |" in text and "| 20 |" in text and "| 30 |" in text
    if suffix == ".json":
        document = json.loads(out.read_text())
        assert [r["v"] for r in document["results"]] == [20, 21]
        assert {name: [r["v"] for r in rows] for name, rows in document["tables"].items()} \
            == {"before": [10, 11], "after": [30, 31]}
        assert document["settings"] == {"seed": 3}
    else:
        for path, first in ((out, 20), (tmp_path / "r.before.csv", 10),
                            (tmp_path / "r.after.csv", 30)):
            assert "# seed: 3" in path.read_text()
            assert pd.read_csv(path, comment="#")["v"].tolist() == [first, first + 1]


def test_a_table_a_command_did_not_declare_is_a_mistake_of_the_command(tmp_path):
    """Its FILE.NAME.csv was not tried before the run: refused even without --output."""
    from argparse import Namespace

    from paged_kv.cli._common import emit_table

    for output in (None, tmp_path / "r.csv"):
        with pytest.raises(RuntimeError, match="'extra' is not declared"):
            emit_table(pd.DataFrame({"v": [1]}), Namespace(command="x", output=output,
                                                           _output_tables=("summary",)),
                       "extra")
    assert list(tmp_path.iterdir()) == []


def test_a_file_is_written_whole_or_not_at_all(tmp_path):
    """Ctrl-C in the middle of a write leaves the old file (or none), and no temporary
    file beside it."""
    from paged_kv.cli._output import write_atomically

    path = tmp_path / "r.csv"

    def interrupted(temporary):
        temporary.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, interrupted)
    assert list(tmp_path.iterdir()) == []
    path.write_text("old\n")
    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, interrupted)
    assert path.read_text() == "old\n" and list(tmp_path.iterdir()) == [path]
    assert write_atomically(path, lambda temporary: temporary.write_text("new\n")) == path
    assert path.read_text() == "new\n" and list(tmp_path.iterdir()) == [path]
    link = tmp_path / "link.csv"
    link.symlink_to(path)
    write_atomically(link, lambda temporary: temporary.write_text("through\n"))
    assert link.is_symlink() and path.read_text() == "through\n"
