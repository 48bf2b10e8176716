"""The device choice: made before numba loads, overridable, never failing without a GPU."""

import os
import subprocess
import sys

import pytest

import paged_kv
from paged_kv import device

PROBE = (
    "import paged_kv, sys; "
    "print(paged_kv.device.device_kind(), paged_kv.device_name(), 'numba' in sys.modules)"
)


def run(env_updates):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PAGED_KV_DEVICE", "NUMBA_ENABLE_CUDASIM")}
    env.update(env_updates)
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          env=env, timeout=120)
    return done


def test_this_test_session_runs_the_simulator():
    assert device.device_kind() == "sim" and device.is_simulator()
    assert paged_kv.device_name() == "CUDA simulator"
    assert os.environ["NUMBA_ENABLE_CUDASIM"] == "1"


def test_override_to_sim_and_import_does_not_load_numba():
    done = run({"PAGED_KV_DEVICE": "sim"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["sim", "CUDA", "simulator", "False"]


@pytest.mark.skipif(device._driver_reports_a_device(), reason="this machine has a GPU")
def test_without_a_driver_the_package_chooses_the_simulator_by_itself():
    done = run({})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "sim"


def test_a_bad_override_is_a_clear_error():
    done = run({"PAGED_KV_DEVICE": "tpu"})
    assert done.returncode != 0
    assert "PAGED_KV_DEVICE must be one of ('gpu', 'sim'), got 'tpu'" in done.stderr
