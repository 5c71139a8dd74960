"""A launched step of the engine (``EngineCore.launch``) until it finishes: what it scheduled,
which sequences sample from which rows of its logits, and its sampling on the device."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from kairos.sched.output import SchedulerOutput
from kairos.sched.sequence import PLACEHOLDER, SeqStatus, Sequence
from kairos.wire.outputs import SeqOutput
from kairos.worker.h2d import HostCopy
from kairos.worker.sampler import DeviceSample, PromptLogprobs, SamplingRow


@dataclass
class StepInFlight:
    """A launched step (:meth:`EngineCore.launch`), waiting for :meth:`EngineCore.finish`."""

    start: float  # engine clock at launch
    sched: SchedulerOutput
    outputs: list[SeqOutput] = field(default_factory=list)  # expiries, then the step's tokens
    t0: float | None = None  # timer reading when the forward pass was queued; None: nothing ran
    seqs: list[Sequence] = field(default_factory=list)  # the sequences that sample, in row order
    rows: list[SamplingRow] = field(default_factory=list)
    sample: DeviceSample | None = None
    # [S, V] logits whose sampling waits for the step before to be applied (a row needs its last
    # token on the host: penalties count it, a grammar advances by it); None once sampled
    logits: torch.Tensor | None = None
    prompt: PromptLogprobs | None = None  # logprobs of prompt tokens its chunks found (prompt_logprobs)
    row_of: dict[int, int] = field(default_factory=dict)  # seq id -> its (first) row in ``sample``
    drafts: dict[int, list[int]] = field(default_factory=dict)  # seq id -> its draft (rows: 1 + len(draft))
    done: HostCopy | None = None  # what finish waits for when the step samples nothing

    def lay_out_rows(self, samples: list[bool], fork: Callable[[Sequence, list[int]], list[Sequence]],
                     give_back: Callable[[list[int]], None]) -> list[int]:
        """Which sequences sample from which row of the forward pass's logits (one per scheduled
        entry whose ``samples`` is set): into ``seqs`` and ``drafts``; returns each sampling
        sequence's row. A drafted entry has a row per position (its last token, then each draft
        token); the siblings of an ``n > 1`` request are forked now (``fork(parent, its held
        blocks)``) and share the parent's row; blocks held for forks and not needed go back."""
        logit_rows: list[int] = []
        row = 0
        for s, does_sample in zip(self.sched.scheduled, samples):
            if does_sample and s.draft:
                self.drafts[s.seq.seq_id] = s.draft
                logit_rows.extend(range(row, row + 1 + len(s.draft)))
                self.seqs.extend([s.seq] * (1 + len(s.draft)))
                row += 1 + len(s.draft)
            elif does_sample:
                group = [s.seq] + (fork(s.seq, s.fork_blocks) if s.seq.pending_forks else [])
                logit_rows.extend([row] * len(group))
                self.seqs.extend(group)
                row += 1
            if s.fork_blocks:  # (a full last block is shared, not copied)
                give_back(s.fork_blocks)
                s.fork_blocks = []
        return logit_rows

    def hold_places(self) -> None:
        """Once sampled: each live sequence's token holds its place as a ``PLACEHOLDER`` until
        the step finishes (a drafted sequence's rows, once)."""
        for j, q in enumerate(self.seqs):
            if q.status is not SeqStatus.FINISHED and q.seq_id not in self.row_of:
                q.token_ids.append(PLACEHOLDER)
                q.num_pending += 1
                self.row_of[q.seq_id] = j
