"""A scripted generation through the paged cache, checked step by step against the dense
model, with prefill work counted under vLLM's rule or with kept prompt logits.

The script (block size ``bs``; prompt ``P`` of ``prompt_blocks`` full blocks and a short
``tail``, random tokens drawn from the seed; greedy decoding)::

    A  prefill P                   nothing cached yet: all of P is computed
       decode A
    B  P again                     every block of P is cached. vLLM's rule: serve all but
                                   the last block and recompute its bs tokens (the logits
                                   come out of the last token). Kept logits: skip the
                                   prefill, read the logits kept with P's last block,
                                   admit P with the first token, compute only that token
       swap A out                  its blocks go to the host pool
    C  prefill P + tail            a prefix hit on P; only the tail is computed
       fork C                      parallel sampling: sample i starts with C's i-th most
                                   likely token, so the shared partial block is copied
       decode B, C, C', ...
       swap A in
       decode everyone             until every sequence has `new_tokens` tokens

Each row of logits the paged runner computes (and each kept row it serves) is compared
with `DenseModel`, which recomputes the whole sequence from its tokens with no cache: the
largest absolute difference, and whether both put the same token first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from paged_kv.core.validate import require_int
from paged_kv.model.config import get_model_config
from paged_kv.model.dense import LOGITS_TOLERANCE, DenseModel
from paged_kv.model.paged import PagedModelRunner
from paged_kv.model.weights import random_weights

#: How a prompt whose every block is cached is treated: "recompute" its last block
#: (vLLM's rule), or "keep" the logits with the block and skip the prefill.
PROMPT_LOGITS_MODES = ("recompute", "keep")
#: Columns of `Generation.steps`, in order.
STEP_COLUMNS = ("prompt_logits", "step", "request", "seq_id", "phase", "position",
                "computed", "cached", "max_abs_diff", "argmax_agrees", "token", "note")


@dataclass
class _Seq:
    """A live sequence of the script."""

    request: str
    #: tokens fed in so far (their K/V is in the cache)
    tokens: list[int]
    #: the token chosen to feed in next
    next_token: int
    #: tokens chosen so far (the last one, `next_token`, is not fed in yet)
    generated: int = 1


@dataclass
class Generation:
    """One scripted run: a row per step, and the run's totals."""

    #: one row per row of logits (computed, or kept ones served) and per swap or fork
    steps: pd.DataFrame
    #: tokens computed and served, agreement with the dense model, copy and swap counts
    summary: dict


class _Script:
    """The script's steps, each recorded against the dense model."""

    def __init__(self, runner: PagedModelRunner, dense: DenseModel, new_tokens: int,
                 progress: tqdm) -> None:
        self.runner = runner
        self.dense = dense
        self.new_tokens = new_tokens
        self.progress = progress
        self.rows: list[dict] = []
        self.step = -1
        self.prompt_tokens = 0
        self.seqs: dict[int, _Seq] = {}
        self.logits: dict[int, np.ndarray] = {}  # each sequence's latest paged logits

    def next_step(self) -> None:
        self.step += 1
        self.progress.update()

    def record(self, phase: str, request: str, seq_id: int | None, *, tokens=None,
               logits=None, computed: int = 0, cached: int = 0, token=None,
               note: str = "") -> None:
        row = dict.fromkeys(STEP_COLUMNS[1:])
        row.update(step=self.step, request=request, seq_id=seq_id, phase=phase,
                   computed=computed, cached=cached, token=token, note=note)
        if logits is not None:
            reference = self.dense.next_logits(tokens)
            row.update(position=len(tokens) - 1,
                       max_abs_diff=float(np.abs(logits - reference).max()),
                       argmax_agrees=bool(np.argmax(logits) == np.argmax(reference)))
        self.rows.append(row)

    def prefill(self, request: str, prompt: list[int], *, phase: str = "prefill",
                note: str = "") -> int:
        self.next_step()
        result = self.runner.prefill(prompt)
        seq = _Seq(request, list(prompt), int(np.argmax(result.logits)))
        self.seqs[result.seq_id] = seq
        self.logits[result.seq_id] = result.logits
        self.record(phase, request, result.seq_id, tokens=prompt, logits=result.logits,
                    computed=result.num_computed, cached=result.num_cached,
                    token=seq.next_token, note=note)
        return result.seq_id

    def admit(self, request: str, prompt: list[int]) -> int:
        """A new request; a prompt whose every block is cached skips its prefill when the
        runner kept its logits."""
        self.prompt_tokens += len(prompt)
        kept = self.runner.cached_logits(prompt)
        if kept is None:
            return self.prefill(request, prompt)
        self.next_step()
        first = int(np.argmax(kept))
        self.record("kept logits", request, None, tokens=prompt, logits=kept,
                    cached=len(prompt), token=first, note="prefill skipped")
        seq_id = self.prefill(request, prompt + [first], phase="decode",
                              note="admitted with its cached prompt")
        self.seqs[seq_id].generated = 2
        return seq_id

    def decode(self, seq_ids: list[int]) -> None:
        """One decode step of the sequences that still generate."""
        seq_ids = [s for s in seq_ids if self.seqs[s].generated < self.new_tokens]
        if not seq_ids:
            return
        self.next_step()
        states = [self.seqs[s] for s in seq_ids]
        logits = self.runner.decode(seq_ids, [s.next_token for s in states])
        for seq_id, seq, row in zip(seq_ids, states, logits):
            seq.tokens.append(seq.next_token)
            seq.next_token = int(np.argmax(row))
            seq.generated += 1
            self.logits[seq_id] = row
            self.record("decode", seq.request, seq_id, tokens=seq.tokens, logits=row,
                        computed=1, token=seq.next_token)

    def swap(self, direction: str, seq_id: int) -> None:
        self.next_step()
        cache = self.runner.cache
        before = cache.get(seq_id).block_table
        (cache.swap_out if direction == "out" else cache.swap_in)(seq_id)
        pools = "GPU -> host" if direction == "out" else "host -> GPU"
        self.record(f"swap {direction}", self.seqs[seq_id].request, seq_id,
                    note=f"blocks {list(before)} {pools} {list(cache.get(seq_id).block_table)}")

    def fork(self, seq_id: int, samples: int) -> list[int]:
        """Parallel sampling: sample i's first token is the i-th most likely one."""
        self.next_step()
        parent = self.seqs[seq_id]
        ranked = np.argsort(-self.logits[seq_id], kind="stable")
        family = [seq_id]
        for i in range(1, samples):
            child = self.runner.fork(seq_id)
            self.seqs[child] = _Seq(parent.request, list(parent.tokens), int(ranked[i]))
            family.append(child)
            self.record("fork", parent.request, child, token=int(ranked[i]),
                        note=f"sample {i} of sequence {seq_id}: its token ranked {i + 1}")
        return family


def longest_sequence(block_size: int, prompt_blocks: int, new_tokens: int) -> int:
    """Tokens the script's longest sequence holds: the shared prompt (`prompt_blocks` full
    blocks), request C's tail of half a block (at least one token), and `new_tokens`."""
    return prompt_blocks * block_size + max(1, block_size // 2) + new_tokens


def run_generation(
    model: str = "tiny",
    *,
    kv_dtype: str = "float32",
    block_size: int = 4,
    prompt_blocks: int = 2,
    new_tokens: int = 3,
    samples: int = 2,
    prompt_logits: str = "keep",
    attention: str = "device",
    seed: int = 0,
    progress: bool = False,
) -> Generation:
    """Run the script (module docstring) through a fresh cache.

    `prompt_logits` is one of `PROMPT_LOGITS_MODES`; `attention` one of
    `paged_kv.model.ATTENTION_BACKENDS`. The weights and the prompts come from `seed`.
    """
    from paged_kv.cache import PagedKVCache  # noqa: PLC0415 - numba, when storage is built
    from paged_kv.core.config import CacheConfig  # noqa: PLC0415

    if prompt_logits not in PROMPT_LOGITS_MODES:
        raise ValueError(f"unknown prompt_logits mode {prompt_logits!r}; valid names: "
                         f"{', '.join(PROMPT_LOGITS_MODES)}")
    for name, value, low in (("block_size", block_size, 1), ("prompt_blocks", prompt_blocks, 1),
                             ("new_tokens", new_tokens, 3), ("samples", samples, 1)):
        require_int(name, value, low)
    config = get_model_config(model, kv_dtype=kv_dtype)
    longest = longest_sequence(block_size, prompt_blocks, new_tokens)
    if longest > config.spec.max_seq_len:
        raise ValueError(f"the longest sequence would hold {longest} tokens, more than "
                         f"{model}'s max_seq_len of {config.spec.max_seq_len}")
    if samples > config.vocab_size:  # sample i starts with the token ranked i + 1
        raise ValueError(f"samples must be at most the vocabulary's {config.vocab_size} "
                         f"tokens (each sample starts with a different one), got {samples}")
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, config.vocab_size, prompt_blocks * block_size).tolist()
    tail = rng.integers(0, config.vocab_size, max(1, block_size // 2)).tolist()
    per_seq = -(-longest // block_size)
    cache = PagedKVCache(
        CacheConfig(block_size=block_size, num_gpu_blocks=per_seq * (samples + 3),
                    num_host_blocks=per_seq, enable_prefix_caching=True),
        config.spec,
    )
    weights = random_weights(config, seed)
    runner = PagedModelRunner(weights, cache, attention=attention,
                              keep_prompt_logits=prompt_logits == "keep")
    with tqdm(desc=f"generate ({prompt_logits})", unit="step", disable=not progress) as bar:
        script = _Script(runner, DenseModel(weights), new_tokens, bar)
        a = script.admit("A", prompt)
        script.decode([a])
        b = script.admit("B", prompt)
        script.swap("out", a)
        c = script.admit("C", prompt + tail)
        family = script.fork(c, samples)
        script.decode([b, *family])
        script.swap("in", a)
        while any(s.generated < new_tokens for s in script.seqs.values()):
            script.decode(list(script.seqs))
    cache.check_invariants()
    steps = pd.DataFrame(script.rows, columns=STEP_COLUMNS[1:])
    for column in ("seq_id", "position", "token", "argmax_agrees"):  # keep ints and None
        steps[column] = pd.Series([row[column] for row in script.rows], dtype=object)
    steps.insert(0, "prompt_logits", prompt_logits)
    summary = {"prompt_logits": prompt_logits, "model": model, "attention": attention,
               "kv_dtype": kv_dtype, "block_size": block_size,
               "prompt_tokens": script.prompt_tokens}
    summary.update(_totals(steps, cache.stats(), LOGITS_TOLERANCE[kv_dtype]))
    return Generation(steps, summary)


def _totals(steps: pd.DataFrame, stats, tolerance: float) -> dict:
    """What the run computed and served, and how close it stayed to the dense model."""
    phase = steps["phase"]
    prompts = steps[(phase == "prefill") | (phase == "kept logits")]
    compared = steps.dropna(subset=["max_abs_diff"])
    return {
        "prompt_tokens_cached": int(prompts["cached"].sum()),
        "prompt_tokens_computed": int(prompts["computed"].sum()),
        "prefills_skipped": int((phase == "kept logits").sum()),
        "generated_tokens_computed": int(steps.loc[phase == "decode", "computed"].sum()),
        "tokens_computed": int(steps["computed"].sum()),
        "max_abs_diff": float(compared["max_abs_diff"].max()),
        "tolerance": tolerance,
        "argmax_agreement": float(compared["argmax_agrees"].astype(bool).mean()),
        "cow_copies": stats.cow_copies,
        "blocks_swapped_out": stats.blocks_swapped_out,
        "blocks_swapped_in": stats.blocks_swapped_in,
    }


def compare_prompt_logits(
    modes: tuple[str, ...] = PROMPT_LOGITS_MODES, **kwargs
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the script once per prompt-logits mode; returns ``(steps, summary)``: every
    step of every run, and one summary row per run. `kwargs` go to `run_generation`."""
    runs = [run_generation(prompt_logits=mode, **kwargs) for mode in modes]
    return (pd.concat([r.steps for r in runs], ignore_index=True),
            pd.DataFrame([r.summary for r in runs]))

