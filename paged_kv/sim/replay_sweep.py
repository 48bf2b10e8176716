"""Policy x capacity sweeps over a trace: serial, on local worker processes, or on Dask.

`sweep` replays one trace at every (policy, capacity) point and returns one summary row
per point in a single DataFrame, in the order ``for policy in policies: for capacity in
capacities``. Where the points run never changes a number:

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
from paged_kv.sim.replay import check_capacity, check_policy, check_warmup, replay
from paged_kv.sim.replay_arrays import TraceArrays, as_trace_arrays
from paged_kv.sim.request import Workload

ENGINES = ("compiled", "manager")
#: seconds to wait for a Dask scheduler named by its address to answer
SCHEDULER_TIMEOUT_S = 5.0

#: the columns of a sweep's frame, in order
COLUMNS = ("trace", "policy", "capacity", "hit_rate", "block_hit_rate", "hit_tokens",
           "prompt_tokens", "evictions", "requests")


def run_point(trace: TraceArrays | Workload, policy: str, capacity: int | None,
              warmup: float, engine: str) -> dict[str, Any]:
    """One sweep row: replay `trace` at `capacity` with `policy` (arguments checked)."""
    if engine == "manager":
        result = replay(trace, capacity, policy, warmup=warmup)
        frame = result.requests[result.requests["measured"]]
        return {
            "trace": result.trace, "policy": policy, "capacity": capacity,
            "hit_rate": result.hit_rate, "block_hit_rate": result.block_hit_rate,
            "hit_tokens": int(frame["hit_tokens"].sum()),
            "prompt_tokens": int(frame["prompt_len"].sum()),
            "evictions": result.evictions, "requests": len(frame),
        }
    from paged_kv.sim.replay_compiled import replay_hit_blocks

    blocks = trace.unbounded_capacity() if capacity is None else capacity
    hit_blocks, evictions = replay_hit_blocks(trace, blocks, policy)
    first = int(warmup * len(trace))
    hit_tokens = int(hit_blocks[first:].sum()) * trace.block_size
    prompt_tokens = int(trace.prompt_lens[first:].sum())
    num_blocks = int(trace.offsets[-1] - trace.offsets[first])
    return {
        "trace": trace.name, "policy": policy, "capacity": capacity,
        "hit_rate": hit_tokens / prompt_tokens,
        "block_hit_rate": int(hit_blocks[first:].sum()) / num_blocks,
        "hit_tokens": hit_tokens, "prompt_tokens": prompt_tokens,
        "evictions": evictions, "requests": len(trace) - first,
    }


# --- local worker processes: the trace is sent once, in the initializer -------------

_WORKER_TRACE: Any = None


def _init_worker(trace: TraceArrays | Workload) -> None:
    global _WORKER_TRACE
    # Ctrl-C reaches every process of the terminal's group: the parent answers it by
    # ending the workers (`_stop`), which must not die of it first with a traceback each
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER_TRACE = trace


def _run_in_worker(policy: str, capacity: int | None, warmup: float, engine: str):
    return run_point(_WORKER_TRACE, policy, capacity, warmup, engine)


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
        The columns `COLUMNS` (``hit_rate`` is token-weighted, ``block_hit_rate``
        block-weighted, both over the measured requests); its ``attrs`` hold the
        settings and the trace's checksum.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    warmup = check_warmup(warmup)
    policies = list(policy_names()) if policies is None else [check_policy(p) for p in policies]
    capacities = [check_capacity(c) for c in capacities]
    if not policies or not capacities:
        raise ValueError("a sweep needs at least one policy and one capacity")
    arrays = as_trace_arrays(trace)  # checks the trace, and names the checksum
    if engine == "manager":
        payload: TraceArrays | Workload = (
            trace if isinstance(trace, Workload) else arrays.to_workload()
        )
    else:
        payload = arrays
    points = [(p, c) for p in policies for c in capacities]
    rows: list[dict[str, Any] | None] = [None] * len(points)

    def progress_bar():  # made after any fork: its monitor thread must not be forked
        return tqdm(total=len(points), desc=f"sweep {arrays.name}", disable=not progress)

    if scheduler is not None:
        client, owned = _dask_client(scheduler)
        try:
            shared = client.scatter(payload, broadcast=True)
            futures = [client.submit(run_point, shared, p, c, warmup, engine, pure=False)
                       for p, c in points]
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
            for i, (p, c) in enumerate(points):
                rows[i] = run_point(payload, p, c, warmup, engine)
                bar.update()
    else:
        workers = min(_check_workers(workers), len(points))
        pool = ProcessPoolExecutor(workers, mp_context=_start_method(),
                                   initializer=_init_worker, initargs=(payload,))
        try:
            futures = {pool.submit(_run_in_worker, p, c, warmup, engine): i
                       for i, (p, c) in enumerate(points)}
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
    })
    return frame


__all__ = ["COLUMNS", "ENGINES", "SCHEDULER_TIMEOUT_S", "run_point", "sweep"]
