"""benchmarks/kernels.py keeps working: a tiny run of every row, the big-pool check at a
tiny size, and the simulator notice."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from paged_kv.gpu import device
from paged_kv.gpu.device import is_simulator

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kernels.py"


def _load():
    spec = importlib.util.spec_from_file_location("paged_kv_kernel_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_tiny_run_prints_every_row(capsys: pytest.CaptureFixture[str]) -> None:
    assert _load().main(["--tiny"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    names = [row.split("|")[1].strip() for row in rows[1:]]
    swaps = [f"{direction} {method} {order}"
             for order in ("contiguous", "scattered")
             for method in ("memcpy", "kernel")
             for direction in ("swap out", "swap in")]
    assert names == (["slot write", "gather", "block copy"] + swaps) * 2  # two sizes
    assert rows[0].split("|")[1].strip() == "operation"
    assert all(row.rstrip(" |").endswith("(0.8)") for row in rows[1:])


def test_tiny_big_pool_check_verifies_every_wrapper(capsys: pytest.CaptureFixture[str]) -> None:
    assert _load().main(["--tiny", "--big-pool"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.endswith(": ok") for line in lines) == 4  # write+gather, copy, 2 swaps


@pytest.mark.skipif(not is_simulator(), reason="the notice is what the simulator prints")
def test_simulator_run_says_it_needs_a_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert _load().main([]) == 0
    assert "needs an NVIDIA GPU" in capsys.readouterr().out


def test_big_pool_check_reads_its_mapped_pool_through_host_copy(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """On a GPU a mapped array is numba-cuda's MappedNDArray, whose ``copy_to_host``
    fails (`paged_kv.gpu.device.host_copy` says why; tests/test_gpu_driver_path.py reads
    a real one): the benchmark must read its mapped pool with `host_copy`."""
    module = _load()
    made, read = [], []

    class Api:
        def __getattr__(self, name: str):
            return getattr(device.cuda_api(), name)

        def mapped_array(self, *args, **kwargs):
            made.append(device.cuda_api().mapped_array(*args, **kwargs))
            return made[-1]

    real_host_copy = device.host_copy

    def host_copy(array):
        read.append(array)
        return real_host_copy(array)

    monkeypatch.setattr(module, "cuda", Api())
    monkeypatch.setattr(device, "host_copy", host_copy)
    assert module.main(["--tiny", "--big-pool"]) == 0
    assert len(made) == 1 and len(read) == 2 and all(a is made[0] for a in read)  # 2 methods
    assert capsys.readouterr().out.count(": ok") == 4
