"""A checkpoint on disk, generating through the paged cache: what ``paged-kv generate
--hf PATH`` runs.

`load_checkpoint` loads a model and its tokenizer with ``from_pretrained(path)`` from
local files only (nothing is downloaded); whatever goes wrong (no such folder, no
``config.json``, missing or unreadable weights, no tokenizer) is one `ValueError` line
that names the path. `generate_text` encodes a prompt, generates with a `PagedHFCache`
and returns the text with what the cache did (`TextGeneration`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from paged_kv.hf.attention import use_paged_attention
from paged_kv.hf.cache import PagedHFCache
from paged_kv.hf.spec import TORCH_DTYPES


def checkpoint_problem(path: str | Path) -> str | None:
    """Why `path` is not a checkpoint folder (no folder, no ``config.json``), or None."""
    path = Path(path)
    if not path.exists():
        return f"{str(path)!r} does not exist"
    if not path.is_dir():
        return f"{str(path)!r} is not a folder"
    if not (path / "config.json").is_file():
        return f"{str(path)!r} has no config.json: not a transformers checkpoint"
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def load_checkpoint(path: str | Path, *, dtype: str | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from the folder `path`, local files only; the model in eval
    mode, in `dtype` ("float16", "float32"; default: the checkpoint's, float32 for
    bfloat16 since the pools hold float16 or float32). One-line `ValueError` otherwise."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415
    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    problem = checkpoint_problem(path)
    if problem is not None:
        raise ValueError(f"cannot load a checkpoint: {problem}")
    if dtype is not None and dtype not in TORCH_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(TORCH_DTYPES)}, got {dtype!r}")
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # a failure is reported in one line, below
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    except Exception as error:  # noqa: BLE001 - every loader failure becomes one line
        raise ValueError(f"cannot load the checkpoint in {str(path)!r}: "
                         f"{_first_line(error)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    if dtype is not None:
        model = model.to(TORCH_DTYPES[dtype])
    elif model.dtype not in TORCH_DTYPES.values():
        model = model.to(torch.float32)
    return model.eval(), tokenizer


@dataclass(frozen=True)
class TextGeneration:
    """One prompt generated through the paged cache."""

    #: the generated text (special tokens left out)
    text: str
    #: tokens of the prompt
    prompt_tokens: int
    #: tokens generated (per sequence returned)
    new_tokens: int
    #: tokens the model computed and wrote into the pool, every row counted
    tokens_computed: int
    #: the most physical blocks the rows held at once
    peak_blocks: int
    #: the most blocks the rows would have held without sharing
    peak_blocks_unshared: int
    #: copy-on-write copies
    cow_copies: int


def generate_text(model: Any, tokenizer: Any, prompt: str, *, new_tokens: int,
                  num_blocks: int = 256, block_size: int = 16, dtype: str | None = None,
                  kv_dtype: str = "auto", num_beams: int = 1, sample: bool = False, seed: int = 0,
                  paged_attention: bool = False) -> TextGeneration:
    """Encode `prompt`, generate `new_tokens` (greedy; `num_beams` > 1 beam search;
    `sample` seeded sampling) with a `PagedHFCache` of `num_blocks` blocks of
    `block_size` tokens, K/V in `dtype` (default: the model's) stored as `kv_dtype`,
    read by gather or (with `paged_attention`) by the paged-attention kernels."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    if ids.shape[1] == 0:
        raise ValueError(f"the prompt {prompt!r} encodes to no tokens")
    if paged_attention:
        use_paged_attention(model)
    cache = PagedHFCache.for_model(model, num_blocks=num_blocks, block_size=block_size,
                                   dtype=dtype, kv_dtype=kv_dtype)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
        tokenizer.eos_token_id
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), cache=cache,
                             max_new_tokens=new_tokens, do_sample=sample, num_beams=num_beams,
                             pad_token_id=pad)
    new = out[0, ids.shape[1]:]
    trace = cache.trace_frame()
    result = TextGeneration(
        text=tokenizer.decode(new, skip_special_tokens=True),
        prompt_tokens=int(ids.shape[1]),
        new_tokens=int(new.numel()),
        tokens_computed=cache.tokens_computed,
        peak_blocks=int(trace["blocks_held"].max()),
        peak_blocks_unshared=int(trace["blocks_unshared"].max()),
        cow_copies=cache.kv.stats().cow_copies,
    )
    cache.release()
    return result
