"""Policy x capacity sweeps over a trace: serial, on local worker processes, or on Dask.

`sweep` replays one trace at every (policy, capacity) point and returns one summary row
per point in a single DataFrame, in the order ``for policy in policies: for capacity in
capacities``. With tiers below the GPU (`host_capacities`, `disk_capacities`: 0 means
no such tier; `placements`), every GPU capacity is swept against every host and disk
capacity and placement, in the order ``for policy: for placement: for capacity: for
host capacity: for disk capacity``, and each row splits the hit rate by tier (the GPU,
the host, the disk) and counts the blocks moved each way. Where the points run never
changes a number:

* ``workers=1`` runs them one after another in this process;
* ``workers=N`` (default: one per CPU) on N local worker processes, each of which
  receives the trace once;
* ``scheduler=`` a `distributed.Client` or a scheduler address (``"tcp://host:8786"``,
  which must answer within `SCHEDULER_TIMEOUT_S`) on a Dask cluster, the trace
  scattered to every worker once (the optional extra ``pip install
  'paged_kv[distributed]'``).

Ctrl-C (or a point that fails) ends local worker processes at once, a point being
compiled or replayed included, rather than waiting for them.

``engine="compiled"`` (default) runs `paged_kv.sim.replay_compiled`; ``"manager"`` the
reference path through `PagedKVCache` (`paged_kv.sim.replay.replay`). Both give the same
numbers; the compiled engine is one to two orders of magnitude faster (see
``benchmarks/replay.py``).

The frame's ``attrs`` carry the settings that produced it (trace name, its checksum and
size, block size, warmup, engine) so that whoever saves it can save them alongside.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_all_start_methods, get_context
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from paged_kv.core.eviction import policy_names
from paged_kv.sim.replay import TierSetting, check_capacity, check_policy, check_warmup, replay
from paged_kv.sim.replay_arrays import TraceArrays, as_trace_arrays
from paged_kv.sim.request import Workload

ENGINES = ("compiled", "manager")
#: seconds to wait for a Dask scheduler named by its address to answer
SCHEDULER_TIMEOUT_S = 5.0

#: blocks moved each way, summed over the measured requests (`paged_kv.sim.replay`)
MOVE_COLUMNS = ("loaded_host", "loaded_disk", "stored_gpu_host", "stored_gpu_disk",
                "stored_host_disk")
#: the columns of a sweep's frame, in order: the point, then the token-weighted hit rate
#: in all and served by each tier, the block-weighted one, the counts
COLUMNS = ("trace", "policy", "capacity", "host_capacity", "disk_capacity", "placement",
           "host_policy", "disk_policy", "hit_rate", "gpu_hit_rate", "host_hit_rate",
           "disk_hit_rate", "block_hit_rate", "hit_tokens", "prompt_tokens", "evictions",
           *MOVE_COLUMNS, "requests")


def _row(trace: str, policy: str, capacity: int | None, tiers: TierSetting, *,
         hit_blocks: int, host_blocks: int, disk_blocks: int, num_blocks: int,
         block_size: int, prompt_tokens: int, evictions: int, moves: Sequence[int],
         requests: int) -> dict[str, Any]:
    """A sweep row from the measured requests' sums (both engines build it here, so the
    same sums give the same floats)."""
    hit_tokens = hit_blocks * block_size
    host, disk = host_blocks * block_size, disk_blocks * block_size
    return {
        "trace": trace, "policy": policy, "capacity": capacity,
        "host_capacity": tiers.host_capacity, "disk_capacity": tiers.disk_capacity,
        "placement": tiers.placement, "host_policy": tiers.host_policy,
        "disk_policy": tiers.disk_policy,
        "hit_rate": hit_tokens / prompt_tokens,
        "gpu_hit_rate": (hit_tokens - host - disk) / prompt_tokens,
        "host_hit_rate": host / prompt_tokens, "disk_hit_rate": disk / prompt_tokens,
        "block_hit_rate": hit_blocks / num_blocks,
        "hit_tokens": hit_tokens, "prompt_tokens": prompt_tokens, "evictions": evictions,
        **dict(zip(MOVE_COLUMNS, (int(m) for m in moves))), "requests": requests,
    }


def run_point(trace: TraceArrays | Workload, policy: str, capacity: int | None,
              warmup: float, engine: str, tiers: TierSetting | None = None) -> dict[str, Any]:
    """One sweep row: replay `trace` at `capacity` with `policy` and the `tiers` below
    the GPU (default none), arguments checked."""
    tiers = TierSetting() if tiers is None else tiers
    if engine == "manager":
        result = replay(trace, capacity, policy, warmup=warmup, **vars(tiers))
        frame = result.requests[result.requests["measured"]]
        bs = result.block_size
        return _row(
            result.trace, policy, capacity, tiers,
            hit_blocks=int(frame["hit_blocks"].sum()),
            host_blocks=int(frame["host_hit_tokens"].sum()) // bs,
            disk_blocks=int(frame["disk_hit_tokens"].sum()) // bs,
            num_blocks=int(frame["num_blocks"].sum()), block_size=bs,
            prompt_tokens=int(frame["prompt_len"].sum()), evictions=result.evictions,
            moves=[frame[name].sum() for name in MOVE_COLUMNS], requests=len(frame),
        )
    from paged_kv.sim.replay_compiled import replay_tiered_blocks

    blocks = trace.unbounded_capacity() if capacity is None else capacity
    hit_blocks, moved, evictions = replay_tiered_blocks(trace, blocks, policy, tiers)
    first = int(warmup * len(trace))
    sums = moved[first:].sum(axis=0) if tiers.enabled else np.zeros(5, dtype=np.int64)
    host, disk, gpu_host, gpu_disk, host_disk = (int(v) for v in sums)
    return _row(
        trace.name, policy, capacity, tiers, hit_blocks=int(hit_blocks[first:].sum()),
        host_blocks=host, disk_blocks=disk,
        num_blocks=int(trace.offsets[-1] - trace.offsets[first]),
        block_size=trace.block_size, prompt_tokens=int(trace.prompt_lens[first:].sum()),
        evictions=evictions, moves=(host, disk, gpu_host, gpu_disk, host_disk),
        requests=len(trace) - first,
    )


# --- local worker processes: the trace is sent once, in the initializer -------------

_WORKER_TRACE: Any = None


def _init_worker(trace: TraceArrays | Workload) -> None:
    global _WORKER_TRACE
    # Ctrl-C reaches every process of the terminal's group: the parent answers it by
    # ending the workers (`_stop`), which must not die of it first with a traceback each
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER_TRACE = trace


def _run_in_worker(policy: str, capacity: int | None, warmup: float, engine: str,
                   tiers: TierSetting):
    return run_point(_WORKER_TRACE, policy, capacity, warmup, engine, tiers)


def _start_method():
    """fork while this process runs no other thread than tqdm's idle progress-bar
    monitor (workers then start in milliseconds, the compiled engine already loaded);
    spawn otherwise, since forking a process whose threads may hold locks (a Dask
    client, say) can deadlock the child."""
    others = [t for t in threading.enumerate()
              if t is not threading.main_thread() and t.name != "tqdm_monitor"]
    if "fork" in get_all_start_methods() and not others:
        return get_context("fork")
    return get_context("spawn")


def _stop(pool: ProcessPoolExecutor) -> None:
    """End `pool` now: queued points are cancelled and running ones (compiling, or deep
    in a replay) killed, rather than waited for as ``shutdown(wait=True)`` would."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(timeout=1.0)
        if process.is_alive():  # SIGTERM not handled in time (a loaded machine): SIGKILL
            process.kill()
            process.join()


def _check_workers(workers: object) -> int:
    if workers is None:
        return os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1 or None, got {workers!r}")
    return int(workers)


def _dask_client(scheduler: Any):
    """A `distributed.Client` for `scheduler` (a client, or an address to connect to
    within `SCHEDULER_TIMEOUT_S`: `ConnectionError` if nothing answers)."""
    try:
        from distributed import Client
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "sweeps on a Dask cluster need the optional extra: "
            "pip install 'paged_kv[distributed]'"
        ) from err
    if isinstance(scheduler, Client):
        return scheduler, False
    if isinstance(scheduler, str):
        try:
            return Client(scheduler, timeout=SCHEDULER_TIMEOUT_S), True
        except OSError as err:  # distributed's own timeout is an OSError
            raise ConnectionError(f"no Dask scheduler answered at {scheduler} within "
                                  f"{SCHEDULER_TIMEOUT_S:g} s ({err})") from None
    raise ValueError(
        f"scheduler must be a distributed.Client or a scheduler address, got {scheduler!r}"
    )


def sweep(
    trace: str | Workload | TraceArrays,
    capacities: Iterable[int | None],
    policies: Sequence[str] | None = None,
    *,
    host_capacities: Iterable[int] = (0,),
    disk_capacities: Iterable[int] = (0,),
    placements: Sequence[str] = ("write_through",),
    host_policy: str = "lru",
    disk_policy: str = "lru",
    warmup: float = 0.0,
    engine: str = "compiled",
    workers: int | None = None,
    scheduler: Any = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Replay `trace` at every capacity with every policy; one summary row per point.

    Parameters
    ----------
    trace:
        A shipped trace name, a trace file's path (`paged_kv.sim.traces.load_trace`), a
        `Workload` whose requests carry block keys, or a `TraceArrays`.
    capacities:
        Capacities in blocks (None: unbounded).
    policies:
        Eviction policy names; default every registered policy, Belady included.
    host_capacities, disk_capacities:
        Blocks of the host and the disk tier below the GPU (0: no such tier), each
        swept against every GPU capacity.
    placements:
        When blocks are copied down (`paged_kv.core.tier.PLACEMENTS`).
    host_policy, disk_policy:
        The tiers' eviction policies (the compiled engine runs ``lru`` and ``arc``; the
        manager every online policy).
    warmup:
        Fraction of leading requests replayed but left out of the measurement.
    engine:
        ``"compiled"`` (default) or ``"manager"`` (the reference path).
    workers:
        Local worker processes (default: one per CPU; 1 runs in this process).
        Ignored when `scheduler` is given.
    scheduler:
        A `distributed.Client`, or the address of a Dask scheduler: run the points on
        that cluster.
    progress:
        Show a progress bar counting the points.

    Returns
    -------
    pandas.DataFrame
        The columns `COLUMNS` (``hit_rate`` is token-weighted, ``gpu_hit_rate``,
        ``host_hit_rate`` and ``disk_hit_rate`` its parts served by each tier,
        ``block_hit_rate`` block-weighted, all over the measured requests); its
        ``attrs`` hold the settings and the trace's checksum.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    warmup = check_warmup(warmup)
    policies = list(policy_names()) if policies is None else [check_policy(p) for p in policies]
    capacities = [check_capacity(c) for c in capacities]
    if not policies or not capacities:
        raise ValueError("a sweep needs at least one policy and one capacity")
    if isinstance(placements, str):
        placements = [placements]
    settings = [TierSetting(h, host_policy, d, disk_policy, placement)
                for placement in placements for h in host_capacities for d in disk_capacities]
    if not settings:
        raise ValueError("a sweep needs at least one placement, host and disk capacity")
    if engine == "compiled":
        from paged_kv.sim.replay_compiled import check_tiers

        for setting in settings:
            check_tiers(setting)
    arrays = as_trace_arrays(trace)  # checks the trace, and names the checksum
    if engine == "manager":
        payload: TraceArrays | Workload = (
            trace if isinstance(trace, Workload) else arrays.to_workload()
        )
    else:
        payload = arrays
    n_tiers = len(settings) // len(placements)  # (host, disk) pairs per placement
    points = [(p, c, settings[k * n_tiers + i]) for p in policies
              for k in range(len(placements)) for c in capacities for i in range(n_tiers)]
    rows: list[dict[str, Any] | None] = [None] * len(points)

    def progress_bar():  # made after any fork: its monitor thread must not be forked
        return tqdm(total=len(points), desc=f"sweep {arrays.name}", disable=not progress)

    if scheduler is not None:
        client, owned = _dask_client(scheduler)
        try:
            shared = client.scatter(payload, broadcast=True)
            futures = [client.submit(run_point, shared, p, c, warmup, engine, t, pure=False)
                       for p, c, t in points]
            index = {f.key: i for i, f in enumerate(futures)}
            from distributed import as_completed as dask_completed

            with progress_bar() as bar:
                for future in dask_completed(futures):
                    rows[index[future.key]] = future.result()
                    bar.update()
        finally:
            if owned:
                client.close()
    elif min(_check_workers(workers), len(points)) == 1:
        with progress_bar() as bar:
            for i, (p, c, t) in enumerate(points):
                rows[i] = run_point(payload, p, c, warmup, engine, t)
                bar.update()
    else:
        workers = min(_check_workers(workers), len(points))
        pool = ProcessPoolExecutor(workers, mp_context=_start_method(),
                                   initializer=_init_worker, initargs=(payload,))
        try:
            futures = {pool.submit(_run_in_worker, p, c, warmup, engine, t): i
                       for i, (p, c, t) in enumerate(points)}
            with progress_bar() as bar:
                for future in as_completed(futures):
                    rows[futures[future]] = future.result()
                    bar.update()
        except BaseException:  # Ctrl-C, or a point that failed: do not wait for the rest
            _stop(pool)
            raise
        pool.shutdown()
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["capacity"] = frame["capacity"].astype("Int64")
    frame.attrs.update({
        "trace": arrays.name,
        "trace_checksum": arrays.checksum,
        "trace_requests": len(arrays),
        "block_size": arrays.block_size,
        "warmup": warmup,
        "engine": engine,
        "host_policy": settings[0].host_policy,
        "disk_policy": settings[0].disk_policy,
    })
    return frame


__all__ = ["COLUMNS", "ENGINES", "MOVE_COLUMNS", "SCHEDULER_TIMEOUT_S", "run_point", "sweep"]
