"""SLO admission control: when a request joining now would get its tokens, which of its
objectives that misses, and (:class:`SLOAdmission`) the decision, scaled by a calibration
learned from how admitted requests actually fared."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

from kairos.sched.cost_model import Calibration, CostModel, StepIntervals
from kairos.sched.pacing import yielding_decodes
from kairos.sched.scheduler import Scheduler
from kairos.sched.sequence import SeqStatus, Sequence
from kairos.wire.slo import slo_misses


class SLOInfeasible(ValueError):
    """The request's SLO cannot be met as things stand (the server answers 429 slo_infeasible)."""

    code = "slo_infeasible"


def predict(sch: Scheduler, cost: CostModel, intervals: StepIntervals, seq: Sequence) -> tuple[float, float, float]:
    """(first token, time per output token, last token) predicted if ``seq`` joined now, as
    seconds after its arrival: work more urgent than it under the policy goes first, and it
    waits for a place when the batch is full (``max_num_seqs``, or the cap of a TPOT promise)."""
    ctx = sch.context()
    ctx.overhead, ctx.prefill_load = intervals.overhead(ctx.now), intervals.prefill_load(ctx.now)
    key = sch.policy(seq, ctx)
    keys = {s.seq_id: sch.policy(s, ctx) for s in sch.waiting + sch.running}
    ahead = sorted((s for s in sch.waiting + sch.running if keys[s.seq_id] < key), key=lambda s: keys[s.seq_id])
    ahead_prefill = sum(s.remaining_prefill for s in ahead if s.num_tokens - s.num_computed > 1)
    cap = sch.seq_cap(ctx, seq)
    batch = min(cap, len(sch.running) + len(sch.waiting) + 1)
    ctx_per_seq = (ctx.decode_ctx + seq.num_tokens) / (ctx.decode_seqs + 1)
    # per token: a decode-only step of the batch it joins and the loop around it (as recent
    # decode-only steps overran the cost model), stretched by prompt chunks: those of later
    # arrivals at the share of time prefill took lately (load) or, if more, those queued behind
    # it now (decodes go first and chunks fill the rest of each step, so they run before its
    # last token; those ahead run before its first). At most a step that carries a full chunk,
    # and the pace a TPOT promise holds the steps to. Not the mean of recent steps: after an
    # idle spell those are the prefill steps of a burst, the slowest there are.
    line = ctx.token_line(batch, batch * ctx_per_seq)
    decode, step, full = line.decode, line.step, line.full
    chunk = max(1, ctx.budget - batch)
    behind = sum(s.remaining_prefill - (0 if s.num_computed else ctx.cached_tokens(s))
                 for s in sch.waiting + sch.running if keys[s.seq_id] > key and s.num_tokens - s.num_computed > 1)
    backlog = (cost.prefill_time(behind, chunk, batch, batch * ctx_per_seq) - math.ceil(behind / chunk) * decode
               if behind > 0 else 0.0)  # (seconds of its chunks, past the decodes in their steps)
    pace = sch.decode_pace(seq)

    def paced(t: float) -> float:
        return max(step, min(t, pace)) if pace else t

    stretched = line.per_token(0.0)  # (any request's tokens)
    tpot = paced(min(max(stretched, step + backlog / seq.params.max_tokens), full))
    wait = slot_wait(ahead, cap, paced(stretched))
    # decodes that yield their turn to its prompt when it goes first (``yielding_decodes``) leave
    # its chunks more room: those whose slack lasts until its first token would come without them
    until = wait + ctx.prefill_eta(seq, ahead_prefill)
    lighter = ctx.without(yielding_decodes(sch.running, seq, ctx, sch.config.yield_slack_s, lasting=until))
    first = ctx.now + wait + lighter.prefill_eta(seq, ahead_prefill)
    last = first + (seq.params.max_tokens - 1) * tpot
    return first - seq.arrival_time, tpot, last - seq.arrival_time


def slot_wait(ahead: list[Sequence], cap: int, step_s: float) -> float:
    """Seconds until a place in a batch of ``cap`` frees for a request queued behind ``ahead``
    (in the order they will run); every step is taken to last ``step_s``."""
    running = sorted(s.remaining_decode * step_s for s in ahead if s.status is SeqStatus.RUNNING)
    waiting = [s for s in ahead if s.status is SeqStatus.WAITING]
    # places free at these times; the first (len(running) - cap) to finish free none (over cap)
    slots = [0.0] * max(0, cap - len(running)) + running[max(0, len(running) - cap):]
    heapq.heapify(slots)
    for s in waiting:  # each queued request takes the next free place for its whole answer
        heapq.heappush(slots, heapq.heappop(slots) + s.remaining_decode * step_s)
    return slots[0]


class SLOAdmission:
    """Admits or refuses SLO requests as they arrive (:meth:`admit`), and learns from the first
    and last tokens of those it admitted (:meth:`first_token`, :meth:`finished`) how far its
    predictions fall short; counts what it refused and what it served best-effort."""

    def __init__(self, sch: Scheduler, cost: CostModel, intervals: StepIntervals, clock: Callable[[], float],
                 confidence: float):
        self.sch, self.cost, self.intervals, self.clock = sch, cost, intervals, clock
        # actual/predicted first-token and completion times of admitted SLO requests
        self.calibration = {k: Calibration(confidence) for k in ("ttft", "e2e")}
        self.counters = {"requests_slo_refused": 0, "requests_slo_best_effort": 0}

    def admit(self, seq: Sequence) -> None:
        """Sets ``seq.predicted`` and ``seq.promised`` when its SLO holds; else marks it best
        effort (``on_miss="best_effort"``) or raises :class:`SLOInfeasible`."""
        first, tpot, last = predict(self.sch, self.cost, self.intervals, seq)
        raw = (first, last)
        now = self.clock()
        first *= self.calibration["ttft"].factor(now)
        last *= self.calibration["e2e"].factor(now)
        misses = slo_misses(seq.slo, first, tpot, last)
        if not misses:
            # judged against what happens (see ``calibration``), unless the cost model is not
            # fitted yet: the error of its defaults says nothing about the predictions to come
            seq.predicted = raw if self.cost.fitted else None
            seq.promised = (first, tpot, last)
            return
        if seq.slo.on_miss == "best_effort":
            seq.best_effort = True
            self.counters["requests_slo_best_effort"] += 1
            return
        self.counters["requests_slo_refused"] += 1
        raise SLOInfeasible("SLO cannot be met: " + "; ".join(misses) + " (set slo.on_miss to \"best_effort\" to be served anyway)")

    def first_token(self, seq: Sequence, now: float) -> None:
        if seq.predicted is not None and seq.slo.ttft_ms is not None:  # (a request without one may wait by design)
            self.calibration["ttft"].observe(now, seq.predicted[0], now - seq.arrival_time)

    def finished(self, seq: Sequence, now: float) -> None:
        """A deadline met counts as on time, however late against its prediction: a request with
        time to spare is held back by design (the ``slack`` policy serves it as its slack runs
        out), so its lateness says nothing of the prediction, and counted it refused requests that
        would have made it (1.6-4.4x factors under overload). A miss counts by how far it ran."""
        if seq.predicted is not None and seq.slo.deadline_ms is not None:
            took = now - seq.arrival_time
            if took * 1000 <= seq.slo.deadline_ms:
                took = min(took, seq.predicted[1])
            self.calibration["e2e"].observe(now, seq.predicted[1], took)

    def aborted(self, seq: Sequence, now: float) -> None:
        """An admitted request ended by its client (or cancelled): past an objective it had not met
        by then it is a miss of it, by as long as it waited; before, it says nothing of the
        predictions (the client left early)."""
        if seq.predicted is None:
            return
        waited = now - seq.arrival_time
        if seq.slo.ttft_ms is not None and seq.first_token_time is None and waited * 1000 > seq.slo.ttft_ms:
            self.calibration["ttft"].observe(now, seq.predicted[0], waited)
        if seq.slo.deadline_ms is not None and waited * 1000 > seq.slo.deadline_ms:
            self.calibration["e2e"].observe(now, seq.predicted[1], waited)

    def expired(self, seq: Sequence, now: float) -> None:
        """An admitted request ended unserved, as it could no longer meet the objectives in
        ``seq.missed``: a miss of each, by at least the objective itself (ended early, its answer
        out of reach, it would otherwise read as one that came in time)."""
        if seq.predicted is None:
            return
        waited = now - seq.arrival_time
        if "ttft" in seq.missed:
            self.calibration["ttft"].observe(now, seq.predicted[0], max(waited, seq.slo.ttft_ms / 1000))
        if "deadline" in seq.missed:
            self.calibration["e2e"].observe(now, seq.predicted[1], max(waited, seq.slo.deadline_ms / 1000))

    def stats(self) -> dict[str, float]:
        now = self.clock()
        return {"slo_ttft_calibration": self.calibration["ttft"].factor(now),
                "slo_e2e_calibration": self.calibration["e2e"].factor(now), **self.counters}
