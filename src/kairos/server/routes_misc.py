"""The routes beside the OpenAI API: vLLM's tokenizer routes, health, version, stats, metrics."""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

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


def _problem(s) -> tuple[str, str] | None:
    # what keeps the server from serving, as (code, message); None when it is healthy
    if s.client.dead:
        return "engine_dead", f"engine unavailable: {s.client.dead}"
    if s.checks.draining:
        return "draining", "server draining: it finishes the requests it has and takes no new one"
    silent, stepping = s.client.silent_for(), s.client.in_step_for()
    if silent > s.config.engine_stall_timeout:
        return "engine_stalled", f"engine stalled: no word from its process for {silent:.1f} s"
    if stepping > s.config.engine_step_timeout:
        return "engine_stalled", f"engine stalled: its loop has been in one step for {stepping:.1f} s"
    return None


@router.get("/health")
async def health(request: Request):
    problem = _problem(state(request))
    if problem is not None:
        return error(503, problem[1], "server_error", code=problem[0])
    return {"status": "ok"}


@router.post("/admin/drain", include_in_schema=False)  # (an operator's, not the API's)
async def drain(request: Request, grace: float | None = None):
    """Stop admitting, let the requests in flight finish for ``grace`` seconds (default
    ``--drain-grace``), end the rest, exit 0: what SIGTERM does (a preemption notice)."""
    s = state(request)
    grace = s.config.drain_grace if grace is None else grace
    if not grace >= 0:
        raise APIError(400, f"grace must be >= 0 s, got {grace}", param="grace")
    request.app.state.drain(grace)
    return Response(json.dumps({"draining": True, "grace_s": grace}), status_code=202, media_type="application/json")


@router.get("/version")
async def version():
    return {"version": kairos.__version__}


@router.get("/stats")
async def stats(request: Request):
    return _stats(state(request).client)


def _stats(client) -> dict:
    return {**client.stats, "num_requests_in_flight": len(client.queues),
            "engine_pid": client.proc.pid if client.proc else None, "engine_in_step_s": client.in_step_for()}


@router.get("/stats/stream")
async def stats_stream(request: Request):
    """Server-sent events for a router: the engine's stats whenever they change (at most every
    0.1 s, at least every second) and its prefix cache's changes as block hashes (``cache``:
    +h added, -h evicted; the first event, or one with ``cache_snapshot``, holds the whole set)."""
    s = state(request)
    client = s.client

    def stats() -> dict:
        problem = _problem(s)
        return {**_stats(client), "health": "ok" if problem is None else problem[1]}

    def event(body: dict) -> bytes:
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    async def events():
        q: asyncio.Queue = asyncio.Queue()
        client.watchers.add(q)  # (here: a response that never starts registers nothing)
        try:
            yield event({"stats": stats(), "cache": sorted(client.cached_blocks), "cache_snapshot": True})
            seen, last = client.stats, time.monotonic()
            while not client.dead:
                await asyncio.sleep(0.1)
                changes, snapshot = [], False
                while not q.empty():
                    more, whole = q.get_nowait()
                    if whole or snapshot:  # (the set as it is now holds every change queued after it)
                        changes, snapshot = list(client.cached_blocks), True
                    else:
                        changes += more
                if changes or snapshot or client.stats is not seen or time.monotonic() - last >= 1.0:
                    body = {"stats": stats()}
                    if changes or snapshot:
                        body |= {"cache": changes, "cache_snapshot": snapshot}
                    yield event(body)
                    seen, last = client.stats, time.monotonic()
            yield event({"dead": client.dead})
        finally:
            client.watchers.discard(q)

    return StreamingResponse(events(), media_type="text/event-stream")


@router.get("/metrics")
async def prom(request: Request):
    s = state(request)
    return Response(s.metrics.render(s.client.stats), media_type="text/plain; version=0.0.4")
