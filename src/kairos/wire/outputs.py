"""Typed messages out of the engine core (msgspec, so they cross process boundaries as is)."""

from __future__ import annotations

import msgspec

from kairos.wire.sampling_params import SamplingParams
from kairos.wire.slo import SLO


class EngineRequest(msgspec.Struct, frozen=True):
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float | None = None  # time.monotonic() of arrival (system-wide on Linux)
    slo: SLO | None = None
    priority: int = 0  # higher first among requests without deadlines


class TokenLogprob(msgspec.Struct, frozen=True, array_like=True):
    logprob: float
    top: list[tuple[int, float]]  # (token id, logprob), best first


class PromptLogprob(msgspec.Struct, frozen=True, array_like=True):
    """A prompt token's logprob given the tokens before it."""

    token_id: int
    logprob: float
    rank: int  # the number of tokens at least as likely, itself included (as vLLM's)
    top: list[tuple[int, float]]  # (token id, logprob), best first


class SeqOutput(msgspec.Struct):
    """What one step produced for one sequence: new tokens and, at the end, why it finished."""

    request_id: str
    index: int
    new_token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "expired" | "error" (stop_reason: why)
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    num_prompt_tokens: int = 0
    # with the first token of sequence 0 of a request that asked: prompt tokens 1.. (token 0 has none)
    prompt_logprobs: list[PromptLogprob] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
