"""How promises of time per output token (TPOT) and first-token deadlines shape a step: the
token budget that keeps the running requests' TPOT promises, the cut after a prompt's last
chunk that keeps its first token in time, and the decodes that yield their turn to a prompt
with a first-token deadline."""

from __future__ import annotations

from kairos.sched.output import SchedulerOutput, step_shape
from kairos.sched.policies import SchedContext
from kairos.sched.sequence import Sequence

# A TPOT promise caps the decode batch so that a decode-only step takes at most this share of
# it: the rest is room for the prefill chunks of requests joining (``token_budget``).
TPOT_HEADROOM = 0.85
# A step with prefill chunks may spend this share of the time a TPOT request has banked.
TPOT_STEP_SHARE = 0.9
# Tokens of a TPOT request are scheduled this share of its promise apart.
TPOT_PACE = 0.95
# A decode yields its turn to a first token only with slack beyond this share of its remaining
# tokens' predicted time (``yielding_decodes``).
YIELD_MARGIN = 0.2


def token_budget(ctx: SchedContext, bound: list[Sequence], max_tokens: int) -> int:
    """A step's token budget (``max_tokens`` at most), shrunk to keep every TPOT promise of the
    running requests past their first token (``bound``).

    A request that promised ``tpot`` and had its first token at ``t1`` keeps its mean time per
    token within the promise as long as its token ``j`` is out by ``t1 + tpot * (j - 1)`` (at
    every ``j``: it may stop at any token; paced at ``TPOT_PACE`` of it for the jitter the client
    sees). Fast decode-only steps bank time against that schedule; a step may carry prefill
    chunks only as far as the banked time of the tightest running request allows
    (``TPOT_STEP_SHARE`` of it: the cost model's error margin), and only chunks worth the
    step's fixed cost of prefill (``CostModel.worthwhile_chunk``), or a full step: a smaller
    one waits while decode-only steps bank more (a short prompt too: carried at once, its chunk
    pays the same fixed cost)."""
    budget = max_tokens
    spare = [s.first_token_time + TPOT_PACE * s.tpot_s * s.num_output_tokens - ctx.now for s in bound]
    if not spare:
        return budget
    prefill = ctx.cost.max_prefill_tokens(TPOT_STEP_SHARE * min(spare), ctx.decode_seqs, ctx.decode_ctx)
    if prefill < min(ctx.cost.worthwhile_chunk(), budget - ctx.decode_seqs):
        prefill = 0
    # (at least a token: a step with work waiting never has a budget of 0, or nothing would
    # move again; ``bound`` holds only decoding requests, so this floor is one of their decodes)
    return max(1, min(budget, ctx.decode_seqs + prefill))


def keep_first_token(seq: Sequence, out: SchedulerOutput, ctx: SchedContext) -> None:
    """``seq`` just got a prompt chunk, the last of ``out`` so far: if that is its last one and
    it has a first-token deadline, chunks after it (of requests behind it) fill the step only
    as far as the step still ends in time (``TPOT_STEP_SHARE`` of the time left: the cost
    model's error margin). Otherwise the rest of the budget goes to requests with slack, and
    its first token waits for their chunks. Not for a token out of reach whatever the step
    carries, nor for a request served best effort: holding the step back would save nothing.
    (An earlier chunk takes the whole budget left, unless a preemption gave some back.)"""
    if seq.ttft_deadline is None or seq.best_effort or not out.scheduled[-1].samples:
        return
    prefill, rows, context = step_shape(out.scheduled)
    left = seq.ttft_deadline - ctx.now
    if ctx.cost.step_time(prefill, rows, context) > left:
        return
    limit = ctx.cost.max_prefill_tokens(TPOT_STEP_SHARE * left, rows, context)
    out.budget = min(out.budget, max(0, limit - prefill))


def yielding_decodes(running: list[Sequence], head: Sequence | None, ctx: SchedContext, slack_s: float,
                     lasting: float = 0.0) -> dict[int, Sequence]:
    """seq id -> running sequence whose decode sits out this step, when the prompt work that goes
    first (``head``: one that can run this step) is a prompt whose first-token deadline it can
    still make: those bound only by a deadline (no TPOT promise: a token may come late; not best
    effort: those keep their pace, unranked) with slack to spare: more than ``slack_s`` seconds
    and a fifth of their remaining tokens' time (a margin for the error of that estimate), for
    ``lasting`` seconds more. Each row left out is time for that prompt within the step's limits
    (the TPOT promises of others, ``token_budget``); a decode yields only while its slack
    lasts, which the policy recounts each step."""
    if not slack_s or head is None or head.ttft_deadline is None or head.best_effort:
        return {}
    # (not for a first token out of reach even on an idle engine: yielding would save nothing)
    if ctx.now + ctx.cost.prefill_time(max(1, head.remaining_prefill), ctx.budget, 0, 0) > head.ttft_deadline:
        return {}
    return {s.seq_id: s for s in running if s.num_tokens - s.num_computed == 1 and s.tpot_s is None
            and s.e2e_deadline is not None and not s.best_effort
            and ctx.slack(s) > slack_s + YIELD_MARGIN * ctx.decode_eta(s) + lasting}
