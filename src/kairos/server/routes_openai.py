"""The OpenAI routes: completions, chat completions, models."""

from __future__ import annotations

import asyncio
import contextlib
import functools

from fastapi import APIRouter, Request
from fastapi.responses import Response

from kairos.server import tools as tool_calls
from kairos.server.protocol import ChatCompletionRequest, CompletionRequest, now
from kairos.server.responses import stream, total_usage
from kairos.server.serving import (
    APIError,
    chat_logprobs,
    completion_logprobs,
    header,
    merge,
    new_id,
    vllm_prompt_logprobs,
)
from kairos.server.state import state

router = APIRouter()


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


@router.post("/v1/completions")
@cancel_on_disconnect
async def completions(req: CompletionRequest, request: Request):
    s = state(request)
    check, gen = s.checks, s.gen
    check.model(req.model)
    check.alive()
    p = req.prompt
    prompts = [p] if isinstance(p, str) or (p and isinstance(p[0], int)) else list(p)
    if not prompts:
        raise APIError(400, "prompt must not be empty", param="prompt")
    check.width(len(prompts), req.n)
    fit = req.truncate_prompt_tokens is None  # (a prompt cut to its last tokens may be as long as it likes)
    encoded = [(t if len(cut) == len(ids) else None, cut)  # (a truncated prompt's text: its ids' decode)
               for t, ids in [await check.encode(p, fit) for p in prompts] for cut in [check.truncated(req, ids)]]
    spec = await check.structured_spec(req)
    params = [check.sampling(req, len(ids), 16, spec) for _, ids in encoded]
    slo, priority = check.slo(req, request)
    rid = new_id("cmpl")
    tracked = await gen.start_all([(t, ids, sp) for (t, ids), sp in zip(encoded, params)], slo, priority)
    runs = [gen.follow(tr) for tr in tracked]
    n, tokenizer = req.n, s.tokenizer
    # echo: the prompt's text ahead of each choice's (token ids: as the tokenizer decodes them)
    echo = [(t if t is not None else tokenizer.decode(ids) if tokenizer is not None else "") if req.echo else ""
            for t, ids in encoded]
    if req.stream:
        return stream(rid, "text_completion", s.model_name, runs, tracked, n, req, chat=False,
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
    return {**header("text_completion", rid, s.model_name), "choices": choices,
            "usage": total_usage(tracked, not req.echo_only)}


@router.post("/v1/chat/completions")
@cancel_on_disconnect
async def chat(req: ChatCompletionRequest, request: Request):
    s = state(request)
    check, gen = s.checks, s.gen
    check.model(req.model)
    check.alive()
    try:
        tp = req.tool_plan(s.config.tool_call_parser)
    except ValueError as e:
        raise APIError(400, str(e), param=str(e).split(" ", 1)[0]) from None
    check.need_tokenizer("messages")
    check.width(1, req.n)
    text = check.render(req)
    ids = check.truncated(req, await check.tokens.ids(text, "messages", fit=req.truncate_prompt_tokens is None,
                                                      add_special_tokens=req.add_special_tokens))
    max_default = max(1, min(s.config.default_max_tokens, s.client.ready.max_model_len - len(ids)))
    params = check.sampling(req, len(ids), max_default, await check.structured_spec(req))
    slo, priority = check.slo(req, request)
    rid = new_id("chatcmpl")
    tracked = await gen.start_all([(text, ids, params)], slo, priority)
    runs = [gen.follow(tr) for tr in tracked]
    if req.stream:
        return stream(rid, "chat.completion.chunk", s.model_name, runs, tracked, req.n, req, chat=True, tools=tp)
    async for _ in merge(runs):
        pass
    final = tracked[0].output
    choices = [{"index": o.index, "message": msg, "logprobs": chat_logprobs(o), "finish_reason": why,
                "stop_reason": o.stop_reason}
               for o in final.outputs for msg, why in [tool_calls.message(tp, o.text, o.finish_reason)]]
    extra = {"prompt_logprobs": vllm_prompt_logprobs(final.prompt_logprobs)} if req.prompt_logprobs is not None else {}
    return {**header("chat.completion", rid, s.model_name), "choices": choices, "usage": total_usage(tracked), **extra}


@router.get("/v1/models")
async def models(request: Request):
    s = state(request)
    return {"object": "list", "data": [{"id": s.model_name, "object": "model", "created": now(), "owned_by": "kairos",
                                        "max_model_len": s.client.ready.max_model_len}]}
