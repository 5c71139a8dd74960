"""Continuous batching under one token budget, ordered by a policy, with SLO-aware preemption and expiry.

Each step: (1) decode tokens of running sequences, most urgent first, preempting the least
urgent running sequence when blocks run out (those bound only by a deadline, with slack to
spare, sit out a step whose first prompt work has a first-token deadline: ``yielding_decodes``);
(2) prefill work — running sequences mid-prompt and waiting ones — in policy order while the
budget, the sequence limit and free blocks allow (and, past a chunk of a request with a
first-token deadline, while that token stays in time). A waiting SLO request that would otherwise miss may preempt less urgent running work.
Waiting SLO requests whose objectives have become impossible end as ``expired``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kairos.config import SchedulerConfig
from kairos.kv.manager import KVCacheManager
from kairos.sched.cost_model import CostModel, StepIntervals
from kairos.sched.output import ScheduledSeq, SchedulerOutput
from kairos.sched.pacing import (
    TPOT_HEADROOM,
    TPOT_PACE,
    keep_first_token,
    token_budget,
    yielding_decodes,
)
from kairos.sched.policies import SchedContext, get_policy
from kairos.sched.sequence import SeqStatus, Sequence
from kairos.sched.speculative import NgramProposer


class Scheduler:
    """Owns the waiting and running sets; the KV manager owns the blocks."""

    def __init__(self, config: SchedulerConfig, kv: KVCacheManager, cost: CostModel | None = None,
                 clock: Callable[[], float] = time.monotonic, proposer: NgramProposer | None = None,
                 intervals: StepIntervals | None = None):
        self.config = config
        self.intervals = intervals  # the engine's recent steps: how long a token takes under load
        self.proposer = proposer  # speculative decoding: drafts for decodes
        self.kv = kv
        self.cost = cost or CostModel()
        self.clock = clock
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self.policy = get_policy(config.scheduling_policy)
        self.num_preemptions = 0  # (vLLM's num_preemptions: each costs a recompute of the sequence)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def context(self) -> SchedContext:
        decodes = [s for s in self.running if s.num_tokens - s.num_computed <= 1]
        ctx = SchedContext(self.clock(), self.kv, self.cost, self.config.max_num_batched_tokens,
                           len(decodes), sum(s.num_tokens for s in decodes), self.config.starve_steps)
        ctx.decode_pace = self.decode_pace()
        if self.intervals is not None:
            ctx.overhead, ctx.prefill_load = self.intervals.overhead(ctx.now), self.intervals.prefill_load(ctx.now)
        ctx.prefill_share = ctx.paced_share()  # (prefill gets what the paced decode steps leave)
        return ctx

    def tpot_bound(self) -> list[Sequence]:
        """Running requests decoding past their first token with a TPOT promise (not one that
        recomputes its tokens after a preemption: its schedule ran on while it waited, and a
        bank overdrawn by a request that cannot decode would leave every step a budget of 0)."""
        return [s for s in self.running if s.tpot_s and s.first_token_time is not None
                and s.num_tokens - s.num_computed <= 1]

    def decode_pace(self, extra: Sequence | None = None) -> float:
        """Seconds per step while the tightest TPOT promise (of ``tpot_bound`` and ``extra``) paces
        the steps and prefill work waits: ``TPOT_PACE`` of it; 0 when there is none."""
        tpots = [s.tpot_s for s in self.tpot_bound()] + ([extra.tpot_s] if extra is not None and extra.tpot_s else [])
        return TPOT_PACE * min(tpots) if tpots else 0.0

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        ctx = self.context()
        self._expire(ctx, out)
        keys = {s.seq_id: self.policy(s, ctx) for s in self.running + self.waiting}
        self.running.sort(key=lambda s: keys[s.seq_id])
        # prefill chunks and admissions, in policy order (for phase (2); a sequence phase (1)
        # preempts is skipped there)
        candidates = ([s for s in self.running if s.num_tokens - s.num_computed > 1]
                      + [s for s in self.waiting if not s.all_sampled])
        candidates.sort(key=lambda s: keys[s.seq_id])
        head = self._prefill_head(candidates[0], ctx) if candidates else None
        yielding = yielding_decodes(self.running, head, ctx, self.config.yield_slack_s)
        out.budget = token_budget(ctx.without(yielding), self.tpot_bound(), self.config.max_num_batched_tokens)
        # (1) decodes: one token each (not for a sequence whose last token is already on its way:
        # under async scheduling its previous step, still on the device, samples that one; nor
        # for one that yields its turn to a prompt with a first-token deadline)
        decodes = [s for s in self.running if s.num_tokens - s.num_computed == 1 and not s.all_sampled
                   and s.seq_id not in yielding]
        for i, seq in enumerate(decodes):
            if out.budget <= 0:
                break
            if seq.status is SeqStatus.RUNNING:
                draft = self._draft(seq, out.budget - (len(decodes) - 1 - i)) if self.proposer is not None else []
                if self._fit(seq, 1 + len(draft), out, keys) and draft:
                    out.scheduled[-1].draft = draft
        # (2) prefill chunks and admissions
        admitting = True
        for seq in candidates:
            if out.budget <= 0:
                break
            if seq.status is SeqStatus.RUNNING:  # mid-prompt: phase (1) took only decodes
                if self._fit(seq, min(seq.num_tokens - seq.num_computed, out.budget), out, keys):
                    keep_first_token(seq, out, ctx)
                continue
            if not admitting or seq.status is not SeqStatus.WAITING or seq in out.preempted:
                continue  # finished, or preempted in this very round
            # strict order: nothing behind a request that cannot start jumps the queue; running
            # prompts behind it still go on (they hold blocks: stopping them could leave it
            # waiting for blocks that only their progress would free, for ever)
            admitting = self._admit(seq, out, keys, ctx)
            if admitting:
                keep_first_token(seq, out, ctx)
        # (a running prompt held back counts too: steps that keep first tokens in time may leave
        # it nothing, and it holds blocks; few run mid-prompt, so the step's rows are read only then)
        held = [s for s in candidates if s.status is SeqStatus.RUNNING]
        if held:
            ran = {s.seq.seq_id for s in out.scheduled}
            held = [s for s in held if s.seq_id not in ran]
        for seq in self.waiting + held:
            seq.waited_steps += 1
        if yielding and not out.scheduled:
            # the prompt they yielded to got nothing after all (a preemption, blocks taken): they
            # decode rather than leave the step empty. (A step of fewer decodes while the prompt
            # waits for a worthwhile chunk is no loss: it banks the TPOT requests' time faster.)
            for seq in yielding.values():
                if seq.status is SeqStatus.RUNNING and not seq.all_sampled:
                    out.budget = max(out.budget, 0) + 1
                    self._fit(seq, 1, out, keys)
        return out

    def _prefill_head(self, head: Sequence, ctx: SchedContext) -> Sequence | None:
        """``head``, the prompt work that goes first this step, if decodes may yield to it: a
        prompt with a first-token deadline, mid-prompt or waiting with a place in the batch and
        blocks for a first chunk (else the decodes yielding to it would only idle)."""
        if not self.config.yield_slack_s or head.ttft_deadline is None or head.best_effort:
            return None
        if head.status is SeqStatus.WAITING:
            cached = ctx.cached_tokens(head)
            chunk = min(head.num_tokens - cached, self.config.max_num_batched_tokens)
            if not self.has_room(ctx, head) or not self.kv.can_allocate(head.seq_id, cached + chunk):
                return None
        return head

    def _draft(self, seq: Sequence, budget: int) -> list[int]:
        """Speculative decoding's draft for ``seq``, if it fits in the blocks free now: a draft
        never preempts (a recompute would cost more than the draft can gain)."""
        draft = self.proposer.propose(seq, budget)
        if draft and not self.kv.can_allocate(seq.seq_id, seq.num_computed + 1 + len(draft)):
            return []
        return draft

    def _fit(self, seq: Sequence, n: int, out: SchedulerOutput, keys) -> bool:
        """Allocate ``n`` more tokens for a running sequence; when blocks run out, preempt the least
        urgent running sequence not yet scheduled (possibly ``seq`` itself)."""
        table = self.kv.block_tables.get(seq.seq_id)
        if n == 1 and table is not None and len(table) * self.kv.block_size > seq.num_computed and not seq.pending_forks:
            # a decode whose slot is in a block it holds (block_size - 1 steps in block_size):
            # nothing to allocate, so no call into the KV manager (the host's work per step)
            out.scheduled.append(ScheduledSeq(seq, 1, table))
            out.budget -= 1
            return True
        reserve = seq.pending_forks if seq.num_computed + n == seq.num_tokens else 0
        while not self.kv.can_allocate(seq.seq_id, seq.num_computed + n, reserve):
            victim = self._victim(keys, than=None)
            if victim is None or victim is seq:
                if victim is seq:
                    self._preempt(seq, out)
                return False
            self._preempt(victim, out)
        self._schedule(seq, n, out, reserve)
        return True

    def _schedule(self, seq: Sequence, n: int, out: SchedulerOutput, reserve: int) -> None:
        table = self.kv.allocate(seq.seq_id, seq.num_computed + n)
        out.scheduled.append(ScheduledSeq(seq, n, table, self.kv.take(reserve) if reserve else []))
        out.budget -= n

    def _admit(self, seq: Sequence, out: SchedulerOutput, keys, ctx: SchedContext) -> bool:
        """Try to start a waiting sequence this step."""
        fresh = seq.seq_id not in self.kv.block_tables
        if fresh and not seq.wants_prompt_logprobs:  # start from its longest cached prefix
            seq.num_computed = self.kv.match(seq.seq_id, seq.token_ids)
        n = min(seq.num_tokens - seq.num_computed, out.budget)
        reserve = seq.pending_forks if seq.num_computed + n == seq.num_tokens else 0
        urgent = not seq.best_effort and ctx.slack(seq) < self._natural_wait(ctx)
        while not self.has_room(ctx, seq) or not self.kv.can_allocate(
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
        if fresh and not seq.wants_prompt_logprobs:
            self.kv.count_hit(seq.num_tokens, seq.num_computed)
        self.waiting.remove(seq)
        seq.status = SeqStatus.RUNNING
        self.running.append(seq)
        self._schedule(seq, n, out, reserve)
        return True

    def has_room(self, ctx: SchedContext, seq: Sequence) -> bool:
        """Whether waiting ``seq`` and the siblings it will fork fit in the batch beside the running
        sequences and the siblings those will fork (``seq_cap``). An idle batch always has room:
        intake refuses ``n`` over ``max_num_seqs``, and a TPOT cap below ``n`` would never lift."""
        seats = len(self.running) + sum(s.pending_forks for s in self.running)
        return not self.running or seats + 1 + seq.pending_forks <= self.seq_cap(ctx, seq)

    def seq_cap(self, ctx: SchedContext, extra: Sequence | None = None) -> int:
        """Most running sequences for which a decode step keeps the tightest TPOT promise among the
        running SLO requests and ``extra`` (``max_num_seqs`` when none has one)."""
        seqs = self.running + ([extra] if extra is not None and extra not in self.running else [])
        tpots = [s.tpot_s for s in seqs if s.tpot_s]
        if not tpots:
            return self.config.max_num_seqs
        ctx_per_seq = sum(s.num_tokens for s in seqs) / len(seqs)
        return min(self.config.max_num_seqs, ctx.cost.max_decode_seqs(TPOT_HEADROOM * min(tpots), ctx_per_seq))

    def _natural_wait(self, ctx: SchedContext) -> float:
        """Predicted seconds until some running sequence ends by itself and frees its blocks (its
        tokens at the pace ``slack`` counts them: the two are compared)."""
        if not self.running:
            return 0.0
        per_token = max(ctx.token_time(ctx.decode_seqs, ctx.decode_ctx), ctx.decode_pace)
        return min(s.remaining_decode for s in self.running) * per_token

    def _victim(self, keys, than) -> Sequence | None:
        """The least urgent running sequence; None when ``than`` is given and it is not less urgent."""
        if not self.running:
            return None
        seq = max(self.running, key=lambda s: keys.get(s.seq_id, ()))
        return None if than is not None and not keys[seq.seq_id] > than else seq

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        # Recompute: drop its KV (full blocks stay in the prefix cache); it re-prefills when readmitted.
        for i, s in enumerate(out.scheduled):
            if s.seq is seq:  # already in this step: take it back out, with its tokens and fork blocks
                out.budget += s.num_new_tokens
                self.kv.give_back(s.fork_blocks)
                del out.scheduled[i]
                break
        self.running.remove(seq)
        self.kv.free(seq.seq_id)
        seq.num_computed = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
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
            late = {"ttft": seq.ttft_deadline is not None and first > seq.ttft_deadline,
                    "deadline": seq.e2e_deadline is not None and first + alone.decode_eta(seq) > seq.e2e_deadline}
            if any(late.values()):
                seq.missed = tuple(k for k, v in late.items() if v)
                self.finish(seq)
                out.expired.append(seq)

    def update(self, sched: SchedulerOutput) -> None:
        """Advance computed counts after a step; newly completed full blocks go to the prefix cache."""
        bs = self.kv.block_size
        for s in sched.scheduled:
            seq = s.seq
            before = seq.num_computed
            seq.num_computed += s.num_new_tokens
            if seq.num_computed // bs > before // bs:
                # a block holding a placeholder is keyed by a token not known yet: it is cached
                # when its step finishes (``cache_resolved``)
                known = min(seq.num_computed, seq.num_known)
                if known // bs > before // bs:
                    self.kv.cache(seq.seq_id, seq.token_ids, known)

    def cache_resolved(self, seq: Sequence, index: int) -> None:
        """``token_ids[index]`` was a placeholder and is known now: when it was the last token of
        a block already computed, :meth:`update` left that block out of the cache; offer it."""
        bs = self.kv.block_size
        if (index + 1) % bs == 0 and seq.num_computed > index:  # (0 after a preemption: no blocks)
            self.kv.cache(seq.seq_id, seq.token_ids, min(seq.num_computed, seq.num_known))

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
        seq.drop_placeholders()
        self.kv.free(seq.seq_id)

