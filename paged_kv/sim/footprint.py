"""How much memory a serving simulation takes, estimated before it runs.

A run of `paged_kv.sim.scheduler.simulate` holds its workload, one record per request
and one row per step until its result is dropped, and a paged scheme holds its pools'
metadata (a ref count, a key and a free-queue entry per block). `serving_bytes` adds
these up from two measured constants, so that a command can refuse a run that cannot fit
(``--num-requests 1000000000000``, ``--kv-gib 1e9``) before it starts, rather than
after minutes and gigabytes. It is an upper estimate, not a prediction: the runs
measured below took 27% to 78% of it.

The constants are peak resident memory (``resource.getrusage``) of one run in a fresh
process, less the same process before the run, on OPT-13B with 12 GiB of KV and 8,000
``sharegpt-like`` requests:

====================  ==========  ============  =============
arrivals              scheme      steps         per request
====================  ==========  ============  =============
0.5 req/s             paged       483,092       31.4 KB
2 req/s               paged       89,942        11.0 KB
100 req/s             paged       86,558        10.8 KB
0.5 req/s             max         491,415       19.6 KB
====================  ==========  ============  =============

and a paged pool of 8,192,000 blocks (``--kv-gib 100000``) took 54 bytes per block.
"""

from __future__ import annotations

from paged_kv.core.validate import require_int

#: bytes per request of one run, steps included: the most measured (31.4 KB, see the
#: module docstring) rounded up, a modelling choice that covers slow arrivals, where
#: each request lives through the most steps
BYTES_PER_REQUEST = 40 * 1024
#: bytes per block of a paged pool's metadata: measured 54, rounded up
BYTES_PER_BLOCK = 64
#: bytes of a run whatever its size (a few frames and the scheduler): a modelling choice
BYTES_PER_RUN = 1 * 2**20


def serving_bytes(num_requests: int, *, num_blocks: int = 0, runs: int = 1) -> int:
    """Estimated peak bytes of `runs` simulations of `num_requests` requests held in
    memory at once, each over a paged pool of `num_blocks` blocks (0: a contiguous
    scheme, whose cost does not grow with the pool)."""
    num_requests = require_int("num_requests", num_requests)
    num_blocks = require_int("num_blocks", num_blocks)
    runs = require_int("runs", runs, 1)
    return runs * (BYTES_PER_RUN + num_requests * BYTES_PER_REQUEST
                   + num_blocks * BYTES_PER_BLOCK)
