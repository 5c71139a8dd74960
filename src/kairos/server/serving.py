"""Completions and chat completions: prompt -> engine requests -> OpenAI responses or SSE chunks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import msgspec

from kairos.detok.output_processor import CompletionOutput, Logprob, OutputProcessor, RequestOutput
from kairos.server.client import EngineClient, RequestRejectedError
from kairos.server.metrics import ServerMetrics
from kairos.server.protocol import new_id, now
from kairos.wire.messages import Admitted
from kairos.wire.outputs import EngineRequest
from kairos.wire.sampling_params import SamplingParams
from kairos.wire.slo import SLO, report


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


@dataclass
class Tracked:
    """One engine request as the API sees it: its output so far, its queue and token timings."""

    rid: str
    output: RequestOutput
    queue: asyncio.Queue
    arrival: float
    slo: SLO | None
    token_times: list[float] = field(default_factory=list)
    end: float | None = None
    admitted: Admitted | None = None

    def slo_report(self) -> dict:
        first = self.token_times[0] if self.token_times else None
        end = self.end if self.end is not None else time.monotonic()
        n = max(len(o.token_ids) for o in self.output.outputs)
        a = self.admitted
        predicted = (None, None, None) if a is None else (a.predicted_ttft_ms, a.predicted_tpot_ms, a.predicted_e2e_ms)
        expired = any(o.finish_reason == "expired" for o in self.output.outputs)
        return msgspec.structs.asdict(report(self.slo, self.arrival, first, end, n, predicted, expired))


class Generator:
    """Runs engine requests for the HTTP handlers; detokenizes and applies stop strings here."""

    def __init__(self, client: EngineClient, tokenizer, metrics: ServerMetrics, max_pending: int,
                 timeout: float | None = None):
        self.client = client
        self.processor = OutputProcessor(tokenizer)
        self.metrics = metrics
        self.max_pending = max_pending
        self.timeout = timeout  # seconds from a request's arrival to its end (None: no limit)

    async def _next(self, q: asyncio.Queue, arrival: float):
        """The next item of a request's queue; ``APIError`` 504 once its time is up."""
        if self.timeout is None:
            return await q.get()
        try:
            return await asyncio.wait_for(q.get(), max(0.0, arrival + self.timeout - time.monotonic()))
        except (TimeoutError, asyncio.TimeoutError):  # (distinct before Python 3.11)
            raise APIError(504, f"request timed out after {self.timeout:g} s (--request-timeout)", "timeout_error",
                           code="request_timeout") from None

    def check_capacity(self, new: int) -> None:
        """Refuse up front (before any response starts, so streams get a real 503 status) what
        would take the sequences in flight past ``max_pending`` (a prompt with ``n`` is n of them)."""
        if self.client.sequences + new > self.max_pending:
            raise APIError(503, f"server is at capacity ({self.max_pending} sequences in flight); retry later",
                           "server_error", code="queue_full")

    async def submit(self, text: str | None, ids: list[int], params: SamplingParams,
                     slo: SLO | None = None, priority: int = 0) -> Tracked:
        """Hand a request to the engine and wait for its verdict (with an SLO, admission control's)."""
        rid = new_id("req")
        arrival = time.monotonic()
        out = self.processor.add_request(rid, text, ids, params)
        try:
            q = self.client.add(EngineRequest(rid, ids, params, arrival, slo, priority))
        except (OverflowError, UnicodeEncodeError, msgspec.EncodeError) as e:  # a value the wire cannot carry
            self.processor.abort(rid)
            raise APIError(400, f"the request cannot be sent to the engine: {e}") from None
        tr = Tracked(rid, out, q, arrival, slo)
        try:
            first = await self._next(q, arrival)
        except BaseException:  # the client went away while the verdict was pending (or its time ran out)
            self.client.abort(rid)
            self.processor.abort(rid)
            raise
        if not isinstance(first, Admitted):
            self.processor.abort(rid)
            self.client.release(rid)
            outcome = "refused" if getattr(first, "code", None) == "slo_infeasible" else "rejected"
            self.metrics.finished(outcome, len(ids), [], arrival, time.monotonic(), slo, None)
            raise self._error(first)
        tr.admitted = first
        return tr

    @staticmethod
    def _error(item) -> APIError:
        if isinstance(item, RequestRejectedError):
            if item.code == "slo_infeasible":
                return APIError(429, str(item), "slo_infeasible_error", param="slo", code="slo_infeasible")
            return APIError(400, str(item))
        return APIError(503, f"engine unavailable: {item}", "server_error", code="engine_dead")

    async def follow(self, tr: Tracked) -> AsyncIterator[tuple[Tracked, int]]:
        """Yield (tracked request, index of the completion that changed) until all n are done."""
        outcome = "abort"
        try:
            while not tr.output.finished:
                # a stream that fell behind takes every output waiting for it at once, so it sends
                # one chunk for several tokens: under load, the per-chunk work (JSON, the socket
                # write, the task switch) is paid per wake-up, not per token
                items, error = [], None
                try:
                    item = await self._next(tr.queue, tr.arrival)
                except APIError:
                    outcome = "timeout"
                    raise
                while True:
                    if isinstance(item, Exception):
                        error = item
                        break
                    items.append(item)
                    if tr.queue.empty():
                        break
                    item = tr.queue.get_nowait()
                # (an output ended by a stop string may still get a token the engine made before
                # it heard, in these items or later ones: the processor drops it, and nothing is
                # yielded or counted for it; what counts is the tokens the outputs grew by)
                items = [it for it in items if not tr.output.outputs[it.index].finished]
                before = sum(len(o.token_ids) for o in tr.output.outputs)
                _, stopped = self.processor.process(items)
                tr.token_times.extend([time.monotonic()] * (sum(len(o.token_ids) for o in tr.output.outputs) - before))
                for r, i in stopped:
                    self.client.finish_sequence(r, i)
                failed = next((o for o in tr.output.outputs if o.finish_reason == "error"), None)
                if failed is not None:  # (its grammar went past llguidance's limits mid-way)
                    outcome = "error"
                    raise APIError(400, f"structured output failed while generating: {failed.stop_reason}")
                for index in dict.fromkeys(it.index for it in items):
                    yield tr, index
                if error is not None:
                    outcome = "error"
                    raise self._error(error)
            tr.end = time.monotonic()
            outcome = "expired" if any(o.finish_reason == "expired" for o in tr.output.outputs) else "finished"
        finally:
            if outcome in ("finished", "expired"):
                self.client.release(tr.rid)
            else:  # client went away, or an error: the engine frees the blocks on its next loop
                self.client.abort(tr.rid)
                self.processor.abort(tr.rid)
            rep = tr.slo_report() if tr.slo is not None and outcome == "finished" else None
            self.metrics.finished(outcome, len(tr.output.prompt_token_ids), tr.token_times, tr.arrival,
                                  time.monotonic(), tr.slo, rep)

    async def start_all(self, prompts: list[tuple[str | None, list[int], SamplingParams]],
                        slo: SLO | None, priority: int) -> list[Tracked]:
        """Submit several prompts; if one is refused, the ones already in are aborted."""
        self.check_capacity(sum(p.n for _, _, p in prompts))
        started: list[Tracked] = []
        try:
            for text, ids, params in prompts:
                started.append(await self.submit(text, ids, params, slo, priority))
        except BaseException:
            for tr in started:
                self.client.abort(tr.rid)
                self.processor.abort(tr.rid)
            raise
        return started


async def merge(gens: list[AsyncIterator]) -> AsyncIterator[tuple[int, object]]:
    """Interleave several async iterators as (which, item); errors propagate; stops all on exit.

    An iterator resumes only once the consumer is done with its last item (the consumer asks
    for the next): the items are live objects (a completion whose ``delta`` the next step
    overwrites), so a pump that ran ahead would hand over text already replaced."""
    if len(gens) == 1:
        try:
            async for item in gens[0]:
                yield 0, item
        finally:  # (closed with the merge: its request ends now, not when it is collected)
            await gens[0].aclose()
        return
    q: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i, g):
        try:
            async for item in g:
                taken = asyncio.Event()
                await q.put((i, item, taken))
                await taken.wait()
            await q.put((i, done, None))
        except Exception as e:
            await q.put((i, e, None))
        finally:  # (cancelled while its item waits: close the stream now, so it aborts its request)
            await g.aclose()

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
    taken: asyncio.Event | None = None
    try:
        remaining = len(gens)
        while remaining:
            if taken is not None:
                taken.set()  # the consumer is back for more: the last item's pump may go on
                taken = None
            i, item, taken = await q.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # every stream closed before we return


def usage(prompt_tokens: int, outputs: list[CompletionOutput]) -> dict:
    completion = sum(len(o.token_ids) for o in outputs)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def completion_logprobs(out: CompletionOutput, start: int = 0, prompt: list[Logprob] | None = None,
                        generated: bool = True, at: int | None = None) -> dict | None:
    """The legacy logprobs of output tokens ``start:``; ``prompt``: the prompt's (echo), ahead of
    them when ``start`` is 0; ``generated``: False to leave the output's out (echo with
    ``max_tokens`` 0); ``at``: the text offset of the first token given (a stream keeps it: summing
    the tokens before it each chunk would cost a stream time quadratic in its length)."""
    if out.logprobs is None:
        return None
    if start:
        lps = out.logprobs[start:]
    else:
        lps = (prompt or []) + out.logprobs if generated else (prompt or [])
    if at is None:
        at = sum(len(lp.token) for lp in (prompt or [])) * bool(start) + sum(len(lp.token) for lp in out.logprobs[:start])
    offsets = []
    for lp in lps:  # (each token's place in the text is the sum of its predecessors' lengths, as vLLM's)
        offsets.append(at)
        at += len(lp.token)
    return {
        "tokens": [lp.token for lp in lps],
        "token_logprobs": [lp.logprob for lp in lps],
        "top_logprobs": [None if lp.logprob is None else _top_by_text(lp.top) for lp in lps],
        "text_offset": offsets,
    }


def vllm_prompt_logprobs(prompt: list[Logprob] | None) -> list[dict | None] | None:
    """vLLM's ``prompt_logprobs``: per prompt token, None for the first, else {token id: {logprob,
    rank, decoded_token}} of the token itself, then of the top-N (whose rank is their place: one
    of them that is the token itself says so, as vLLM's)."""
    if prompt is None:
        return None
    out: list[dict | None] = []
    for lp in prompt:
        if lp.logprob is None:
            out.append(None)
            continue
        entry = {str(lp.token_id): {"logprob": lp.logprob, "rank": lp.rank, "decoded_token": lp.token}}
        for rank, (t, text, v, _) in enumerate(lp.top, 1):
            entry[str(t)] = {"logprob": v, "rank": rank, "decoded_token": text}
        out.append(entry)
    return out


def _top_by_text(top: list) -> dict[str, float]:
    # (keyed by text, as OpenAI's: of two tokens with one text the likelier keeps its place and value)
    out: dict[str, float] = {}
    for _, text, value, _ in top:
        out.setdefault(text, value)
    return out


def chat_logprobs(out: CompletionOutput, start: int = 0) -> dict | None:
    if out.logprobs is None:
        return None
    return {"content": [
        {"token": lp.token, "logprob": lp.logprob, "bytes": lp.token_bytes,
         "top_logprobs": [{"token": t, "logprob": v, "bytes": b} for _, t, v, b in lp.top]}
        for lp in out.logprobs[start:]
    ]}


def sse(obj: dict | str) -> bytes:
    """One server-sent event. msgspec encodes the JSON: a streamed token is a chunk, and the
    stdlib's ``json.dumps`` was a tenth of the API process's time per token."""
    return b"data: " + (obj.encode() if isinstance(obj, str) else msgspec.json.encode(obj)) + b"\n\n"


def header(kind: str, rid: str, model: str) -> dict:
    return {"id": rid, "object": kind, "created": now(), "model": model}
