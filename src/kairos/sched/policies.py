"""Scheduling policies, selectable by name (``SchedulerConfig.scheduling_policy``).

A policy is a sort key over sequences (lower = more urgent). The scheduler sorts by it to
pick prefill work and admissions, and reads it backwards to pick preemption victims. Keys
may read the KV manager (``peek`` has no side effects) and the cost model; they change nothing.

Every policy promotes a best-effort sequence that has waited ``starve_steps`` scheduling
rounds to the front, so no request starves however much SLO traffic arrives.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # config validation imports this module: keep torch out of it
    from kairos.kv.manager import KVCacheManager
    from kairos.sched.cost_model import CostModel
    from kairos.sched.sequence import Sequence


class TokenLine(NamedTuple):
    """A decode step's time in a batch, and a token's: ``per_token(x)`` with ``x`` more context
    tokens is ``min((step + b x) / room, full + b x)`` (decodes go first; prompt chunks take the
    ``1 - room`` share of the time lately, and at most fill a step)."""

    room: float | None  # the share of time prompt chunks leave (None: none)
    decode: float  # a decode-only step (the cost model's)
    step: float  # and the loop around it (the engine's recent overhead)
    full: float  # a step that carries a full chunk, with the loop
    per_ctx: float  # a step's time per context token

    def per_token(self, context_tokens: float) -> float:
        x = self.per_ctx * context_tokens
        return self.full + x if self.room is None else min((self.step + x) / self.room, self.full + x)


@dataclass
class SchedContext:
    """What a policy may know at one scheduling round."""

    now: float
    kv: KVCacheManager
    cost: CostModel
    budget: int  # token budget of a step
    decode_seqs: int  # running sequences in their decode phase
    decode_ctx: int  # their context tokens, summed
    starve_steps: int
    # share of the engine's time left to prefill work while running requests' TPOT promises are
    # kept (1: no promise running); prefill predictions stretch by its inverse
    prefill_share: float = 1.0
    decode_pace: float = 0.0  # seconds per step while TPOT promises pace the steps (0: none)
    # the engine's recent steps (``StepIntervals``): seconds a step took past the cost model's
    # decode step (the loop around it), and the share of time prompt chunks took
    overhead: float = 0.0
    prefill_load: float = 0.0
    # ``decode_eta``'s per-token time as a line in the request's own context tokens, and what it
    # was computed from (the fields above may be set after construction)
    _line: tuple = field(default=(), repr=False, compare=False)

    def paced_share(self) -> float:
        """The ``prefill_share`` that steps paced at ``decode_pace`` leave: what their decodes do not take."""
        if not self.decode_pace:
            return 1.0
        return max(0.05, 1 - self.cost.step_time(0, self.decode_seqs, self.decode_ctx) / self.decode_pace)

    def without(self, seqs: dict[int, Sequence]) -> SchedContext:
        """This context with ``seqs`` (running decodes) out of the decode batch (and the share
        of paced steps they took given to prefill)."""
        if not seqs:
            return self
        ctx = replace(self, decode_seqs=self.decode_seqs - len(seqs),
                      decode_ctx=self.decode_ctx - sum(s.num_tokens for s in seqs.values()), _line=())
        if ctx.decode_pace:
            ctx.prefill_share = ctx.paced_share()
        return ctx

    def cached_tokens(self, seq: Sequence) -> int:
        """Tokens of ``seq`` whose KV exists: its own once started, else its cached prefix."""
        return seq.num_computed or (0 if seq.wants_prompt_logprobs else self.kv.peek(seq.token_ids))

    def prefill_eta(self, seq: Sequence, ahead_tokens: int = 0) -> float:
        """Seconds until ``seq``'s first (next) token if its prefill ran after ``ahead_tokens``."""
        cached = 0 if seq.num_computed else self.cached_tokens(seq)
        tokens = ahead_tokens + max(1, seq.remaining_prefill - cached)
        t = self.cost.prefill_time(tokens, max(1, self.budget - self.decode_seqs), self.decode_seqs, self.decode_ctx)
        return t / self.prefill_share

    def token_time(self, decode_seqs: float, decode_ctx: float) -> float:
        """Seconds per output token of a request decoding in a batch of ``decode_seqs``
        (``decode_ctx`` context tokens): a decode-only step and the loop around it, stretched by
        the prompt chunks that arrive meanwhile (at the recent ``prefill_load``); at most a step
        that carries a full chunk (decodes go first, chunks fill the rest of each step)."""
        return self.token_line(decode_seqs, decode_ctx).per_token(0.0)

    def token_line(self, decode_seqs: float, decode_ctx: float) -> TokenLine:
        """The time model of a decode step of this batch (the scheduler's and admission's one)."""
        decode = self.cost.step_time(0, decode_seqs, decode_ctx)
        full = self.overhead + self.cost.step_time(max(1, self.budget - decode_seqs), decode_seqs, decode_ctx)
        room = 1 - self.prefill_load if self.prefill_load < 1 else None
        return TokenLine(room, decode, decode + self.overhead, full, self.cost.per_context_token())

    def decode_eta(self, seq: Sequence) -> float:
        """Seconds for the rest of ``seq``'s answer joining the decodes (``token_time`` of the
        batch with it, and at least the pace TPOT promises hold the steps to)."""
        # (the batch's line is the same for every request of the round: computed once, a hot
        # path of the policy; keyed by what it reads, as fields may be set after construction)
        key = (self.decode_seqs, self.decode_ctx, self.budget, self.overhead, self.prefill_load, id(self.cost),
               self.cost.version)
        if not self._line or self._line[0] != key:
            self._line = (key, self.token_line(self.decode_seqs + 1, self.decode_ctx))
        return seq.remaining_decode * max(self._line[1].per_token(seq.num_tokens), self.decode_pace)

    def slack(self, seq: Sequence) -> float:
        """Seconds to spare before the tightest objective of ``seq`` would be missed (inf: none)."""
        if seq.ttft_deadline is None and seq.e2e_deadline is None and seq.tpot_deadline is None:
            return math.inf
        first = self.prefill_eta(seq)
        slack = math.inf if seq.ttft_deadline is None else seq.ttft_deadline - self.now - first
        ends = [d for d in (seq.e2e_deadline, seq.tpot_deadline) if d is not None]  # (a request
        # mid-answer is bound by its TPOT promise as by a deadline)
        if ends:
            slack = min(slack, min(ends) - self.now - first - self.decode_eta(seq))
        return slack


Key = tuple
Policy = Callable[["Sequence", SchedContext], Key]
POLICIES: dict[str, Policy] = {}


def register(name: str) -> Callable[[Policy], Policy]:
    def deco(fn: Policy) -> Policy:
        POLICIES[name] = fn
        return fn

    return deco


def get_policy(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown scheduling policy {name!r}; known: {', '.join(sorted(POLICIES))}") from None


def _starving(seq: Sequence, ctx: SchedContext) -> bool:
    return seq.best_effort and seq.waited_steps >= ctx.starve_steps


@register("fcfs")
def fcfs(seq: Sequence, ctx: SchedContext) -> Key:
    return (0, seq.arrival_time, seq.seq_id)


@register("lpm")
def longest_prefix_match(seq: Sequence, ctx: SchedContext) -> Key:
    """Longest cached prefix first (SGLang's LPM); preempted and starving sequences first, in arrival order."""
    if seq.num_preemptions or _starving(seq, ctx):
        return (0, 0, seq.arrival_time, seq.seq_id)
    return (1, -ctx.cached_tokens(seq), seq.arrival_time, seq.seq_id)


@register("priority")
def priority(seq: Sequence, ctx: SchedContext) -> Key:
    return (0 if _starving(seq, ctx) else 1, -seq.priority, seq.arrival_time, seq.seq_id)


def _deadline(seq: Sequence) -> float:
    ds = [d for d in (seq.ttft_deadline, seq.e2e_deadline, seq.tpot_deadline) if d is not None]
    return min(ds) if ds else math.inf


@register("edf")
def earliest_deadline_first(seq: Sequence, ctx: SchedContext) -> Key:
    """SLO requests by earliest deadline (first-token deadline until the first token, then the end);
    best-effort ones after them, by priority then arrival."""
    if _starving(seq, ctx):
        return (0, 0.0, 0, seq.arrival_time, seq.seq_id)
    if seq.best_effort:
        return (2, 0.0, -seq.priority, seq.arrival_time, seq.seq_id)
    return (1, _deadline(seq), 0, seq.arrival_time, seq.seq_id)


@register("slack")
def least_slack(seq: Sequence, ctx: SchedContext) -> Key:
    """SLO requests by least slack (deadline minus predicted remaining work); best-effort ones
    after them, longest cached prefix first (as ``lpm``)."""
    if _starving(seq, ctx):
        return (0, 0.0, seq.arrival_time, seq.seq_id)
    if seq.best_effort:
        return (2, -ctx.cached_tokens(seq) - seq.priority * 1e9, seq.arrival_time, seq.seq_id)
    return (1, ctx.slack(seq), seq.arrival_time, seq.seq_id)
