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
    (["generate", "--block-size", "256", "--prompt-blocks", "4"], "--prompt-blocks"),
    (["timeline", "--no-figure", "--figure", "t.png"], "--no-figure"),
]


@pytest.mark.parametrize("argv, flag", COMBINATION_CASES,
                         ids=[" ".join(a) for a, _ in COMBINATION_CASES])
def test_combinations_that_cannot_work_are_refused_naming_a_flag(argv, flag, capsys, no_work):
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"paged-kv {argv[0]}: error: argument {flag}:"), line


def test_an_unwritable_output_is_refused_before_the_run(tmp_path, monkeypatch, capsys, no_work):
    monkeypatch.setattr("os.access", lambda path, mode: False)  # as root, nothing is read-only
    assert main(["replay", "--output", str(tmp_path / "r.csv")]) == 2
    assert "permission denied" in _one_error_line(capsys)
    assert not (tmp_path / "r.csv").exists()


def test_the_simulator_estimate_is_announced_and_allow_slow_lets_it_run(monkeypatch, capsys):
    import paged_kv.cli.demo as demo_command

    monkeypatch.setattr(device, "device_kind", lambda: "sim")
    monkeypatch.setattr(demo_command, "run", lambda args: 0)
    assert main(["demo", "--model", "opt-13b", "--allow-slow"]) == 0
    assert "the demo on opt-13b: about" in capsys.readouterr().err
    assert main(["demo"]) == 0  # tiny: nothing to announce
    assert capsys.readouterr().err == ""
