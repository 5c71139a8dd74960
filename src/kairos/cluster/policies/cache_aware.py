"""Prefix affinity balanced against load, as the SGLang router's cache-aware policy: while the
fleet is in balance, the replica scoring highest on (share of the prompt it holds cached) minus
beta x (its load / the busiest's); out of balance, the least loaded."""

from __future__ import annotations

from kairos.cluster.policies import Ask, Candidate, Decision, Tuning, by_load, register


def imbalanced(candidates: list[Candidate], tuning: Tuning) -> bool:
    loads = [c.load for c in candidates]
    hi, lo = max(loads), min(loads)
    return hi - lo > tuning.balance_abs_threshold and hi > tuning.balance_rel_threshold * lo


def score(c: Candidate, ask: Ask, busiest: int, beta: float) -> float:
    return c.matched / max(1, ask.prompt_tokens) - beta * c.load / max(1, busiest)


@register("cache_aware")
class CacheAware:
    def __init__(self, tuning: Tuning):
        self.tuning = tuning

    def choose(self, ask: Ask, candidates: list[Candidate]) -> Decision:
        if imbalanced(candidates, self.tuning):
            return Decision(by_load(candidates), "load")
        busiest = max(c.load for c in candidates)
        ranked = sorted(candidates, key=lambda c: (-score(c, ask, busiest, self.tuning.balance_beta), c.load, c.index))
        best = ranked[0]
        return Decision([c.index for c in ranked], "prefix" if best.matched > 0 else "load")
