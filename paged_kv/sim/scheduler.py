"""Iteration-level continuous batching over a memory scheme, one step at a time.

The model of serving (Orca's iteration-level scheduling as vLLM runs it):

* Time advances in **steps**. A step runs every running sequence once: a request
  admitted at step ``s`` prefills its prompt there (its KV holds ``prompt_len`` tokens
  after step ``s``) and then gains one token per step, finishing after step
  ``s + output_len`` with ``prompt_len + output_len`` tokens; its memory is released
  before the next step.
* A step takes the time `SchedulerConfig.step_time` gives it (`paged_kv.sim.timing`:
  by default the roofline model of OPT-13B on an A100-40GB calibrated to the vLLM
  paper), from the tokens it computes, the KV it reads and the swaps it makes; this
  maps arrival times in seconds onto steps.
* **Admission** is FCFS: the head of the queue is admitted while the scheme takes it
  (`MemoryScheme.try_admit`: under the watermark for paged memory, a free range for a
  contiguous one), within ``max_num_seqs`` and the step's ``max_num_batched_tokens``;
  a request that does not fit blocks those behind it. Preempted requests come first:
  swapped-out groups are swapped back in before any new admission, and recomputed ones
  re-enter at the front of the queue.
* **Preemption** (schemes that allocate as sequences grow): when a running sequence
  needs a block and none is free, the latest-arrived running request is preempted
  (possibly the one asking). By recompute, its blocks are freed and it is re-admitted
  later with its prompt plus the tokens generated so far as the new prompt; by swap,
  its blocks move to the host pool (recompute when the host pool is full). A request of
  several sequences (parallel sampling, beam search) that is recomputed restarts from
  its prompt.
* **Parallel sampling** forks ``n`` sequences after the prefill; they share the prompt's
  blocks, and each copies the shared partial block when it first writes (COW).
  **Beam search** keeps ``n`` beams. By default (``beam_parents="lineage"``) each beam
  keeps its own lineage and is *replaced* now and then (at seeded, uniformly spread
  moments) by a copy of another beam, ``beam_replacements * (output_len - 1) **
  beam_length_exponent`` times on average: a model fitted to the paper's Fig. 15, not
  a trace of real beam search. ``beam_parents="uniform"`` draws every new beam's parent
  uniformly at every step instead, which makes all beams merge within a few steps.
  Contiguous schemes reserve one range per sequence and share nothing.

The loop is event-driven: between arrivals, admissions, finishes, block boundaries and
beam replacements nothing but one token per sequence happens, so the scheduler jumps
from event to event and `paged_kv.sim.accounting` expands the memory categories into
one row per step. Allocator work happens only at those events. The scheduler talks to
the memory through `paged_kv.sim.schemes.MemoryScheme` only and never asks its kind.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from paged_kv.sim.accounting import Interval, MemoryLedger, expand_intervals
from paged_kv.sim.errors import (
    SchedulerStateError,
    SchemeReusedError,
    UnservableRequestError,
    UnsupportedError,
)
from paged_kv.sim.request import Request, Workload
from paged_kv.sim.result import SimResult, requests_frame
from paged_kv.sim.scheduler_config import (
    BEAM_LENGTH_EXPONENT,
    BEAM_PARENTS,
    BEAM_REPLACEMENTS,
    SAMPLING,
    SchedulerConfig,
)
from paged_kv.sim.schemes import MemoryScheme
from paged_kv.sim.timing import StepTimeModel, later_seconds, steps_until

__all__ = ["BEAM_LENGTH_EXPONENT", "BEAM_PARENTS", "BEAM_REPLACEMENTS", "SAMPLING",
           "SchedulerConfig", "SimResult", "Simulator", "StepTimeModel", "simulate"]

WAITING, RUNNING, SWAPPED, DONE = "waiting", "running", "swapped", "done"
@dataclass(slots=True, eq=False)
class _Group:
    """A request in flight: its sequences share a length at every step."""

    index: int
    request: Request
    n: int
    final_len: int
    prefill_len: int
    state: str = WAITING
    handles: list[int] = field(default_factory=list)  # the scheme's, one per sequence
    alloc: int = 0  # slots held per sequence
    counted: int = 0  # sequences with a private partial block (ledger)
    sync_step: int = 0
    sync_len: int = 0
    held: int = 0  # tokens per sequence the scheme holds: >= the computed ones
    entry: tuple | None = None
    version: int = 0
    # beam replacements (lineage model): (generated tokens, beam, new parent), in order
    beam_events: list[tuple[int, int, int]] = field(default_factory=list)
    beam_next: int = 0
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


class Simulator:
    """Runs a workload through one memory scheme. Use `simulate`."""

    def __init__(self, workload: Workload, scheme: MemoryScheme,
                 config: SchedulerConfig) -> None:
        if not isinstance(workload, Workload):
            raise ValueError(f"workload must be a Workload, got {type(workload).__name__}")
        if not len(workload):
            raise ValueError(f"workload {workload.name!r} has no requests to simulate")
        if not isinstance(scheme, MemoryScheme):
            raise ValueError(f"scheme must be a MemoryScheme, got {type(scheme).__name__}")
        if not isinstance(config, SchedulerConfig):
            raise ValueError(f"config must be a SchedulerConfig, got {type(config).__name__}")
        self.scheme = scheme
        self.config = config
        if scheme.simulated:
            raise SchemeReusedError(
                "this scheme already served a simulation; build a fresh one")
        scheme.simulated = True
        if config.preemption == "swap" and scheme.may_preempt and not scheme.supports_swap:
            raise UnsupportedError("swap preemption needs a host pool (num_host_blocks > 0)")
        n = config.n
        self.groups = [
            _Group(index=i, request=r, n=n, final_len=r.total_len, prefill_len=r.prompt_len)
            for i, r in enumerate(workload)
        ]
        self._check_servable()
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
        # what the current step does besides decoding, for its duration
        self._prefill_pairs = 0
        self._prefill_context = 0
        self._prefill_reads = 0
        self._swapped_blocks = 0

    def _check_servable(self) -> None:
        config, scheme, n = self.config, self.scheme, self.config.n
        for g in self.groups:
            rid = g.request.request_id
            if not scheme.fits_alone(g.request, n):
                raise UnservableRequestError(
                    f"request {rid} ({g.final_len} tokens x {n}) cannot fit the "
                    f"{scheme.capacity}-slot pool even alone; filter the workload "
                    f"(Workload.filter_max_len)"
                )
            if g.prefill_len > config.max_num_batched_tokens:
                raise UnservableRequestError(
                    f"request {rid}'s prompt ({g.prefill_len}) exceeds "
                    f"max_num_batched_tokens={config.max_num_batched_tokens}"
                )
            if (scheme.may_preempt and config.preemption == "recompute" and n == 1
                    and g.final_len - 1 > config.max_num_batched_tokens):
                raise UnservableRequestError(
                    f"request {rid} may have to recompute up to {g.final_len - 1} tokens "
                    f"in one step after a preemption, above max_num_batched_tokens="
                    f"{config.max_num_batched_tokens}; raise it or preempt by swap"
                )

    # -- ledger -------------------------------------------------------------------------
    def _track(self, g: _Group) -> None:
        g.entry = MemoryLedger.contribution(g.counted, g.alloc, g.sync_len, g.sync_step,
                                            g.final_len, g.n * g.alloc, g.n)
        self.ledger.add(g.entry)

    def _untrack(self, g: _Group) -> None:
        if g.entry is not None:
            self.ledger.remove(g.entry)
            g.entry = None

    def _schedule(self, g: _Group) -> None:
        """Push the group's next event: finish, block boundary, COW or beam step."""
        last = g.last_step()
        if g.counted < g.n:
            nxt = g.sync_step + 1  # shared partial block: copy-on-write at the next token
        else:
            nxt = g.sync_step + (g.alloc + 1 - g.sync_len)  # first token past its memory
        if g.n > 1 and self.config.sampling == "beam":
            if self.config.beam_parents == "uniform":
                nxt = g.sync_step + 1
            elif g.beam_next < len(g.beam_events):
                at = g.request.prompt_len + g.beam_events[g.beam_next][0]
                nxt = min(nxt, g.sync_step + max(1, at - g.sync_len))
        g.version += 1
        heapq.heappush(self.events, (min(nxt, last + 1), g.index, g.version))

    def _draw_beam_events(self, g: _Group) -> None:
        """Replacement times of a beam group (lineage model), by generated-token count."""
        k, out = g.n, g.request.output_len
        if self.config.sampling != "beam" or self.config.beam_parents != "lineage" or out < 2:
            return
        rng = self.rng
        per_beam = self.config.beam_replacements * (out - 1) ** self.config.beam_length_exponent
        count = int(rng.poisson(k * per_beam))
        times = np.sort(rng.integers(1, out, size=count))
        beams = rng.integers(0, k, size=count)
        parents = (beams + rng.integers(1, k, size=count)) % k
        g.beam_events = list(zip(times.tolist(), beams.tolist(), parents.tolist()))

    # -- transitions --------------------------------------------------------------------
    def _admit(self, g: _Group, admission) -> int:
        """Admit the head of the queue at this step; the prefill tokens it computes."""
        step = self.step
        cached = admission.cached_tokens
        g.handles = admission.handles
        g.alloc = admission.alloc
        g.counted = 1 if admission.shared_partial else g.n
        g.cached_tokens += cached
        g.state = RUNNING
        g.sync_step, g.sync_len = step, g.prefill_len
        g.held = g.prefill_len
        g.beam_next = 0
        if g.admit_step < 0:
            g.admit_step, g.admit_time = step, self.time
            self._draw_beam_events(g)
        self.running[g.index] = g
        self.running_seqs += g.n
        self._track(g)
        self._schedule(g)
        length = g.prefill_len
        self._prefill_pairs += (length * (length + 1) - cached * (cached + 1)) // 2
        self._prefill_context += g.n * length
        self._prefill_reads += length
        return length - cached

    def _sync_to(self, g: _Group, length: int) -> None:
        """Bring the scheme's copy of the group up to `length` tokens (no allocation)."""
        if g.held < length:
            delta = length - g.held
            if self.scheme.grow_cost(g.handles, g.held, delta):
                raise SchedulerStateError(
                    f"request {g.request.request_id} would need blocks to reach {length} "
                    f"tokens within its memory")
            self.scheme.grow(g.handles, g.held, delta)
            g.held = length

    def _finish(self, g: _Group) -> None:
        step = self.step
        self._untrack(g)
        self._sync_to(g, g.final_len)
        g.generated = g.length(step - 1) - g.request.prompt_len
        self.scheme.release(g.handles)
        g.handles = []
        g.state = DONE
        self.released += 1
        g.finish_step, g.finish_time = step - 1, self.time
        del self.running[g.index]
        self.running_seqs -= g.n

    def _latest_running(self) -> _Group:
        return self.running[max(self.running)]

    def _preempt(self, v: _Group) -> None:
        """Take `v` off the GPU before this step runs: swap it out, or recompute later."""
        scheme = self.scheme
        done = v.length(self.step - 1)
        self._untrack(v)
        del self.running[v.index]
        self.running_seqs -= v.n
        v.version += 1
        v.preemptions += 1
        self.preempted_now = True
        self.released += 1
        self._sync_to(v, done)
        # v.held may exceed `done` by the slot it was given at this step: kept for later
        if self.config.preemption == "swap" and scheme.can_swap_out(v.handles):
            self._swapped_blocks += scheme.swap_out(v.handles)
            v.state = SWAPPED
            v.swaps += 1
            v.sync_len = done
            self.swapped.append(v)
            self.swapped.sort(key=lambda g: g.index)
            return
        scheme.release(v.handles)
        v.handles = []
        if v.n == 1:
            v.prefill_len = done
            v.recomputed_tokens += done - v.request.prompt_len
        else:
            v.prefill_len = v.request.prompt_len
            v.restarts += 1
        v.held = 0
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

    def _reparent(self, g: _Group, target: int) -> None:
        """Beam search: apply the group's parent changes up to `target` tokens."""
        k, scheme = g.n, self.scheme
        if self.config.beam_parents == "uniform":
            g.handles = scheme.fork_step(g.handles, self.rng.integers(0, k, size=k).tolist())
            self.released += 1  # beams no parent chose released their blocks
            return
        events, prompt = g.beam_events, g.request.prompt_len
        while g.beam_next < len(events) and prompt + events[g.beam_next][0] <= target:
            _, beam, parent = events[g.beam_next]
            parents = list(range(k))
            parents[beam] = parent
            g.handles = scheme.fork_step(g.handles, parents)
            g.beam_next += 1
            self.released += 1

    def _grow(self, g: _Group) -> None:
        """Bring a running group's memory up to its length at this step."""
        scheme, step = self.scheme, self.step
        target = g.length(step)
        if g.n > 1 and self.config.sampling == "beam":
            self._sync_to(g, target - 1)  # beams fork from the history computed so far
            self._reparent(g, target)
        delta = target - g.held
        cost = scheme.grow_cost(g.handles, g.held, delta)
        if cost > 0 and not self._make_room(g, cost):
            return
        self._untrack(g)
        g.alloc = scheme.grow(g.handles, g.held, delta)
        g.sync_step, g.sync_len, g.held = step, target, max(target, g.held)
        g.counted = g.n
        self._track(g)
        self._schedule(g)

    def _swap_in(self) -> None:
        scheme = self.scheme
        while self.swapped:
            g = self.swapped[0]
            need = scheme.swap_in_cost(g.handles) + g.n  # plus a block each to grow into
            if (need + scheme.watermark_blocks > scheme.num_free_blocks
                    or self.running_seqs + g.n > self.config.max_num_seqs):
                return
            self.swapped.pop(0)
            self._swapped_blocks += scheme.swap_in(g.handles)
            g.state = RUNNING
            g.sync_step = self.step - 1
            self.running[g.index] = g
            self.running_seqs += g.n
            self._grow(g)  # the token of this step

    def _admit_waiting(self) -> tuple[int, bool]:
        """Admit from the queue head; (prefill tokens, whether the token budget stopped it).

        A head refused for memory is not asked again until memory was freed: free
        memory only shrinks between finishes and preemptions. The prompts admitted are
        committed (published to the prefix cache) once the step has computed them, so
        two requests admitted in one step never serve each other blocks not yet written.
        """
        config, scheme = self.config, self.scheme
        tokens = 0
        admitted = []
        while self.waiting:
            g = self.waiting[0]
            if g is self._refused and self.released == self._refused_at:
                break
            if self.running_seqs + g.n > config.max_num_seqs:
                break
            if tokens + g.prefill_len > config.max_num_batched_tokens:
                self._commit(admitted)
                return tokens, True
            admission = scheme.try_admit(g.request, g.prefill_len, g.n)
            if admission is None:
                self._refused, self._refused_at = g, self.released
                break
            self.waiting.popleft()
            tokens += self._admit(g, admission)
            admitted.append(g)
        self._commit(admitted)
        return tokens, False

    def _commit(self, groups: list[_Group]) -> None:
        for g in groups:
            self.scheme.commit(g.handles, g.prefill_len)

    # -- time ---------------------------------------------------------------------------
    def _durations(self, prefill: int, decoding: int) -> tuple[float, float, float]:
        """(first step, second step, growth per later step) of the interval from now."""
        timer, bs = self.config.step_time, self.scheme.kv_block_size
        ledger, step = self.ledger, self.step
        context = ledger.tokens(step)
        decode_context = context - self._prefill_context
        first = timer.step_seconds(prefill + decoding, decode_context + self._prefill_reads,
                                   decode_context + self._prefill_pairs, bs)
        if self._swapped_blocks:
            first += timer.swap_seconds(self._swapped_blocks, bs or 1)
        running = self.running_seqs
        c1, c2 = ledger.tokens(step + 1), ledger.tokens(step + 2)
        later = timer.step_seconds(running, c1, c1, bs)
        slope = timer.step_seconds(running, c2, c2, bs) - later
        return first, later, slope

    # -- the loop -------------------------------------------------------------------------
    def run(self, progress: bool = False, label: str = "") -> SimResult:
        """Simulate until every request has finished."""
        groups, events = self.groups, self.events
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
            self._prefill_pairs = self._prefill_context = self._prefill_reads = 0
            self._swapped_blocks = 0
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
                    limit = self.config.max_num_batched_tokens
                    if g.prefill_len > limit:  # a recompute after a swap that found no room
                        raise UnservableRequestError(
                            f"request {g.request.request_id} must recompute {g.prefill_len} "
                            f"tokens in one step after a preemption (the host pool had no "
                            f"room to swap it out), above max_num_batched_tokens={limit}; "
                            f"raise it or the host pool"
                        )
                    raise UnservableRequestError(
                        f"request {g.request.request_id} ({g.prefill_len} tokens to prefill, "
                        f"{g.n} sequences) cannot be admitted even into an empty cache: "
                        f"check the watermark and max_num_batched_tokens"
                    )
                continue
            first, later, slope = self._durations(prefill, decoding)
            nxt = self._next_step(events, budget_stop)
            if next_arrival < len(groups):
                wait = arrivals[next_arrival] - (self.time + first)
                nxt = min(nxt, self.step + 1 + steps_until(wait, later, slope))
            head = self.waiting[0].request if self.waiting else None
            ledger = self.ledger
            self.intervals.append(Interval(
                self.step, nxt, self.time, first, later, slope, prefill + decoding,
                self.running_seqs, len(self.running), len(self.waiting), len(self.swapped),
                self.scheme.used, self.scheme.external(head), self.scheme.capacity,
                ledger.unused_const, ledger.unused_slope, ledger.internal, ledger.logical,
            ))
            self.time += first + later_seconds(nxt - self.step - 1, later, slope)
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
        return SimResult(
            scheme=self.scheme.label,
            steps=expand_intervals(self.intervals),
            requests=requests_frame(self.groups),
            capacity=self.scheme.capacity,
            decode_tokens=sum(g.generated * g.n for g in self.groups),
            cow_copies=self.scheme.cow_copies,
        )


def simulate(
    workload: Workload,
    scheme: MemoryScheme,
    config: SchedulerConfig | None = None,
    *,
    progress: bool = False,
) -> SimResult:
    """Serve `workload` with continuous batching on `scheme`; per-step and per-request results.

    Requests must be in arrival order (a `Workload` is). Raises `UnservableRequestError`
    (a `ValueError`) for a request that could not run even alone in the pool.
    """
    return Simulator(workload, scheme, config or SchedulerConfig()).run(progress=progress)
