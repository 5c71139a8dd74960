"""Continuous batching under one token budget, ordered by a policy, with SLO-aware preemption and expiry.

Each step: (1) decode tokens of running sequences, most urgent first, preempting the least
urgent running sequence when blocks run out; (2) prefill work — running sequences mid-prompt
and waiting ones — in policy order while the budget, the sequence limit and free blocks
allow. A waiting SLO request that would otherwise miss may preempt less urgent running work.
Waiting SLO requests whose objectives have become impossible end as ``expired``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kairos.config import SchedulerConfig
from kairos.engine.cost_model import CostModel
from kairos.engine.kv_cache import KVCacheManager
from kairos.engine.policies import SchedContext, get_policy
from kairos.engine.sequence import SeqStatus, Sequence


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int  # token_ids[num_computed : num_computed + num_new_tokens] run this step
    block_table: list[int]

    @property
    def samples(self) -> bool:
        """Whether this step reaches the end of the sequence's tokens (and so samples the next one)."""
        return self.seq.num_computed + self.num_new_tokens == self.seq.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    expired: list[Sequence] = field(default_factory=list)
    budget: int = 0  # tokens of the step's budget still free (while scheduling)


class Scheduler:
    """Owns the waiting and running sets; the KV manager owns the blocks."""

    def __init__(self, config: SchedulerConfig, kv: KVCacheManager, cost: CostModel | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.kv = kv
        self.cost = cost or CostModel()
        self.clock = clock
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self.policy = get_policy(config.scheduling_policy)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def context(self) -> SchedContext:
        decodes = [s for s in self.running if s.num_tokens - s.num_computed <= 1]
        return SchedContext(self.clock(), self.kv, self.cost, self.config.max_num_batched_tokens,
                            len(decodes), sum(s.num_tokens for s in decodes), self.config.starve_steps)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        ctx = self.context()
        self._expire(ctx, out)
        out.budget = self._token_budget(ctx)
        keys = {s.seq_id: self.policy(s, ctx) for s in self.running + self.waiting}
        self.running.sort(key=lambda s: keys[s.seq_id])
        # (1) decodes: one token each
        for seq in [s for s in self.running if s.num_tokens - s.num_computed == 1]:
            if out.budget <= 0:
                break
            if seq.status is SeqStatus.RUNNING:
                self._fit(seq, 1, out, keys)
        # (2) prefill chunks and admissions, in policy order
        candidates = [s for s in self.running if s.num_tokens - s.num_computed > 1] + self.waiting
        candidates.sort(key=lambda s: keys[s.seq_id])
        for seq in candidates:
            if out.budget <= 0:
                break
            if seq.status is SeqStatus.RUNNING:  # mid-prompt: phase (1) took only decodes
                self._fit(seq, min(seq.num_tokens - seq.num_computed, out.budget), out, keys)
                continue
            if seq.status is not SeqStatus.WAITING or seq in out.preempted:
                continue  # finished, or preempted in this very round
            if not self._admit(seq, out, keys, ctx):
                break  # strict order: nothing behind it jumps the queue
        for seq in self.waiting:
            seq.waited_steps += 1
        return out

    def _token_budget(self, ctx: SchedContext) -> int:
        """The step's token budget, shrunk so a step stays within the tightest TPOT objective of
        the running requests (big prefill chunks would otherwise stall their decodes)."""
        budget = self.config.max_num_batched_tokens
        tpots = [s.slo.tpot_ms / 1000 for s in self.running
                 if not s.best_effort and s.slo.tpot_ms is not None and s.first_token_time is not None]
        if not tpots:
            return budget
        prefill = ctx.cost.max_prefill_tokens(min(tpots), ctx.decode_seqs, ctx.decode_ctx)
        # always leave room for some prefill (one block) so waiting work still moves
        return min(budget, ctx.decode_seqs + max(prefill, self.kv.block_size))

    def _fit(self, seq: Sequence, n: int, out: SchedulerOutput, keys) -> bool:
        """Allocate ``n`` more tokens for a running sequence; when blocks run out, preempt the least
        urgent running sequence not yet scheduled (possibly ``seq`` itself)."""
        reserve = seq.pending_forks if seq.num_computed + n == seq.num_tokens else 0
        while not self.kv.can_allocate(seq.seq_id, seq.num_computed + n, reserve):
            victim = self._victim(keys, than=None)
            if victim is None or victim is seq:
                if victim is seq:
                    self._preempt(seq, out)
                return False
            self._preempt(victim, out)
        self._schedule(seq, n, out)
        return True

    def _schedule(self, seq: Sequence, n: int, out: SchedulerOutput) -> None:
        out.scheduled.append(ScheduledSeq(seq, n, self.kv.allocate(seq.seq_id, seq.num_computed + n)))
        out.budget -= n

    def _admit(self, seq: Sequence, out: SchedulerOutput, keys, ctx: SchedContext) -> bool:
        """Try to start a waiting sequence this step."""
        fresh = seq.seq_id not in self.kv.block_tables
        if fresh:  # start from its longest cached prefix
            seq.num_computed = self.kv.match(seq.seq_id, seq.token_ids)
        n = min(seq.num_tokens - seq.num_computed, out.budget)
        reserve = seq.pending_forks if seq.num_computed + n == seq.num_tokens else 0
        urgent = not seq.best_effort and ctx.slack(seq) < self._natural_wait(ctx)
        while len(self.running) >= self.config.max_num_seqs or not self.kv.can_allocate(
                seq.seq_id, seq.num_computed + n, reserve):
            victim = self._victim(keys, than=keys[seq.seq_id]) if urgent else None
            if victim is not None and not victim.best_effort and \
                    ctx.slack(victim) < ctx.prefill_eta(seq) + ctx.decode_eta(seq):
                victim = None  # it would miss in our place: no gain in preempting it
            if victim is None:
                if fresh:
                    self.kv.free(seq.seq_id)
                    seq.num_computed = 0
                return False
            self._preempt(victim, out)
            n = min(seq.num_tokens - seq.num_computed, out.budget)  # the victim's tokens are free again
        self.waiting.remove(seq)
        seq.status = SeqStatus.RUNNING
        self.running.append(seq)
        self._schedule(seq, n, out)
        return True

    def _natural_wait(self, ctx: SchedContext) -> float:
        """Predicted seconds until some running sequence ends by itself and frees its blocks."""
        return min((ctx.cost.decode_time(s.remaining_decode, ctx.decode_seqs, ctx.decode_ctx) for s in self.running),
                   default=0.0)

    def _victim(self, keys, than) -> Sequence | None:
        """The least urgent running sequence; None when ``than`` is given and it is not less urgent."""
        if not self.running:
            return None
        seq = max(self.running, key=lambda s: keys.get(s.seq_id, ()))
        return None if than is not None and not keys[seq.seq_id] > than else seq

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        # Recompute: drop its KV (full blocks stay in the prefix cache); it re-prefills when readmitted.
        for i, s in enumerate(out.scheduled):
            if s.seq is seq:  # already in this step: take it back out, with its tokens
                out.budget += s.num_new_tokens
                del out.scheduled[i]
                break
        self.running.remove(seq)
        self.kv.free(seq.seq_id)
        seq.num_computed = 0
        seq.num_preemptions += 1
        seq.status = SeqStatus.WAITING
        self.waiting.append(seq)
        out.preempted.append(seq)

    def _expire(self, ctx: SchedContext, out: SchedulerOutput) -> None:
        """End waiting SLO requests that can no longer meet their objective even on an idle engine."""
        for seq in list(self.waiting):
            if seq.best_effort or seq.slo is None:
                continue
            alone = SchedContext(ctx.now, ctx.kv, ctx.cost, ctx.budget, 0, 0, ctx.starve_steps)
            first = ctx.now + alone.prefill_eta(seq)
            late = seq.ttft_deadline is not None and first > seq.ttft_deadline
            if seq.e2e_deadline is not None:
                late = late or first + alone.decode_eta(seq) > seq.e2e_deadline
            if late:
                self.finish(seq)
                out.expired.append(seq)

    def update(self, sched: SchedulerOutput) -> None:
        """Advance computed counts after a step; newly completed full blocks go to the prefix cache."""
        bs = self.kv.block_size
        for s in sched.scheduled:
            before = s.seq.num_computed
            s.seq.num_computed += s.num_new_tokens
            if s.seq.num_computed // bs > before // bs:
                self.kv.cache(s.seq.seq_id, s.seq.token_ids, s.seq.num_computed)

    def add_running(self, seq: Sequence, after: Sequence) -> None:
        """Insert a forked sibling right after its parent in the running order."""
        self.running.insert(self.running.index(after) + 1, seq)

    def finish(self, seq: Sequence) -> None:
        """Remove a sequence wherever it is and free its blocks."""
        if seq.status is SeqStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SeqStatus.WAITING:
            self.waiting.remove(seq)
        seq.status = SeqStatus.FINISHED
        self.kv.free(seq.seq_id)

