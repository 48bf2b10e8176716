"""The cache manager: where the metadata core and the device data layer meet.

`PagedKVCache` (`manager`) speaks sequences: admission of a prompt (`admission`),
growth, fork and copy-on-write (`growth`), swapping (`swap`), KV reads and writes over
a storage backend (`kv_io`, `backend`), the invariant checker (`invariants`), and
attention on the device through a sequence's block table (`attention`). It updates the
core's metadata and issues the matching data operation on `paged_kv.gpu`.

It imports `paged_kv.core` and `paged_kv.gpu`, the latter only when a cache stores KV
(a metadata-only cache never loads numba). Everything above it (simulator, model,
references, studies, adapters, command line) may import it; it imports none of them.
"""

from paged_kv.cache.manager import PagedKVCache

__all__ = ["PagedKVCache"]
