"""Each request to the next replica in turn."""

from __future__ import annotations

import itertools

from kairos.cluster.policies import Ask, Candidate, Decision, Tuning, register


@register("round_robin")
class RoundRobin:
    def __init__(self, tuning: Tuning):
        self._turn = itertools.count()

    def choose(self, ask: Ask, candidates: list[Candidate]) -> Decision:
        ids = sorted(c.index for c in candidates)
        k = next(self._turn) % len(ids)
        return Decision(ids[k:] + ids[:k], "rotation")
