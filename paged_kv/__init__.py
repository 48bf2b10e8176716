"""paged_kv: a research toolkit for paged KV-cache memory management in LLM inference.

The public surface: the cache manager and its configuration here; workloads, the serving
simulator and trace replay in `paged_kv.sim`; the studies in `paged_kv.studies`; figures
in `paged_kv.plots`.
Importing the package never imports numba: storage (and with it the kernels) loads when
a cache with storage is built.
"""

from paged_kv.cache import PagedKVCache
from paged_kv.core.config import MODEL_PRESETS, CacheConfig, ModelSpec, blocks_for_bytes, get_model
from paged_kv.core.errors import (
    ConfigurationError,
    ImmutableBlockError,
    InvariantError,
    MetadataOnlyError,
    NoHostPoolError,
    OutOfBlocksError,
    PagedKVError,
    PrefixCacheInUseError,
    SequenceStateError,
    TierIOError,
    TierLoadError,
    TierStoreError,
    UnknownSequenceError,
)
from paged_kv.core.pressure import PressureLevel
from paged_kv.core.sequence import SequenceInfo
from paged_kv.core.stats import CacheStats, PrefixCacheStats
from paged_kv.gpu import device  # noqa: F401  (GPU or simulator: chosen lazily, at first use)
from paged_kv.gpu.device import device_name

__version__ = "0.1.0"

__all__ = [
    "MODEL_PRESETS",
    "CacheConfig",
    "CacheStats",
    "ConfigurationError",
    "ImmutableBlockError",
    "InvariantError",
    "MetadataOnlyError",
    "ModelSpec",
    "NoHostPoolError",
    "OutOfBlocksError",
    "PagedKVCache",
    "PagedKVError",
    "PrefixCacheInUseError",
    "PrefixCacheStats",
    "PressureLevel",
    "SequenceInfo",
    "SequenceStateError",
    "TierIOError",
    "TierLoadError",
    "TierStoreError",
    "UnknownSequenceError",
    "blocks_for_bytes",
    "device_name",
    "get_model",
]
