"""Service-level objectives of a request, and what the engine predicts for them."""

from __future__ import annotations

import math

import msgspec

ON_MISS = ("refuse", "best_effort")


class SLO(msgspec.Struct, frozen=True, omit_defaults=True):
    """Objectives in ms from arrival; any may be None. ``on_miss``: refuse an infeasible request
    (429 ``slo_infeasible``), or serve it best-effort. ``name`` is the class used in metrics."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    deadline_ms: float | None = None
    on_miss: str = "refuse"
    name: str = "default"

    def __post_init__(self) -> None:
        for f in ("ttft_ms", "tpot_ms", "deadline_ms"):
            v = getattr(self, f)
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise ValueError(f"slo.{f} must be a positive number of milliseconds, got {v!r}")
        if self.on_miss not in ON_MISS:
            raise ValueError(f"slo.on_miss must be one of {ON_MISS}, got {self.on_miss!r}")
        if self.ttft_ms is None and self.tpot_ms is None and self.deadline_ms is None:
            raise ValueError("slo needs at least one of ttft_ms, tpot_ms, deadline_ms")


class SLOReport(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a finished request achieved (the ``usage.kairos`` extension)."""

    ttft_ms: float | None
    tpot_ms: float | None
    e2e_ms: float
    ttft_met: bool | None = None
    tpot_met: bool | None = None
    deadline_met: bool | None = None
    slo_met: bool | None = None  # all objectives met (None: the request had no SLO)
    slo_class: str | None = None
    # what admission control predicted (absent for best-effort requests and those without an SLO)
    predicted_ttft_ms: float | None = None
    predicted_tpot_ms: float | None = None
    predicted_e2e_ms: float | None = None


def report(slo: SLO | None, arrival: float, first: float | None, end: float, n_tokens: int,
           predicted: tuple[float | None, float | None, float | None] = (None, None, None),
           expired: bool = False) -> SLOReport:
    """``expired``: the engine ended the request because it could no longer meet its SLO (a miss,
    however early that was)."""
    ttft = None if first is None else (first - arrival) * 1000
    tpot = (end - first) * 1000 / (n_tokens - 1) if first is not None and n_tokens > 1 else None
    e2e = (end - arrival) * 1000
    if slo is None:
        return SLOReport(ttft, tpot, e2e)
    ttft_met = None if slo.ttft_ms is None else (ttft is not None and ttft <= slo.ttft_ms)
    tpot_met = None if slo.tpot_ms is None else (tpot is None or tpot <= slo.tpot_ms)
    deadline_met = None if slo.deadline_ms is None else (e2e <= slo.deadline_ms and not expired)
    met = not expired and all(x is not False for x in (ttft_met, tpot_met, deadline_met))
    return SLOReport(ttft, tpot, e2e, ttft_met, tpot_met, deadline_met, met, slo.name, *predicted)


def slo_misses(slo: SLO, first: float, tpot: float, last: float) -> list[str]:
    """The objectives that (first token, per token, last token) seconds miss, in words."""
    misses = []
    if slo.ttft_ms is not None and first * 1000 > slo.ttft_ms:
        misses.append(f"predicted TTFT {first * 1000:.0f} ms > ttft_ms {slo.ttft_ms:g}")
    if slo.tpot_ms is not None and tpot * 1000 > slo.tpot_ms:
        misses.append(f"predicted TPOT {tpot * 1000:.0f} ms > tpot_ms {slo.tpot_ms:g}")
    if slo.deadline_ms is not None and last * 1000 > slo.deadline_ms:
        misses.append(f"predicted completion {last * 1000:.0f} ms > deadline_ms {slo.deadline_ms:g}")
    return misses
