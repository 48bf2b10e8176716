"""Pluggable eviction policies for evictable cached blocks, chosen by name."""

from __future__ import annotations

from collections.abc import Callable

from paged_kv.eviction.base import EvictionPolicy
from paged_kv.eviction.lru import LRUPolicy

#: name -> factory; `make_policy` is the only place that reads it.
POLICIES: dict[str, Callable[[], EvictionPolicy]] = {
    LRUPolicy.name: LRUPolicy,
}


def policy_names() -> list[str]:
    """The names `make_policy` accepts, sorted."""
    return sorted(POLICIES)


def make_policy(policy: str | EvictionPolicy) -> EvictionPolicy:
    """Return a fresh policy for a name, or `policy` itself if it is already one.

    Raises `ValueError` listing the valid names for an unknown name.
    """
    if isinstance(policy, EvictionPolicy):
        return policy
    if not isinstance(policy, str) or policy.lower() not in POLICIES:
        raise ValueError(
            f"unknown eviction policy {policy!r}; valid names: {', '.join(policy_names())}"
        )
    return POLICIES[policy.lower()]()


__all__ = ["POLICIES", "EvictionPolicy", "LRUPolicy", "make_policy", "policy_names"]
