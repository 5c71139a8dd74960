"""Power of two choices: of two replicas drawn at random, the less loaded (as good as scanning all
for balance, and two routers never herd onto the same idle replica)."""

from __future__ import annotations

import random

from kairos.cluster.policies import Ask, Candidate, Decision, Tuning, register


@register("least_load")
class LeastLoad:
    def __init__(self, tuning: Tuning):
        self._rng = random.Random(tuning.seed)

    def choose(self, ask: Ask, candidates: list[Candidate]) -> Decision:
        two = self._rng.sample(candidates, min(2, len(candidates)))
        best = min(two, key=lambda c: (c.load, c.index))
        rest = sorted((c for c in candidates if c is not best), key=lambda c: (c.load, c.index))
        return Decision([best.index] + [c.index for c in rest], "load")
