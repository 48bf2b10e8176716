"""Iteration-level continuous batching over a memory scheme, one step at a time.

The model of serving (Orca's iteration-level scheduling as vLLM runs it):

* Time advances in **steps**. A step runs every running sequence once: a request
  admitted at step ``s`` prefills its prompt there (its KV holds ``prompt_len`` tokens
  after step ``s``) and then gains one token per step, finishing after step
  ``s + output_len`` with ``prompt_len + output_len`` tokens; its memory is released
  before the next step.
* A step takes ``StepTimeModel.seconds(batched_tokens)`` seconds (prefill tokens plus
  one per decoding sequence), which maps arrival times in seconds onto steps.
* **Admission** is FCFS: the head of the queue is admitted while it fits the scheme
  (under the watermark for paged memory), ``max_num_seqs`` and the step's
  ``max_num_batched_tokens``; a request that does not fit blocks those behind it.
  Preempted requests come first: swapped-out groups are swapped back in before any new
  admission, and recomputed ones re-enter at the front of the queue.
* **Preemption** (paged memory): when a running sequence needs a block and none is
  free, the latest-arrived running request is preempted (possibly the one asking). By
  recompute, its blocks are freed and it is re-admitted later with its prompt plus the
  tokens generated so far as the new prompt; by swap, its blocks move to the host pool
  (recompute when the host pool is full). A request of several sequences (parallel
  sampling, beam search) that is recomputed restarts from its prompt.
* **Parallel sampling** forks ``n`` sequences after the prefill; they share the prompt's
  blocks, and each copies the shared partial block when it first writes (COW).
  **Beam search** keeps ``n`` beams; at each step each new beam picks a parent among the
  current beams (seeded), forks it, and the old beams are freed.

The loop is event-driven: between arrivals, admissions, finishes and block boundaries
nothing but one token per sequence happens, so the scheduler jumps from event to event
and `paged_kv.sim.accounting` expands the memory categories into one row per step.
Allocator work happens only at those events.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm import tqdm

from paged_kv.sim.accounting import Interval, MemoryLedger, expand_intervals, summarize
from paged_kv.sim.request import Request, Workload
from paged_kv.sim.schemes import ContiguousScheme, PagedScheme

WAITING, RUNNING, SWAPPED, DONE = "waiting", "running", "swapped", "done"
SAMPLING = ("single", "parallel", "beam")


@dataclass(frozen=True)
class StepTimeModel:
    """Seconds per step, linear in the tokens it batches: ``base_s + per_token_s * tokens``.

    The defaults are a modelling assumption, not a measurement: 15 ms of fixed cost per
    iteration plus 0.1 ms per batched token, the order of magnitude of a 13B model on one
    A100. Only the order of events depends on them, never the memory accounting.
    """

    base_s: float = 0.015
    per_token_s: float = 1.0e-4

    def __post_init__(self) -> None:
        if not (self.base_s > 0 and self.per_token_s >= 0):
            raise ValueError(
                f"StepTimeModel needs base_s > 0 and per_token_s >= 0, got {self.base_s!r}, "
                f"{self.per_token_s!r}"
            )

    def seconds(self, batched_tokens: int) -> float:
        """Duration of a step that batches `batched_tokens` tokens."""
        return self.base_s + self.per_token_s * batched_tokens


@dataclass(frozen=True)
class SchedulerConfig:
    """Scheduling limits and policies."""

    #: most sequences running at once
    max_num_seqs: int = 256
    #: most tokens one step may batch (prefill tokens + decoding sequences)
    max_num_batched_tokens: int = 4096
    #: "recompute" or "swap" (swap needs a host pool)
    preemption: str = "recompute"
    #: "single", "parallel" (n samples) or "beam" (width n)
    sampling: str = "single"
    #: samples or beams per request
    n: int = 1
    #: step-time model
    step_time: StepTimeModel = field(default_factory=StepTimeModel)
    #: seed of beam search's parent choices
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "n"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SchedulerConfig.{name} must be a positive integer, "
                                 f"got {value!r}")
        if self.preemption not in ("recompute", "swap"):
            raise ValueError(f"SchedulerConfig.preemption must be 'recompute' or 'swap', "
                             f"got {self.preemption!r}")
        if self.sampling not in SAMPLING:
            raise ValueError(f"SchedulerConfig.sampling must be one of {SAMPLING}, "
                             f"got {self.sampling!r}")
        if self.sampling == "single" and self.n != 1:
            raise ValueError(f"SchedulerConfig.n must be 1 for single sampling, got {self.n}")
        if self.n > self.max_num_seqs:
            raise ValueError(f"SchedulerConfig.n={self.n} exceeds max_num_seqs")


@dataclass(slots=True, eq=False)
class _Group:
    """A request in flight: its sequences share a length at every step."""

    index: int
    request: Request
    n: int
    final_len: int
    prefill_len: int
    state: str = WAITING
    seqs: list[int] = field(default_factory=list)
    start: int = -1  # contiguous range start
    alloc: int = 0  # slots held per sequence
    counted: int = 0  # sequences with a private partial block (ledger)
    sync_step: int = 0
    sync_len: int = 0
    held: int = 0  # tokens per sequence the manager holds (paged): >= the computed ones
    entry: tuple | None = None
    version: int = 0
    # statistics
    admit_step: int = -1
    admit_time: float = math.nan
    finish_step: int = -1
    finish_time: float = math.nan
    preemptions: int = 0
    swaps: int = 0
    restarts: int = 0
    recomputed_tokens: int = 0
    cached_tokens: int = 0
    generated: int = 0

    def length(self, step: int) -> int:
        """Tokens each sequence holds after `step` (valid while running)."""
        return self.sync_len + (step - self.sync_step)

    def last_step(self) -> int:
        """The step in which the group reaches its final length."""
        return self.sync_step + (self.final_len - self.sync_len)


@dataclass
class SimResult:
    """What a simulation produced."""

    #: the scheme's label, e.g. "paged (block 16)" or "Max"
    scheme: str
    #: one row per step: time, batch, and the memory categories in token slots
    steps: pd.DataFrame = field(repr=False)
    #: one row per request: arrival, admission, finish, preemptions, swaps, output
    requests: pd.DataFrame = field(repr=False)
    #: pool size in token slots
    capacity: int = 0
    #: decode tokens generated (all sequences)
    decode_tokens: int = 0
    #: copy-on-write block copies (paged)
    cow_copies: int = 0

    def summary(self, *, loaded_only: bool = True) -> dict[str, object]:
        """Step-averaged category shares (see `paged_kv.sim.accounting.summarize`)."""
        out = summarize(self.steps, loaded_only=loaded_only)
        out["scheme"] = self.scheme
        out["preemptions"] = int(self.requests["preemptions"].sum())
        out["swaps"] = int(self.requests["swaps"].sum())
        out["cow_copies"] = self.cow_copies
        out["decode_tokens"] = self.decode_tokens
        out["makespan_s"] = float(self.requests["finish_time"].max())
        return out


class Simulator:
    """Runs a workload through one memory scheme. Use `simulate`."""

    def __init__(self, workload: Workload, scheme: PagedScheme | ContiguousScheme,
                 config: SchedulerConfig) -> None:
        self.scheme = scheme
        self.config = config
        self.paged = isinstance(scheme, PagedScheme)
        if getattr(scheme, "simulated", False):
            raise ValueError("this scheme already served a simulation; build a fresh one")
        scheme.simulated = True
        if not self.paged and config.sampling != "single":
            raise ValueError(
                f"contiguous schemes simulate single sampling only, not {config.sampling!r}"
            )
        if config.preemption == "swap" and self.paged and scheme.cache.host is None:
            raise ValueError("swap preemption needs a host pool (num_host_blocks > 0)")
        n = config.n
        self.groups = [
            _Group(index=i, request=r, n=n, final_len=r.prompt_len + r.output_len,
                   prefill_len=r.prompt_len)
            for i, r in enumerate(workload)
        ]
        for g in self.groups:
            if not scheme.fits_alone(g.final_len, n):
                raise ValueError(
                    f"request {g.request.request_id} ({g.final_len} tokens x {n}) cannot fit "
                    f"the {scheme.capacity}-slot pool even alone; filter the workload "
                    f"(Workload.filter_max_len)"
                )
            if g.prefill_len > config.max_num_batched_tokens:
                raise ValueError(
                    f"request {g.request.request_id}'s prompt ({g.prefill_len}) exceeds "
                    f"max_num_batched_tokens={config.max_num_batched_tokens}"
                )
            if (self.paged and config.preemption == "recompute" and n == 1
                    and g.final_len - 1 > config.max_num_batched_tokens):
                raise ValueError(
                    f"request {g.request.request_id} may have to recompute up to "
                    f"{g.final_len - 1} tokens in one step after a preemption, above "
                    f"max_num_batched_tokens={config.max_num_batched_tokens}; raise it or "
                    f"preempt by swap"
                )
        self.rng = np.random.default_rng(config.seed)
        self.ledger = MemoryLedger()
        self.waiting: deque[_Group] = deque()
        self.swapped: list[_Group] = []
        self.running: dict[int, _Group] = {}
        self.running_seqs = 0
        self.events: list[tuple[int, int, int]] = []
        self.step = 0
        self.time = 0.0
        self.intervals: list[Interval] = []
        self.preempted_now = False
        #: count of memory releases (finishes, preemptions); admission retries on change
        self.released = 0
        self._refused: _Group | None = None
        self._refused_at = -1

    # -- ledger -------------------------------------------------------------------------
    def _track(self, g: _Group) -> None:
        g.entry = MemoryLedger.contribution(g.counted, g.alloc, g.sync_len, g.sync_step,
                                            g.final_len, g.n * g.alloc)
        self.ledger.add(g.entry)

    def _untrack(self, g: _Group) -> None:
        if g.entry is not None:
            self.ledger.remove(g.entry)
            g.entry = None

    def _schedule(self, g: _Group) -> None:
        """Push the group's next event: finish, block boundary, COW or beam step."""
        last = g.last_step()
        if self.config.sampling == "beam":
            nxt = g.sync_step + 1
        elif self.paged and g.counted < g.n and g.sync_len % self.scheme.block_size:
            nxt = g.sync_step + 1  # shared partial block: copy-on-write at the next token
        elif self.paged:
            nxt = g.sync_step + (g.alloc + 1 - g.sync_len)  # first token past the blocks
        else:
            nxt = last + 1
        g.version += 1
        heapq.heappush(self.events, (min(nxt, last + 1), g.index, g.version))

    # -- transitions --------------------------------------------------------------------
    def _admit(self, g: _Group) -> int:
        """Admit the head of the queue at this step; the prefill tokens it computes."""
        scheme, step = self.scheme, self.step
        r = g.request
        if self.paged:
            keys = scheme.block_keys(r.block_keys, r.key_block_size, r.prompt_len)
            g.seqs, cached = scheme.admit(g.prefill_len, g.n, keys)
            g.alloc = scheme.slots_for(g.prefill_len)
            partial = g.prefill_len % scheme.block_size
            g.counted = 1 if (partial and g.n > 1) else g.n
        else:
            g.start, g.alloc = scheme.admit(g.final_len)
            cached = 0
            g.counted = 1
        g.cached_tokens += cached
        g.state = RUNNING
        g.sync_step, g.sync_len = step, g.prefill_len
        g.held = g.prefill_len
        if g.admit_step < 0:
            g.admit_step, g.admit_time = step, self.time
        self.running[g.index] = g
        self.running_seqs += g.n
        self._track(g)
        self._schedule(g)
        return g.prefill_len - cached

    def _finish(self, g: _Group) -> None:
        step = self.step
        self._untrack(g)
        if self.paged:
            scheme = self.scheme
            delta = g.final_len - scheme.length(g.seqs)
            if scheme.grow_cost(g.seqs, delta):
                raise AssertionError(f"request {g.index} would need blocks to finish")
            scheme.grow(g.seqs, delta)
            g.generated = scheme.length(g.seqs) - g.request.prompt_len
            scheme.release(g.seqs)
        else:
            g.generated = g.length(step - 1) - g.request.prompt_len
            self.scheme.release(g.start)
        g.state = DONE
        self.released += 1
        g.finish_step, g.finish_time = step - 1, self.time
        del self.running[g.index]
        self.running_seqs -= g.n

    def _latest_running(self) -> _Group:
        return self.running[max(self.running)]

    def _preempt(self, v: _Group) -> None:
        """Take `v` off the GPU before this step runs: swap it out, or recompute later."""
        scheme, step = self.scheme, self.step
        done = v.length(step - 1)
        self._untrack(v)
        del self.running[v.index]
        self.running_seqs -= v.n
        v.version += 1
        v.preemptions += 1
        self.preempted_now = True
        self.released += 1
        if self.paged and v.held < done:
            scheme.grow(v.seqs, done - v.held)  # within its blocks: no allocation
            v.held = done
        # v.held may exceed `done` by the slot it was given at this step: kept for later
        if self.config.preemption == "swap" and scheme.can_swap_out(v.seqs):
            scheme.swap_out(v.seqs)
            v.state = SWAPPED
            v.swaps += 1
            v.sync_len = done
            self.swapped.append(v)
            self.swapped.sort(key=lambda g: g.index)
            return
        scheme.release(v.seqs)
        v.seqs = []
        if v.n == 1:
            v.prefill_len = done
            v.recomputed_tokens += done - v.request.prompt_len
        else:
            v.prefill_len = v.request.prompt_len
            v.restarts += 1
        v.state = WAITING
        self.waiting.appendleft(v)

    def _make_room(self, g: _Group, cost: int) -> bool:
        """Preempt latest-arrived groups until `cost` blocks are free; False if `g` went."""
        while cost > self.scheme.num_free_blocks:
            victim = self._latest_running()
            self._preempt(victim)
            if victim is g:
                return False
        return True

    def _grow(self, g: _Group) -> None:
        """Bring a running group's blocks up to its length at this step."""
        scheme, step = self.scheme, self.step
        if self.config.sampling == "beam":
            k = g.n
            parents = self.rng.integers(0, k, size=k).tolist()
            g.seqs = scheme.fork_step(g.seqs, parents)
            self.released += 1  # beams no parent chose released their blocks
        target = g.length(step)
        delta = target - g.held
        if g.n == 1:
            cost = (scheme.slots_for(target) - g.alloc) // scheme.block_size
        else:
            cost = scheme.grow_cost(g.seqs, delta)
        if cost > 0 and not self._make_room(g, cost):
            return
        self._untrack(g)
        scheme.grow(g.seqs, delta)
        g.sync_step, g.sync_len, g.held = step, target, max(target, g.held)
        g.alloc = scheme.slots_for(g.held)
        g.counted = g.n
        self._track(g)
        self._schedule(g)

    def _swap_in(self) -> None:
        scheme = self.scheme
        while self.swapped:
            g = self.swapped[0]
            need = scheme.swap_in_cost(g.seqs) + g.n  # plus a block each to grow into
            if (need + scheme.watermark_blocks > scheme.num_free_blocks
                    or self.running_seqs + g.n > self.config.max_num_seqs):
                return
            self.swapped.pop(0)
            scheme.swap_in(g.seqs)
            g.state = RUNNING
            g.sync_step = self.step - 1
            g.alloc = scheme.slots_for(g.held)
            g.counted = g.n
            self.running[g.index] = g
            self.running_seqs += g.n
            self._grow(g)  # the token of this step

    def _admit_waiting(self) -> tuple[int, bool]:
        """Admit from the queue head; (prefill tokens, whether the token budget stopped it).

        A head refused for memory is not asked again until memory was freed: free
        memory only shrinks between finishes and preemptions.
        """
        config, scheme = self.config, self.scheme
        tokens = 0
        while self.waiting:
            g = self.waiting[0]
            if g is self._refused and self.released == self._refused_at:
                return tokens, False
            if self.running_seqs + g.n > config.max_num_seqs:
                return tokens, False
            if tokens + g.prefill_len > config.max_num_batched_tokens:
                return tokens, True
            if self.paged:
                r = g.request
                keys = scheme.block_keys(r.block_keys, r.key_block_size, r.prompt_len)
                fits = scheme.can_admit(g.prefill_len, keys)
            else:
                fits = scheme.can_admit(g.final_len)
            if not fits:
                self._refused, self._refused_at = g, self.released
                return tokens, False
            self.waiting.popleft()
            tokens += self._admit(g)
        return tokens, False

    # -- the loop -------------------------------------------------------------------------
    def run(self, progress: bool = False, label: str = "") -> SimResult:
        """Simulate until every request has finished."""
        groups, events = self.groups, self.events
        step_time = self.config.step_time
        arrivals = [g.request.arrival_time for g in groups]
        next_arrival = 0
        finished = 0
        bar = tqdm(total=len(groups), desc=label or self.scheme.label, disable=not progress,
                   leave=False)
        while finished < len(groups):
            while next_arrival < len(groups) and arrivals[next_arrival] <= self.time:
                self.waiting.append(groups[next_arrival])
                next_arrival += 1
            if not self.running and not self.swapped and not self.waiting:
                self.time = arrivals[next_arrival]  # idle: jump to the next arrival
                continue
            self.preempted_now = False
            due = []
            while events and events[0][0] <= self.step:
                _, index, version = heapq.heappop(events)
                g = groups[index]
                if version == g.version and g.state == RUNNING:
                    due.append(g)
            # finishes first: a request done with its last token must not be preempted
            growing = []
            for g in due:
                if self.step > g.last_step():
                    self._finish(g)
                    finished += 1
                    bar.update()
                else:
                    growing.append(g)
            for g in growing:  # earliest arrival first; preemption takes the latest
                if g.state == RUNNING:
                    self._grow(g)
            if self.swapped and not self.preempted_now:
                self._swap_in()
            decoding = self.running_seqs
            prefill, budget_stop = (0, False)
            # no admission right after a preemption (memory is short), unless it emptied
            # the batch; none while swapped-out groups wait to come back
            if (self.waiting and not self.swapped and not (self.preempted_now and self.running)
                    and not (self.waiting[0] is self._refused
                             and self.released == self._refused_at)):
                prefill, budget_stop = self._admit_waiting()
            if not self.running:
                if self.waiting or self.swapped:
                    g = self.waiting[0] if self.waiting else self.swapped[0]
                    raise RuntimeError(
                        f"request {g.request.request_id} ({g.prefill_len} tokens to prefill, "
                        f"{g.n} sequences) cannot be admitted even into an empty cache: "
                        f"check the watermark and max_num_batched_tokens"
                    )
                continue
            first = step_time.seconds(prefill + decoding)
            later = step_time.seconds(self.running_seqs)
            nxt = self._next_step(events, budget_stop)
            if next_arrival < len(groups):
                wait = arrivals[next_arrival] - (self.time + first)
                nxt = min(nxt, self.step + 1 + max(0, math.ceil(wait / later)))
            head = self.waiting[0] if self.waiting else None
            ledger = self.ledger
            self.intervals.append(Interval(
                self.step, nxt, self.time, first, later, prefill + decoding,
                self.running_seqs, len(self.waiting), len(self.swapped),
                self.scheme.used,
                0 if head is None else self.scheme.external(head.final_len),
                self.scheme.capacity, ledger.unused_const, ledger.unused_slope,
                ledger.internal, ledger.logical,
            ))
            self.time += first + (nxt - self.step - 1) * later
            self.step = nxt
        bar.close()
        return self._result()

    def _next_step(self, events: list, budget_stop: bool) -> int:
        while events and (events[0][2] != self.groups[events[0][1]].version):
            heapq.heappop(events)  # drop stale entries so they do not split intervals
        nxt = events[0][0] if events else self.step + 1
        if budget_stop or (self.swapped and not self.preempted_now):
            nxt = min(nxt, self.step + 1)
        return max(nxt, self.step + 1)

    def _result(self) -> SimResult:
        rows = []
        for g in self.groups:
            r = g.request
            rows.append({
                "request_id": r.request_id,
                "arrival_time": r.arrival_time,
                "prompt_len": r.prompt_len,
                "output_len": r.output_len,
                "num_seqs": g.n,
                "admit_step": g.admit_step,
                "admit_time": g.admit_time,
                "finish_step": g.finish_step,
                "finish_time": g.finish_time,
                "generated": g.generated,
                "preemptions": g.preemptions,
                "swaps": g.swaps,
                "restarts": g.restarts,
                "recomputed_tokens": g.recomputed_tokens,
                "cached_tokens": g.cached_tokens,
            })
        cow = self.scheme.cache.stats().cow_copies if self.paged else 0
        return SimResult(
            scheme=self.scheme.label,
            steps=expand_intervals(self.intervals),
            requests=pd.DataFrame(rows),
            capacity=self.scheme.capacity,
            decode_tokens=sum(g.generated * g.n for g in self.groups),
            cow_copies=cow,
        )


def simulate(
    workload: Workload,
    scheme: PagedScheme | ContiguousScheme,
    config: SchedulerConfig | None = None,
    *,
    progress: bool = False,
) -> SimResult:
    """Serve `workload` with continuous batching on `scheme`; per-step and per-request results.

    Requests must be in arrival order (a `Workload` is). Raises `ValueError` for a request
    that could not run even alone in the pool.
    """
    return Simulator(workload, scheme, config or SchedulerConfig()).run(progress=progress)
