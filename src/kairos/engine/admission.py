"""SLO admission control: when a request joining now would get its tokens, and which of its
objectives that misses. ``EngineCore`` scales the predictions by its calibration and decides."""

from __future__ import annotations

from kairos.engine.cost_model import CostModel, StepIntervals
from kairos.engine.scheduler import Scheduler
from kairos.engine.sequence import Sequence
from kairos.engine.slo import SLO


class SLOInfeasible(ValueError):
    """The request's SLO cannot be met as things stand (the server answers 429 slo_infeasible)."""

    code = "slo_infeasible"


def predict(sch: Scheduler, cost: CostModel, intervals: StepIntervals, seq: Sequence) -> tuple[float, float, float]:
    """(first token, time per output token, last token) predicted if ``seq`` joined now, as
    seconds after its arrival: work more urgent than it under the policy goes first, and it
    waits for a place when the batch is full (``max_num_seqs``, or the cap of a TPOT promise)."""
    ctx = sch.context()
    key = sch.policy(seq, ctx)
    keys = {s.seq_id: sch.policy(s, ctx) for s in sch.waiting + sch.running}
    ahead = sorted((s for s in sch.waiting + sch.running if keys[s.seq_id] < key), key=lambda s: keys[s.seq_id])
    ahead_prefill = sum(s.remaining_prefill for s in ahead if s.num_tokens - s.num_computed > 1)
    cap = sch.seq_cap(ctx, seq)
    batch = min(cap, len(sch.running) + len(sch.waiting) + 1)
    ctx_per_seq = (ctx.decode_ctx + seq.num_tokens) / (ctx.decode_seqs + 1)
    # per token: what steps have been taking lately (the prefill chunks of other arrivals in
    # them), at most the pace a TPOT promise holds them to, never less than a decode-only step
    # of the batch it joins. One rule at every load, so the calibration of these predictions
    # learns one kind of error.
    recent = intervals.mean(ctx.now)
    pace = sch.decode_pace(seq)
    tpot = max(cost.step_time(0, batch, batch * ctx_per_seq), min(recent, pace) if pace else recent)
    first = ctx.now + sch.slot_wait(ahead, cap, tpot) + ctx.prefill_eta(seq, ahead_prefill)
    last = first + (seq.params.max_tokens - 1) * tpot
    return first - seq.arrival_time, tpot, last - seq.arrival_time


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
