"""ShareGPT-style multi-turn conversations: sessions that come back after a think time.

A *session* is one conversation of ``T`` turns. Its tokens form one append-only stream::

    m_0 a_0 m_1 a_1 ... m_{T-1} a_{T-1}        (m: the user's message, a: the answer)

and turn ``t`` is a request whose prompt is the stream up to and including ``m_t`` (the
whole history, then the new message) and whose output is ``a_t``. So turn ``t + 1``'s
prompt starts with turn ``t``'s prompt: a prefix cache that still holds the session's
blocks serves the history, and only ``a_t`` (generated, not published by a replay that
commits prompts) and ``m_{t+1}`` are computed again. This is the workload of
CachedAttention (Gao et al., USENIX ATC '24), whose store keeps each session's KV
between turns.

What is drawn, and from where (`SessionModel` holds the numbers):

* **Sessions** arrive as a Poisson process at `SessionModel.session_rate` sessions/s.
* **Turns per session**: one turn with probability ``1 - multi_turn_share``, else
  ``1 + G`` turns with ``G`` geometric on ``{1, 2, ...}``, its mean set so that the mean
  over all sessions is `SessionModel.mean_turns`. CachedAttention's ShareGPT statistics
  (73% of conversations multi-turn, 5.75 turns on average; `paged_kv.sim.published`)
  are the defaults; the geometric shape is a modelling choice.
* **Lengths per turn**: message and answer drawn from a `paged_kv.sim.workloads.LengthModel`
  (default `SHAREGPT_LIKE`, the vLLM paper's ShareGPT means, each turn's pair within
  `SessionModel.turn_max_len`), a modelling choice: no per-turn ShareGPT lengths are
  published with the papers this project follows.
* **Think time**: turn ``t + 1`` arrives an exponential gap of mean
  `SessionModel.think_time_s` after turn ``t`` (the gap includes the answer's own
  generation). CachedAttention does not state one; the default is a modelling choice.
* **Context limit**: a session ends before the first turn whose prompt plus answer would
  exceed `SessionModel.max_context` tokens (None: no limit), as a server without
  history truncation would refuse it.

Block keys are prefix-chained over `block_size`-token blocks of the stream: full block
``j`` of session ``s`` has one key in every turn that holds it, a prompt's partial last
block a key of its own (it is never cached). Requests are merged over sessions in
arrival order; ``request_id`` is the position in that order.

Every draw comes from its own child stream of ``np.random.SeedSequence(seed)``
(session arrivals, turns, lengths, think times), so changing, say, the think time
never changes the lengths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from paged_kv.core.validate import require_int
from paged_kv.sim import published
from paged_kv.sim.request import Request, Workload
from paged_kv.sim.workloads import DEFAULT_MAX_LEN, SHAREGPT_LIKE, LengthModel

#: bits of a block key that hold the block's index within its session's stream
_BLOCK_BITS = 21


def _positive(name: str, value: object, *, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or math.isnan(value) or value <= 0 or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class SessionModel:
    """How sessions arrive, how many turns they take, how long each turn is.

    Defaults: CachedAttention's ShareGPT statistics for the turns and its session
    arrival rate (second-hand, see `paged_kv.sim.published.CACHEDATTENTION_WORKLOAD`);
    the think time, the per-turn lengths and the context limit are modelling choices.
    """

    #: mean turns per session over all sessions (single-turn ones included)
    mean_turns: float = published.CACHEDATTENTION_WORKLOAD["mean_turns"]
    #: share of sessions with more than one turn, in (0, 1]
    multi_turn_share: float = published.CACHEDATTENTION_WORKLOAD["multi_turn_share"]
    #: sessions starting per second (Poisson)
    session_rate: float = published.CACHEDATTENTION_WORKLOAD["session_rate"]
    #: mean seconds between a turn's arrival and the next turn's (exponential)
    think_time_s: float = 60.0
    #: lengths of each turn's message (prompt) and answer (output)
    lengths: LengthModel = field(default=SHAREGPT_LIKE)
    #: most tokens of one turn's message + answer
    turn_max_len: int = DEFAULT_MAX_LEN
    #: most tokens of a prompt plus its answer (None: unlimited)
    max_context: int | None = None

    def __post_init__(self) -> None:
        _positive("SessionModel.session_rate", self.session_rate)
        _positive("SessionModel.think_time_s", self.think_time_s)
        share = self.multi_turn_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) \
                or not 0.0 < share <= 1.0:
            raise ValueError(f"SessionModel.multi_turn_share must be in (0, 1], got {share!r}")
        mean = _positive("SessionModel.mean_turns", self.mean_turns)
        # multi-turn sessions need a mean of more than 2 turns for the geometric tail
        if self.multi_turn_mean <= 2.0:
            raise ValueError(
                f"SessionModel.mean_turns={mean} with multi_turn_share={share} leaves "
                f"multi-turn sessions {self.multi_turn_mean:.3f} turns on average; they "
                f"need more than 2"
            )
        if not isinstance(self.lengths, LengthModel):
            raise ValueError(f"SessionModel.lengths must be a LengthModel, got {self.lengths!r}")
        require_int("SessionModel.turn_max_len", self.turn_max_len, 2)
        if self.max_context is not None:
            require_int("SessionModel.max_context", self.max_context, 2)

    @property
    def multi_turn_mean(self) -> float:
        """Mean turns of a multi-turn session: ``(mean - (1 - share)) / share``."""
        return (self.mean_turns - (1.0 - self.multi_turn_share)) / self.multi_turn_share

    def draw_turns(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Turns of `n` sessions (int64, each >= 1)."""
        multi = rng.random(n) < self.multi_turn_share
        extra = rng.geometric(1.0 / (self.multi_turn_mean - 1.0), size=n)
        return np.where(multi, 1 + extra, 1).astype(np.int64)


def session_keys(session: int, prompt_len: int, turn: int, block_size: int) -> tuple[int, ...]:
    """Block keys of a prompt of `prompt_len` tokens from the start of `session`'s stream.

    Full block ``j``: ``session << 22 | j``, the same in every turn; a partial last block:
    ``session << 22 | 1 << 21 | turn``, one of its own.
    """
    full, partial = divmod(prompt_len, block_size)
    if full >= 1 << _BLOCK_BITS:
        raise ValueError(f"a session of {prompt_len} tokens has more than 2**{_BLOCK_BITS} "
                         f"blocks of {block_size}")
    base = session << (_BLOCK_BITS + 1)
    keys = tuple(base | j for j in range(full))
    if partial:
        keys += (base | 1 << _BLOCK_BITS | turn,)
    return keys


def multi_turn_workload(
    num_sessions: int,
    *,
    model: SessionModel | None = None,
    block_size: int = 16,
    seed: int = 0,
) -> Workload:
    """`num_sessions` ShareGPT-style conversations as one arrival-ordered workload.

    See the module docstring for what is drawn. Requests carry prefix-chained
    `block_keys` over `block_size` tokens; the metadata records the settings, the
    sessions and turns drawn and the turns dropped at the context limit.
    """
    num_sessions = require_int("num_sessions", num_sessions, 1)
    block_size = require_int("block_size", block_size, 1)
    seed = require_int("seed", seed)
    model = SessionModel() if model is None else model
    if not isinstance(model, SessionModel):
        raise ValueError(f"model must be a SessionModel, got {model!r}")
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]
    starts = np.cumsum(streams[0].exponential(1.0 / model.session_rate, size=num_sessions))
    turns = model.draw_turns(num_sessions, streams[1])
    total = int(turns.sum())
    messages, answers = model.lengths.sample(total, streams[2], max_len=model.turn_max_len)
    gaps = streams[3].exponential(model.think_time_s, size=total)

    rows: list[tuple[float, int, int, int, int]] = []  # time, session, turn, prompt, output
    dropped = 0
    first = 0
    for session in range(num_sessions):
        count = int(turns[session])
        time, history = float(starts[session]), 0
        for turn in range(count):
            i = first + turn
            prompt = history + int(messages[i])
            if model.max_context is not None and prompt + int(answers[i]) > model.max_context:
                dropped += count - turn
                break
            rows.append((time, session, turn, prompt, int(answers[i])))
            history = prompt + int(answers[i])
            time += float(gaps[i])
        first += count
    rows.sort(key=lambda row: (row[0], row[1], row[2]))
    requests = tuple(
        Request(index, t, prompt, output, session_keys(session, prompt, turn, block_size),
                block_size)
        for index, (t, session, turn, prompt, output) in enumerate(rows)
    )
    metadata = {
        "source": "synthetic multi-turn conversations (paged_kv.sim.conversations)",
        "sessions": num_sessions,
        "turns_drawn": total,
        "turns_dropped_max_context": dropped,
        "mean_turns": model.mean_turns,
        "multi_turn_share": model.multi_turn_share,
        "session_rate": model.session_rate,
        "think_time_s": model.think_time_s,
        "length_model": model.lengths.name,
        "turn_max_len": model.turn_max_len,
        "max_context": model.max_context,
        "block_size": block_size,
        "seed": seed,
    }
    return Workload("sharegpt-sessions", requests, metadata)


__all__ = ["SessionModel", "multi_turn_workload", "session_keys"]
