"""Continuous batching: decode tokens and prefill chunks under one token budget, preemption by recompute."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from kairos.config import SchedulerConfig
from kairos.engine.kv_cache import KVCacheManager
from kairos.engine.policies import get_policy
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

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)


class Scheduler:
    """Owns the waiting and running queues; the KV manager owns the blocks.

    Each step: running sequences first (oldest first), preempting the newest running
    sequence when blocks run out; then waiting sequences in arrival order while the
    token budget, the sequence limit and free blocks allow.
    """

    def __init__(self, config: SchedulerConfig, kv: KVCacheManager):
        self.config = config
        self.kv = kv
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.policy = get_policy(config.scheduling_policy)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_tokens - seq.num_computed, budget)
            reserve = seq.pending_forks if seq.num_computed + n == seq.num_tokens else 0
            while not self.kv.can_allocate(seq.seq_id, seq.num_computed + n, reserve):
                victim = self.running.pop()
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            else:
                out.scheduled.append(ScheduledSeq(seq, n, self.kv.allocate(seq.seq_id, seq.num_computed + n)))
                budget -= n
                i += 1
        if out.preempted:  # memory is tight: admit nothing new this step
            return out
        for seq in self.policy(self.waiting, self.kv, self.config.starve_steps) if self.waiting else ():
            if budget <= 0 or len(self.running) >= self.config.max_num_seqs:
                break
            fresh = seq.seq_id not in self.kv.block_tables
            if fresh:  # start from its longest cached prefix
                seq.num_computed = self.kv.match(seq.seq_id, seq.token_ids)
            n = min(seq.num_tokens - seq.num_computed, budget)
            reserve = seq.pending_forks if seq.num_computed + n == seq.num_tokens else 0
            if not self.kv.can_allocate(seq.seq_id, seq.num_computed + n, reserve):
                if fresh:
                    self.kv.free(seq.seq_id)
                    seq.num_computed = 0
                break
            self.waiting.remove(seq)
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            out.scheduled.append(ScheduledSeq(seq, n, self.kv.allocate(seq.seq_id, seq.num_computed + n)))
            budget -= n
        for seq in self.waiting:
            seq.waited_steps += 1
        return out

    def _preempt(self, seq: Sequence) -> None:
        # Recompute: drop its KV; it re-prefills prompt + output so far when readmitted, first in line.
        self.kv.free(seq.seq_id)
        seq.num_computed = 0
        seq.num_preemptions += 1
        seq.status = SeqStatus.WAITING
        self.waiting.appendleft(seq)

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
