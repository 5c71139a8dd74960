"""The engine's live requests: each one's sequences (the siblings of an ``n > 1`` request are
forked when the first one samples), those parked while their grammar compiles, and how each
ends. The step loop (``EngineCore``) asks it who is alive; it never runs the model."""

from __future__ import annotations

import itertools
from concurrent.futures import Future

from kairos.engine.parking import GrammarWaits
from kairos.grammar.structured import StructuredOutputs
from kairos.kv.manager import KVCacheManager
from kairos.sched.admission import SLOAdmission
from kairos.sched.scheduler import Scheduler
from kairos.sched.sequence import SeqStatus, Sequence
from kairos.wire.outputs import SeqOutput


class LiveRequests:
    """request id -> its sequences (None: a sibling not forked yet), from :meth:`add` until the
    last of them ends (:meth:`finish`, :meth:`abort`, :meth:`expire`, or a failed grammar)."""

    def __init__(self, scheduler: Scheduler, kv: KVCacheManager, admission: SLOAdmission,
                 structured: StructuredOutputs):
        self.scheduler, self.kv, self.admission = scheduler, kv, admission
        self.seqs: dict[str, list[Sequence | None]] = {}
        self.parked = GrammarWaits(structured)  # (not in the scheduler until their grammar compiles)
        self._verdicts: list[tuple[str, str | None]] = []  # see take_verdicts
        self._ids = itertools.count()
        self.expired = 0  # requests ended unserved as they could no longer meet their SLO

    def __contains__(self, request_id: str) -> bool:
        return request_id in self.seqs

    def __bool__(self) -> bool:
        return bool(self.seqs)

    def next_id(self) -> int:
        return next(self._ids)

    def add(self, seq: Sequence, grammar: Future | None) -> None:
        """Registers an accepted request's first sequence: to the scheduler, or parked until
        ``grammar`` (its compile, not done yet) is."""
        self.seqs[seq.request_id] = [seq] + [None] * (seq.params.n - 1)
        if grammar is None:
            self.scheduler.add(seq)
        else:
            self.parked.park(seq.request_id, seq, grammar)

    def only_compiling(self) -> bool:
        """Whether every live request waits for its grammar (a step would do nothing)."""
        return bool(self.parked) and len(self.parked) == len(self.seqs)

    def take_verdicts(self) -> list[tuple[str, str | None]]:
        """See ``EngineCore.take_verdicts``."""
        out, self._verdicts = self._verdicts, []
        return out

    def abort(self, request_id: str) -> list[SeqOutput]:
        """Ends every unfinished sequence of a request ("abort" outputs for those alone); frees its blocks."""
        seqs = self.seqs.pop(request_id, None)
        if seqs is None:
            return []
        parked = self.parked.drop(request_id)  # (not in the scheduler)
        out = []
        now = self.admission.clock()
        for i, seq in enumerate(seqs):
            if seq is not None and seq.status is SeqStatus.FINISHED:
                continue  # (a sibling that ended already had its one outcome)
            if seq is not None and not parked:
                self.admission.aborted(seq, now)
                self.scheduler.finish(seq)
            out.append(SeqOutput(request_id, i, [], finish_reason="abort"))
        return out

    def finish_sequence(self, request_id: str, index: int) -> None:
        seqs = self.seqs.get(request_id)
        if seqs is not None and seqs[index] is not None and request_id not in self.parked:
            if seqs[index].status is not SeqStatus.FINISHED:  # (a stop string: it ended as it should)
                self.admission.finished(seqs[index], self.admission.clock())
            self.finish(seqs[index])

    def finish(self, seq: Sequence) -> None:
        """Ends one sequence; the request leaves once all of its sequences have."""
        self.scheduler.finish(seq)
        seqs = self.seqs.get(seq.request_id)
        if seqs is not None and all(s is not None and s.status is SeqStatus.FINISHED for s in seqs):
            del self.seqs[seq.request_id]

    def unpark(self, now: float) -> list[SeqOutput]:
        """Requests whose grammar is compiled go to the scheduler; those it failed for end in
        "error", those past a deadline meanwhile in "expired"."""
        out = []
        for u in self.parked.ready(now):
            self._verdicts.append((u.request_id, u.error))
            if u.error is None and not u.expired:
                self.scheduler.add(u.seq)
                continue
            if u.expired:  # (late for its grammar's compile, which admission does not predict: not learned from)
                self.expired += 1
            del self.seqs[u.request_id]
            out += [SeqOutput(u.request_id, i, [], finish_reason="expired" if u.expired else "error",
                              stop_reason=u.error, num_prompt_tokens=u.seq.num_prompt_tokens)
                    for i in range(u.seq.params.n)]
        return out

    def expire(self, expired: list[Sequence], now: float) -> list[SeqOutput]:
        """Ends the sequences the scheduler found past their SLO, and their unforked siblings."""
        out = []
        for seq in expired:
            self.expired += 1
            self.admission.expired(seq, now)
            # (siblings that expire in the same round are all finished already: the first one's
            # ``finish`` ends the request, so each one's output is made from the sequence itself)
            unforked = range(1, seq.pending_forks + 1) if seq.index == 0 else range(0)
            for i in [seq.index, *unforked]:
                out.append(SeqOutput(seq.request_id, i, [], finish_reason="expired",
                                     num_prompt_tokens=seq.num_prompt_tokens))
            seqs = self.seqs.get(seq.request_id)
            if seq.pending_forks and seqs is not None:
                seqs[1:] = [seq] * seq.pending_forks  # mark them ended for the bookkeeping below
            self.finish(seq)
        return out

    def fork(self, parent: Sequence, copies: list[tuple[int, int]], held: list[int]) -> list[Sequence]:
        """Forks ``parent``'s pending siblings, each right after the one before in the running
        batch; their KV copies (block pairs) go to ``copies``, from the blocks ``held`` for them."""
        children, prev = [], parent
        for index in range(1, parent.pending_forks + 1):
            child = parent.fork(self.next_id(), index)
            copy = self.kv.fork(parent.seq_id, child.seq_id, parent.num_computed, held)
            if copy:
                copies.append(copy)
            self.scheduler.add_running(child, after=prev)
            self.seqs[parent.request_id][index] = child
            children.append(child)
            prev = child
        parent.pending_forks = 0
        return children
