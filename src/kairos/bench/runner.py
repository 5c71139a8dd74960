"""The load generator: open-loop asyncio client that streams every response and times every token."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import httpx

from kairos.bench.workloads import RequestSpec


@dataclass
class Record:
    index: int
    slo_class: str
    scheduled_s: float  # when the workload said to send it (after start)
    sent_s: float = 0.0
    first_token_s: float | None = None
    token_times: list[float] = field(default_factory=list)  # one per streamed content chunk
    end_s: float = 0.0
    prompt_tokens: int = 0
    output_tokens: int = 0
    outcome: str = "error"  # ok | refused (429/503) | expired (the server gave up on its SLO) | error | timeout
    status: int | None = None
    error: str | None = None
    server_report: dict | None = None  # a Kairos server's ``usage.kairos`` (its SLO verdicts, predictions)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Target:
    base_url: str
    model: str
    endpoint: str = "chat"  # chat | completions
    send_slo: bool = True  # Kairos extension: `slo` body field and X-Kairos-* headers
    timeout_s: float = 600.0
    api_key: str | None = field(default=None, repr=False)
    extra_body: dict = field(default_factory=dict)  # merged into every body (--extra-body)

    def auth(self) -> dict[str, str]:
        return auth_headers(self.api_key)


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _body(spec: RequestSpec, target: Target, history: list[dict]) -> tuple[str, dict, dict]:
    body: dict = {"model": target.model, "max_tokens": spec.max_tokens, "temperature": 0.0, "ignore_eos": True,
                  **target.extra_body, "stream": True, "stream_options": {"include_usage": True}}
    headers = target.auth()
    slo = {k: v for k, v in (("ttft_ms", spec.slo.ttft_ms), ("tpot_ms", spec.slo.tpot_ms),
                             ("deadline_ms", spec.slo.deadline_ms)) if v is not None}
    if spec.slo.priority is not None:  # (vLLM's and Kairos' body field, each read by its own order)
        body["priority"] = spec.slo.priority
    if target.send_slo and slo:
        body["slo"] = {**slo, "class": spec.slo.name}  # (the class: the server's metrics count by it)
        headers.update({f"X-Kairos-{k.removesuffix('_ms').upper()}-Ms": str(v) for k, v in slo.items()})
        headers["X-Kairos-SLO-Class"] = spec.slo.name
    if target.endpoint == "chat":
        body["messages"] = history + [{"role": "user", "content": spec.prompt}]
        return "/v1/chat/completions", body, headers
    body["prompt"] = "".join(m["content"] for m in history) + spec.prompt
    return "/v1/completions", body, headers


async def _one(http: httpx.AsyncClient, spec: RequestSpec, target: Target, t0: float, count_tokens,
               history: list[dict]) -> tuple[Record, str]:
    rec = Record(spec.index, spec.slo.name, spec.send_at, prompt_tokens=spec.prompt_tokens)
    path, body, headers = _body(spec, target, history)
    rec.sent_s = time.perf_counter() - t0
    try:  # (the whole answer's timeout: httpx's own is per read)
        return await asyncio.wait_for(_stream(http, rec, target.base_url + path, body, headers, t0, count_tokens),
                                      target.timeout_s)
    except (TimeoutError, asyncio.TimeoutError, httpx.TimeoutException):
        rec.outcome, rec.error = "timeout", f"no complete answer within {target.timeout_s:g} s"
    except httpx.HTTPError as e:
        rec.outcome, rec.error = "error", f"{type(e).__name__}: {e}"
    except (ValueError, TypeError, KeyError, AttributeError) as e:  # a malformed answer fails its request, not the run
        rec.outcome, rec.error = "error", f"bad answer: {type(e).__name__}: {e}"
    return _done(rec, t0), ""


async def _stream(http: httpx.AsyncClient, rec: Record, url: str, body: dict, headers: dict, t0: float,
                  count_tokens) -> tuple[Record, str]:
    text: list[str] = []  # the answer's content (a multi-turn session's next history)
    other: list[str] = []  # its reasoning and tool-call arguments: output tokens too, not history
    usage: dict = {}
    expired = ended = False  # ended: [DONE] or a finish_reason came (a stream cut short has neither)
    last_s = None  # when the last choice came: a last token without text (an EOS streamed as "") ends the answer too
    async with http.stream("POST", url, json=body, headers=headers) as r:
        rec.status = r.status_code
        if r.status_code != 200:
            raw = await r.aread()
            rec.outcome = "refused" if r.status_code in (429, 503) else "error"
            rec.error = _error_message(raw, r.status_code)
            return _done(rec, t0), ""
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                ended = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                err = chunk["error"]
                rec.error = err.get("message", str(err)) if isinstance(err, dict) else str(err)
                return _done(rec, t0), ""
            if chunk.get("usage"):
                usage = chunk["usage"]
            now = time.perf_counter() - t0
            for choice in chunk.get("choices") or []:
                last_s = now
                ended = ended or choice.get("finish_reason") is not None
                expired = expired or choice.get("finish_reason") == "expired"
                delta = choice.get("delta") or {}
                piece = delta.get("content") if "delta" in choice else choice.get("text")
                # (reasoning models stream their thinking first, and a tool call its arguments:
                # output tokens too, as vLLM counts them)
                extra = (delta.get("reasoning_content") or delta.get("reasoning") or "") + "".join(
                    (c.get("function") or {}).get("arguments") or "" for c in delta.get("tool_calls") or ())
                if piece or extra or delta.get("tool_calls"):
                    rec.first_token_s = rec.first_token_s if rec.first_token_s is not None else now
                    rec.token_times.append(now)
                    text.append(piece or "")
                    other.append(extra)
    _done(rec, t0)
    if rec.token_times:  # (latency ends at the last token: a trailing usage chunk, without choices, carries none)
        rec.end_s = last_s
    completion = usage.get("completion_tokens")
    if not rec.token_times and not expired and not (ended and isinstance(completion, int) and completion > 0):
        # (an answer of tokens without text, EOS at once say, has its count in the usage)
        rec.error = "the answer carried no output text (not a stream, or an empty one)"
        return rec, ""
    if not ended:
        rec.error = "the stream ended before [DONE] or a finish_reason"
        return rec, ""
    full = "".join(text)
    rec.prompt_tokens = usage.get("prompt_tokens") or rec.prompt_tokens
    if isinstance(completion, int):
        rec.output_tokens = completion
    else:  # (counted apart: the thinking and the answer are separate texts)
        rec.output_tokens = count_tokens(full) + (count_tokens("".join(other)) if any(other) else 0)
    rec.server_report = usage.get("kairos")
    rec.outcome = "expired" if expired else "ok"
    return rec, full


def _done(rec: Record, t0: float) -> Record:
    rec.end_s = time.perf_counter() - t0
    return rec


def _error_message(raw: bytes, status: int) -> str:
    try:
        return json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}: {raw[:200]!r}"


async def run_load(specs: list[RequestSpec], target: Target, count_tokens: Callable[[str], int],
                   on_done: Callable[[Record], None] | None = None,
                   max_concurrency: int | None = None, transport: httpx.AsyncBaseTransport | None = None
                   ) -> tuple[list[Record], float]:
    """Send every spec at its time (open loop; turns of one session wait for the previous turn),
    at most ``max_concurrency`` in flight (a request due meanwhile waits for a slot);
    ``transport``: httpx's (default: the network).

    Returns (records, how far behind schedule the sends were at worst, in seconds).
    """
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=100)
    sessions: dict[int, asyncio.Event] = {}
    histories: dict[int, list[dict]] = {}
    lag = 0.0
    slots = asyncio.Semaphore(max_concurrency) if max_concurrency else contextlib.nullcontext()
    async with httpx.AsyncClient(limits=limits, timeout=target.timeout_s, transport=transport) as http:
        t0 = time.perf_counter()

        async def fire(spec: RequestSpec, prev: asyncio.Event | None, done: asyncio.Event | None) -> Record:
            nonlocal lag
            delay = spec.send_at - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            if prev is not None:
                await prev.wait()
            else:  # turns after the first are closed-loop by design: not "behind"
                lag = max(lag, time.perf_counter() - t0 - spec.send_at)
            history = histories.get(spec.session, []) if spec.session is not None else []
            async with slots:
                rec, text = await _one(http, spec, target, t0, count_tokens, history)
            if spec.session is not None:
                histories[spec.session] = history + [{"role": "user", "content": spec.prompt},
                                                     {"role": "assistant", "content": text}]
            if done is not None:
                done.set()
            if on_done:
                on_done(rec)
            return rec

        tasks = []
        for spec in specs:
            prev = done = None
            if spec.session is not None:
                prev = sessions.get(spec.session)
                done = sessions[spec.session] = asyncio.Event()
            tasks.append(asyncio.create_task(fire(spec, prev, done)))
        records = await asyncio.gather(*tasks)
    return list(records), lag
