"""Tiny random-weight transformers models and a tokenizer built in code: no download.

For tests, documentation and trying the adapter without a checkpoint. Four families,
each with what makes it differ for a KV cache:

=========  ==================================================================
llama      RoPE, grouped-query attention (4 query heads over 2 KV heads)
qwen2      RoPE, GQA, biases on the q/k/v projections
mistral    RoPE, GQA, a sliding window (8) shorter than longer sequences
gpt2       learned positions, multi-head attention (4 heads, 4 KV heads)
=========  ==================================================================

Every one has 2 layers, hidden size 32 (head_dim 8) and the tokenizer's vocabulary
(`VOCAB_SIZE`, 95 tokens). `offline_tokenizer` is a word-level tokenizer over a fixed word list
(``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3); `save_tiny_checkpoint` writes a model
and that tokenizer where ``from_pretrained(path)`` loads them back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

#: the families `tiny_config` builds
ARCHITECTURES = ("llama", "qwen2", "mistral", "gpt2")

#: special tokens, ids 0..3
SPECIAL = ("<pad>", "<s>", "</s>", "<unk>")
#: the tokenizer's words (ids 4..94)
WORDS = tuple("""
the a an of to in on for with by from and or as is are was be it this that these those
paged kv cache block blocks table tables key keys value values token tokens sequence
sequences prompt prompts prefix hit miss copy write read gather fork free share shared
beam beams search sample samples greedy decode prefill attention head heads layer layers
model models memory pool pools slot slots page pages batch batches step steps new old
first last each every one two three four system user answer question
""".split())
VOCAB_SIZE = len(SPECIAL) + len(WORDS)


def offline_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `WORDS` (whitespace-split; unknown words are
    ``<unk>``), built in code: it saves and loads like any Hugging Face tokenizer."""
    vocab = {token: i for i, token in enumerate((*SPECIAL, *WORDS))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def tiny_config(arch: str = "llama", **overrides: Any) -> Any:
    """The config of a tiny `arch` model (module table); `overrides` replace fields."""
    ids = dict(vocab_size=VOCAB_SIZE, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    decoder = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    if arch == "llama":
        return LlamaConfig(**{**ids, **decoder, **overrides})
    if arch == "qwen2":
        return Qwen2Config(**{**ids, **decoder, **overrides})
    if arch == "mistral":
        return MistralConfig(**{**ids, **decoder, "sliding_window": 8, **overrides})
    if arch == "gpt2":
        return GPT2Config(**{**ids, "n_embd": 32, "n_layer": 2, "n_head": 4,
                             "n_positions": 128, **overrides})
    raise ValueError(f"unknown architecture {arch!r}; valid names: {', '.join(ARCHITECTURES)}")


def tiny_model(arch: str = "llama", *, seed: int = 0, dtype: torch.dtype = torch.float32,
               **overrides: Any) -> Any:
    """A tiny `arch` model with random weights drawn from `seed`, in eval mode."""
    config = tiny_config(arch, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.to(dtype).eval()


def save_tiny_checkpoint(path: str | Path, arch: str = "llama", *, seed: int = 0) -> Path:
    """Write a tiny `arch` model and `offline_tokenizer` to the folder `path` (created
    if missing); returns it. ``from_pretrained(path)`` loads both back offline."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tiny_model(arch, seed=seed).save_pretrained(path)
    offline_tokenizer().save_pretrained(path)
    return path
