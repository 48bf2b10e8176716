"""Test set-up: kernels run in Numba's CUDA simulator unless PAGED_KV_DEVICE says otherwise.

`scripts/gpu_check.sh` sets ``PAGED_KV_DEVICE=gpu`` to run the same kernel tests on a GPU
(``-m "device or gpu"``: pyproject.toml registers the markers), and
``PAGED_KV_TESTS_STOP_AT`` (seconds since the epoch): past it no further test starts,
and pytest ends with its report rather than being killed by the step's time limit. A
test marked ``gpu`` is skipped here under the simulator, with the reason its marker
gives; executed notebooks are marked ``notebook``.
paged_kv takes its ``cuda`` module from `paged_kv.gpu.device.cuda_api` whatever numba was
imported as; for tests that write ``from numba import cuda`` to build arrays, the
simulator run also turns numba's own simulator on (this harness's choice, made before
any test module imports numba; importing paged_kv itself writes no environment).
"""

import os
import sys
import time

import pytest

os.environ.setdefault("PAGED_KV_DEVICE", "sim")
if os.environ["PAGED_KV_DEVICE"] == "sim":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")


@pytest.fixture
def fast_simulator_barriers():
    """The simulator polls its barriers under the GIL: a 0.2 ms switch interval (not
    5 ms) makes each barrier of a kernel that synchronizes cost ~25x less wall time.
    Speed only. Kernel test modules use it with
    ``pytestmark = pytest.mark.usefixtures("fast_simulator_barriers")``."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(2e-4)
    yield
    sys.setswitchinterval(before)


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu`` tests under the simulator; mark nbmake's notebooks ``notebook``."""
    from paged_kv.gpu.device import is_simulator

    simulator = is_simulator()
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.notebook)
        gpu = item.get_closest_marker("gpu")
        if gpu is not None and simulator:
            reason = gpu.kwargs.get("reason", "needs a GPU")
            item.add_marker(pytest.mark.skip(reason=f"needs a GPU: {reason}"))


def pytest_runtest_teardown(item, nextitem):
    """Stop the session once ``PAGED_KV_TESTS_STOP_AT`` has passed (module docstring)."""
    stop_at = os.environ.get("PAGED_KV_TESTS_STOP_AT")
    if stop_at and nextitem is not None and time.time() >= float(stop_at):
        item.session.shouldstop = (f"PAGED_KV_TESTS_STOP_AT ({stop_at}) passed: the "
                                   f"tests after {item.nodeid} did not run")


@pytest.fixture
def hf_env(monkeypatch):
    """Hugging Face tests: nothing is downloaded (``HF_HUB_OFFLINE=1``), and torch runs
    on one thread (the tiny models' matmuls only queue behind other work otherwise; on a
    loaded two-core machine that is 5x slower). Test modules use it with
    ``pytestmark = pytest.mark.usefixtures("hf_env")``."""
    torch = pytest.importorskip("torch", reason="the hf extra (torch, transformers) is "
                                "not installed: pip install -e '.[hf]'")
    pytest.importorskip("transformers", minversion="5.24",
                        reason="the hf extra is not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
