"""paged_kv: a research toolkit for paged KV-cache memory management in LLM inference."""

from paged_kv import device  # noqa: F401  (first: chooses GPU or simulator before numba loads)
from paged_kv.config import MODEL_PRESETS, CacheConfig, ModelSpec, blocks_for_bytes, get_model
from paged_kv.errors import (
    OutOfBlocksError,
    PagedKVError,
    SequenceStateError,
    UnknownSequenceError,
)

__version__ = "0.1.0"

__all__ = [
    "MODEL_PRESETS",
    "CacheConfig",
    "ModelSpec",
    "OutOfBlocksError",
    "PagedKVError",
    "SequenceStateError",
    "UnknownSequenceError",
    "blocks_for_bytes",
    "get_model",
]
