"""The update half of a step (vLLM's ``update_from_output``): a finished step's sampled tokens
go into their sequences, through grammars, stop rules, speculative drafts and SLO admission's
first- and last-token hooks; each token becomes a :class:`SeqOutput`."""

from __future__ import annotations

import logging
from collections.abc import Callable

from kairos.engine.stopping import StopRules
from kairos.grammar.structured import short_error
from kairos.sched.admission import SLOAdmission
from kairos.sched.scheduler import Scheduler
from kairos.sched.sequence import PLACEHOLDER, SeqStatus, Sequence
from kairos.sched.speculative import NgramProposer
from kairos.wire.outputs import PromptLogprob, SeqOutput, TokenLogprob
from kairos.worker.sampler import PromptLogprobs, SamplerOutput

logger = logging.getLogger(__name__)


class TokenApplier:
    """Applies sampled tokens to sequences; ``finish`` ends a sequence (the engine's bookkeeping)."""

    def __init__(self, stops: StopRules, scheduler: Scheduler, admission: SLOAdmission,
                 proposer: NgramProposer | None, finish: Callable[[Sequence], None]):
        self.stops, self.scheduler, self.admission, self.proposer = stops, scheduler, admission, proposer
        self.finish = finish

    def token(self, seq: Sequence, tok: int, lp, now: float) -> SeqOutput:
        """``tok`` (sampled with logprob ``lp``) fills ``seq``'s oldest placeholder: through its
        grammar, the stop rules and admission's first- and last-token hooks."""
        index = seq.num_known  # its oldest placeholder
        if seq.matcher is not None and not seq.matcher.consume_token(tok):
            # the mask let only tokens of the language through, so only a matcher in error (a
            # grammar past llguidance's limits mid-way) refuses one: the token is dropped and the
            # sequence ends in "error" (no step sampled past it: a constrained row samples once its last token is known)
            error = short_error(" ".join(seq.matcher.get_error().split()))
            logger.warning("structured output: %s refused token %d (%s)", seq, tok, error)
            del seq.token_ids[index]
            seq.num_pending -= 1
            self.finish(seq)
            return SeqOutput(seq.request_id, seq.index, [], finish_reason="error", stop_reason=error,
                             num_prompt_tokens=seq.num_prompt_tokens)
        seq.token_ids[index] = tok
        seq.num_pending -= 1
        self.scheduler.cache_resolved(seq, index)
        if seq.first_token_time is None:
            seq.first_token_time = now
            self.admission.first_token(seq, now)
        reason, stop = self.stops.reason(seq, tok)
        if reason:
            self.admission.finished(seq, now)
            self.finish(seq)
        out = SeqOutput(seq.request_id, seq.index, [tok], logprobs=None if lp is None else [TokenLogprob(lp[0], lp[1])],
                        finish_reason=reason, stop_reason=stop, num_prompt_tokens=seq.num_prompt_tokens)
        if seq.prompt_logprobs is not None and index == seq.num_prompt_tokens:  # (its first token)
            out.prompt_logprobs, seq.prompt_logprobs = seq.prompt_logprobs, None
        return out

    def drafted(self, seqs: list[Sequence], drafts: dict[int, list[int]], sampled: SamplerOutput, now: float
                ) -> list[SeqOutput]:
        """A step with drafts: ``seqs`` by row, a drafted sequence's rows consecutive, 1 +
        len(draft) of them (``drafts``: seq id -> its draft)."""
        outputs, j = [], 0
        while j < len(seqs):
            seq = seqs[j]
            draft = drafts.get(seq.seq_id, [])
            rows = slice(j, j + 1 + len(draft))
            j = rows.stop
            if seq.status is SeqStatus.FINISHED:  # (ended by a stop string or abort meanwhile)
                continue
            if draft:
                outputs += self._draft(seq, draft, sampled.token_ids[rows], sampled.logprobs[rows], now)
            else:
                outputs.append(self.token(seq, sampled.token_ids[rows.start], sampled.logprobs[rows.start], now))
        return outputs

    def _draft(self, seq: Sequence, draft: list[int], tokens: list[int], lps: list, now: float) -> list[SeqOutput]:
        """A drafted step's tokens: the draft up to the first position whose sample differs from
        it, then that sample (``tokens[i]``: sampled after the last token and ``draft[:i]``)."""
        kept = 0
        while kept < len(draft) and tokens[kept] == draft[kept]:
            kept += 1
        self.proposer.verified(len(draft), kept)
        seq.num_computed -= len(draft) - kept  # (the KV of the tokens after the first miss is dropped)
        outs = []
        for i, tok in enumerate(tokens[: kept + 1]):
            if i:  # (the step's placeholder holds the first; each further token is one more)
                seq.token_ids.append(PLACEHOLDER)
                seq.num_pending += 1
            outs.append(self.token(seq, tok, lps[i], now))
            if outs[-1].finished:  # (EOS, a stop token or a limit among them: the rest go)
                break
        return outs


def take_prompt_logprobs(found: PromptLogprobs) -> None:
    """Hands the logprobs of prompt tokens a step found to the sequences still asking for them."""
    rows = iter(found.rows())
    for seq, lo, hi in found.spans:
        for p, (logprob, rank, top) in zip(range(lo, hi), rows):
            if seq.prompt_logprobs is not None and seq.status is not SeqStatus.FINISHED:
                seq.prompt_logprobs.append(PromptLogprob(seq.token_ids[p + 1], logprob, rank,
                                                         top[: seq.params.prompt_logprobs]))
