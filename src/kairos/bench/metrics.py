"""Metric math over request records: latency percentiles, throughput, SLO attainment, goodput."""

from __future__ import annotations

from kairos.bench.runner import Record
from kairos.bench.workloads import SLO


def percentile(values: list[float], p: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), None for no values."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float | None]:
    return {"mean": sum(values) / len(values) if values else None, "p50": percentile(values, 50),
            "p90": percentile(values, 90), "p99": percentile(values, 99)}


def ttft(r: Record) -> float | None:
    return None if r.first_token_s is None else r.first_token_s - r.sent_s


def tpot(r: Record) -> float | None:
    """Mean time per output token after the first (None for a one-token answer)."""
    if r.first_token_s is None or r.output_tokens < 2:
        return None
    return (r.end_s - r.first_token_s) / (r.output_tokens - 1)


def e2e(r: Record) -> float:
    return r.end_s - r.sent_s


def itls(r: Record) -> list[float]:
    return [b - a for a, b in zip(r.token_times, r.token_times[1:])]


def summarize(records: list[Record], slos: dict[str, SLO]) -> dict:
    """Everything the report shows. Refused/failed requests are counted, never latency samples."""
    ok = [r for r in records if r.outcome == "ok"]
    start = min((r.sent_s for r in records), default=0.0)
    end = max((r.end_s for r in records), default=0.0)
    duration = max(end - start, 1e-9)
    met = [r for r in ok if slos[r.slo_class].met(ttft(r), tpot(r), e2e(r))]
    out_tokens = sum(r.output_tokens for r in ok)
    result = {
        "duration_s": duration,
        "requests": len(records),
        "completed": len(ok),
        "refused": sum(r.outcome == "refused" for r in records),
        "expired": sum(r.outcome == "expired" for r in records),
        "failed": sum(r.outcome == "error" for r in records),
        "timed_out": sum(r.outcome == "timeout" for r in records),
        "request_throughput": len(ok) / duration,
        "output_throughput": out_tokens / duration,
        "total_token_throughput": (out_tokens + sum(r.prompt_tokens for r in ok)) / duration,
        "ttft_s": summary([t for r in ok if (t := ttft(r)) is not None]),
        "tpot_s": summary([t for r in ok if (t := tpot(r)) is not None]),
        "itl_s": summary([x for r in ok for x in itls(r)]),
        "e2e_s": summary([e2e(r) for r in ok]),
        # attainment over every request sent: a refusal or failure is a miss
        "slo_attainment": len(met) / len(records) if records else 0.0,
        "goodput_rps": len(met) / duration,
        "goodput_tokens_per_s": sum(r.output_tokens for r in met) / duration,
        "classes": {},
    }
    for name in sorted({r.slo_class for r in records}):
        rs = [r for r in records if r.slo_class == name]
        m = [r for r in met if r.slo_class == name]
        result["classes"][name] = {
            "requests": len(rs), "met": len(m), "refused": sum(r.outcome == "refused" for r in rs),
            "expired": sum(r.outcome == "expired" for r in rs),
            "slo_attainment": len(m) / len(rs), "goodput_rps": len(m) / duration,
            "ttft_s": summary([t for r in rs if r.outcome == "ok" and (t := ttft(r)) is not None]),
        }
    return result


def capacity(sweep: list[tuple[float, dict]], target: float) -> float | None:
    """Highest swept rate whose SLO attainment is at least ``target`` (None when none is)."""
    good = [rate for rate, s in sweep if s["slo_attainment"] >= target]
    return max(good) if good else None
