"""Routing policies: given what a request asks (:class:`Ask`) and what the router knows of each
healthy replica (:class:`Candidate`), a :class:`Decision`. Pure: no I/O, no clock, no replica
objects; a new policy is one module that registers a class here."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from kairos.wire.slo import SLO


@dataclass(frozen=True)
class Forecast:
    """Seconds from arrival to the first token, per output token, and to the last token."""

    ttft_s: float
    tpot_s: float
    e2e_s: float

    def as_ms(self) -> dict[str, float]:
        return {"predicted_ttft_ms": round(self.ttft_s * 1000, 1), "predicted_tpot_ms": round(self.tpot_s * 1000, 1),
                "predicted_e2e_ms": round(self.e2e_s * 1000, 1)}


@dataclass(frozen=True)
class Ask:
    prompt_tokens: int
    slo: SLO | None = None


@dataclass(frozen=True)
class Candidate:
    index: int  # the replica's place in the fleet
    load: int  # requests the router has in flight there
    matched: int = 0  # prompt tokens it holds in its prefix cache
    forecast: Forecast | None = None  # what it would give the request (None: nothing known)
    floor: Forecast | None = None  # ... were it idle: the best it could ever do


@dataclass(frozen=True)
class Decision:
    order: list[int]  # replicas to try, best first (the router tries the second once if the first fails)
    reason: str  # what decided: "prefix", "load", "slo", "rotation", ...
    refusal: str | None = None  # set: no replica can meet the SLO (429 slo_infeasible)
    forecast: Forecast | None = field(default=None, compare=False)  # the chosen (or best) replica's


class Policy(Protocol):
    def choose(self, ask: Ask, candidates: list[Candidate]) -> Decision: ...


@dataclass(frozen=True)
class Tuning:
    """The knobs policies read (from ``RouterConfig``)."""

    balance_beta: float = 0.5
    balance_abs_threshold: int = 8
    balance_rel_threshold: float = 1.5
    slo_slack_tolerance: float = 0.15
    seed: int | None = None  # (least_load's sampling: fixed in tests)


POLICIES: dict[str, str] = {  # name -> module defining it (imported when chosen)
    "round_robin": "kairos.cluster.policies.round_robin",
    "least_load": "kairos.cluster.policies.least_load",
    "cache_aware": "kairos.cluster.policies.cache_aware",
    "slo": "kairos.cluster.policies.slo",
}
_MADE: dict[str, Callable[[Tuning], Policy]] = {}


def register(name: str):
    def put(cls):
        _MADE[name] = cls
        return cls
    return put


def make_policy(name: str, tuning: Tuning) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown routing policy {name!r}: one of {', '.join(sorted(POLICIES))}")
    importlib.import_module(POLICIES[name])
    return _MADE[name](tuning)


def by_load(candidates: list[Candidate]) -> list[int]:
    """Replica indices, least loaded first (ties: the lower index)."""
    return [c.index for c in sorted(candidates, key=lambda c: (c.load, c.index))]
