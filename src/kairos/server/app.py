"""FastAPI application: OpenAI routes, health, metrics, version; OpenAI-style errors for bad input."""

from __future__ import annotations

import asyncio
import contextlib
import functools

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import kairos
from kairos.grammar import structured
from kairos.server import openapi_doc
from kairos.server import tools as tool_calls
from kairos.server.chat_template import ChatRenderer, load_template
from kairos.server.client import EngineClient
from kairos.server.config import ServerConfig
from kairos.server.metrics import ServerMetrics
from kairos.server.middleware import ApiKey, BodyLimit, error
from kairos.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    now,
    slo_from,
)
from kairos.server.responses import stream, total_usage
from kairos.server.serving import (
    APIError,
    Generator,
    chat_logprobs,
    completion_logprobs,
    header,
    merge,
    new_id,
    vllm_prompt_logprobs,
)
from kairos.server.tokenizing import Tokenizing
from kairos.wire.sampling_params import SamplingParams, StructuredOutput, check_context_length


def cancel_on_disconnect(handler):
    """Run a route beside a watch on its connection: a client that goes away before a
    non-streamed answer is ready has its requests aborted (cancelling the route runs the
    ``finally`` that aborts them), as vLLM's ``with_cancellation``. Streams watch for themselves."""

    @functools.wraps(handler)
    async def route(*args, **kwargs):
        work = asyncio.ensure_future(handler(*args, **kwargs))
        gone = asyncio.ensure_future(_disconnected(kwargs["request"]))
        try:
            done, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if work not in done:
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            return Response(status_code=499)  # (nobody reads it)
        return work.result()

    return route


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":  # (the body was read: what comes is the end)
        pass


MAX_N = 128  # completions per prompt (OpenAI's bound): n sequences' state is built before the engine sees them


def build_app(client: EngineClient, tokenizer, model_name: str, config: ServerConfig) -> FastAPI:
    app = FastAPI(title="Kairos", version=kairos.__version__)
    metrics = ServerMetrics(model_name)
    gen = Generator(client, tokenizer, metrics, config.max_pending, config.request_timeout)
    aliases = {model_name, "default", client.config.model.model}

    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError):
        return error(e.status, e.message, e.type, e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            return error(400, f"request body is not valid JSON: {first.get('ctx', {}).get('error', '')}".rstrip(": "))
        return error(400, f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid value')}", param=".".join(loc) or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException):
        response = error(e.status_code, str(e.detail), "not_found_error" if e.status_code == 404 else "invalid_request_error")
        response.headers.update(e.headers or {})  # (a 405's Allow)
        return response

    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    if config.api_key:
        app.add_middleware(ApiKey, key=config.api_key)  # (added after: runs before, ahead of any body read)
    if config.allowed_origins:  # outermost: its headers go on every answer, a 401 or 413 too
        app.add_middleware(CORSMiddleware, allow_origins=list(config.allowed_origins), allow_methods=["*"],
                           allow_headers=["*"])

    def check_model(name: str | None) -> None:
        if name is not None and name not in aliases:
            shown = name.encode("utf-8", "backslashreplace").decode()  # (a lone surrogate cannot go in a body)
            raise APIError(404, f"The model `{shown}` does not exist. Served: `{model_name}`.", "not_found_error",
                           param="model", code="model_not_found")

    def unicode(text: str, param: str) -> str:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise APIError(400, f"{param} is not valid Unicode text (it holds a lone surrogate)", param=param) from None
        return text

    compilers: list[structured.Compiler] = []  # (one, made at the first constrained request)

    async def structured_spec(req: CompletionRequest | ChatCompletionRequest) -> StructuredOutput | None:
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
                unicode(text, source)
        if not compilers:
            compilers.append(structured.Compiler())
        try:
            return await asyncio.wrap_future(compilers[0].submit(structured.prepare, spec))
        except ValueError as e:
            raise APIError(400, f"{source}: {e}", param=source) from None

    def check_alive() -> None:
        if client.dead:
            raise APIError(503, f"engine unavailable: {client.dead}", "server_error", code="engine_dead")

    def sampling(req, prompt_len: int, default_max: int, spec: StructuredOutput | None) -> SamplingParams:
        """The request's sampling parameters for one prompt, checked; ``spec``: ``structured_spec``'s."""
        if not 1 <= req.n <= MAX_N:  # (checked before n of anything is built)
            raise APIError(400, f"n must be in [1, {MAX_N}], got {req.n}", param="n")
        for s in [req.stop] if isinstance(req.stop, str) else req.stop or ():
            unicode(s, "stop")
        try:
            params = req.sampling_params(default_max, spec)
        except ValueError as e:
            raise APIError(400, str(e), param=str(e).split(" ", 1)[0].rstrip(":")) from None
        vocab = client.ready.vocab_size
        if params.logit_bias and params.logit_bias[-1][0] >= vocab:  # (sorted, non-negative: SamplingParams)
            raise APIError(400, f"logit_bias keys must be token ids in [0, {vocab})", param="logit_bias")
        asked = 0 if getattr(req, "echo_only", False) else params.max_tokens  # (echo_only: one token, never shown)
        try:
            check_context_length(prompt_len, asked, client.ready.max_model_len)
        except ValueError as e:
            raise APIError(400, str(e), param="max_tokens", code="context_length_exceeded") from None
        return params

    def check_width(prompts: int, n: int) -> None:
        if not 1 <= n <= MAX_N:  # (checked before n of anything is built)
            raise APIError(400, f"n must be in [1, {MAX_N}], got {n}", param="n")
        if prompts * n > config.max_pending:  # (never served: more than the server holds in flight at once)
            raise APIError(400, f"at most {config.max_pending} sequences in one request (prompts x n; --max-pending), "
                                f"got {prompts} x {n}", param="prompt" if prompts > 1 else "n")

    def need_tokenizer(param: str) -> None:
        if tokenizer is None:  # (a model directory without one: token ids in and out only)
            raise APIError(400, "this model has no tokenizer: send the prompt as token ids", param=param)

    tokens = Tokenizing(tokenizer, client.ready.max_model_len)

    async def encode(prompt, fit: bool) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if not prompt:
                raise APIError(400, "prompt must not be empty", param="prompt")
            need_tokenizer("prompt")
            return prompt, await tokens.ids(unicode(prompt, "prompt"), "prompt", fit=fit)
        if not prompt:
            raise APIError(400, "prompt must not be empty", param="prompt")
        if min(prompt) < 0 or max(prompt) >= client.ready.vocab_size:
            raise APIError(400, f"prompt token ids must be in [0, {client.ready.vocab_size})", param="prompt")
        return None, list(prompt)

    renderer = ChatRenderer(tokenizer, load_template(config.chat_template))

    def render(req: ChatCompletionRequest | TokenizeRequest) -> str:
        return unicode(renderer.render(req), "messages")

    def truncated(req, ids: list[int]) -> list[int]:
        k = req.truncate_prompt_tokens
        if k == 0:
            raise APIError(400, "truncate_prompt_tokens must be -1 (the model's context) or >= 1, got 0",
                           param="truncate_prompt_tokens")
        if k is not None:
            ids = ids[-(client.ready.max_model_len if k == -1 else k):]
        return ids

    def request_slo(req, request: Request):
        try:
            return slo_from(req.slo, req.priority, request.headers)
        except ValueError as e:
            raise APIError(400, str(e), param="slo") from None

    @app.post("/v1/completions")
    @cancel_on_disconnect
    async def completions(req: CompletionRequest, request: Request):
        check_model(req.model)
        check_alive()
        p = req.prompt
        prompts = [p] if isinstance(p, str) or (p and isinstance(p[0], int)) else list(p)
        if not prompts:
            raise APIError(400, "prompt must not be empty", param="prompt")
        check_width(len(prompts), req.n)
        fit = req.truncate_prompt_tokens is None  # (a prompt cut to its last tokens may be as long as it likes)
        encoded = [(t if len(cut) == len(ids) else None, cut)  # (a truncated prompt's text: its ids' decode)
                   for t, ids in [await encode(p, fit) for p in prompts] for cut in [truncated(req, ids)]]
        spec = await structured_spec(req)
        params = [sampling(req, len(ids), 16, spec) for _, ids in encoded]
        slo, priority = request_slo(req, request)
        rid = new_id("cmpl")
        tracked = await gen.start_all([(t, ids, sp) for (t, ids), sp in zip(encoded, params)], slo, priority)
        runs = [gen.follow(tr) for tr in tracked]
        n = req.n
        # echo: the prompt's text ahead of each choice's (token ids: as the tokenizer decodes them)
        echo = [(t if t is not None else tokenizer.decode(ids) if tokenizer is not None else "") if req.echo else ""
                for t, ids in encoded]
        if req.stream:
            return stream(rid, "text_completion", model_name, runs, tracked, n, req, chat=False,
                           echo=echo if req.echo else None)
        async for _ in merge(runs):
            pass
        choices = []
        for i, tr in enumerate(tracked):
            prompt_lps = tr.output.prompt_logprobs
            for o in tr.output.outputs:
                choice = {"index": i * n + o.index, "text": echo[i] + ("" if req.echo_only else o.text),
                          "logprobs": completion_logprobs(o, 0, prompt_lps if req.echo else None, not req.echo_only),
                          "finish_reason": o.finish_reason, "stop_reason": o.stop_reason}
                if req.prompt_logprobs is not None:
                    choice["prompt_logprobs"] = vllm_prompt_logprobs(prompt_lps)
                choices.append(choice)
        return {**header("text_completion", rid, model_name), "choices": choices,
                "usage": total_usage(tracked, not req.echo_only)}

    @app.post("/v1/chat/completions")
    @cancel_on_disconnect
    async def chat(req: ChatCompletionRequest, request: Request):
        check_model(req.model)
        check_alive()
        try:
            tp = req.tool_plan(config.tool_call_parser)
        except ValueError as e:
            raise APIError(400, str(e), param=str(e).split(" ", 1)[0]) from None
        need_tokenizer("messages")
        check_width(1, req.n)
        text = render(req)
        ids = truncated(req, await tokens.ids(text, "messages", fit=req.truncate_prompt_tokens is None,
                                              add_special_tokens=req.add_special_tokens))
        max_default = max(1, min(config.default_max_tokens, client.ready.max_model_len - len(ids)))
        params = sampling(req, len(ids), max_default, await structured_spec(req))
        slo, priority = request_slo(req, request)
        rid = new_id("chatcmpl")
        tracked = await gen.start_all([(text, ids, params)], slo, priority)
        runs = [gen.follow(tr) for tr in tracked]
        if req.stream:
            return stream(rid, "chat.completion.chunk", model_name, runs, tracked, req.n, req, chat=True, tools=tp)
        async for _ in merge(runs):
            pass
        final = tracked[0].output
        choices = [{"index": o.index, "message": msg, "logprobs": chat_logprobs(o), "finish_reason": why,
                    "stop_reason": o.stop_reason}
                   for o in final.outputs for msg, why in [tool_calls.message(tp, o.text, o.finish_reason)]]
        extra = {"prompt_logprobs": vllm_prompt_logprobs(final.prompt_logprobs)} if req.prompt_logprobs is not None else {}
        return {**header("chat.completion", rid, model_name), "choices": choices, "usage": total_usage(tracked), **extra}

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest):
        check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise APIError(400, "give exactly one of prompt and messages", param="prompt")
        need_tokenizer("prompt" if req.messages is None else "messages")
        if req.messages is not None:
            text, special = render(req), False
        else:
            text, special = unicode(req.prompt, "prompt"), True
        ids = await tokens.ids(text, "prompt" if req.messages is None else "messages", fit=False,
                               add_special_tokens=special if req.add_special_tokens is None else req.add_special_tokens)
        strs = tokenizer.convert_ids_to_tokens(ids) if req.return_token_strs else None
        return {"count": len(ids), "max_model_len": client.ready.max_model_len, "tokens": ids, "token_strs": strs}

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest):
        check_model(req.model)
        need_tokenizer("tokens")
        if req.tokens and (min(req.tokens) < 0 or max(req.tokens) >= client.ready.vocab_size):
            raise APIError(400, f"token ids must be in [0, {client.ready.vocab_size})", param="tokens")
        return {"prompt": await tokens.text(req.tokens)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": now(), "owned_by": "kairos",
                                            "max_model_len": client.ready.max_model_len}]}

    @app.get("/health")
    async def health():
        if client.dead:
            return error(503, f"engine unavailable: {client.dead}", "server_error", code="engine_dead")
        silent = client.silent_for()
        if silent > config.engine_stall_timeout:
            return error(503, f"engine stalled: no word from its loop for {silent:.1f} s", "server_error",
                         code="engine_stalled")
        return {"status": "ok"}

    @app.get("/version")
    async def version():
        return {"version": kairos.__version__}

    @app.get("/stats")
    async def stats():
        return {**client.stats, "num_requests_in_flight": len(client.queues),
                "engine_pid": client.proc.pid if client.proc else None}

    @app.get("/metrics")
    async def prom():
        return Response(metrics.render(client.stats), media_type="text/plain; version=0.0.4")

    openapi_doc.install(app, bool(config.api_key))
    return app
