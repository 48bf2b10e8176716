"""Sweeps: the same frame serially, on local worker processes, and on a Dask cluster."""

import pandas as pd
import pytest

from paged_kv.sim import load_trace, replay_sweep
from paged_kv.sim.replay import TierSetting, replay
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


def test_a_tiered_sweep_splits_the_hit_rate_by_tier(head):
    kwargs = dict(host_capacities=[0, 300], disk_capacities=[0, 2000],
                  placements=["write_back", "selective"], host_policy="arc", warmup=0.25,
                  progress=False)
    serial = sweep(head, [20, 400], ["lru", "fifo"], workers=1, **kwargs)
    assert len(serial) == 2 * 2 * 2 * 2 * 2
    # for policy: for placement: for capacity: for host: for disk
    assert list(serial["placement"][:8]) == ["write_back"] * 8
    assert list(serial["capacity"][:4]) == [20] * 4
    assert list(serial["host_capacity"][:4]) == [0, 0, 300, 300]
    assert list(serial["disk_capacity"][:4]) == [0, 2000, 0, 2000]
    row = serial.iloc[3]  # lru, write_back, 20 GPU blocks, host 300, disk 2000
    result = replay(head, 20, "lru", host_capacity=300, disk_capacity=2000,
                    host_policy="arc", placement="write_back", warmup=0.25)
    rates = result.tier_hit_rates()
    assert (row["gpu_hit_rate"], row["host_hit_rate"], row["disk_hit_rate"]) == pytest.approx(
        (rates["gpu"], rates["host"], rates["disk"]), abs=1e-15)
    assert row["hit_rate"] == result.hit_rate
    summary = result.tier_summary()
    for name in ("loaded_host", "loaded_disk", "stored_gpu_host", "stored_gpu_disk",
                 "stored_host_disk"):
        assert row[name] == summary[name]
    assert row["host_hit_rate"] + row["disk_hit_rate"] > 0 and row["stored_host_disk"] > 0
    # without tiers a row is the one-tier row, whatever the placement
    plain = serial[(serial["host_capacity"] == 0) & (serial["disk_capacity"] == 0)]
    assert (plain["hit_rate"] == plain["gpu_hit_rate"]).all()
    manager = sweep(head, [20, 400], ["lru", "fifo"], engine="manager", workers=1, **kwargs)
    pd.testing.assert_frame_equal(manager, serial)
    # what a worker process runs for a point (its tiers included), here in this process
    replay_sweep._init_worker(TraceArrays.from_workload(head))
    tiers = TierSetting(300, "arc", 2000, "lru", "write_back")
    assert replay_sweep._run_in_worker("lru", 20, 0.25, "compiled", tiers) == \
        serial.iloc[3].to_dict() | {"capacity": 20}


def test_bad_tier_arguments(head):
    with pytest.raises(ValueError, match="host_capacity"):
        sweep(head, [10], ["lru"], host_capacities=[-1], progress=False)
    with pytest.raises(ValueError, match="placement"):
        sweep(head, [10], ["lru"], host_capacities=[5], placements=["write_around"],
              progress=False)
    with pytest.raises(ValueError, match="compiled engine runs the host tier with lru or arc"):
        sweep(head, [10], ["lru"], host_capacities=[5], host_policy="lfu", progress=False)


def test_a_capacity_past_unbounded_runs_as_unbounded(serial, head):
    """Nothing is evicted past the unbounded capacity: the pool is not built larger (a
    capacity of 2**63 - 1 blocks runs in no time), and the numbers are the unbounded ones."""
    huge = 2**63 - 1
    for engine in ("compiled", "manager"):
        frame = sweep(head, [huge], ["lru"], engine=engine, workers=1, progress=False)
        unbounded = serial[(serial["policy"] == "lru") & serial["capacity"].isna()]
        assert frame["capacity"].tolist() == [huge]
        pd.testing.assert_frame_equal(frame.drop(columns="capacity"),
                                      unbounded.drop(columns="capacity").reset_index(drop=True))
    with pytest.raises(ValueError, match=r"capacity must be an integer in \[1, 2\*\*63 - 1\]"):
        sweep(head, [2**63], ["lru"], workers=1, progress=False)


def test_stopping_the_pool_kills_running_points_at_once():
    import time
    from concurrent.futures import ProcessPoolExecutor

    from paged_kv.sim.replay_sweep import _stop

    pool = ProcessPoolExecutor(2)
    futures = [pool.submit(time.sleep, 60) for _ in range(4)]
    while not any(f.running() for f in futures):
        time.sleep(0.01)
    processes = list(pool._processes.values())
    started = time.monotonic()
    _stop(pool)
    assert time.monotonic() - started < 30  # killed, not waited for (the points sleep 60 s)
    assert not any(p.is_alive() for p in processes)


def test_an_interrupted_sweep_stops_its_workers(head, monkeypatch):
    """Ctrl-C while points run: the workers are ended, not waited for."""
    import paged_kv.sim.replay_sweep as replay_sweep

    stopped = []
    real_stop = replay_sweep._stop

    def interrupted(futures):
        raise KeyboardInterrupt
        yield  # a generator, as as_completed is

    def stop(pool):
        stopped.append(list(pool._processes.values()))
        real_stop(pool)

    monkeypatch.setattr(replay_sweep, "as_completed", interrupted)
    monkeypatch.setattr(replay_sweep, "_stop", stop)
    with pytest.raises(KeyboardInterrupt):
        sweep(head, CAPACITIES, POLICIES[:1], workers=2, progress=False)
    assert len(stopped) == 1
    assert not any(p.is_alive() for p in stopped[0])
