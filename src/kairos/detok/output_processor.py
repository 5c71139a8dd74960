"""Engine outputs (token ids) -> user-facing request outputs (text, logprobs, finish reasons).

Stop strings are found here, on the detokenized text; the caller tells the engine core to
finish those sequences (``finished_by_stop_string``), as vLLM v1's output processor does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kairos.detok.detokenizer import (
    ByteLevelDetokenizer,
    ByteTable,
    IncrementalDetokenizer,
    StopStringMatcher,
    byte_table,
    decoder,
)
from kairos.wire.outputs import SeqOutput
from kairos.wire.sampling_params import SamplingParams


@dataclass
class Logprob:
    token_id: int
    token: str
    logprob: float | None  # (None: a prompt's first token, which nothing predicts)
    top: list[tuple[int, str, float, list[int]]]  # (token id, token text, logprob, token bytes), best first
    token_bytes: list[int]  # the token's own bytes (its text alone is U+FFFD when it holds part of a character)
    rank: int | None = None  # (prompt logprobs) the number of tokens at least as likely, itself included


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[Logprob] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    delta: str = ""  # text added by the last update (for streaming)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    # prompt_logprobs: one per prompt token (the first's logprob None: nothing predicts it), once
    # the first output token is out
    prompt_logprobs: list[Logprob] | None = None

    @property
    def finished(self) -> bool:
        return all(o.finished for o in self.outputs)


class _SeqState:
    def __init__(self, out: CompletionOutput, tokenizer, table: ByteTable | None, prompt_ids: list[int],
                 params: SamplingParams):
        self.out = out
        if table is not None:
            self.detok = ByteLevelDetokenizer(table, params.skip_special_tokens)
        else:
            self.detok = IncrementalDetokenizer(tokenizer, prompt_ids, params.skip_special_tokens) if tokenizer else None
        self.stops = StopStringMatcher(params.stop, params.include_stop_str_in_output)
        self.min_tokens = params.min_tokens


class OutputProcessor:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._decode_one = decoder(tokenizer, False) if tokenizer else None
        self._bytes = byte_table(tokenizer) if tokenizer else None  # (None: not a byte-level tokenizer)
        self.states: dict[str, tuple[RequestOutput, list[_SeqState]]] = {}

    def add_request(self, request_id: str, prompt: str | None, prompt_ids: list[int], params: SamplingParams) -> RequestOutput:
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer; this model has none (use stop_token_ids)")
        ro = RequestOutput(request_id, prompt, prompt_ids, [])
        seqs = []
        for i in range(params.n):
            out = CompletionOutput(i, logprobs=[] if params.logprobs is not None else None)
            ro.outputs.append(out)
            seqs.append(_SeqState(out, self.tokenizer, self._bytes, prompt_ids, params))
        self.states[request_id] = (ro, seqs)
        return ro

    def process(self, outputs: list[SeqOutput]) -> tuple[list[RequestOutput], list[tuple[str, int]]]:
        """Apply outputs (a step's, or several steps' of one request, in order). Returns (updated
        requests, sequences ended by a stop string); each output's ``delta`` is the text these
        outputs added to it."""
        updated: dict[str, RequestOutput] = {}
        stopped: list[tuple[str, int]] = []
        touched: set[_SeqState] = set()
        for so in outputs:
            entry = self.states.get(so.request_id)
            if entry is None:
                continue
            ro, seqs = entry
            st = seqs[so.index]
            if st.out.finished:
                continue
            if st not in touched:
                touched.add(st)
                st.out.delta = ""
            if so.prompt_logprobs is not None:
                ro.prompt_logprobs = [self._logprob(ro.prompt_token_ids[0], None, [])] + [
                    self._logprob(p.token_id, p.logprob, p.top, p.rank) for p in so.prompt_logprobs]
            self._apply(st, so)
            if st.out.finish_reason == "stop" and isinstance(st.out.stop_reason, str) and not so.finished:
                stopped.append((so.request_id, so.index))
            updated[so.request_id] = ro
            if st.out.finished and ro.finished:  # (the request ends with the last of its sequences)
                del self.states[so.request_id]
        return list(updated.values()), stopped

    def _apply(self, st: _SeqState, so: SeqOutput) -> None:
        out = st.out
        out.token_ids.extend(so.new_token_ids)
        if out.logprobs is not None and so.logprobs:
            out.logprobs.extend(self._logprob(tok, lp.logprob, lp.top) for tok, lp in zip(so.new_token_ids, so.logprobs))
        if st.detok is None:
            if so.finished:
                out.finish_reason, out.stop_reason = so.finish_reason, so.stop_reason
            return
        delta = st.detok.add(so.new_token_ids)
        if so.finished:
            delta += st.detok.flush()
        # stop strings count only once past min_tokens, as vLLM's: one may begin before that point
        emit, matched = st.stops.feed(delta, search=len(out.token_ids) > st.min_tokens)
        if matched is None and so.finished:
            emit += st.stops.flush()
        out.text += emit
        out.delta += emit
        if matched is not None:
            out.finish_reason, out.stop_reason = "stop", matched
        elif so.finished:
            out.finish_reason, out.stop_reason = so.finish_reason, so.stop_reason

    def _logprob(self, tok: int, logprob: float | None, top: list[tuple[int, float]], rank: int | None = None) -> Logprob:
        s = self._tok_str(tok)
        tops = [(t, text, v, self._tok_bytes(t, text)) for t, v in top for text in (self._tok_str(t),)]
        return Logprob(tok, s, logprob, tops, self._tok_bytes(tok, s), rank)

    def _tok_str(self, token_id: int) -> str:
        return self._decode_one([token_id]) if self.tokenizer else str(token_id)

    def _tok_bytes(self, token_id: int, text: str) -> list[int]:
        """The token's own bytes; ``text`` (its ``_tok_str``) where no byte table has them."""
        table = self._bytes.ids if self._bytes is not None else ()
        return list(table[token_id]) if token_id < len(table) else list(text.encode())

    def abort(self, request_id: str) -> None:
        self.states.pop(request_id, None)
