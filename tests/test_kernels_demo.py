"""The data-plane demo verifies real bytes, and reports a mismatch as a failure."""

from __future__ import annotations

import io

import numpy as np
import pytest

from paged_kv.gpu.device import device_name
from paged_kv.gpu.storage import KVStorage
from paged_kv.studies.demo import run_demo

pytestmark = pytest.mark.device  # kernels: the simulator here, the GPU in gpu_check.sh


def test_demo_verifies_every_step() -> None:
    out = io.StringIO()
    assert run_demo("tiny", seed=0, file=out) is True
    text = out.getvalue()
    assert f"on {device_name()}" in text
    verified = [line for line in text.splitlines() if line.startswith("verified")]
    assert len(verified) == 5
    for word in ("slot write", "start offsets", "block copy", "swap out", "swap in"):
        assert any(word in line for line in verified), word
    assert text.rstrip().endswith("all verified")


def test_demo_reports_corrupted_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    real_gather = KVStorage.gather

    def corrupt(self, *args, **kwargs):
        k, v = real_gather(self, *args, **kwargs)
        if k.size:
            k.view(np.uint8)[0] ^= 1  # flip one bit
        return k, v

    monkeypatch.setattr(KVStorage, "gather", corrupt)
    out = io.StringIO()
    assert run_demo("tiny", seed=0, file=out) is False
    assert "FAILED" in out.getvalue() and "all verified" not in out.getvalue()
