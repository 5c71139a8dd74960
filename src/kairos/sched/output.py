"""What the scheduler decides for one step (vLLM's ``SchedulerOutput``): the only contract
between it and the engine that runs the step."""

from __future__ import annotations

from dataclasses import dataclass, field

from kairos.sched.sequence import Sequence


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int  # token_ids[num_computed : num_computed + num_new_tokens] run this step
    block_table: list[int]
    fork_blocks: list[int] = field(default_factory=list)  # held for the siblings forked when it samples (n > 1)
    # speculative decoding: tokens run after the sequence's last one (their positions sample too)
    draft: list[int] = field(default_factory=list)

    @property
    def samples(self) -> bool:
        """Whether this step reaches the end of the sequence's tokens (and so samples the next one)."""
        return self.seq.num_computed + self.num_new_tokens - len(self.draft) == self.seq.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    expired: list[Sequence] = field(default_factory=list)
    budget: int = 0  # tokens of the step's budget still free (while scheduling)


def step_shape(scheduled: list[ScheduledSeq]) -> tuple[int, int, int]:
    """(prefill tokens, decode rows, their context tokens) of a step, as the cost model counts them."""
    # (a drafted sequence's rows are decode rows: 1 + len(draft) of them, each about its context;
    # so is a one-token chunk)
    decodes = [s for s in scheduled if s.num_new_tokens == 1 or s.draft]
    prefill = sum(s.num_new_tokens for s in scheduled if s.num_new_tokens > 1 and not s.draft)
    return prefill, sum(s.num_new_tokens for s in decodes), sum(s.seq.num_tokens * s.num_new_tokens for s in decodes)
