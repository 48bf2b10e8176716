"""The scheduler's configuration: limits, preemption, sampling, step time, beam model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from paged_kv.core.validate import is_int
from paged_kv.sim.timing import StepTime, calibrated_step_time

SAMPLING = ("single", "parallel", "beam")
BEAM_PARENTS = ("lineage", "uniform")

#: Beam search (``beam_parents="lineage"``): a beam is replaced on average
#: ``BEAM_REPLACEMENTS * (output_len - 1) ** BEAM_LENGTH_EXPONENT`` times over a request.
#: Both are fitted to the vLLM paper's Fig. 15 beam-search savings on both workloads
#: (``paged_kv.studies.sharing.fit_beam_model``): the exponent comes out 0, a
#: fixed number of replacements per beam whatever the output length (a constant rate
#: per token would leave Alpaca's short outputs sharing far too little).
BEAM_REPLACEMENTS = 10.0
BEAM_LENGTH_EXPONENT = 0.0


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
    #: step-time model (default: OPT-13B on an A100-40GB, calibrated)
    step_time: StepTime = field(default_factory=calibrated_step_time)
    #: seed of beam search's choices
    seed: int = 0
    #: beam search: "lineage" (persistent lineages, replaced now and then) or "uniform"
    beam_parents: str = "lineage"
    #: beam search with lineages: a beam is replaced ``beam_replacements *
    #: (output_len - 1) ** beam_length_exponent`` times on average (exponent 0: a fixed
    #: number per beam; 1: a fixed rate per generated token)
    beam_replacements: float = BEAM_REPLACEMENTS
    beam_length_exponent: float = BEAM_LENGTH_EXPONENT

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "n"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SchedulerConfig.{name} must be a positive integer, "
                                 f"got {value!r}")
        if not is_int(self.seed) or self.seed < 0:
            raise ValueError(f"SchedulerConfig.seed must be an integer >= 0, got {self.seed!r}")
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
        if not isinstance(self.step_time, StepTime):
            raise ValueError(f"SchedulerConfig.step_time must be a StepTime, "
                             f"got {self.step_time!r}")
        if self.beam_parents not in BEAM_PARENTS:
            raise ValueError(f"SchedulerConfig.beam_parents must be one of {BEAM_PARENTS}, "
                             f"got {self.beam_parents!r}")
        rate = self.beam_replacements
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or \
                not 0 <= rate < math.inf:
            raise ValueError(f"SchedulerConfig.beam_replacements must be a finite number "
                             f">= 0, got {rate!r}")
        exponent = self.beam_length_exponent
        if isinstance(exponent, bool) or not isinstance(exponent, (int, float)) or \
                not 0 <= exponent <= 1:
            raise ValueError(f"SchedulerConfig.beam_length_exponent must be in [0, 1], "
                             f"got {exponent!r}")
