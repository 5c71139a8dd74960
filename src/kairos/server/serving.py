"""Completions and chat completions: prompt -> engine requests -> OpenAI responses or SSE chunks."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from kairos.engine.output_processor import CompletionOutput, OutputProcessor, RequestOutput
from kairos.engine.outputs import EngineRequest
from kairos.engine.sampling_params import SamplingParams
from kairos.server.client import EngineClient
from kairos.server.metrics import ServerMetrics
from kairos.server.protocol import new_id, now


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


@dataclass
class Tracked:
    """One engine request as the API sees it: its output so far and its token timings."""

    output: RequestOutput
    arrival: float
    token_times: list[float] = field(default_factory=list)


class Generator:
    """Runs engine requests for the HTTP handlers; detokenizes and applies stop strings here."""

    def __init__(self, client: EngineClient, tokenizer, metrics: ServerMetrics, max_pending: int):
        self.client = client
        self.processor = OutputProcessor(tokenizer)
        self.metrics = metrics
        self.max_pending = max_pending

    def check_capacity(self, new: int) -> None:
        """Refuse up front (before any response starts, so streams get a real 503 status)."""
        if len(self.client.queues) + new > self.max_pending:
            raise APIError(503, f"server is at capacity ({self.max_pending} requests in flight); retry later",
                           "server_error", code="queue_full")

    async def run(self, text: str | None, ids: list[int], params: SamplingParams) -> AsyncIterator[tuple[Tracked, int]]:
        """Yield (tracked request, index of the completion that changed) until all n are done."""
        rid = new_id("req")
        tr = Tracked(self.processor.add_request(rid, text, ids, params), time.monotonic())
        q = self.client.add(EngineRequest(rid, ids, params))
        outcome = "abort"
        try:
            while not tr.output.finished:
                item = await q.get()
                if isinstance(item, ValueError):
                    outcome = "rejected"
                    raise APIError(400, str(item))
                if isinstance(item, Exception):
                    outcome = "error"
                    raise APIError(503, f"engine unavailable: {item}", "server_error", code="engine_dead")
                tr.token_times.extend([time.monotonic()] * len(item.new_token_ids))
                _, stopped = self.processor.process([item])
                for r, i in stopped:
                    self.client.finish_sequence(r, i)
                yield tr, item.index
            outcome = "finished"
        finally:
            if outcome == "finished":
                self.client.release(rid)
            else:  # client went away, or an error: the engine frees the blocks on its next loop
                self.client.abort(rid)
                self.processor.abort(rid)
            self.metrics.finished(outcome, len(ids), tr.token_times, tr.arrival, time.monotonic())


async def merge(gens: list[AsyncIterator]) -> AsyncIterator[tuple[int, object]]:
    """Interleave several async iterators as (which, item); errors propagate; stops all on exit."""
    if len(gens) == 1:
        async for item in gens[0]:
            yield 0, item
        return
    q: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i, g):
        try:
            async for item in g:
                await q.put((i, item))
            await q.put((i, done))
        except BaseException as e:
            await q.put((i, e))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
    try:
        remaining = len(gens)
        while remaining:
            i, item = await q.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()


def usage(prompt_tokens: int, outputs: list[CompletionOutput]) -> dict:
    completion = sum(len(o.token_ids) for o in outputs)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def completion_logprobs(out: CompletionOutput, start: int = 0) -> dict | None:
    if out.logprobs is None:
        return None
    lps = out.logprobs[start:]
    return {
        "tokens": [lp.token for lp in lps],
        "token_logprobs": [lp.logprob for lp in lps],
        "top_logprobs": [{t: v for _, t, v in lp.top} for lp in lps],
        "text_offset": [],
    }


def chat_logprobs(out: CompletionOutput, start: int = 0) -> dict | None:
    if out.logprobs is None:
        return None
    return {"content": [
        {"token": lp.token, "logprob": lp.logprob, "bytes": list(lp.token.encode()),
         "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for _, t, v in lp.top]}
        for lp in out.logprobs[start:]
    ]}


def sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n"


def header(kind: str, rid: str, model: str) -> dict:
    return {"id": rid, "object": kind, "created": now(), "model": model}
