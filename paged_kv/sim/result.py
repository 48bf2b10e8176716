"""What a simulation returns: per-step and per-request frames and their summary."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from paged_kv.sim.accounting import summarize


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

    @property
    def last_arrival(self) -> float:
        """Seconds at which the last request arrived."""
        return float(self.requests["arrival_time"].max())

    def summary(self, *, over: str = "arrivals", weight: str = "time") -> dict[str, object]:
        """Averaged category shares, batch size and latency.

        `over` and `weight` choose the steps and their weights
        (`paged_kv.sim.accounting.summarize`); the default averages over time while the
        workload's requests arrive. Latency columns are over all requests:
        ``normalized_latency_s`` is the mean of (finish - arrival) / output length, the
        vLLM paper's metric (§6.1).
        """
        out = summarize(self.steps, over=over, weight=weight, until=self.last_arrival)
        req = self.requests
        out["scheme"] = self.scheme
        out["preemptions"] = int(req["preemptions"].sum())
        out["swaps"] = int(req["swaps"].sum())
        out["cow_copies"] = self.cow_copies
        out["decode_tokens"] = self.decode_tokens
        out["makespan_s"] = float(req["finish_time"].max())
        latency = req["finish_time"] - req["arrival_time"]
        out["mean_latency_s"] = float(latency.mean())
        out["normalized_latency_s"] = float((latency / req["output_len"]).mean())
        return out


#: per-request statistics a simulation records (attributes of the scheduler's groups)
_REQUEST_STATS = ("admit_step", "admit_time", "finish_step", "finish_time", "generated",
                  "preemptions", "swaps", "restarts", "recomputed_tokens", "cached_tokens")


def requests_frame(groups) -> pd.DataFrame:
    """One row per request of a simulation: the request, then what happened to it."""
    rows = []
    for g in groups:
        r = g.request
        row = {"request_id": r.request_id, "arrival_time": r.arrival_time,
               "prompt_len": r.prompt_len, "output_len": r.output_len, "num_seqs": g.n}
        row.update({name: getattr(g, name) for name in _REQUEST_STATS})
        rows.append(row)
    return pd.DataFrame(rows)
