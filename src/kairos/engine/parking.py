"""Requests parked while their grammar compiles on the compiler's thread, before the scheduler
sees them: a step's work never waits for a compile."""

from __future__ import annotations

from concurrent.futures import Future
from typing import NamedTuple

from kairos.grammar.structured import StructuredOutputs
from kairos.sched.sequence import Sequence


class Unparked(NamedTuple):
    request_id: str
    seq: Sequence
    expired: bool  # its deadline passed while its grammar compiled
    error: str | None  # why its grammar failed to compile for the tokenizer


class GrammarWaits:
    """The parked requests: ``park`` one with its compile's future; ``ready`` hands back those
    done waiting (a compiled one has its matcher set); ``drop`` forgets one (aborted)."""

    def __init__(self, structured: StructuredOutputs):
        self.structured = structured
        self._parked: dict[str, tuple[Sequence, Future]] = {}

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._parked

    def __len__(self) -> int:
        return len(self._parked)

    def park(self, request_id: str, seq: Sequence, grammar: Future) -> None:
        self._parked[request_id] = (seq, grammar)

    def drop(self, request_id: str) -> bool:
        """Forget a parked request (its compile goes on for others asking the same grammar)."""
        parked = self._parked.pop(request_id, None)
        if parked is not None:
            self.structured.release(parked[0].params.structured, parked[1])
        return parked is not None

    def ready(self, now: float) -> list[Unparked]:
        """Those done waiting, out of the parking: compiled (their matcher set), failed to
        compile (``error``), or past a deadline at ``now`` (``expired``, their grammar released)."""
        out = []
        for rid, (seq, grammar) in list(self._parked.items()):
            expired = not seq.best_effort and any(d is not None and now > d
                                                   for d in (seq.ttft_deadline, seq.e2e_deadline))
            if not expired and not grammar.done():
                continue
            del self._parked[rid]
            error = None
            if expired:  # (admitted, then expired before it could run)
                self.structured.release(seq.params.structured, grammar)
            else:
                try:
                    seq.matcher = self.structured.take(seq.params.structured, grammar)
                except Exception as e:  # noqa: BLE001 - checked without the tokenizer at arrival; failed with it
                    error = str(e) if isinstance(e, ValueError) else f"structured output failed to compile: {e!r}"
            out.append(Unparked(rid, seq, expired, error))
        return out
