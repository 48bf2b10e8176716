"""scripts/gpu_check.sh keeps working: its dry run (simulator, tiny sizes) passes every
step within the machine's limits; a failed, timed-out or unstarted step, or a failed
probe, still ends in the summary with each step's status. What it measures needs a GPU.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
STEPS = ("probe", "tests", "copy bench", "attention", "big pool", "quantized",
         "hf decode")
MAX_FILES = 6  # the device tool brings back at most 8 files from $OUT


def run_check(tmp_path: Path, *args: str, python: str = sys.executable, timeout: int = 400,
              **env_updates: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PAGED_KV_DEVICE", "NUMBA_ENABLE_CUDASIM", "PYTHONPYCACHEPREFIX")}
    env.update(OUT=str(out), PYTHON=python, **env_updates)
    done = subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return done, out


def summary_rows(text: str) -> dict[str, tuple[int, str]]:
    """{step: (seconds, status)} from the summary's rows."""
    rows = {}
    for line in text[text.index("== summary"):].splitlines():
        match = re.match(r"(probe|tests|copy bench|attention|big pool|quantized|hf decode)"
                         r"\s+(\d+) s  (.+)", line)
        if match:
            rows[match.group(1)] = (int(match.group(2)), match.group(3))
    return rows


@pytest.mark.slow
def test_dry_run_passes_every_step_in_budget_leaving_few_files_and_no_bytecode(
        tmp_path: Path) -> None:
    done, out = run_check(tmp_path, "--dry-run")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    rows = summary_rows(done.stdout)
    assert list(rows) == list(STEPS) and all(status == "passed" for _, status in rows.values())
    assert "DRY RUN under the CUDA simulator" in done.stdout
    elapsed = int(re.search(r"== summary \(\S+, (\d+) s of 540 s\)", done.stdout).group(1))
    assert elapsed <= 540
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert len(files) <= MAX_FILES, files
    assert set(files) == {"gpu_check.log", "summary.txt", "results.md", "attention.json",
                          "quantized.json", "hf_decode.json"}
    assert "| swap in kernel scattered |" in (out / "results.md").read_text()
    assert "probe passed" in (out / "gpu_check.log").read_text()
    assert (out / "summary.txt").read_text().splitlines()[0].startswith("== summary")
    # the GPU-only tests, selected by marker, each skipped under the simulator
    assert re.search(r"^tests: \d+ skipped, \d+ deselected in ", done.stdout, re.M), done.stdout


def fake_python(tmp_path: Path, behaviour: str) -> str:
    """A stand-in interpreter: `behaviour` is a bash case body on "$*" (the arguments);
    anything else runs the real interpreter."""
    path = tmp_path / "python"
    path.write_text(f'#!/usr/bin/env bash\ncase "$*" in\n{behaviour}\nesac\n'
                    f'exec {sys.executable} "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_failed_timed_out_and_unstarted_steps_still_end_in_the_summary(tmp_path: Path) -> None:
    python = fake_python(tmp_path, """
    *gpu_probe.py*) echo "probe passed in 0.0 s"; exit 0 ;;
    *"-m pytest"*) echo "stop at $PAGED_KV_TESTS_STOP_AT"; echo "2 failed, 3 passed in 0.1s"
                   exit 1 ;;
    *kernels.py*) echo "| a table |"; exit 0 ;;
    *attention.py*) sleep 60 ;;
    """)
    done, out = run_check(tmp_path, python=python, timeout=120, TOTAL_S="14")
    assert done.returncode == 1, done.stdout[-3000:]
    rows = summary_rows(done.stdout)
    assert rows["probe"][1] == "passed" and rows["copy bench"][1] == "passed"
    assert rows["tests"][1] == "FAILED (exit 1)"
    assert rows["attention"][1].startswith("TIMED OUT after ")
    assert rows["big pool"][1] == rows["quantized"][1] == "not run: no time left"
    assert "tests: 2 failed, 3 passed in 0.1s" in done.stdout
    # pytest is told to stop itself 20 s before the step's limit (then it still reports)
    stop_at = int(re.search(r"^stop at (\d+)$", done.stdout, re.M).group(1))
    assert 0 < stop_at - time.time() <= 200 - 20
    assert (out / "summary.txt").read_text() in done.stdout


def test_the_hf_step_is_skipped_saying_why_and_the_check_still_passes(tmp_path: Path) -> None:
    """The lent machines' transformers may be older than paged_kv.hf needs: the decode step
    is skipped with the reason in the summary, and the other steps decide the status."""
    python = fake_python(tmp_path, """
    *gpu_probe.py*) echo "probe passed in 0.0 s"; exit 0 ;;
    *"-m pytest"*) echo "3 passed in 0.1s"; exit 0 ;;
    *"import transformers"*) echo "transformers 5.17.0 found, 5.24 or newer needed"; exit 0 ;;
    *benchmarks/*) echo "| a table |"; exit 0 ;;
    """)
    done, out = run_check(tmp_path, python=python, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    rows = summary_rows(done.stdout)
    assert rows["hf decode"] == (0, "skipped: transformers 5.17.0 found, 5.24 or newer needed")
    assert all(rows[step][1] == "passed" for step in STEPS[:-1])
    assert "skipped: transformers 5.17.0" in (out / "results.md").read_text()


def test_a_failed_probe_stops_the_check_with_its_one_line_reason(tmp_path: Path) -> None:
    reason = "PROBE FAILED: numba-cuda 0.19.0 found, 0.20 or newer needed"
    python = fake_python(tmp_path, f'*gpu_probe.py*) echo "{reason}"; exit 1 ;;')
    done, out = run_check(tmp_path, python=python, timeout=60)
    assert done.returncode == 2, done.stdout[-3000:]
    assert list(summary_rows(done.stdout)) == ["probe"]
    assert f"probe: {reason}" in (out / "summary.txt").read_text()


def test_modules_whose_optional_packages_are_missing_or_old_skip_with_their_reason(
        tmp_path: Path) -> None:
    """pytest imports every test module, selected or not, so a module needing a package
    a GPU machine lacks must skip, one line each, not fail the tests step. Stand-ins
    play such a machine: transformers 5.17.0 (the adapter needs 5.24: ``generate(cache=)``
    and ``Cache.update(..., kwargs=)``) and no hypothesis."""
    pytest.importorskip("torch")
    fake = tmp_path / "site"
    (fake / "transformers").mkdir(parents=True)
    (fake / "transformers" / "__init__.py").write_text('__version__ = "5.17.0"\n')
    (fake / "hypothesis").mkdir()
    (fake / "hypothesis" / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named \'hypothesis\'", name="hypothesis")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(ROOT)])}
    modules = sorted([*(ROOT / "tests").glob("test_hf_*.py"),
                      ROOT / "tests" / "test_cache_stateful.py"])
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-rs",
                           "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                           *map(str, modules)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert "error" not in done.stdout.lower(), done.stdout[-3000:]
    skipped = dict(re.findall(r"^SKIPPED \[1\] tests/(test_\w+)\.py:\d+: (.*)$", done.stdout,
                              re.M))
    assert sorted(skipped) == [m.stem for m in modules], done.stdout[-3000:]
    assert "hypothesis" in skipped.pop("test_cache_stateful")
    assert all("5.17.0" in why and "5.24" in why for why in skipped.values()), skipped


def test_pytest_stops_itself_at_the_time_it_is_given_and_still_reports() -> None:
    """``PAGED_KV_TESTS_STOP_AT`` (seconds since the epoch, as gpu_check.sh sets it for
    its tests step): past it, pytest runs no further test and ends with its report
    (failures, counts, status 2) instead of being killed by the step's limit."""
    env = {**os.environ, "PAGED_KV_TESTS_STOP_AT": str(int(time.time()) - 1)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_block_table.py"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout[-2000:]
    assert re.search(r"^1 passed in ", done.stdout.replace("=", "").strip().splitlines()[-1]
                     .strip(), re.M), done.stdout[-2000:]
    assert "PAGED_KV_TESTS_STOP_AT" in done.stdout
