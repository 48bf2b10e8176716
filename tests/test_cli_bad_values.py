"""Every subcommand refuses every bad value before any work: one line naming the flag,
exit status 2.

The cases are not listed by hand: they are read from the parser, so a subcommand added
later (one more module in `paged_kv/cli/`) is covered as soon as it exists. For each
option that takes a value: a name outside its choices, the values its type declares it
refuses (``bad_values``, see `paged_kv.cli._common`; a list type's include a repeated
value), and ``""`` and ``"banana"`` for a type that declares none. Each command's ``run`` is
replaced by one that fails the test, so a value refused only once work has started
fails too. Below that, a table of cases that once gave a traceback or an unclear message.
"""

import argparse

import pytest

import paged_kv.cli
from paged_kv.cli import build_parser, main
from paged_kv.cli._common import text
from paged_kv.gpu import device

GENERIC_BAD = ("", "banana")


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _options(command: argparse.ArgumentParser):
    """The options of `command` that take values (flags and --help left out)."""
    return [a for a in command._actions if a.option_strings and a.nargs != 0]


def _values(action: argparse.Action, value: str) -> list[str]:
    count = action.nargs if isinstance(action.nargs, int) else 1
    return [value] * count


def _cases():
    for name, command in _commands().items():
        for action in _options(command):
            flag = action.option_strings[-1]
            if action.choices is not None:
                bad = ["no-such-choice"]
            else:
                bad = list(getattr(action.type, "bad_values", GENERIC_BAD))
            for value in bad:
                yield pytest.param(name, flag, [flag, *_values(action, value)],
                                   id=f"{name} {flag} {value!r}")


@pytest.fixture
def no_work(monkeypatch):
    """Every command's run fails the test: a refusal must come before any work."""

    def started(args):
        pytest.fail(f"paged-kv {args.command} started work on a bad value")

    for module in paged_kv.cli.commands():
        monkeypatch.setattr(module, "run", started)


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert captured.out == ""
    return lines[0]


@pytest.mark.parametrize("name, flag, argv", list(_cases()))
def test_every_bad_value_is_refused_in_one_line_naming_the_flag(name, flag, argv, capsys,
                                                                no_work):
    assert main([name, *argv]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"paged-kv {name}: error: argument {flag}"), line


def test_the_generic_cases_cover_every_command():
    names = {case.values[0] for case in _cases()}
    assert names == set(_commands()) - {n for n, c in _commands().items() if not _options(c)}


def test_every_option_that_takes_a_value_checks_it():
    """A value option without choices or a checking type would accept anything; one
    that really takes any text says so with `paged_kv.cli._common.text`."""
    for name, command in _commands().items():
        for action in _options(command):
            assert action.choices is not None or action.type not in (None, str), (
                f"paged-kv {name} {action.option_strings[-1]}: give it choices or a type")
    assert text.bad_values == ()  # the explicit way to take any text


def test_help_shows_every_default_and_choice_and_no_markup():
    for name, command in _commands().items():
        shown = " ".join(command.format_help().split())
        assert "``" not in shown, f"paged-kv {name} --help shows raw markup"
        for action in command._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, f"paged-kv {name} {action.option_strings[-1]}: no help text"
            default = action.default
            if default not in (None, False):
                expected = ", ".join(map(str, default)) if isinstance(default, list) else default
                assert f"(default: {expected})" in shown, (name, action.option_strings)
            for choice in action.choices or getattr(action.type, "choices", None) or ():
                assert str(choice) in shown, (name, action.option_strings, choice)


@pytest.mark.parametrize("name", sorted(_commands()))
def test_a_bad_device_setting_is_refused_by_every_command(name, monkeypatch, capsys, no_work):
    monkeypatch.setenv("PAGED_KV_DEVICE", "banana")
    assert main([name]) == 2
    assert "PAGED_KV_DEVICE must be 'gpu' or 'sim'" in _one_error_line(capsys)


def test_a_gpu_asked_for_without_one_is_refused_by_kernel_commands(monkeypatch, capsys,
                                                                    no_work):
    monkeypatch.setenv("PAGED_KV_DEVICE", "gpu")
    monkeypatch.setattr(device, "gpu_present", lambda: False)
    kernel_commands = [n for n, c in _commands().items() if c.get_default("runs_kernels")]
    assert "demo" in kernel_commands
    for name in kernel_commands:
        assert main([name]) == 2
        assert "PAGED_KV_DEVICE=gpu, but the CUDA driver reports no GPU" in _one_error_line(
            capsys)


# Cases that are easy to get wrong (a traceback, or a message that names no flag), with the
# flag each must name.
NAMED_CASES = [
    (["fragmentation", "--block-size", "0"], "--block-size"),
    (["fragmentation", "--block-size", "100000"], "--block-size"),
    (["timeline", "--block-size", "4096", "--kv-gib", "4"], "--block-size"),  # 1 block < 2048
    (["fragmentation", "--num-requests", "0"], "--num-requests"),
    (["fragmentation", "--kv-gib", "-3"], "--kv-gib"),
    (["fragmentation", "--kv-gib", "0.5"], "--kv-gib"),  # fewer slots than one sequence
    (["timeline", "--seed", "-1"], "--seed"),
    (["fragmentation", "--workload", "azure-conv", "--rate", "5"], "--rate"),
    (["block-size", "--block-sizes", "0", "16"], "--block-sizes"),
    (["block-size", "--block-sizes", "16,16"], "--block-sizes"),  # lists: comma-separated
    (["replay", "--capacity", "1e4"], "--capacity"),
    (["replay", "--output", ""], "--output"),
    (["replay", "--output", "/missing/dir/r.csv"], "--output"),
    (["replay", "--output", "/etc/passwd/r.csv"], "--output"),
    (["fragmentation", "--figure", ""], "--figure"),
    (["fragmentation", "--figure", "/missing/dir/x.png"], "--figure"),
    (["demo", "--model", "opt-13b"], "--model"),  # minutes in the simulator
    (["timeline", "--scheme", "max", "--block-size", "32"], "--block-size"),
    (["block-map", "--num-blocks", "10"], "--num-blocks"),
    (["fragmentation", "--rat", "5"], "unrecognized arguments: --rat"),  # no abbreviations
]


@pytest.mark.parametrize("argv, flag", NAMED_CASES, ids=[" ".join(a) for a, _ in NAMED_CASES])
def test_the_named_cases(argv, flag, capsys, no_work, monkeypatch):
    monkeypatch.setattr(device, "device_kind", lambda: "sim")  # the estimate is for the sim
    assert main(argv) == 2
    line = _one_error_line(capsys)
    expected = flag if flag.startswith("unrecognized") else f"argument {flag}"
    assert line.startswith(f"paged-kv {argv[0]}: error: {expected}"), line


# Values each fine alone that do not work together, or that the run would only find out
# after its work (a traceback, or minutes and gigabytes): refused up front all the same.
COMBINATION_CASES = [
    (["kv-quant", "--kv-gib", "0.0001"], "--kv-gib"),  # no block: a division by zero
    (["kv-quant", "--tokens", "100000"], "--tokens"),  # 102M elements per K/V array
    (["kv-quant", "--queries", "1024", "--tokens", "8192", "--kv-heads", "16", "--head-dim",
      "64"], "--queries"),
    (["kv-quant", "--outlier-channels", "200"], "--outlier-channels"),
    (["generate", "--block-size", "64", "--prompt-blocks", "4"], "--prompt-blocks"),
    (["generate", "--block-size", "256"], "--block-size"),  # one prompt block is too long

]


@pytest.mark.parametrize("argv, flag", COMBINATION_CASES,
                         ids=[" ".join(a) for a, _ in COMBINATION_CASES])
def test_combinations_that_cannot_work_are_refused_naming_a_flag(argv, flag, capsys, no_work):
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"paged-kv {argv[0]}: error: argument {flag}:"), line


@pytest.mark.parametrize("path", ["/proc/paged-kv.csv", "/sys/paged-kv.csv"])
def test_a_file_on_a_pseudo_file_system_is_refused_before_the_run(path, capsys, no_work):
    """Tried by creating it, not by os.access, which says yes to root everywhere."""
    assert main(["replay", "--output", path]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("paged-kv replay: error: argument --output: cannot write"), line
    figure = path.replace(".csv", ".png")
    assert main(["timeline", "--figure", figure]) == 2
    assert _one_error_line(capsys).startswith("paged-kv timeline: error: argument --figure:")


def test_a_read_only_file_system_is_refused_before_the_run(tmp_path, monkeypatch, capsys,
                                                            no_work):
    """What a read-only mount answers (EROFS, for root too), as the kernel would."""
    import errno
    import os

    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).startswith(str(tmp_path)) and flags & (os.O_WRONLY | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    assert main(["replay", "--output", str(tmp_path / "r.csv")]) == 2
    assert "(read-only file system)" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_the_probe_leaves_an_existing_file_as_it_was_and_a_new_one_absent(tmp_path):
    from paged_kv.cli._types import cannot_write

    old = tmp_path / "old.csv"
    old.write_text("keep me\n")
    before = old.stat()
    assert cannot_write(old) is None and cannot_write(tmp_path / "new.csv") is None
    assert old.read_text() == "keep me\n" and old.stat().st_mtime_ns == before.st_mtime_ns
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.csv"]


def test_every_file_beside_the_output_is_tried_before_the_run(tmp_path, capsys, no_work):
    """block-map writes its summary table to FILE.summary.csv beside FILE.csv."""
    (tmp_path / "r.summary.csv").mkdir()
    assert main(["block-map", "--output", str(tmp_path / "r.csv")]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("paged-kv block-map: error: argument --output: cannot write"), line
    assert "r.summary.csv" in line and "summary table" in line
    assert main(["block-map", "--output", str(tmp_path / "r.csv"), "--figure",
                 str(tmp_path / "r.csv")]) == 2
    assert "argument --figure:" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.summary.csv"]


def _trace_file(tmp_path, name, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def _nothing_listening() -> str:
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: nobody listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


# Sizes the run would only find out about after its work (gigabytes, an array that does
# not fit, an int64 that overflows), traces it could not read, and messages that named
# the wrong flag: each refused in one line naming its flag, before any work.
def size_cases(tmp_path):
    return [
        (["block-size", "--num-requests", str(10**12)], "--num-requests"),
        (["block-size", "--num-requests", str(2**70)], "--num-requests"),
        (["sharing", "--num-requests", str(10**11)], "--num-requests"),
        (["sharing", "--num-requests", str(2**70)], "--num-requests"),
        (["timeline", "--num-requests", str(10**12)], "--num-requests"),
        (["fragmentation", "--duration", "1e12"], "--duration"),
        (["fragmentation", "--rate", "1e12"], "--rate"),
        (["fragmentation", "--num-requests", str(10**12)], "--num-requests"),
        (["throughput", "--duration", "1e12"], "--duration"),
        (["fragmentation", "--kv-gib", "1e9"], "--kv-gib"),
        (["timeline", "--kv-gib", "1e12"], "--kv-gib"),
        (["replay", "--capacity", "99999999999999999999999"], "--capacity"),
        (["replay", "--capacity", str(2**70)], "--capacity"),
        (["sweep", "--capacities", f"10,{2**70}"], "--capacities"),
        (["kv-quant", "--outlier-scale", "1e308"], "--outlier-scale"),
        (["kv-quant", "--tokens", str(10**12)], "--tokens"),
        (["block-map", "--num-blocks", str(10**12)], "--num-blocks"),
        (["generate", "--samples", "65"], "--samples"),
        (["generate", "--new-tokens", "1000000000"], "--new-tokens"),
        (["generate", "--prompt-blocks", str(10**12)], "--prompt-blocks"),
        (["replay", "--trace", _trace_file(
            tmp_path, "big.jsonl", b'{"input_length": 100000000000000000000, "hash_ids": [1]}\n'
        )], "--trace"),
        (["replay", "--trace", _trace_file(
            tmp_path, "bigkey.jsonl", b'{"input_length": 10, "hash_ids": [%d]}\n' % 2**70
        )], "--trace"),
        (["sweep", "--trace", _trace_file(
            tmp_path, "float.jsonl", b'{"input_length": 1e20, "hash_ids": [1]}\n')], "--trace"),
        (["replay", "--trace", _trace_file(
            tmp_path, "latin1.jsonl", b'{"input_length": 10, "hash_ids": [1]}\n\xff\xfe\n'
        )], "--trace"),
        (["sweep", "--trace", _trace_file(
            tmp_path, "latin1.csv", b"input_length,hash_ids\n10,1 \xe9\n")], "--trace"),
        (["replay", "--trace", _trace_file(tmp_path, "broken.jsonl.gz", b"\x1f\x8bnot gzip")],
         "--trace"),
        (["sweep", "--scheduler", _nothing_listening()], "--scheduler"),
    ]


def test_sizes_traces_and_servers_the_run_cannot_use_are_refused_naming_the_flag(
        tmp_path, capsys, no_work, monkeypatch):
    import time

    from paged_kv.cli import _preflight

    monkeypatch.setattr(_preflight, "available_memory", lambda: 64 * 2**30)  # a large machine
    for argv, flag in size_cases(tmp_path):
        started = time.monotonic()
        assert main(argv) == 2, argv
        line = _one_error_line(capsys)
        assert line.startswith(f"paged-kv {argv[0]}: error: argument {flag}:"), line
        assert time.monotonic() - started < _preflight.CONNECT_TIMEOUT_S, argv
        if flag == "--trace":
            assert str(tmp_path) in line and "line " in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["big.jsonl", "bigkey.jsonl", "float.jsonl", "latin1.jsonl", "latin1.csv",
         "broken.jsonl.gz"])


def test_a_run_larger_than_memory_names_the_estimate_and_allow_large_lets_it_run(
        monkeypatch, capsys):
    import paged_kv.cli.timeline as timeline
    from paged_kv.cli import _preflight

    ran = []
    monkeypatch.setattr(timeline, "run", lambda args: ran.append(args.num_requests) or 0)
    monkeypatch.setattr(_preflight, "available_memory", lambda: 2**30)
    assert main(["timeline", "--num-requests", "100000"]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("paged-kv timeline: error: argument --num-requests: serving "
                           "100,000 requests would take about 3.8 GiB of memory, more than "
                           "the 1.0 GiB available here; pass --allow-large"), line
    assert main(["timeline", "--num-requests", "100000", "--allow-large"]) == 0
    assert main(["timeline", "--num-requests", "2000"]) == 0  # the default: 78 MiB
    assert ran == [100000, 2000]


def test_the_scheduler_check_waits_at_most_its_timeout(monkeypatch):
    import socket

    from paged_kv.cli._parser import UsageError
    from paged_kv.cli._preflight import CONNECT_TIMEOUT_S, check_reachable

    waited = []

    def no_answer(address, timeout):
        waited.append(timeout)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", no_answer)
    with pytest.raises(UsageError, match=r"argument --scheduler: nothing answers at "
                                         r"tcp://10\.0\.0\.1:8786 \(timed out; waited up to 5 s"):
        check_reachable("--scheduler", "tcp://10.0.0.1:8786")
    assert waited == [CONNECT_TIMEOUT_S] == [5.0]
    check_reachable("--scheduler", "inproc://somewhere:1")  # not TCP: not tried
    assert waited == [5.0]


def test_the_simulator_estimate_is_announced_and_allow_slow_lets_it_run(monkeypatch, capsys):
    import paged_kv.cli.demo as demo_command

    monkeypatch.setattr(device, "device_kind", lambda: "sim")
    monkeypatch.setattr(demo_command, "run", lambda args: 0)
    assert main(["demo", "--model", "opt-13b", "--allow-slow"]) == 0
    assert "the demo on opt-13b: about" in capsys.readouterr().err
    assert main(["demo"]) == 0  # tiny: nothing to announce
    assert capsys.readouterr().err == ""
