"""Deadline-aware dispatch: a request with an SLO goes where its predicted slack is largest; one
without goes cache-aware.

The router's forecast sees a replica's queue as totals; the replica's own admission sees it
request by request, in its policy's order. So where the forecast says no replica meets the SLO
as things stand, the request still goes to the best one, whose admission judges (and a refusal
there sends it to the next best once); the router refuses it itself (429 slo_infeasible) only
when even an idle replica could not meet it."""

from __future__ import annotations

import math

from kairos.cluster.policies import Ask, Candidate, Decision, Forecast, Tuning, register
from kairos.cluster.policies.cache_aware import CacheAware
from kairos.wire.slo import SLO, slo_misses


def slack(slo: SLO, f: Forecast) -> float:
    """The share of its tightest objective a forecast leaves to spare (negative: missed by it)."""
    pairs = [(slo.ttft_ms, f.ttft_s), (slo.tpot_ms, f.tpot_s), (slo.deadline_ms, f.e2e_s)]
    return min(((ms / 1000 - s) / (ms / 1000) for ms, s in pairs if ms is not None), default=math.inf)


def misses(slo: SLO, f: Forecast) -> list[str]:
    return slo_misses(slo, f.ttft_s, f.tpot_s, f.e2e_s)


@register("slo")
class SLOPolicy:
    def __init__(self, tuning: Tuning):
        self.fallback = CacheAware(tuning)
        self.tolerance = tuning.slo_slack_tolerance

    def choose(self, ask: Ask, candidates: list[Candidate]) -> Decision:
        slo = ask.slo
        known = [c for c in candidates if c.forecast is not None]
        if slo is None or not known:
            return self.fallback.choose(ask, candidates)
        # slack within ``slo_slack_tolerance`` of the best counts as a tie, broken by load (exact, the
        # router's own count): forecasts from stats up to a quarter second old differ by less than
        # that, and ranking by them alone herded a burst onto one replica
        spare = {c.index: slack(slo, c.forecast) for c in known}
        top = max(spare.values())

        def rank(c: Candidate) -> tuple:
            if spare[c.index] >= top - self.tolerance:
                return (0, c.load, -c.matched, c.index)
            return (1, -spare[c.index], c.load, c.index)

        ranked = sorted(known, key=rank)
        feasible = [c.index for c in ranked if not misses(slo, c.forecast)]
        unknown = [c.index for c in candidates if c.forecast is None]  # (no cost model: not a known miss)
        infeasible = [c.index for c in ranked if c.index not in feasible]
        best = ranked[0].forecast
        if feasible:
            return Decision(feasible + unknown + infeasible, "slo", forecast=best)
        if unknown:
            return Decision(unknown + infeasible, "slo_unknown", forecast=best)
        if slo.on_miss == "best_effort":
            return Decision(infeasible, "slo_best_effort", forecast=best)
        if any(c.floor is None or not misses(slo, c.floor) for c in ranked):
            return Decision(infeasible, "slo_replica_judges", forecast=best)
        return Decision(infeasible, "slo", forecast=best,
                        refusal="no replica can meet the SLO: " + "; ".join(misses(slo, best)) +
                        " (the best replica's prediction; an idle one would miss too; set slo.on_miss to \"best_effort\" to be served anyway)")
