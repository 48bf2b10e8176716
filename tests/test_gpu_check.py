"""scripts/gpu_check.sh keeps working: its dry run (simulator, tiny sizes) passes every
step and writes every output under $OUT. What it measures needs a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_passes_every_step_and_writes_under_out(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PAGED_KV_DEVICE", "NUMBA_ENABLE_CUDASIM")}
    env.update(OUT=str(out), PYTHON=sys.executable)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    summary = done.stdout[done.stdout.index("== summary"):]
    for step in ("tests", "demo", "compile check", "copy benchmark", "big pool"):
        assert f"{step}:" in summary and "failed" not in summary, summary
    assert "DRY RUN under the CUDA simulator" in summary
    for name in ("gpu_check.txt", "benchmark.md", "big_pool.txt", "compile_check.txt"):
        assert (out / name).stat().st_size > 0, name
    assert "| swap in kernel scattered |" in (out / "benchmark.md").read_text()
    assert (out / "gpu_check.txt").read_text().rstrip().endswith("exit status:        0")
