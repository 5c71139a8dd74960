"""What the API process checks of a request before the engine sees it, each failure an
``APIError`` (an OpenAI error body, a 4xx): the routes' checks, over the rules both processes
share (``kairos.wire.checks``)."""

from __future__ import annotations

import asyncio

from fastapi import Request

from kairos.grammar import structured
from kairos.server.chat_template import ChatRenderer, load_template
from kairos.server.client import EngineClient
from kairos.server.config import ServerConfig
from kairos.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    TokenizeRequest,
    slo_from,
)
from kairos.server.serving import APIError
from kairos.server.tokenizing import Tokenizing
from kairos.wire.checks import check_context_length, check_logit_bias, check_prompt_ids
from kairos.wire.sampling_params import SamplingParams, StructuredOutput

MAX_N = 128  # completions per prompt (OpenAI's bound): n sequences' state is built before the engine sees them


class RequestChecks:
    """The checks of one server: its engine (``client``), tokenizer (None: token ids only), name
    and configuration."""

    def __init__(self, client: EngineClient, tokenizer, model_name: str, config: ServerConfig):
        self.client, self.tokenizer, self.model_name, self.config = client, tokenizer, model_name, config
        self.aliases = {model_name, "default", client.config.model.model}
        self.tokens = Tokenizing(tokenizer, client.ready.max_model_len)
        self.renderer = ChatRenderer(tokenizer, load_template(config.chat_template))
        self._compiler: structured.Compiler | None = None  # (made at the first constrained request)
        self.draining = False  # (set by a drain: no new request is admitted)

    def model(self, name: str | None) -> None:
        if name is not None and name not in self.aliases:
            shown = name.encode("utf-8", "backslashreplace").decode()  # (a lone surrogate cannot go in a body)
            raise APIError(404, f"The model `{shown}` does not exist. Served: `{self.model_name}`.", "not_found_error",
                           param="model", code="model_not_found")

    def alive(self) -> None:
        if self.client.dead:
            raise APIError(503, f"engine unavailable: {self.client.dead}", "server_error", code="engine_dead")
        if self.draining:
            raise APIError(503, "server draining: it finishes the requests it has and takes no new one",
                           "server_error", code="draining")

    @staticmethod
    def unicode(text: str, param: str) -> str:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise APIError(400, f"{param} is not valid Unicode text (it holds a lone surrogate)", param=param) from None
        return text

    def width(self, prompts: int, n: int) -> None:
        """``prompts`` prompts of ``n`` completions each are not more than the server holds."""
        if not 1 <= n <= MAX_N:  # (checked before n of anything is built)
            raise APIError(400, f"n must be in [1, {MAX_N}], got {n}", param="n")
        if prompts * n > self.config.max_pending:  # (never served: more than the server holds in flight at once)
            raise APIError(400, f"at most {self.config.max_pending} sequences in one request (prompts x n; "
                                f"--max-pending), got {prompts} x {n}", param="prompt" if prompts > 1 else "n")

    def need_tokenizer(self, param: str) -> None:
        if self.tokenizer is None:  # (a model directory without one: token ids in and out only)
            raise APIError(400, "this model has no tokenizer: send the prompt as token ids", param=param)

    async def encode(self, prompt, fit: bool) -> tuple[str | None, list[int]]:
        """A prompt (text or token ids) as (its text or None, its ids); ``fit``: a text too long for
        the context is refused before it is tokenized."""
        if isinstance(prompt, str):
            if not prompt:
                raise APIError(400, "prompt must not be empty", param="prompt")
            self.need_tokenizer("prompt")
            return prompt, await self.tokens.ids(self.unicode(prompt, "prompt"), "prompt", fit=fit)
        try:
            check_prompt_ids(prompt, self.client.ready.vocab_size)
        except ValueError as e:
            raise APIError(400, str(e), param="prompt") from None
        return None, list(prompt)

    def render(self, req: ChatCompletionRequest | TokenizeRequest) -> str:
        return self.unicode(self.renderer.render(req), "messages")

    def truncated(self, req, ids: list[int]) -> list[int]:
        k = req.truncate_prompt_tokens
        if k == 0:
            raise APIError(400, "truncate_prompt_tokens must be -1 (the model's context) or >= 1, got 0",
                           param="truncate_prompt_tokens")
        if k is not None:
            ids = ids[-(self.client.ready.max_model_len if k == -1 else k):]
        return ids

    def slo(self, req, request: Request):
        try:
            return slo_from(req.slo, req.priority, request.headers)
        except ValueError as e:
            raise APIError(400, str(e), param="slo") from None

    async def structured_spec(self, req: CompletionRequest | ChatCompletionRequest) -> StructuredOutput | None:
        """The request's output constraint, checked once (on a compiler thread: a deep grammar
        needs its stack, a big one its time), in the form the engine compiles without converting."""
        try:
            given = req.structured_output()
        except ValueError as e:
            raise APIError(400, str(e), param=str(e).split(" ", 1)[0].rstrip(":")) from None
        if given is None:
            return None
        source, spec = given
        for text in (spec.json, spec.regex, spec.grammar, *(spec.choice or ())):
            if text is not None:
                self.unicode(text, source)
        if self._compiler is None:
            self._compiler = structured.Compiler()
        try:
            return await asyncio.wrap_future(self._compiler.submit(structured.prepare, spec))
        except ValueError as e:
            raise APIError(400, f"{source}: {e}", param=source) from None

    def sampling(self, req, prompt_len: int, default_max: int, spec: StructuredOutput | None) -> SamplingParams:
        """The request's sampling parameters for one prompt, checked; ``spec``: ``structured_spec``'s."""
        self.width(1, req.n)
        for s in [req.stop] if isinstance(req.stop, str) else req.stop or ():
            self.unicode(s, "stop")
        try:
            params = req.sampling_params(default_max, spec)
        except ValueError as e:
            raise APIError(400, str(e), param=str(e).split(" ", 1)[0].rstrip(":")) from None
        try:
            check_logit_bias(params.logit_bias, self.client.ready.vocab_size)
        except ValueError as e:
            raise APIError(400, str(e), param="logit_bias") from None
        asked = 0 if getattr(req, "echo_only", False) else params.max_tokens  # (echo_only: one token, never shown)
        try:
            check_context_length(prompt_len, asked, self.client.ready.max_model_len)
        except ValueError as e:
            raise APIError(400, str(e), param="max_tokens", code="context_length_exceeded") from None
        return params
