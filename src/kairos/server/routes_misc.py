"""The routes beside the OpenAI API: vLLM's tokenizer routes, health, version, stats, metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

import kairos
from kairos.server.middleware import error
from kairos.server.protocol import DetokenizeRequest, TokenizeRequest
from kairos.server.serving import APIError
from kairos.server.state import state

router = APIRouter()


@router.post("/tokenize")
async def tokenize(req: TokenizeRequest, request: Request):
    s = state(request)
    check = s.checks
    check.model(req.model)
    if (req.prompt is None) == (req.messages is None):
        raise APIError(400, "give exactly one of prompt and messages", param="prompt")
    check.need_tokenizer("prompt" if req.messages is None else "messages")
    if req.messages is not None:
        text, special = check.render(req), False
    else:
        text, special = check.unicode(req.prompt, "prompt"), True
    ids = await check.tokens.ids(text, "prompt" if req.messages is None else "messages", fit=False,
                                 add_special_tokens=special if req.add_special_tokens is None else req.add_special_tokens)
    strs = s.tokenizer.convert_ids_to_tokens(ids) if req.return_token_strs else None
    return {"count": len(ids), "max_model_len": s.client.ready.max_model_len, "tokens": ids, "token_strs": strs}


@router.post("/detokenize")
async def detokenize(req: DetokenizeRequest, request: Request):
    s = state(request)
    s.checks.model(req.model)
    s.checks.need_tokenizer("tokens")
    vocab = s.client.ready.vocab_size
    if req.tokens and (min(req.tokens) < 0 or max(req.tokens) >= vocab):
        raise APIError(400, f"token ids must be in [0, {vocab})", param="tokens")
    return {"prompt": await s.checks.tokens.text(req.tokens)}


@router.get("/health")
async def health(request: Request):
    s = state(request)
    if s.client.dead:
        return error(503, f"engine unavailable: {s.client.dead}", "server_error", code="engine_dead")
    silent, stepping = s.client.silent_for(), s.client.in_step_for()
    if silent > s.config.engine_stall_timeout:
        return error(503, f"engine stalled: no word from its process for {silent:.1f} s", "server_error",
                     code="engine_stalled")
    if stepping > s.config.engine_step_timeout:
        return error(503, f"engine stalled: its loop has been in one step for {stepping:.1f} s", "server_error",
                     code="engine_stalled")
    return {"status": "ok"}


@router.get("/version")
async def version():
    return {"version": kairos.__version__}


@router.get("/stats")
async def stats(request: Request):
    client = state(request).client
    return {**client.stats, "num_requests_in_flight": len(client.queues),
            "engine_pid": client.proc.pid if client.proc else None, "engine_in_step_s": client.in_step_for()}


@router.get("/metrics")
async def prom(request: Request):
    s = state(request)
    return Response(s.metrics.render(s.client.stats), media_type="text/plain; version=0.0.4")
