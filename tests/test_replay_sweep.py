"""Sweeps: the same frame serially, on local worker processes, and on a Dask cluster."""

import pandas as pd
import pytest

from paged_kv.sim import load_trace
from paged_kv.sim.replay import replay
from paged_kv.sim.replay_arrays import TraceArrays
from paged_kv.sim.replay_sweep import COLUMNS, sweep

POLICIES = ["lru", "fifo", "belady", "length_aware"]
CAPACITIES = [20, 400, None]


@pytest.fixture(scope="module")
def head():
    return load_trace("mooncake-conversation").head(400)


@pytest.fixture(scope="module")
def serial(head):
    return sweep(head, CAPACITIES, POLICIES, workers=1, progress=False)


def test_serial_sweep_has_a_row_per_point_in_order(serial, head):
    assert list(serial.columns) == list(COLUMNS)
    assert list(serial["policy"]) == [p for p in POLICIES for _ in CAPACITIES]
    assert serial["capacity"].isna().tolist() == [False, False, True] * len(POLICIES)
    row = serial.iloc[1]
    result = replay(head, 400, "lru")
    assert (row["hit_rate"], row["block_hit_rate"], row["evictions"], row["requests"]) == (
        result.hit_rate, result.block_hit_rate, result.evictions, len(head))
    assert row["hit_tokens"] == result.requests["hit_tokens"].sum()
    assert serial.attrs["trace_checksum"] == TraceArrays.from_workload(head).checksum
    assert serial.attrs["engine"] == "compiled" and serial.attrs["trace_requests"] == 400


def test_manager_engine_gives_the_same_frame(serial, head):
    manager = sweep(head, CAPACITIES, POLICIES, engine="manager", workers=1, progress=False)
    pd.testing.assert_frame_equal(manager, serial)


def test_local_worker_processes_give_the_same_frame(serial, head):
    parallel = sweep(head, CAPACITIES, POLICIES, workers=2, progress=False)
    pd.testing.assert_frame_equal(parallel, serial)


@pytest.mark.slow
def test_two_worker_dask_cluster_gives_the_same_frame(serial, head):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            on_client = sweep(head, CAPACITIES, POLICIES, scheduler=client, progress=False)
            assert len(client.scheduler_info()["workers"]) == 2
        by_address = sweep(head, CAPACITIES[:1], POLICIES[:1],
                           scheduler=cluster.scheduler_address, progress=False)
    pd.testing.assert_frame_equal(on_client, serial)
    pd.testing.assert_frame_equal(by_address, serial.iloc[:1])


def test_bad_sweep_arguments(head):
    with pytest.raises(ValueError, match="engine"):
        sweep(head, [10], ["lru"], engine="gpu")
    with pytest.raises(ValueError, match="workers"):
        sweep(head, [10], ["lru"], workers=0)
    with pytest.raises(ValueError, match="valid names"):
        sweep(head, [10], ["mru"])
    with pytest.raises(ValueError, match="capacity"):
        sweep(head, [-1], ["lru"])
    with pytest.raises(ValueError, match="scheduler"):
        sweep(head, [10], ["lru"], scheduler=42)


def test_sweep_modules_do_not_import_numba_until_the_engine_runs():
    import subprocess
    import sys

    code = ("import sys, paged_kv.sim.replay_sweep, paged_kv.sim.replay_arrays, "
            "paged_kv.sim.replay_synthetic, paged_kv.sim.replay_mooncake; "
            "print('numba' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"
