"""Pluggable eviction policies for evictable cached blocks, chosen by name."""

from __future__ import annotations

from collections.abc import Callable

from paged_kv.core.eviction.arc import ARCPolicy
from paged_kv.core.eviction.base import EvictionPolicy
from paged_kv.core.eviction.belady import BeladyPolicy, belady_needs_trace
from paged_kv.core.eviction.clock import ClockPolicy
from paged_kv.core.eviction.fifo import FIFOPolicy
from paged_kv.core.eviction.length_aware import LengthAwarePolicy, length_aware_needs_depths
from paged_kv.core.eviction.lfu import LFUPolicy
from paged_kv.core.eviction.lru import LRUPolicy

#: name -> factory; `make_policy` is the only place that reads it. The "belady" and
#: "length_aware" factories raise `ValueError` saying how to build one: they need the
#: trace's future accesses, or each key's depth in its prompt.
POLICIES: dict[str, Callable[[], EvictionPolicy]] = {
    LRUPolicy.name: LRUPolicy,
    FIFOPolicy.name: FIFOPolicy,
    LFUPolicy.name: LFUPolicy,
    ClockPolicy.name: ClockPolicy,
    ARCPolicy.name: ARCPolicy,
    BeladyPolicy.name: belady_needs_trace,
    LengthAwarePolicy.name: length_aware_needs_depths,
}

#: the policies `make_policy` can build from a name alone (all but "belady" and
#: "length_aware")
ONLINE_POLICIES: tuple[str, ...] = tuple(
    sorted(name for name in POLICIES if name not in (BeladyPolicy.name, LengthAwarePolicy.name))
)


def policy_names() -> list[str]:
    """The names `make_policy` accepts, sorted."""
    return sorted(POLICIES)


def make_policy(policy: str | EvictionPolicy) -> EvictionPolicy:
    """Return a fresh policy for a name, or `policy` itself if it is already one.

    Raises `ValueError` listing the valid names for an unknown name, and `ValueError`
    explaining how to construct `BeladyPolicy` for "belady" and `LengthAwarePolicy` for
    "length_aware".
    """
    if isinstance(policy, EvictionPolicy):
        return policy
    if not isinstance(policy, str) or policy.lower() not in POLICIES:
        raise ValueError(
            f"unknown eviction policy {policy!r}; valid names: {', '.join(policy_names())}"
        )
    return POLICIES[policy.lower()]()


__all__ = [
    "ONLINE_POLICIES",
    "POLICIES",
    "ARCPolicy",
    "BeladyPolicy",
    "ClockPolicy",
    "EvictionPolicy",
    "FIFOPolicy",
    "LFUPolicy",
    "LRUPolicy",
    "LengthAwarePolicy",
    "make_policy",
    "policy_names",
]
