"""Waiting-queue orderings, selectable by name (``SchedulerConfig.scheduling_policy``).

A policy returns the waiting sequences in the order the scheduler should try to admit them.
It may read the KV manager (``peek`` is side-effect free) but changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from kairos.engine.kv_cache import KVCacheManager
from kairos.engine.sequence import Sequence

Policy = Callable[[Iterable[Sequence], KVCacheManager, int], list[Sequence]]
POLICIES: dict[str, Policy] = {}


def register(name: str) -> Callable[[Policy], Policy]:
    def deco(fn: Policy) -> Policy:
        POLICIES[name] = fn
        return fn

    return deco


def get_policy(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown scheduling policy {name!r}; known: {', '.join(sorted(POLICIES))}") from None


@register("fcfs")
def fcfs(waiting: Iterable[Sequence], kv: KVCacheManager, starve_steps: int) -> list[Sequence]:
    return list(waiting)  # the queue is kept in arrival order, preempted sequences in front


@register("lpm")
def longest_prefix_match(waiting: Iterable[Sequence], kv: KVCacheManager, starve_steps: int) -> list[Sequence]:
    """Longest cached prefix first (SGLang's LPM); preempted and starving sequences go first, in order."""
    waiting = list(waiting)
    urgent = [s for s in waiting if s.num_preemptions or s.waited_steps >= starve_steps]
    rest = [s for s in waiting if not (s.num_preemptions or s.waited_steps >= starve_steps)]
    rest.sort(key=lambda s: -kv.peek(s.token_ids))  # stable: ties stay in arrival order
    return urgent + rest
