"""When a sequence ends, and which tokens it may not sample yet (``min_tokens``)."""

from __future__ import annotations

from kairos.sched.sequence import Sequence


class StopRules:
    """The engine's EOS ids and context limit applied to a sequence's own stop options."""

    def __init__(self, eos_token_ids: frozenset[int], vocab_size: int, max_model_len: int) -> None:
        self.eos_token_ids = eos_token_ids
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len

    def held_back(self, seq: Sequence) -> tuple[int, ...]:
        """Before ``min_tokens`` output tokens: its stop token ids and, unless ``ignore_eos``, EOS
        (ids past the vocabulary left out: nothing samples them). The count includes tokens still
        in flight: it is known without their ids."""
        p = seq.params
        if len(seq.token_ids) - seq.num_prompt_tokens >= p.min_tokens:
            return ()
        ids = set(p.stop_token_ids) | (set() if p.ignore_eos else self.eos_token_ids)
        return tuple(sorted(t for t in ids if t < self.vocab_size))

    def reason(self, seq: Sequence, tok: int) -> tuple[str | None, int | None]:
        """(finish reason, stop reason) once ``tok`` is the sequence's newest token; (None, None)
        when it goes on."""
        p = seq.params
        if tok in p.stop_token_ids:
            return "stop", tok
        if not p.ignore_eos and tok in self.eos_token_ids:
            return "stop", None
        if seq.matcher is not None and seq.matcher.is_stopped():
            return "stop", None  # the output is complete: nothing but EOS could follow
        known = seq.num_known  # (a placeholder after it: its next step is in flight)
        if known - seq.num_prompt_tokens >= p.max_tokens or known >= self.max_model_len:
            return "length", None
        return None, None
